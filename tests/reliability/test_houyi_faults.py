"""Houyi misbehaving (the simulator's /admin/faults): bursts of 5xx, a non-retryable code, a call that never
answers, a slow OOB power cycle, a hang while a live migration is followed. Each operation ends in a defined
state or waits in StepFailed for an operator, and none spins: the histories are counted (activity attempts
within the retry policy's bound, no WorkflowTaskFailed, a bounded number of workflow tasks), every attempt is
seen in the store's record of Houyi calls, and the simulator's counters show nothing applied twice.

The worker runs in the test (the real activities and workflows of ``worker.build_worker``) on the dev server,
whose timeouts run on the real clock, with a Houyi client whose timeout the case chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deploy.devstack import NC_DEEP_OFFLINE_EXAMPLE_INPUT, deep_offline_example_host
from domain.evacuation import VmMoveState
from domain.operations import OperationResult, OpsState
from houyi.http_client import HttpHouyiClient
from simulator.server import RunningSimulator
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from tests.fixtures.simulator import SimulatorFactory, small_fleet, write_fleet
from tests.helpers import SimulatorAdmin, eventually
from tests.lifecycle_helpers import reboot_input
from tests.reliability_support import matrix
from worker import build_worker
from workflows.lifecycle import ApprovalInput, OperationStatus, StepCommandInput, StepStatus

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

STEP_MAX_ATTEMPTS = 5  # workflows.common.HOUYI_STEP
# Generous bound on a lock's or a reboot's workflow tasks, whatever the retries: a spinning workflow
# (a task failing and retried, a loop of timers) goes far past it.
WORKFLOW_TASK_BOUND = 40


@contextlib.asynccontextmanager
async def worker_on(
    client: Client, simulator: RunningSimulator, store: OperationStore, *, houyi_timeout: float
) -> AsyncIterator[str]:
    """The real worker on a task queue of its own; yields the task queue."""
    task_queue = f"houyi-faults-{uuid.uuid4()}"
    async with HttpHouyiClient(simulator.url, recorder=store, timeout_seconds=houyi_timeout) as houyi:
        worker: Worker = build_worker(
            client,
            task_queue,
            houyi=houyi,
            store=store,
            power_poll_seconds=0.05,
            migration_poll_seconds=0.02,
            time_scale=1 / simulator.fleet.speed,
        )
        async with worker:
            yield task_queue


@dataclass
class Activity:
    name: str
    attempt: int  # of the attempt that ended it
    outcome: str  # completed, failed, timed_out
    heartbeat_timeout: timedelta
    start_to_close_timeout: timedelta
    maximum_attempts: int


@dataclass
class History:
    events: Counter[str]
    activities: list[Activity]

    def of(self, name: str) -> list[Activity]:
        return [a for a in self.activities if a.name == name]

    def assert_no_spin(self) -> None:
        assert self.events["EVENT_TYPE_WORKFLOW_TASK_FAILED"] == 0, self.events
        assert self.events["EVENT_TYPE_WORKFLOW_TASK_COMPLETED"] <= WORKFLOW_TASK_BOUND, self.events
        for activity in self.activities:
            if activity.maximum_attempts:
                assert activity.attempt <= activity.maximum_attempts, activity


async def history_of(handle: WorkflowHandle[Any, Any]) -> History:
    events: Counter[str] = Counter()
    scheduled: dict[int, Any] = {}
    started: dict[int, int] = {}
    activities = []
    async for event in handle.fetch_history_events():
        kind = EventType.Name(event.event_type)
        events[kind] += 1
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attributes = event.activity_task_started_event_attributes
            started[attributes.scheduled_event_id] = attributes.attempt
        for outcome, field in (
            ("completed", "activity_task_completed_event_attributes"),
            ("failed", "activity_task_failed_event_attributes"),
            ("timed_out", "activity_task_timed_out_event_attributes"),
        ):
            if event.WhichOneof("attributes") == field:
                scheduled_id = getattr(event, field).scheduled_event_id
                attributes = scheduled[scheduled_id]
                activities.append(
                    Activity(
                        name=attributes.activity_type.name,
                        attempt=started.get(scheduled_id, 0),
                        outcome=outcome,
                        heartbeat_timeout=attributes.heartbeat_timeout.ToTimedelta(),
                        start_to_close_timeout=attributes.start_to_close_timeout.ToTimedelta(),
                        maximum_attempts=attributes.retry_policy.maximum_attempts,
                    )
                )
    return History(events, activities)


async def wait_state(
    handle: WorkflowHandle[Any, Any], state: OpsState, store: OperationStore, within: float = 60
) -> OperationStatus:
    """Until the operation has settled in ``state`` (its wait audited, no activity in flight)."""

    async def check() -> OperationStatus:
        status = await handle.query("status", result_type=OperationStatus)
        assert status.state is state, f"{handle.id} is {status.state.value}, waiting for {state.value}"
        actions = [a.action for a in await store.list_audit(workflow_id=handle.id)]
        if state is OpsState.PENDING_APPROVAL:
            assert "approval_requested" in actions
        if state is OpsState.STEP_FAILED:
            assert actions.count("step_failed") == sum(s.status is StepStatus.WAITING for s in status.steps)
        assert not (await handle.describe()).raw_description.pending_activities
        return status

    return await eventually(check, within=within, interval=0.1)


async def start(
    client: Client, task_queue: str, workflow: str, raw: dict[str, Any]
) -> WorkflowHandle[Any, OperationResult]:
    return await client.start_workflow(
        workflow,
        raw,
        id=f"{workflow}-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        result_type=OperationResult,
    )


async def approved_reboot(
    client: Client, task_queue: str, store: OperationStore, nc_ip: str
) -> WorkflowHandle[Any, OperationResult]:
    handle = await start(client, task_queue, "NcForcedReboot", reboot_input(nc_ip, needLimit=0))
    await wait_state(handle, OpsState.PENDING_APPROVAL, store, within=120)
    await handle.signal("approve", ApprovalInput(approver="approver1", comment="go"))
    return handle


async def codes(store: OperationStore, workflow_id: str, action: str) -> list[int]:
    """The answer code of each call the workflow made of ``action`` (0: no answer), in order."""
    return [call.code for call in await store.list_houyi_calls(caller=workflow_id, action=action)]


# --- error bursts ---------------------------------------------------------------------------------------


async def test_a_burst_of_30_5xx_on_reads_is_retried_to_success_and_nothing_is_applied_twice(
    dev_server_env: WorkflowEnvironment,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    store: OperationStore,
) -> None:
    """30 × 503 on describe_nc shared by six reboots running at once: reads retry without an attempt limit
    (HOUYI_READ, 2 s apart as Houyi's 503 asks), so each reboot succeeds; every failed attempt is one
    recorded call, and each host is locked and power-cycled once."""
    await seed_dev_approvers(store)
    hosts = [nc["nc_ip"] for nc in await admin.ncs() if nc["biz_status"] == "free"][:6]
    await admin.inject(action="describe_nc", kind="error", code=503, count=30)
    async with worker_on(dev_server_env.client, simulator, store, houyi_timeout=10) as task_queue:
        handles = await asyncio.gather(
            *(approved_reboot(dev_server_env.client, task_queue, store, ip) for ip in hosts)
        )
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=180)
    assert [r.state for r in results] == [OpsState.SUCCEEDED] * 6
    (fault,) = (await admin._request("GET", "/admin/faults"))["faults"]
    assert (fault["hits"], fault["remaining"]) == (30, 0)
    failed_calls = 0
    for handle, ip in zip(handles, hosts, strict=True):
        describes = await codes(store, handle.id, "describe_nc")
        assert set(describes) <= {200, 503} and describes[-1] == 200, describes
        failed_calls += describes.count(503)
        history = await history_of(handle)
        history.assert_no_spin()
        reads = history.of("DescribeNc")
        # Every attempt is one call: the attempts the history counts are the calls the store recorded.
        assert sum(a.attempt for a in reads) == len(describes), (reads, describes)
        assert all(a.outcome == "completed" for a in reads)
        assert [a.attempt for a in history.of("PowerCycleNc")] == [1]
        counters = (await admin.nc(ip))["counters"]
        assert (counters["lock_applied"], counters["power_cycles"]) == (1, 1), counters
    assert failed_calls == 30


@pytest.mark.parametrize("errors", matrix([4, 5], [5]))
async def test_5xx_on_a_step_is_retried_within_its_attempts_then_waits_for_an_operator(
    errors: int,
    dev_server_env: WorkflowEnvironment,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    store: OperationStore,
) -> None:
    """503 on the power cycle: 4 failures are absorbed by the step's 5 attempts; 5 exhaust them and the
    operation waits in StepFailed (its history still, nothing in flight) until the on-call retries the step."""
    await seed_dev_approvers(store)
    ip = (await admin.first_nc("free"))["nc_ip"]
    await admin.inject(action="oob_power_cycle", kind="error", code=503, count=errors)
    async with worker_on(dev_server_env.client, simulator, store, houyi_timeout=10) as task_queue:
        handle = await approved_reboot(dev_server_env.client, task_queue, store, ip)
        if errors >= STEP_MAX_ATTEMPTS:
            status = await wait_state(handle, OpsState.STEP_FAILED, store, within=120)
            assert [s.name for s in status.steps if s.status is StepStatus.WAITING] == ["OpsEvnPowerCycleNc"]
            quiet = sum((await history_of(handle)).events.values())
            await asyncio.sleep(3)  # waiting for the operator: not one event meanwhile
            assert sum((await history_of(handle)).events.values()) == quiet
            assert (await admin.nc(ip))["counters"]["power_cycles"] == 0
            await handle.signal("retry_step", StepCommandInput(operator="oncall", step="OpsEvnPowerCycleNc"))
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state is OpsState.SUCCEEDED
    history = await history_of(handle)
    history.assert_no_spin()
    cycles = history.of("PowerCycleNc")
    if errors >= STEP_MAX_ATTEMPTS:
        assert [(a.attempt, a.outcome) for a in cycles] == [(5, "failed"), (1, "completed")]
    else:
        assert [(a.attempt, a.outcome) for a in cycles] == [(errors + 1, "completed")]
    assert all(a.maximum_attempts == STEP_MAX_ATTEMPTS for a in cycles)
    assert await codes(store, handle.id, "oob_power_cycle") == [503] * errors + [200]
    counters = (await admin.nc(ip))["counters"]
    assert (counters["lock_applied"], counters["power_cycles"]) == (1, 1)


async def test_a_non_retryable_code_stops_the_step_at_once_for_an_operator(
    dev_server_env: WorkflowEnvironment,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    store: OperationStore,
) -> None:
    """400 (invalid parameter) on the power cycle: one attempt, StepFailed naming HouyiInvalidParameter; the
    operator aborts and the operation ends Failed, the host locked and never power-cycled."""
    await seed_dev_approvers(store)
    ip = (await admin.first_nc("free"))["nc_ip"]
    await admin.inject(action="oob_power_cycle", kind="error", code=400, count=1, message="bad nc state")
    async with worker_on(dev_server_env.client, simulator, store, houyi_timeout=10) as task_queue:
        handle = await approved_reboot(dev_server_env.client, task_queue, store, ip)
        await wait_state(handle, OpsState.STEP_FAILED, store)
        (failed,) = [a for a in await store.list_audit(workflow_id=handle.id) if a.action == "step_failed"]
        assert (failed.params["step"], failed.error_type) == ("OpsEvnPowerCycleNc", "HouyiInvalidParameter")
        await handle.signal("abort", StepCommandInput(operator="oncall", step=None, comment="not this host"))
        with pytest.raises(Exception):  # noqa: B017 - the workflow fails; its state is read below
            await asyncio.wait_for(handle.result(), timeout=60)
        status = await handle.query("status", result_type=OperationStatus)
    assert status.state is OpsState.FAILED
    history = await history_of(handle)
    history.assert_no_spin()
    assert [(a.attempt, a.outcome) for a in history.of("PowerCycleNc")] == [(1, "failed")]
    assert await codes(store, handle.id, "oob_power_cycle") == [400]
    # An abort leaves the host as the operation left it: locked, never power-cycled (0x4000A000000007 unlocks).
    assert await admin.touched(ip) == {"lock_applied": 1}
    assert (await admin.nc(ip))["biz_status"] == "mlock"


# --- hangs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hang_seconds", matrix([4, 40], [4]))
async def test_a_power_cycle_that_never_answers_is_given_up_by_the_client_and_retried_within_its_attempts(
    hang_seconds: int,
    dev_server_env: WorkflowEnvironment,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    store: OperationStore,
) -> None:
    """The power cycle hangs: the activity heartbeats while it waits (so its 5 s heartbeat timeout does not
    fire) and the Houyi client's timeout (3 s here, HOUYI_TIMEOUT_SECONDS) ends each call as unavailable.
    The simulator holds the host while the hung call sleeps, so every call until the hang ends times out too:
    a 4 s hang costs one attempt, a 40 s one all 5, and the step waits in StepFailed until the on-call
    retries it. The host is power-cycled once: the hung calls never acted."""
    await seed_dev_approvers(store)
    ip = (await admin.first_nc("free"))["nc_ip"]
    await admin.inject(action="oob_power_cycle", kind="hang", hang_seconds=hang_seconds, count=1)
    async with worker_on(dev_server_env.client, simulator, store, houyi_timeout=3) as task_queue:
        handle = await approved_reboot(dev_server_env.client, task_queue, store, ip)
        if hang_seconds > 30:
            await wait_state(handle, OpsState.STEP_FAILED, store, within=120)
            assert (await admin.nc(ip))["counters"]["power_cycles"] == 0
            await asyncio.sleep(hang_seconds)  # the on-call waits until Houyi answers again
            await handle.signal("retry_step", StepCommandInput(operator="oncall", step="OpsEvnPowerCycleNc"))
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state is OpsState.SUCCEEDED
    history = await history_of(handle)
    history.assert_no_spin()
    cycles = [(a.attempt, a.outcome) for a in history.of("PowerCycleNc")]
    timeouts = await codes(store, handle.id, "oob_power_cycle")
    if hang_seconds > 30:
        assert cycles == [(5, "failed"), (1, "completed")]
        assert timeouts == [0] * 5 + [200]
    else:
        assert cycles == [(2, "completed")]
        assert timeouts == [0, 200]
    assert all(a.heartbeat_timeout == timedelta(seconds=5) for a in history.of("PowerCycleNc"))
    counters = (await admin.nc(ip))["counters"]
    assert (counters["lock_applied"], counters["power_cycles"]) == (1, 1)


async def test_a_slow_oob_power_cycle_is_kept_alive_by_heartbeats_until_power_settles(
    dev_server_env: WorkflowEnvironment,
    simulator_factory: SimulatorFactory,
    store: OperationStore,
    tmp_path: Path,
) -> None:
    """The power-cycle call takes 8 s (longer than its 5 s heartbeat timeout) and power then settles only
    after 2 × 4 s: heartbeats keep both activities alive, one attempt each, and the wait ends when power
    reads on. Its bound, when power never settles, is the activity's 30 min start-to-close (3 min without a
    heartbeat), read from the history."""
    await seed_dev_approvers(store)
    slow = await simulator_factory(
        write_fleet(tmp_path / "slow.json", small_fleet(power_settle_seconds=4000))
    )
    admin = SimulatorAdmin(slow.url)
    await admin.inject(action="oob_power_cycle", kind="latency", latency_seconds=8, count=1)
    async with worker_on(dev_server_env.client, slow, store, houyi_timeout=30) as task_queue:
        handle = await approved_reboot(dev_server_env.client, task_queue, store, "10.0.0.2")
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state is OpsState.SUCCEEDED
    history = await history_of(handle)
    history.assert_no_spin()
    (cycle,) = history.of("PowerCycleNc")
    (wait,) = history.of("WaitPowerSettled")
    assert (cycle.attempt, cycle.outcome, cycle.heartbeat_timeout) == (1, "completed", timedelta(seconds=5))
    assert (wait.attempt, wait.outcome) == (1, "completed")
    assert (wait.start_to_close_timeout, wait.heartbeat_timeout, wait.maximum_attempts) == (
        timedelta(minutes=30),
        timedelta(minutes=3),
        STEP_MAX_ATTEMPTS,
    )
    assert await codes(store, handle.id, "oob_power_cycle") == [200]
    polls = await codes(store, handle.id, "get_oob_power_status")
    assert len(polls) > 10 and set(polls) == {200}, polls  # polled all along the 8 s settle
    host = await admin.nc("10.0.0.2")
    assert (host["biz_status"], host["power_state"]) == ("nc_down", "on")
    assert (host["counters"]["lock_applied"], host["counters"]["power_cycles"]) == (1, 1)


async def test_a_hang_while_following_a_live_migration_is_caught_by_the_heartbeat_timeout(
    dev_server_env: WorkflowEnvironment,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    store: OperationStore,
) -> None:
    """A deep offline; one progress read of a live migration hangs (no answer for 40 s; the Houyi client
    would wait 30 s). The follow loop heartbeats only between reads, so the 10 s heartbeat timeout fires;
    the retry finds the same migration through its token and follows it to its end. Every VM moved once."""
    await seed_dev_approvers(store)
    await seed_dev_windows(store, sorted(simulator.fleet.clusters))
    nc_ip = deep_offline_example_host()
    nc_id = (await admin.nc(nc_ip))["nc"]["nc_id"]
    on_host = sorted(vm.vm_id for vm in simulator.fleet.vms.values() if vm.nc_id == nc_id)
    await admin.inject(action="get_live_migration_progress", kind="hang", hang_seconds=40, count=1)
    async with worker_on(dev_server_env.client, simulator, store, houyi_timeout=30) as task_queue:
        handle = await start(
            dev_server_env.client,
            task_queue,
            "NcDeepOffline",
            {"nc_ip": nc_ip, **NC_DEEP_OFFLINE_EXAMPLE_INPUT},
        )
        await wait_state(handle, OpsState.PENDING_APPROVAL, store)
        await handle.signal("approve", ApprovalInput(approver="approver1", comment="go"))

        async def heartbeat_timed_out() -> None:
            pending = (await handle.describe()).raw_description.pending_activities
            timeouts = [
                p.last_failure.timeout_failure_info.timeout_type
                for p in pending
                if p.activity_type.name == "LiveMigrateVm" and p.last_failure.HasField("timeout_failure_info")
            ]
            assert timeouts == [TimeoutType.TIMEOUT_TYPE_HEARTBEAT], pending

        # Seen while the retry waits its 5 s backoff (LIVE_MIGRATE_RETRY).
        await eventually(heartbeat_timed_out, within=60, interval=0.1)
        result = await asyncio.wait_for(handle.result(), timeout=180)
    assert result.state is OpsState.SUCCEEDED, result.message
    history = await history_of(handle)
    assert history.events["EVENT_TYPE_WORKFLOW_TASK_FAILED"] == 0
    migrations = history.of("LiveMigrateVm")
    assert sorted(a.attempt for a in migrations) == [1] * (len(migrations) - 1) + [2]
    assert all(a.outcome == "completed" and a.heartbeat_timeout == timedelta(seconds=10) for a in migrations)
    live = [vm for vm in result.vms if vm.state is VmMoveState.MIGRATED]
    cold = [vm for vm in result.vms if vm.state is VmMoveState.COLD_MIGRATED]
    assert len(live) == len(migrations) and len(live) + len(cold) == len(on_host)
    counters = (await admin.nc(nc_ip))["counters"]
    assert (counters["migrations_out"], counters["cold_migrations_out"]) == (len(live), len(cold))
    assert (counters["lock_applied"], counters["power_offs"], counters["power_ons"]) == (1, 1, 1)
    assert [vm.vm_id for vm in simulator.fleet.vms.values() if vm.nc_id == nc_id] == []
