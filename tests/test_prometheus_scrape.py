"""A real Prometheus (Debian's package, installed by the test setup where missing) scrapes a worker process and
an intake process, with our alert rules loaded: the expected series are there, under the job names the rules
and the dashboard use, every rule evaluates without error, and every series we expose is one the rules and the
dashboard may name (KNOWN_METRICS)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy import processes
from deploy.processes import ManagedProcess, free_port, http_ok
from tests.fixtures.stack import Stack
from tests.helpers import SimulatorAdmin, eventually
from tests.test_e2e_nc_lock import readme_input
from tests.test_observability_artifacts import KNOWN_METRICS, known_series

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
DEV_TOKENS = json.loads((processes.DEV_TOKENS_FILE).read_text())
ALERTMANAGER_TOKEN = next(token for token, who in DEV_TOKENS.items() if "alertmanager" in who["roles"])


@pytest.fixture
async def intake_process(stack: Stack) -> AsyncIterator[str]:
    port = free_port()
    process = processes.intake(stack.env, port, log_dir=stack.log_dir).start()
    try:
        await process.wait_ready(timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()


@pytest.fixture
async def prometheus(
    prometheus_binary: str, stack: Stack, intake_process: str, tmp_path: Path
) -> AsyncIterator[str]:
    worker_target = f"127.0.0.1:{stack.env['WORKER_METRICS_PORT']}"
    intake_target = intake_process.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "opsflow-worker", "static_configs": [{"targets": [worker_target]}]},
                    {"job_name": "opsflow-intake", "static_configs": [{"targets": [intake_target]}]},
                ],
            }
        )
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "prometheus",
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_path=tmp_path / "prometheus.log",
        ready_check=lambda: http_ok(f"{url}/-/ready"),
    ).start()
    try:
        await process.wait_ready(timeout=60)
        yield url
    finally:
        process.terminate()


async def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prometheus}/api/v1/query", params={"query": promql}) as answer,
    ):
        body = await answer.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def test_a_real_prometheus_scrapes_the_worker_and_the_intake_and_evaluates_our_rules(
    stack: Stack, admin: SimulatorAdmin, intake_process: str, prometheus: str
) -> None:
    nc = await admin.first_nc("free")
    await stack.client.execute_workflow(
        "NcLock",
        json.loads(readme_input(nc["nc_ip"])),
        id=f"0x410A01-{uuid.uuid4()}",
        task_queue=stack.task_queue,
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{intake_process}/v1/alertmanager",
            data="{not json",
            headers={"Authorization": f"Bearer {ALERTMANAGER_TOKEN}", "Content-Type": "application/json"},
        ) as answer,
    ):
        assert answer.status == 400

    async def scraped(promql: str) -> list[dict[str, Any]]:
        found = await query(prometheus, promql)
        assert found, f"no series for {promql}"
        return found

    expected = [
        'up{job="opsflow-worker"} == 1',
        'up{job="opsflow-intake"} == 1',
        'opsflow_operations_started_total{job="opsflow-worker",opscode="0x410A01",source="manual"} == 1',
        'opsflow_operations_finished_total{job="opsflow-worker",opscode="0x410A01",state="Succeeded"} == 1',
        'opsflow_operation_duration_seconds_count{job="opsflow-worker",opscode="0x410A01"} == 1',
        'opsflow_houyi_calls_total{job="opsflow-worker",action="lock_nc",result="ok"} == 1',
        'opsflow_houyi_call_duration_seconds_bucket{job="opsflow-worker",action="lock_nc",le="+Inf"} == 1',
        'opsflow_admission_decisions_total{job="opsflow-worker",opscode="0x410A01",verdict="abandoned"} == 0',
        'temporal_worker_task_slots_available{job="opsflow-worker",worker_type="ActivityWorker"} > 0',
        'temporal_workflow_completed{job="opsflow-worker",workflow_type="NcLock"} >= 1',
        'opsflow_intake_requests_total{job="opsflow-intake",endpoint="/v1/alertmanager",code="400"} == 1',
        'opsflow_intake_alerts_total{job="opsflow-intake",outcome="retry"} == 0',
    ]
    for promql in expected:
        await eventually(lambda promql=promql: scraped(promql), within=30, interval=0.5)  # type: ignore[misc]

    # Every series the two processes expose has a name the rules and the dashboard may use.
    names = {
        series["metric"]["__name__"]
        for series in await query(
            prometheus, '{job=~"opsflow-worker|opsflow-intake", __name__=~"opsflow_.*"}'
        )
    }
    assert names - known_series() == set()
    exposed = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in names}
    assert (
        {
            "opsflow_operations_started_total",
            "opsflow_operations_finished_total",
            "opsflow_operation_duration_seconds",
            "opsflow_admission_decisions_total",
            "opsflow_houyi_calls_total",
            "opsflow_houyi_call_duration_seconds",
            "opsflow_intake_requests_total",
            "opsflow_intake_request_seconds",
            "opsflow_intake_alerts_total",
        }
        <= exposed
        <= set(KNOWN_METRICS)
    )

    # The rules load and evaluate over real series without error (a bad expression shows health "err").
    async with aiohttp.ClientSession() as session, session.get(f"{prometheus}/api/v1/rules") as answer:
        groups = (await answer.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 15
    await eventually(lambda: all_evaluated(prometheus), within=20, interval=0.5)


async def all_evaluated(prometheus: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{prometheus}/api/v1/rules") as answer:
        groups = (await answer.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert all(rule.get("lastEvaluation", "").startswith("20") for rule in rules), "not all evaluated yet"
    broken = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert broken == []
    firing = [rule["name"] for rule in rules if rule.get("state") == "firing"]
    # A healthy stack fires nothing.
    assert firing == [], firing
