"""The lifecycle's updates (``decide``, ``operate``) on the real dev server: the time-skipping server has no
updates. Real time here, so every wait is short: faults that fail a step at once (HouyiWrongState is not
retried), no timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain import errors
from domain.operations import OperationResult, OpsState
from domain.opscodes import OpsCode
from store.repository import OperationStore
from store.seed import seed_dev_approvers
from tests.helpers import SimulatorAdmin
from tests.lifecycle_helpers import (
    Operations,
    command,
    reboot_input,
    running_worker,
    status_of,
)
from workflows.lifecycle import (
    DecisionInput,
    DecisionResult,
    OperateInput,
    OperateResult,
    StepCommand,
    StepStatus,
)
from workflows.nc_forced_reboot import POWER_CYCLE, PRE_LOCK

CLUSTER = "ECS-CPU-A-8976"
# 409: Houyi says no for good, so the step fails on its first attempt and waits for an operator at once.
POWER_CYCLE_REFUSED = {"action": "oob_power_cycle", "code": 409, "message": "bmc locked by another session"}


@pytest.fixture
async def ops(
    dev_server_env: WorkflowEnvironment, simulator: Any, store: OperationStore, task_queue: str
) -> AsyncIterator[Operations]:
    await seed_dev_approvers(store)
    async with running_worker(dev_server_env.client, task_queue, simulator.url, store) as worker:
        started = Operations(dev_server_env.client, worker.task_queue, store)
        yield started
        await started.close()


async def decide(
    handle: WorkflowHandle[Any, OperationResult], approver: str, approve: bool = True, comment: str = ""
) -> DecisionResult:
    return await handle.execute_update(
        "decide",
        DecisionInput(approver=approver, approve=approve, comment=comment),
        result_type=DecisionResult,
    )


async def refusal_of_decision(
    handle: WorkflowHandle[Any, OperationResult], approver: str
) -> ApplicationError:
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await decide(handle, approver)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError), repr(cause)
    return cause


async def operate(
    handle: WorkflowHandle[Any, OperationResult], command: StepCommand, step: str | None
) -> OperateResult:
    return await handle.execute_update(
        "operate",
        OperateInput(operator="bob", step=step, command=command, comment="from the CLI"),
        result_type=OperateResult,
    )


async def snapshot(handle: WorkflowHandle[Any, OperationResult], store: OperationStore) -> tuple[Any, ...]:
    """What a refused update must leave as it was: state, votes, refusals, steps, audit."""
    status = await status_of(handle)
    audit = [(a.action, a.result.value, a.operator) for a in await store.list_audit(workflow_id=handle.id)]
    return status.state, status.votes, status.refused_messages, status.steps, audit


async def test_decide_refuses_a_non_approver_and_the_requester_at_once_and_changes_nothing(
    ops: Operations, admin: SimulatorAdmin, store: OperationStore
) -> None:
    (nc,) = await admin.free_ncs(CLUSTER, 1)
    # The requester is an approver too: only the self-approval rule stops them.
    handle = await ops.start("NcForcedReboot", reboot_input(nc["nc_ip"], requester="approver2"))
    await ops.wait(handle, OpsState.PENDING_APPROVAL)
    before = await snapshot(handle, store)

    stranger = await refusal_of_decision(handle, "mallory")
    own = await refusal_of_decision(handle, "approver2")

    assert stranger.type == errors.APPROVER_NOT_ALLOWED
    assert "mallory" in stranger.message and "0x400012" in stranger.message
    assert own.type == errors.SELF_APPROVAL and "approver2" in own.message
    assert await snapshot(handle, store) == before
    assert await admin.touched(nc["nc_ip"]) == {}

    # A real approver's rejection through the same update decides it.
    decided = await decide(handle, "approver1", approve=False, comment="not this week")
    assert (decided.approvals, decided.needed) == (0, 1)
    result = await handle.result()
    assert result.state is OpsState.REJECTED and "approver1" in result.message
    assert await admin.touched(nc["nc_ip"]) == {}


async def test_approve_through_decide_answers_the_decision_and_runs_the_reboot(
    ops: Operations, admin: SimulatorAdmin, store: OperationStore
) -> None:
    (nc,) = await admin.free_ncs(CLUSTER, 1)
    handle = await ops.reboot(nc["nc_ip"])
    await ops.wait(handle, OpsState.PENDING_APPROVAL)

    decided = await decide(handle, "approver1", comment="hang confirmed")

    assert isinstance(decided, DecisionResult)
    assert (decided.approvals, decided.needed) == (1, 1)
    result = await handle.result()
    assert result.state is OpsState.SUCCEEDED
    host = await admin.nc(nc["nc_ip"])
    assert host["biz_status"] == "nc_down" and host["counters"]["power_cycles"] == 1
    approvals = [a for a in await store.list_audit(workflow_id=handle.id) if a.action == "approve"]
    assert [(a.operator, a.params["comment"]) for a in approvals] == [("approver1", "hang confirmed")]


async def test_decide_refuses_a_second_vote_and_a_vote_after_the_decision_and_two_of_n_runs_it(
    ops: Operations, admin: SimulatorAdmin, store: OperationStore
) -> None:
    await store.lifecycle.set_approval_policy(OpsCode.NC_FORCED_REBOOT, min_approvals=2, updated_by="test")
    (nc,) = await admin.free_ncs(CLUSTER, 1)
    await admin.inject(**POWER_CYCLE_REFUSED)
    handle = await ops.reboot(nc["nc_ip"])
    await ops.wait(handle, OpsState.PENDING_APPROVAL)

    first = await decide(handle, "approver1")
    assert (first.state, first.approvals, first.needed) == (OpsState.PENDING_APPROVAL, 1, 2)
    before = await snapshot(handle, store)
    again = await refusal_of_decision(handle, "approver1")
    assert again.type == errors.DUPLICATE_VOTE and "approver1" in again.message
    assert await snapshot(handle, store) == before
    assert (await status_of(handle)).state is OpsState.PENDING_APPROVAL

    second = await decide(handle, "admin")
    assert (second.approvals, second.needed) == (2, 2)
    # It ran: the lock applied, the power cycle refused for good, so it waits for an operator.
    await ops.wait(handle, OpsState.STEP_FAILED)
    assert (await admin.nc(nc["nc_ip"]))["counters"]["lock_applied"] == 1

    before = await snapshot(handle, store)
    late = await refusal_of_decision(handle, "approver2")
    assert late.type == errors.NOT_PENDING_APPROVAL and "StepFailed" in late.message
    assert await snapshot(handle, store) == before
    assert [v.approver for v in (await status_of(handle)).votes] == ["approver1", "admin"]

    await admin.clear_faults()
    await command(handle, "retry_step", POWER_CYCLE)
    assert (await handle.result()).state is OpsState.SUCCEEDED
    assert (await admin.nc(nc["nc_ip"]))["counters"]["power_cycles"] == 1


async def test_operate_refuses_to_skip_a_step_that_is_not_skippable_and_retries_it_on_request(
    ops: Operations, admin: SimulatorAdmin, store: OperationStore
) -> None:
    (nc,) = await admin.free_ncs(CLUSTER, 1)
    await admin.inject(**POWER_CYCLE_REFUSED)
    handle = await ops.reboot(nc["nc_ip"])
    await ops.wait(handle, OpsState.PENDING_APPROVAL)
    await decide(handle, "approver1")
    status = await ops.wait(handle, OpsState.STEP_FAILED)
    assert {s.name: s.status for s in status.steps}[POWER_CYCLE] is StepStatus.WAITING
    before = await snapshot(handle, store)

    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await operate(handle, StepCommand.SKIP, POWER_CYCLE)
    assert isinstance(caught.value.cause, ApplicationError)
    assert caught.value.cause.type == errors.STEP_NOT_SKIPPABLE and POWER_CYCLE in caught.value.cause.message
    with pytest.raises(WorkflowUpdateFailedError) as not_waiting:
        await operate(handle, StepCommand.RETRY, PRE_LOCK)
    assert isinstance(not_waiting.value.cause, ApplicationError)
    assert not_waiting.value.cause.type == errors.STEP_NOT_WAITING
    assert await snapshot(handle, store) == before, "a refused update leaves no trace"

    await admin.clear_faults()
    accepted = await operate(handle, StepCommand.RETRY, None)  # the one waiting step

    assert accepted == OperateResult(step=POWER_CYCLE, command=StepCommand.RETRY)
    result = await handle.result()
    assert result.state is OpsState.SUCCEEDED
    assert (await admin.nc(nc["nc_ip"]))["counters"]["power_cycles"] == 1
    retries = [a for a in await store.list_audit(workflow_id=handle.id) if a.action == "retry_step"]
    assert [(a.operator, a.params["step"]) for a in retries] == [("bob", POWER_CYCLE)]
