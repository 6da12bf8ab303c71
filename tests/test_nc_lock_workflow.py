"""NcLock (0x410A01) on the time-skipping server, with the real simulator and the real store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain import errors
from domain.model import NcBizStatus
from domain.operations import HostOutcomeKind, OperationResult, OpsState
from houyi.http_client import HttpHouyiClient
from store.repository import OperationStore
from tests.helpers import SimulatorAdmin
from worker import build_worker
from workflows.lifecycle import OperationStatus
from workflows.nc_lock import NcLockWorkflow


@pytest.fixture
async def lock_worker(
    time_skipping_env: WorkflowEnvironment, simulator: Any, store: OperationStore, task_queue: str
) -> AsyncIterator[Worker]:
    async with HttpHouyiClient(simulator.url, recorder=store) as houyi:
        worker = build_worker(time_skipping_env.client, task_queue, houyi=houyi, store=store)
        async with worker:
            yield worker


def lock_input(nc_ip: str, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "nc_ip": nc_ip,
        "requester": "alice",
        "reason_category": "hardware",
        "reason": "CPU MCE on socket 1",
        "ticket": "CHG-1001",
        "settings": {"alertRuleName": "hardware_exception_alarm", "preLock": 0},
    }
    raw.update(overrides)
    return raw


async def run_lock(
    env: WorkflowEnvironment, worker: Worker, raw: dict[str, Any]
) -> tuple[str, OperationResult]:
    workflow_id = f"0x410A01-{uuid.uuid4()}"
    result = await env.client.execute_workflow(
        NcLockWorkflow.run, raw, id=workflow_id, task_queue=worker.task_queue
    )
    return workflow_id, result


async def refusal_of(
    env: WorkflowEnvironment, worker: Worker, raw: dict[str, Any]
) -> tuple[str, ApplicationError]:
    workflow_id = f"0x410A01-{uuid.uuid4()}"
    with pytest.raises(WorkflowFailureError) as caught:
        await env.client.execute_workflow(
            NcLockWorkflow.run, raw, id=workflow_id, task_queue=worker.task_queue
        )
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable
    assert cause.cause is None, "a refusal's message stands alone"
    return workflow_id, cause


async def test_a_free_host_is_locked_recorded_and_audited(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker, admin: SimulatorAdmin, store: OperationStore
) -> None:
    nc = await admin.first_nc("free")
    workflow_id, result = await run_lock(time_skipping_env, lock_worker, lock_input(nc["nc_ip"]))

    assert result.state is OpsState.SUCCEEDED
    (host,) = result.hosts
    assert (host.nc_ip, host.nc_id, host.outcome) == (nc["nc_ip"], nc["nc_id"], HostOutcomeKind.SUCCEEDED)
    assert (host.status_before, host.status_after) == (NcBizStatus.FREE, NcBizStatus.MLOCK)
    state = await admin.nc(nc["nc_ip"])
    assert state["biz_status"] == "mlock" and state["counters"]["lock_applied"] == 1

    operation = await store.get_operation(workflow_id)
    assert operation is not None and operation.id == result.operation_id
    assert operation.state is OpsState.SUCCEEDED and operation.finished_at is not None
    assert operation.hosts == [nc["nc_ip"]] and operation.nc_ids == [nc["nc_id"]]
    assert (operation.requester, operation.ticket, operation.region_id) == (
        "alice",
        "CHG-1001",
        nc["region_id"],
    )
    assert operation.settings["alertRuleName"] == "hardware_exception_alarm"
    assert operation.result is not None and operation.result["hosts"][0]["status_after"] == "mlock"

    audit = await store.list_audit(workflow_id=workflow_id)
    assert [(a.action, a.result.value, a.operator) for a in audit] == [
        ("LockNc", "ok", "alice"),
        ("CheckLocked", "ok", "alice"),
        ("finish", "ok", "alice"),
    ]
    calls = await store.list_houyi_calls(caller=workflow_id)
    assert [(c.action, c.code) for c in calls] == [
        ("describe_nc", 200),
        ("list_ncs", 200),  # the capacity guard counts the cluster's schedulable hosts
        ("lock_nc", 200),
        ("describe_nc", 200),
    ]
    assert calls[2].token == f"{workflow_id}/LockNc"


async def test_status_query_and_search_attributes_describe_the_operation(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    workflow_id, _ = await run_lock(time_skipping_env, lock_worker, lock_input(nc["nc_ip"]))
    handle = time_skipping_env.client.get_workflow_handle(workflow_id)
    status = await handle.query(NcLockWorkflow.query_status)
    assert isinstance(status, OperationStatus)
    assert status.state is OpsState.SUCCEEDED
    assert (status.hosts[0].nc_ip, status.hosts[0].nc_id) == (nc["nc_ip"], nc["nc_id"])
    assert [(s.name, s.status.value, s.start_count) for s in status.steps] == [
        ("LockNc", "succeeded", 1),
        ("CheckLocked", "succeeded", 1),
    ]
    assert status.outcomes[0].status_after is NcBizStatus.MLOCK
    assert "| LockNc | succeeded | 1 |" in status.markdown()
    attributes = (await handle.describe()).search_attributes
    assert attributes["OpsCode"] == ["0x410A01"] and attributes["NcIp"] == [nc["nc_ip"]]
    assert attributes["OpsState"] == ["Succeeded"] and attributes["Requester"] == ["alice"]
    assert attributes["Region"] == [nc["region_id"]] and attributes["Cluster"] == [nc["cluster_id"]]


async def test_an_already_locked_host_is_refused_naming_host_and_status(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker, admin: SimulatorAdmin, store: OperationStore
) -> None:
    nc = await admin.first_nc("mlock")
    before = await store.count_rows()
    workflow_id, refusal = await refusal_of(time_skipping_env, lock_worker, lock_input(nc["nc_ip"]))
    assert refusal.type == errors.NC_WRONG_STATUS
    assert nc["nc_ip"] in refusal.message and "mlock" in refusal.message
    assert (await admin.nc(nc["nc_ip"]))["counters"]["lock_applied"] == 0
    await assert_only_refusal_recorded(store, before, workflow_id, errors.NC_WRONG_STATUS, houyi_calls=1)


async def test_an_unknown_ip_is_refused_as_not_found(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker, store: OperationStore
) -> None:
    before = await store.count_rows()
    workflow_id, refusal = await refusal_of(time_skipping_env, lock_worker, lock_input("10.250.250.250"))
    assert refusal.type == errors.NC_NOT_FOUND and "10.250.250.250" in refusal.message
    await assert_only_refusal_recorded(store, before, workflow_id, errors.NC_NOT_FOUND, houyi_calls=1)


async def test_a_malformed_ip_is_refused_before_any_call(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker, store: OperationStore, admin: SimulatorAdmin
) -> None:
    before = await store.count_rows()
    counters = await admin.counters()
    workflow_id, refusal = await refusal_of(time_skipping_env, lock_worker, lock_input("10.1.2.999"))
    assert refusal.type == errors.INVALID_INPUT
    assert "nc_ip" in refusal.message and "10.1.2.999" in refusal.message
    assert await admin.counters() == counters
    await assert_only_refusal_recorded(store, before, workflow_id, errors.INVALID_INPUT, houyi_calls=0)


async def test_malformed_settings_are_refused_naming_the_setting(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker, store: OperationStore, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    before = await store.count_rows()
    raw = lock_input(nc["nc_ip"], settings={"alertRuleName": "x", "preLock": 7, "lockMode": "hard"})
    workflow_id, refusal = await refusal_of(time_skipping_env, lock_worker, raw)
    assert refusal.type == errors.INVALID_SETTINGS
    assert "settings.preLock" in refusal.message and "settings.lockMode" in refusal.message
    assert (await admin.nc(nc["nc_ip"]))["biz_status"] == "free"
    await assert_only_refusal_recorded(store, before, workflow_id, errors.INVALID_SETTINGS, houyi_calls=0)


async def test_input_that_is_not_an_object_is_refused(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker
) -> None:
    workflow_id = f"0x410A01-{uuid.uuid4()}"
    with pytest.raises(WorkflowFailureError) as caught:
        await time_skipping_env.client.execute_workflow(
            "NcLock", "10.1.2.3", id=workflow_id, task_queue=lock_worker.task_queue
        )
    assert isinstance(caught.value.cause, ApplicationError)
    assert caught.value.cause.type == errors.INVALID_INPUT


async def test_throttled_lock_is_retried_and_applied_once(
    time_skipping_env: WorkflowEnvironment, lock_worker: Worker, admin: SimulatorAdmin, store: OperationStore
) -> None:
    nc = await admin.first_nc("free")
    await admin.inject(action="lock_nc", code=429, message="distribute lock fail", count=2)
    workflow_id, result = await run_lock(time_skipping_env, lock_worker, lock_input(nc["nc_ip"]))
    assert result.hosts[0].status_after is NcBizStatus.MLOCK
    assert (await admin.nc(nc["nc_ip"]))["counters"]["lock_applied"] == 1
    codes = [c.code for c in await store.list_houyi_calls(caller=workflow_id, action="lock_nc")]
    assert codes == [429, 429, 200]


async def assert_only_refusal_recorded(
    store: OperationStore, before: dict[str, int], workflow_id: str, error_type: str, *, houyi_calls: int
) -> None:
    after = await store.count_rows()
    assert after["operations"] == before["operations"], "a refusal must not create an operation"
    assert after["audit_log"] == before["audit_log"] + 1
    assert after["houyi_calls"] == before["houyi_calls"] + houyi_calls
    (entry,) = await store.list_audit(workflow_id=workflow_id)
    assert (entry.action, entry.result.value, entry.error_type) == ("refuse", "refused", error_type)
