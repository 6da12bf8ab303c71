"""0x400012 and 0x400011 end to end, as the README shows them: started and approved with the `temporal` CLI
against the dev server, with the worker as its own process (killed once mid-reboot)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from domain.operations import HostOutcomeKind, OperationResult, OpsState
from store.repository import OperationStore
from tests.fixtures.stack import Stack
from tests.helpers import SimulatorAdmin, eventually
from workflows.lifecycle import ApprovalInput, OperationStatus

pytestmark = pytest.mark.e2e


def reboot_input(nc_ip: str) -> str:
    return json.dumps(
        {
            "nc_ip": nc_ip,
            "requester": "alice",
            "reason_category": "hang",
            "reason": "nc_hang_exception: host stopped answering",
            "ticket": "CHG-1002",
            "settings": {"alertRuleName": "nc_hang_exception", "needDumpCn": 1, "needLimit": 1, "preLock": 0},
        }
    )


def re_online_input(nc_ip: str) -> str:
    return json.dumps(
        {
            "nc_ips": [nc_ip],
            "requester": "alice",
            "reason_category": "hang",
            "reason": "hang understood: kernel bug, patched",
            "ticket": "CHG-1002",
            "settings": {"parallel": 4, "NcReOnline": 0},
        }
    )


async def wait_for_state(stack: Stack, workflow_id: str, state: OpsState) -> OperationStatus:
    async def in_state() -> OperationStatus:
        output = await asyncio.to_thread(
            stack.temporal_cli,
            "workflow",
            "query",
            "--workflow-id",
            workflow_id,
            "--name",
            "status",
            "-o",
            "json",
        )
        answer = json.loads(output)["queryResult"][0]
        # The CLI prints empty lists as null.
        status = OperationStatus.model_validate({k: v for k, v in answer.items() if v is not None})
        assert status.state is state, status.state
        return status

    return await eventually(in_state, within=30)


async def cli_result(stack: Stack, workflow_id: str) -> OperationResult:
    output = await asyncio.to_thread(
        stack.temporal_cli, "workflow", "result", "--workflow-id", workflow_id, "--output", "json"
    )
    return OperationResult.model_validate(json.loads(output)["result"])


async def test_the_readme_reboot_then_re_online_run_after_approval_by_signal(
    stack: Stack, admin: SimulatorAdmin, store_view: OperationStore
) -> None:
    nc = await admin.first_nc("free")
    vms = len((await admin.nc(nc["nc_ip"]))["vms"])
    reboot_id = f"0x400012-{nc['nc_ip']}-{uuid.uuid4().hex[:6]}"
    stack.temporal_cli(
        "workflow", "start", "--type", "NcForcedReboot", "--task-queue", stack.task_queue,
        "--workflow-id", reboot_id, "--input", reboot_input(nc["nc_ip"]),
    )  # fmt: skip
    pending = await wait_for_state(stack, reboot_id, OpsState.PENDING_APPROVAL)
    assert pending.approvers == ["admin", "approver1", "approver2"]
    assert any(f"{vms} VM(s) on it" in line for line in pending.plan), pending.plan
    assert (await admin.nc(nc["nc_ip"]))["counters"]["power_cycles"] == 0, "nothing happens before approval"

    stack.temporal_cli(
        "workflow", "signal", "--workflow-id", reboot_id, "--name", "approve",
        "--input", json.dumps({"approver": "approver1", "comment": "hang confirmed"}),
    )  # fmt: skip
    rebooted = await cli_result(stack, reboot_id)
    assert rebooted.state is OpsState.SUCCEEDED
    assert rebooted.hosts[0].status_after == "nc_down"
    host = await admin.nc(nc["nc_ip"])
    assert (host["biz_status"], host["power_state"]) == ("nc_down", "on")
    assert host["counters"]["power_cycles"] == 1 and host["counters"]["dumps"] == 1
    audit = await store_view.list_audit(workflow_id=reboot_id)
    request = next(a for a in audit if a.action == "approval_requested")
    assert any(f"{vms} VM(s) on it" in line for line in request.params["plan"]), "approvers see the plan"
    steps = [a.action for a in audit]
    assert steps == [
        "approval_requested",
        "approve",
        "PreLock",
        "DumpCnMemory",
        "OpsEvnPowerCycleNc",
        "WaitPowerOn",
        "CheckNcDown",
        "finish",
    ]

    re_online_id = f"0x400011-{nc['nc_ip']}-{uuid.uuid4().hex[:6]}"
    stack.temporal_cli(
        "workflow", "start", "--type", "NcReOnline", "--task-queue", stack.task_queue,
        "--workflow-id", re_online_id, "--input", re_online_input(nc["nc_ip"]),
    )  # fmt: skip
    await wait_for_state(stack, re_online_id, OpsState.PENDING_APPROVAL)
    stack.temporal_cli(
        "workflow", "signal", "--workflow-id", re_online_id, "--name", "approve",
        "--input", json.dumps({"approver": "approver2", "comment": "fault understood"}),
    )  # fmt: skip
    online = await cli_result(stack, re_online_id)
    assert online.state is OpsState.SUCCEEDED
    assert [(h.nc_ip, h.outcome, h.status_after) for h in online.hosts] == [
        (nc["nc_ip"], HostOutcomeKind.SUCCEEDED, "free")
    ]
    assert (await admin.nc(nc["nc_ip"]))["biz_status"] == "free"


async def test_a_worker_killed_mid_reboot_power_cycles_the_host_exactly_once(
    stack: Stack, admin: SimulatorAdmin, store_view: OperationStore
) -> None:
    nc = await admin.first_nc("free")
    # Hold the power-cycle call in flight long enough to kill the worker while it waits on Houyi.
    await admin.inject(action="oob_power_cycle", kind="latency", latency_seconds=3, count=1)
    client = await Client.connect(stack.address, data_converter=pydantic_data_converter)
    workflow_id = f"0x400012-{uuid.uuid4()}"
    handle = await client.start_workflow(
        "NcForcedReboot",
        json.loads(reboot_input(nc["nc_ip"])),
        id=workflow_id,
        task_queue=stack.task_queue,
        result_type=OperationResult,
    )
    await wait_for_state(stack, workflow_id, OpsState.PENDING_APPROVAL)
    await handle.signal("approve", ApprovalInput(approver="admin", comment="go"))

    async def power_cycle_in_flight() -> None:
        inflight = (await admin.counters()).get("inflight", {})
        assert inflight.get("oob_power_cycle", 0) >= 1, inflight

    await eventually(power_cycle_in_flight, within=30)
    assert stack.worker is not None
    stack.worker.kill()
    await stack.start_worker()

    result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state is OpsState.SUCCEEDED
    host = await admin.nc(nc["nc_ip"])
    assert host["counters"]["power_cycles"] == 1, "the retried power cycle must replay, not cycle again"
    assert host["biz_status"] == "nc_down"
    operation = await store_view.get_operation(workflow_id)
    assert operation is not None and operation.state is OpsState.SUCCEEDED
