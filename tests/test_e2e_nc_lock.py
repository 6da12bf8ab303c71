"""NcLock end to end: the real dev server, the worker as its own process, the simulator, PostgreSQL.

Started the way an ops engineer starts it, with the `temporal` CLI; and crashed the way workers crash.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter

from domain.operations import OperationResult, OpsState
from store.repository import OperationStore
from tests.fixtures.stack import Stack
from tests.helpers import SimulatorAdmin, eventually

pytestmark = pytest.mark.e2e


def readme_input(nc_ip: str) -> str:
    return json.dumps(
        {
            "nc_ip": nc_ip,
            "requester": "alice",
            "reason_category": "hardware",
            "reason": "CPU MCE on socket 1",
            "ticket": "CHG-1001",
            "settings": {"alertRuleName": "hardware_exception_alarm", "preLock": 0},
        }
    )


async def test_the_readme_cli_example_locks_a_host(
    stack: Stack, admin: SimulatorAdmin, store_view: OperationStore
) -> None:
    nc = await admin.first_nc("free")
    workflow_id = f"0x410A01-{nc['nc_ip']}-{uuid.uuid4().hex[:6]}"
    stack.temporal_cli(
        "workflow", "start", "--type", "NcLock", "--task-queue", stack.task_queue,
        "--workflow-id", workflow_id, "--input", readme_input(nc["nc_ip"]),
        "--static-summary", f"0x410A01 lock NC {nc['nc_ip']}",
    )  # fmt: skip
    result_text = await asyncio.to_thread(
        stack.temporal_cli, "workflow", "result", "--workflow-id", workflow_id, "--output", "json"
    )
    result = OperationResult.model_validate(json.loads(result_text)["result"])
    (outcome,) = result.hosts
    assert (outcome.nc_ip, outcome.status_before.value, outcome.status_after) == (
        nc["nc_ip"],
        "free",
        "mlock",
    )

    host = await admin.nc(nc["nc_ip"])
    assert host["biz_status"] == "mlock" and host["counters"]["lock_applied"] == 1

    operation = await store_view.get_operation(workflow_id)
    assert operation is not None and operation.state is OpsState.SUCCEEDED
    assert [(a.action, a.result.value) for a in await store_view.list_audit(workflow_id=workflow_id)] == [
        ("LockNc", "ok"),
        ("CheckLocked", "ok"),
        ("finish", "ok"),
    ]
    assert [c.action for c in await store_view.list_houyi_calls(caller=workflow_id)] == [
        "describe_nc",
        "list_ncs",
        "lock_nc",
        "describe_nc",
    ]

    # What the UI's list shows: the static summary and the search attributes.
    handle = stack.client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    assert description.status is WorkflowExecutionStatus.COMPLETED
    assert await description.static_summary() == f"0x410A01 lock NC {nc['nc_ip']}"
    listed = await eventually(
        lambda: listed_by_query(stack.client, f"OpsCode='0x410A01' AND NcIp='{nc['nc_ip']}'")
    )
    assert workflow_id in listed

    # Worker logs are JSON lines bound to workflow id, opscode and host, from the workflow and the activity.
    lines = [
        json.loads(line)
        for line in (stack.log_dir / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    for event in ("nc locked", "lock mlock: calling houyi"):
        line = next(
            entry
            for entry in lines
            if entry.get("event") == event and entry.get("workflow_id") == workflow_id
        )
        assert line["opscode"] == "0x410A01" and line["nc_ip"] == nc["nc_ip"], line
        assert line["run_id"] and line["workflow_id"] == workflow_id, line


async def test_the_worker_serves_its_metrics_and_the_sdks_on_one_port_with_health(
    stack: Stack, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    client = await Client.connect(stack.address, data_converter=pydantic_data_converter)
    await client.execute_workflow(
        "NcLock",
        json.loads(readme_input(nc["nc_ip"])),
        id=f"0x410A01-{uuid.uuid4()}",
        task_queue=stack.task_queue,
    )
    base = f"http://127.0.0.1:{stack.env['WORKER_METRICS_PORT']}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/metrics") as response:
            body = await response.text()
            assert response.status == 200
        for probe in ("healthz", "readyz"):
            async with session.get(f"{base}/{probe}") as answer:
                assert answer.status == 200, (probe, await answer.text())
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }
    # The SDK's series (task slots, completions) and ours, from one scrape.
    assert "temporal_workflow_completed" in body and 'workflow_type="NcLock"' in body
    assert any(name.startswith("temporal_worker_task_slots_available{") for name in samples)
    assert samples['opsflow_operations_started_total{opscode="0x410A01",source="manual"}'] == 1
    assert samples['opsflow_operations_finished_total{opscode="0x410A01",state="Succeeded"}'] == 1
    assert samples['opsflow_operation_duration_seconds_count{opscode="0x410A01",state="Succeeded"}'] == 1
    assert samples['opsflow_admission_decisions_total{opscode="0x410A01",verdict="admitted"}'] == 1
    assert samples['opsflow_houyi_calls_total{action="lock_nc",result="ok"}'] == 1
    assert samples['opsflow_houyi_call_duration_seconds_count{action="lock_nc"}'] == 1
    # Low cardinality: no host address or workflow id in any of our label values.
    ours = [name for name in samples if name.startswith("opsflow_")]
    assert not [name for name in ours if nc["nc_ip"] in name or "0x410A01-" in name]


async def test_a_worker_killed_during_the_lock_call_locks_exactly_once(
    stack: Stack, admin: SimulatorAdmin, store_view: OperationStore
) -> None:
    nc = await admin.first_nc("free")
    # Hold the lock call in flight long enough to kill the worker while it waits on Houyi.
    await admin.inject(action="lock_nc", kind="latency", latency_seconds=3, count=1)
    workflow_id = f"0x410A01-{uuid.uuid4()}"
    client = await Client.connect(stack.address, data_converter=pydantic_data_converter)
    handle = await client.start_workflow(
        "NcLock",
        json.loads(readme_input(nc["nc_ip"])),
        id=workflow_id,
        task_queue=stack.task_queue,
        result_type=OperationResult,
    )

    async def lock_in_flight() -> None:
        inflight = (await admin.counters()).get("inflight", {})
        assert inflight.get("lock_nc", 0) >= 1, inflight

    await eventually(lock_in_flight, within=30)
    assert stack.worker is not None
    stack.worker.kill()

    await stack.start_worker()
    result = await asyncio.wait_for(handle.result(), timeout=90)
    assert result.hosts[0].status_after == "mlock"

    host = await admin.nc(nc["nc_ip"])
    assert host["counters"]["lock_applied"] == 1, "the retried lock must replay, not lock again"
    assert (await admin.counters())["token_replays"] >= 1
    lock_calls = await store_view.list_houyi_calls(caller=workflow_id, action="lock_nc")
    assert len(lock_calls) == 1 and lock_calls[0].token == f"{workflow_id}/LockNc"
    operation = await store_view.get_operation(workflow_id)
    assert operation is not None and operation.state is OpsState.SUCCEEDED


async def listed_by_query(client: Client, query: str) -> list[str]:
    ids = [execution.id async for execution in client.list_workflows(query)]
    assert ids, f"no workflow matches {query}"
    return ids


async def test_the_worker_stops_cleanly_on_sigterm(stack: Stack) -> None:
    assert stack.worker is not None
    exit_code = await asyncio.to_thread(stack.worker.terminate, 20.0)
    assert exit_code == 0
    events = [
        json.loads(line).get("event")
        for line in (stack.log_dir / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert "worker stopping" in events and events[-1] == "worker stopped"
    stack.worker = None
