"""The worker's own metrics: counted once per stored fact (a retried activity counts nothing twice), the Houyi
adapter's calls by result against the real simulator, and the fleet-wide open-operation gauges.

Each test reads a registry of its own (``ServiceMetrics()``), so nothing leaks between tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.operations import OperationActivities, OperationStateChange
from domain.operations import OpsState
from domain.opscodes import OpsCode
from houyi.errors import HouyiThrottled, HouyiUnavailable
from houyi.http_client import HttpHouyiClient
from houyi.port import CallContext
from runtime.metrics import ADMISSION_VERDICTS, ServiceMetrics
from store.lifecycle import AdmissionVerdict
from store.repository import AuditEntry, AuditResult, OperationStore
from tests.helpers import SimulatorAdmin, eventually
from tests.test_store import new_operation
from worker import refresh_open_operations

LOCK = OpsCode.NC_LOCK.value


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


async def test_each_stored_fact_counts_once_however_often_the_activity_runs(
    store: OperationStore, metrics: ServiceMetrics
) -> None:
    activities = OperationActivities(store, metrics)
    env = ActivityEnvironment()
    new = new_operation("0x410A01-metrics-1")
    for _ in range(3):  # the first attempt, then two retries of an activity whose answer was lost
        await env.run(activities.record_operation, new)
    assert sample(metrics, "opsflow_operations_started_total", opscode=LOCK, source="manual") == 1

    async def move(state: OpsState, times: int = 2) -> None:
        for _ in range(times):
            await env.run(
                activities.set_operation_state, OperationStateChange(workflow_id=new.workflow_id, state=state)
            )

    await move(OpsState.PENDING_APPROVAL)
    await asyncio.sleep(0.2)  # a measurable approval wait
    await move(OpsState.RUNNING)
    await move(OpsState.SUCCEEDED, times=3)

    assert (
        sample(metrics, "opsflow_operation_state_entered_total", opscode=LOCK, state="PendingApproval") == 1
    )
    assert sample(metrics, "opsflow_operation_state_entered_total", opscode=LOCK, state="Running") == 1
    assert sample(metrics, "opsflow_approval_wait_seconds_count", opscode=LOCK, outcome="Running") == 1
    assert sample(metrics, "opsflow_approval_wait_seconds_sum", opscode=LOCK, outcome="Running") >= 0.2
    assert sample(metrics, "opsflow_operations_finished_total", opscode=LOCK, state="Succeeded") == 1
    assert sample(metrics, "opsflow_operation_duration_seconds_count", opscode=LOCK, state="Succeeded") == 1
    assert sample(metrics, "opsflow_operation_duration_seconds_sum", opscode=LOCK, state="Succeeded") >= 0.2

    def audit(action: str, key: str, result: AuditResult = AuditResult.OK, **fields: Any) -> AuditEntry:
        return AuditEntry(
            action=action,
            result=result,
            workflow_id=new.workflow_id,
            opscode=OpsCode.NC_LOCK,
            dedupe_key=f"{new.workflow_id}/{key}",
            **fields,
        )

    entries = [
        audit("approve", "1", operator="bob"),
        audit("step_failed", "2", AuditResult.FAILED, params={"step": "LockNc"}),
        audit("retry_step", "3", operator="bob", params={"step": "LockNc"}),
        audit("retry_step", "4", AuditResult.REFUSED, operator="carol"),  # refused: not an action taken
        audit("refuse", "5", AuditResult.REFUSED, error_type="NcWrongStatus"),
        audit("finish", "6"),
    ]
    for entry in entries:
        for _ in range(2):
            await env.run(activities.record_audit, entry)
    assert sample(metrics, "opsflow_operator_actions_total", opscode=LOCK, action="approve") == 1
    assert sample(metrics, "opsflow_operator_actions_total", opscode=LOCK, action="retry_step") == 1
    assert sample(metrics, "opsflow_step_failures_total", opscode=LOCK, step="LockNc") == 1
    assert sample(metrics, "opsflow_refusals_total", opscode=LOCK, error_type="NcWrongStatus") == 1
    assert len(await store.list_audit(workflow_id=new.workflow_id)) == len(entries)


async def test_a_rejected_operation_observes_its_wait_under_rejected(
    store: OperationStore, metrics: ServiceMetrics
) -> None:
    activities = OperationActivities(store, metrics)
    env = ActivityEnvironment()
    new = new_operation("0x410A01-metrics-2")
    await env.run(activities.record_operation, new)
    for state in (OpsState.PENDING_APPROVAL, OpsState.REJECTED):
        await env.run(
            activities.set_operation_state, OperationStateChange(workflow_id=new.workflow_id, state=state)
        )
    assert sample(metrics, "opsflow_approval_wait_seconds_count", opscode=LOCK, outcome="Rejected") == 1
    assert sample(metrics, "opsflow_operations_finished_total", opscode=LOCK, state="Rejected") == 1
    assert sample(metrics, "opsflow_operation_state_entered_total", opscode=LOCK, state="Running") == 0


@pytest.fixture
async def houyi(simulator: Any, metrics: ServiceMetrics) -> AsyncIterator[HttpHouyiClient]:
    async with HttpHouyiClient(simulator.url, timeout_seconds=5, metrics=metrics) as client:
        yield client


async def test_houyi_calls_are_counted_by_action_and_result_with_their_latency(
    houyi: HttpHouyiClient, admin: SimulatorAdmin, metrics: ServiceMetrics
) -> None:
    nc = await admin.first_nc("free")
    caller = CallContext(caller="metrics-test")
    await houyi.describe_nc(caller, nc_ip=nc["nc_ip"])
    await admin.inject(action="describe_nc", code=429, message="distribute lock fail", count=1)
    with pytest.raises(HouyiThrottled):
        await houyi.describe_nc(caller, nc_ip=nc["nc_ip"])
    await admin.inject(action="describe_nc", code=503, message="backend down", count=1)
    with pytest.raises(HouyiUnavailable):
        await houyi.describe_nc(caller, nc_ip=nc["nc_ip"])
    assert sample(metrics, "opsflow_houyi_calls_total", action="describe_nc", result="ok") == 1
    assert sample(metrics, "opsflow_houyi_calls_total", action="describe_nc", result="HouyiThrottled") == 1
    assert sample(metrics, "opsflow_houyi_calls_total", action="describe_nc", result="HouyiUnavailable") == 1
    assert sample(metrics, "opsflow_houyi_call_duration_seconds_count", action="describe_nc") == 3
    assert sample(metrics, "opsflow_houyi_call_duration_seconds_sum", action="describe_nc") > 0


async def test_open_operation_gauges_follow_the_store_and_drop_to_zero(
    store: OperationStore, metrics: ServiceMetrics
) -> None:
    for index in range(2):
        await store.record_operation(new_operation(f"0x410A01-open-{index}"))
        await store.set_operation_state(f"0x410A01-open-{index}", OpsState.PENDING_APPROVAL)

    stop = asyncio.Event()
    refresher = asyncio.create_task(refresh_open_operations(store, metrics, stop, every=0.05))
    try:
        await eventually(lambda: gauge_is(metrics, "opsflow_operations_open", "PendingApproval", 2), within=5)
        assert sample(metrics, "opsflow_operations_oldest_seconds", opscode=LOCK, state="PendingApproval") > 0
        for index in range(2):
            await store.set_operation_state(f"0x410A01-open-{index}", OpsState.EXPIRED)
        # The series stays, at 0: an alert over it resolves instead of going stale.
        await eventually(lambda: gauge_is(metrics, "opsflow_operations_open", "PendingApproval", 0), within=5)
        assert (
            metrics.registry.get_sample_value(
                "opsflow_operations_oldest_seconds", {"opscode": LOCK, "state": "PendingApproval"}
            )
            == 0
        )
    finally:
        stop.set()
        await refresher


async def gauge_is(metrics: ServiceMetrics, name: str, state: str, wanted: float) -> None:
    assert metrics.registry.get_sample_value(name, {"opscode": LOCK, "state": state}) == wanted


def test_the_rare_admission_verdicts_exist_at_zero_from_the_start(metrics: ServiceMetrics) -> None:
    assert set(ADMISSION_VERDICTS) == {verdict.value for verdict in AdmissionVerdict}
    for opscode in OpsCode:
        for verdict in AdmissionVerdict:
            assert (
                sample(metrics, "opsflow_admission_decisions_total", opscode=opscode.value, verdict=verdict)
                == 0
            )
    assert (
        metrics.registry.get_sample_value(
            "opsflow_admission_decisions_total", {"opscode": LOCK, "verdict": "held_for_approval"}
        )
        == 0
    )
