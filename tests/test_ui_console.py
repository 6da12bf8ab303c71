"""The README's Start Workflow examples pasted into the real Temporal UI (2.54, from the dev server) in
headless Chromium (Debian's, installed by the test setup where missing): each starts its workflow with
exactly that input and lands where the README says; a wrong input fails at once naming the field."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from deploy import processes
from domain.operations import OpsState
from simulator.server import RunningSimulator
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from tests.helpers import eventually
from tests.readme_examples import examples
from workflows.lifecycle import OperationStatus

pytestmark = pytest.mark.e2e

TASK_QUEUE = "ecs-ops"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    browser, driver = "/usr/bin/chromium", "/usr/bin/chromedriver"
    if not (Path(browser).exists() and Path(driver).exists()):
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
    assert shutil.which(browser) and shutil.which(driver), "Debian's chromium and chromium-driver are needed"
    return browser, driver


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = chromium[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromium[1]), options=options)
    yield driver
    driver.quit()


class Console:
    def __init__(self, ui: str, client: Client, log_dir: Path) -> None:
        self.ui, self.client, self.log_dir = ui, client, log_dir


@pytest.fixture
async def console(simulator: RunningSimulator, database_url: str, tmp_path: Path) -> AsyncIterator[Console]:
    seeding = await OperationStore.connect(database_url)
    await seed_dev_approvers(seeding)
    await seed_dev_windows(seeding, sorted(simulator.fleet.clusters))
    await seeding.close()
    port, ui_port = processes.free_port(), processes.free_port()
    (tmp_path / "temporal").mkdir()
    temporal = processes.temporal_dev_server(tmp_path / "temporal", port, ui_port, log_dir=tmp_path / "logs")
    temporal.start()
    worker: processes.ManagedProcess | None = None
    try:
        await temporal.wait_ready(timeout=60)
        env = processes.worker_env(
            temporal_address=f"127.0.0.1:{port}", database_url=database_url, houyi_url=simulator.url,
            metrics_port=0, task_queue=TASK_QUEUE, simulator_speed=simulator.fleet.speed,
        )  # fmt: skip
        worker = processes.worker(env, log_dir=tmp_path / "logs").start()
        await worker.wait_ready(timeout=60)
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        yield Console(f"http://127.0.0.1:{ui_port}", client, tmp_path)
    finally:
        if worker is not None:
            worker.terminate()
        temporal.terminate()


def start_in_the_ui(browser: webdriver.Chrome, console: Console, example: dict[str, Any]) -> None:
    """Fills the Start Workflow form as a person would and presses the button."""
    browser.get(f"{console.ui}/namespaces/default/workflows/start-workflow")
    deadline = time.monotonic() + 30
    while not browser.find_elements(By.ID, "workflowId"):
        assert time.monotonic() < deadline, "the Start Workflow form did not appear"
        time.sleep(0.2)
    browser.find_element(By.ID, "workflowId").send_keys(example["id"])
    browser.find_element(By.ID, "taskQueue").send_keys(TASK_QUEUE)
    browser.find_element(By.ID, "workflowType").send_keys(example["type"])
    editor = browser.find_element(By.CSS_SELECTOR, ".cm-content")
    editor.click()
    editor.send_keys(json.dumps(example["input"]))
    # Leaving the editor reformats it, which moves the button: let it settle, then press.
    browser.find_element(By.TAG_NAME, "h1").click()
    time.sleep(0.5)
    browser.save_screenshot(str(console.log_dir / f"{example['id']}.png"))
    browser.find_element(By.CSS_SELECTOR, "[data-testid=start-workflow-button]").click()


async def landed(console: Console, example: dict[str, Any]) -> None:
    handle = console.client.get_workflow_handle(example["id"])
    if example["type"] == "DiskRecycle":
        assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
        return
    status = await handle.query("status", result_type=OperationStatus)
    assert status.state is OpsState(example["state"]), (example["id"], status.state, status.error)


async def started_input(client: Client, workflow_id: str) -> Any:
    events = client.get_workflow_handle(workflow_id).fetch_history_events()
    try:
        first = await anext(events)
    except RPCError as error:
        raise AssertionError(f"{workflow_id} not started (yet): {error.message}") from None
    for event in [first]:
        if event.HasField("workflow_execution_started_event_attributes"):
            payload = event.workflow_execution_started_event_attributes.input.payloads[0]
            return json.loads(payload.data)
    raise AssertionError(f"{workflow_id} has no start event")


async def test_every_readme_example_starts_from_the_ui_and_lands_where_the_readme_says(
    browser: webdriver.Chrome, console: Console
) -> None:
    found = examples()
    assert {e["type"] for e in found} == {
        "NcLock", "NcUnlock", "NcForcedReboot", "NcReOnline", "NcDeepOffline", "NcDeepOfflineCold",
        "WholeHostMigration", "VmResidueCleanup", "WildVmCleanup", "DiskLiveMigration", "DiskRecycle",
    }  # fmt: skip
    for example in found:
        await asyncio.to_thread(start_in_the_ui, browser, console, example)

        async def started(example: dict[str, Any] = example) -> Any:
            return await started_input(console.client, example["id"])

        assert await eventually(started, within=20) == example["input"], example["id"]

        async def there(example: dict[str, Any] = example) -> None:
            await landed(console, example)

        await eventually(there, within=60, interval=0.3)


async def test_a_wrong_input_in_the_ui_fails_at_once_naming_the_field(
    browser: webdriver.Chrome, console: Console
) -> None:
    wrong: dict[str, Any] = {"type": "NcLock", "id": "0x410A01-wrong", "state": "Refused",
             "input": {"nc_ip": "10.0.0.300", "requester": "alice", "reason_category": "hardware"}}  # fmt: skip
    await asyncio.to_thread(start_in_the_ui, browser, console, wrong)

    async def failed() -> ApplicationError:
        try:
            await console.client.get_workflow_handle(wrong["id"]).result()
        except RPCError as error:  # the UI has not started it yet
            raise AssertionError(f"{wrong['id']} not started yet: {error.message}") from None
        except WorkflowFailureError as failure:
            assert isinstance(failure.cause, ApplicationError)
            return failure.cause
        raise AssertionError("it did not fail")

    cause = await eventually(failed, within=20)
    assert cause.type == "InvalidInput"
    # The message the README shows for this input.
    assert cause.message == "invalid NcLockInput: nc_ip: '10.0.0.300' is not a valid IPv4 address"
