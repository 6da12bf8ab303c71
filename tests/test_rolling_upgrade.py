"""A rolling upgrade, as the README's Production section describes it: operations started by workers of the
previous release (this repository at OLD_RELEASE, run from its own source tree) are waiting for approval and
for an operator at a failed step; a worker of this release joins, the old one stops (SIGTERM, graceful); the
waiting operations then finish on the new code, with no workflow task failing on a nondeterminism.

Between OLD_RELEASE and this release, ``_publish`` gained the OpsStep search attribute behind
``workflow.patched("ops-step-search-attribute")``: the old operations finish the old way, new ones set it.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deploy import processes
from domain.operations import OperationResult, OpsState
from domain.opscodes import OpsCode
from runtime import search_attributes as sa
from store.lifecycle import FlowControlRule
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from tests.helpers import SimulatorAdmin, eventually
from tests.test_e2e_reboot import reboot_input
from workflows.lifecycle import OPS_STEP_SEARCH_ATTRIBUTE, OperationStatus

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# The last commit before the OpsStep patch: the "previous release" of this test.
OLD_RELEASE = "3e38ee471cbac8dae9e6964378c1f1f54cdd9f58"


def old_release_tree(into: Path) -> Path:
    """OLD_RELEASE's files, from this clone's history; a shallow clone fetches it from its origin first."""
    known = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_RELEASE}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if known.returncode != 0:
        subprocess.run(
            ["git", "-C", str(REPO), "fetch", "--quiet", "origin", OLD_RELEASE],
            capture_output=True,
            timeout=300,
            check=False,
        )
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_RELEASE], capture_output=True, timeout=120, check=False
    )
    assert archive.returncode == 0, f"git archive {OLD_RELEASE}: {archive.stderr.decode()[-500:]}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    assert not hasattr_patch(into), "the old tree must predate the patch"
    return into


def hasattr_patch(tree: Path) -> bool:
    return OPS_STEP_SEARCH_ATTRIBUTE in (tree / "workflows" / "lifecycle.py").read_text()


async def status_of(handle: WorkflowHandle[Any, Any]) -> OperationStatus:
    status: OperationStatus = await handle.query("status", result_type=OperationStatus)
    return status


async def in_state(handle: WorkflowHandle[Any, Any], state: OpsState) -> None:
    assert (await status_of(handle)).state is state


async def test_operations_started_on_the_previous_release_finish_on_this_one(
    dev_server_env: WorkflowEnvironment,
    simulator: Any,
    admin: SimulatorAdmin,
    database_url: str,
    tmp_path: Path,
) -> None:
    seeding = await OperationStore.connect(database_url)
    await seed_dev_approvers(seeding)
    await seed_dev_windows(seeding, sorted(simulator.fleet.clusters))
    # Two reboots in one cluster would be one too many for the product's weekly limit.
    await seeding.lifecycle.set_flow_control_rule(
        FlowControlRule(opscode=OpsCode.NC_FORCED_REBOOT, enabled=False), updated_by="test"
    )
    address = dev_server_env.client.service_client.config.target_host
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    task_queue = f"upgrade-{uuid.uuid4()}"
    env = processes.worker_env(
        temporal_address=address, database_url=database_url, houyi_url=simulator.url,
        metrics_port=0, task_queue=task_queue, simulator_speed=simulator.fleet.speed,
    )  # fmt: skip
    env["OPSFLOW_RECYCLE_SCHEDULE"] = "off"
    old_tree = await asyncio.to_thread(old_release_tree, tmp_path / "old")
    logs = tmp_path / "logs"
    old = processes.worker(env, log_dir=logs, root=old_tree, name="worker-old").start()
    new: processes.ManagedProcess | None = None
    try:
        await old.wait_ready(timeout=60)
        waiting_host, failing_host = (await admin.first_nc("free"))["nc_ip"], None
        failing_host = (await admin.first_nc("free", exclude={waiting_host}))["nc_ip"]

        # On the old release: one reboot waits for approval, one waits for an operator at a failed step.
        pending = await client.start_workflow(
            "NcForcedReboot", json.loads(reboot_input(waiting_host)),
            id=f"0x400012-{waiting_host}-{uuid.uuid4().hex[:6]}", task_queue=task_queue, result_type=OperationResult,
        )  # fmt: skip
        await admin.inject(action="oob_power_cycle", code=500, message="BMC down", count=1000)
        failing = await client.start_workflow(
            "NcForcedReboot", json.loads(reboot_input(failing_host)),
            id=f"0x400012-{failing_host}-{uuid.uuid4().hex[:6]}", task_queue=task_queue, result_type=OperationResult,
        )  # fmt: skip
        await eventually(lambda: in_state(pending, OpsState.PENDING_APPROVAL), within=30)
        await eventually(lambda: in_state(failing, OpsState.PENDING_APPROVAL), within=30)
        await failing.signal("approve", {"approver": "approver1", "comment": "before the upgrade"})
        await eventually(lambda: in_state(failing, OpsState.STEP_FAILED), within=90)

        # The rolling step: the new worker joins, then the old one stops gracefully.
        new = processes.worker(env, log_dir=logs, name="worker-new").start()
        await new.wait_ready(timeout=60)
        assert old.terminate() == 0, old.log_tail()

        # Operators act after the upgrade; only the new code runs now.
        await admin.clear_faults()
        await failing.signal("retry_step", {"operator": "admin", "comment": "BMC replaced"})
        await pending.signal("approve", {"approver": "approver2", "comment": "after the upgrade"})
        results = [await handle.result() for handle in (pending, failing)]
        assert [result.state for result in results] == [OpsState.SUCCEEDED, OpsState.SUCCEEDED]
        for host in (waiting_host, failing_host):
            assert (await admin.nc(host))["counters"]["power_cycles"] == 1

        for handle in (pending, failing):
            events = [event async for event in handle.fetch_history_events()]
            failed_tasks = [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
            assert failed_tasks == [], failed_tasks[0].workflow_task_failed_event_attributes.failure.message
            identities = [
                e.workflow_task_completed_event_attributes.identity
                for e in events
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            ]
            # Started by the old release, finished by the new one.
            assert identities[0].startswith(f"{old.pid}@") and identities[-1].startswith(f"{new.pid}@")

        # An operation started on the new release sets OpsStep: at a failed step, a query finds it there.
        await admin.inject(action="oob_power_cycle", code=500, message="BMC down", count=1000)
        third_host = (await admin.first_nc("free", exclude={waiting_host, failing_host}))["nc_ip"]
        fresh = await client.start_workflow(
            "NcForcedReboot", json.loads(reboot_input(third_host)),
            id=f"0x400012-{third_host}-{uuid.uuid4().hex[:6]}", task_queue=task_queue, result_type=OperationResult,
        )  # fmt: skip
        await eventually(lambda: in_state(fresh, OpsState.PENDING_APPROVAL), within=30)
        await fresh.signal("approve", {"approver": "approver1", "comment": "new release"})
        await eventually(lambda: in_state(fresh, OpsState.STEP_FAILED), within=90)

        async def listed_at_the_failed_step() -> None:
            found = [
                execution.id
                async for execution in client.list_workflows(
                    f"TaskQueue = '{task_queue}' AND OpsState = 'StepFailed' AND OpsStep = 'OpsEvnPowerCycleNc'"
                )
            ]
            assert found == [fresh.id]

        await eventually(listed_at_the_failed_step, within=15)
        description = await fresh.describe()
        assert description.typed_search_attributes.get(sa.OPS_STEP) == "OpsEvnPowerCycleNc"
        await fresh.signal("abort", {"operator": "admin", "comment": "test over"})
        with pytest.raises(WorkflowFailureError) as aborted:
            await fresh.result()
        assert "aborted by admin at step OpsEvnPowerCycleNc" in str(aborted.value.cause)
    finally:
        old.terminate()
        if new is not None:
            new.terminate()
        await admin.clear_faults()
        await seeding.close()
