"""Issue 5 end to end on the dev stack (dev server, worker as its own process, demo simulator, PostgreSQL):
residue cleanup after a deep offline that left residues; a demo river disk moved live, snapshot first, and
every pre-check refusal on demo disks; the disk-recycle Schedule the worker creates, and its run; a worker
killed mid-recycle recycles no task twice and skips none silently."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowFailureError,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from deploy.devstack import (
    DISK_MIGRATION_EXAMPLE_INPUT,
    deep_offline_example_host,
    demo_disks,
)
from domain import errors
from domain.disk import RecycleOutcome, RecycleReport
from domain.operations import OperationResult, OpsState
from domain.residue import ProcessOutcome, Verdict
from runtime.schedules import RECYCLE_SCHEDULE_ID, ensure_recycle_schedule
from simulator.server import RunningSimulator
from tests.fixtures.stack import Stack
from tests.helpers import SimulatorAdmin, eventually
from workflows.lifecycle import ApprovalInput, OperationStatus

pytestmark = pytest.mark.e2e


async def connect(stack: Stack) -> Client:
    return await Client.connect(stack.address, data_converter=pydantic_data_converter)


async def approved(
    client: Client, stack: Stack, workflow: str, raw: dict[str, Any], workflow_id: str
) -> OperationResult:
    handle = await client.start_workflow(
        workflow, raw, id=workflow_id, task_queue=stack.task_queue, result_type=OperationResult
    )

    async def pending() -> None:
        status = await handle.query("status", result_type=OperationStatus)
        assert status.state is OpsState.PENDING_APPROVAL, status.state

    await eventually(pending, within=30)
    await handle.signal("approve", ApprovalInput(approver="approver1", comment="go"))
    return await asyncio.wait_for(handle.result(), timeout=180)


async def test_residue_cleanup_after_migrations_that_left_residues_removes_exactly_them(
    stack: Stack, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    """A deep offline reboots its host, and a reboot kills every process on it, residues included (the
    simulator models that as the hardware does): residues outlive migrations where no reboot follows. So
    the host is drained by a whole-host migration (the same live-migration lanes as 0x400003's
    OpsEvnLiveMigrate), then cleaned."""
    simulator.fleet.residue_rate = 0.5  # half the live migrations leave their process behind
    nc_ip = deep_offline_example_host()
    nc_id = (await admin.nc(nc_ip))["nc"]["nc_id"]
    client = await connect(stack)
    drained = await approved(
        client,
        stack,
        "WholeHostMigration",
        {
            "nc_ip": nc_ip,
            "requester": "alice",
            "reason_category": "hardware",
            "reason": "drain for DIMM swap",
        },
        f"WholeHostMigration-{uuid.uuid4()}",
    )
    assert drained.state is OpsState.SUCCEEDED, drained.message
    left = sorted(p.vm_id for p in simulator.fleet.list_vm_processes(nc_id))
    assert left, "the simulator left no residue: nothing to clean"
    moved = {vm.vm_id for vm in drained.vms}
    assert set(left) <= moved

    cleanup = await approved(
        client,
        stack,
        "VmResidueCleanup",
        {
            "nc_ip": nc_ip,
            "requester": "alice",
            "reason_category": "internal_reboot",
            "settings": {"preLock": 0},
        },
        f"0x10001000008002-{uuid.uuid4()}",
    )

    assert cleanup.state is OpsState.SUCCEEDED, cleanup.message
    destroyed = sorted(p.vm_id for p in cleanup.processes if p.outcome is ProcessOutcome.DESTROYED)
    assert destroyed == left
    assert all(p.verdict is Verdict.RESIDUE_ELSEWHERE for p in cleanup.processes)
    assert simulator.fleet.list_vm_processes(nc_id) == []
    counters = (await admin.nc(nc_ip))["counters"]
    assert (counters["residues_destroyed"], counters["authoritative_destroyed"]) == (len(left), 0)
    # The VMs whose leftovers went still run where the control plane places them.
    assert all(simulator.fleet.vms[vm].status.value == "running" for vm in left)
    assert all(simulator.fleet.vms[vm].nc_id != nc_id for vm in left)


async def test_a_demo_river_disk_moves_snapshot_first_and_each_refusal_is_shown(
    stack: Stack, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    demo = demo_disks()
    client = await connect(stack)
    result = await approved(
        client,
        stack,
        "DiskLiveMigration",
        {"disk_id": demo.river, "dst_storage_cluster": demo.destination, **DISK_MIGRATION_EXAMPLE_INPUT},
        f"DiskLiveMigration-{uuid.uuid4()}",
    )
    assert result.state is OpsState.SUCCEEDED, result.message
    assert result.disk is not None and result.disk.snapshot_id
    seen = await admin.disk(demo.river)
    assert seen["disk"]["storage_cluster"] == demo.destination and seen["snapshots"] == [
        result.disk.snapshot_id
    ]
    assert seen["migrations"][0]["had_snapshot"]

    refusals: list[tuple[str, str, str]] = [
        (demo.local, demo.destination, errors.DISK_NOT_RIVER),
        (demo.shared, demo.destination, errors.DISK_SHARED),
        (demo.river, demo.cross_zone, errors.DISK_CROSS_ZONE),
        (demo.river, demo.long_name, errors.STORAGE_CLUSTER_NAME_TOO_LONG),
    ]
    shown = []
    for disk_id, destination, error_type in refusals:
        handle = await client.start_workflow(
            "DiskLiveMigration",
            {"disk_id": disk_id, "dst_storage_cluster": destination, **DISK_MIGRATION_EXAMPLE_INPUT},
            id=f"DiskLiveMigration-{uuid.uuid4()}",
            task_queue=stack.task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == error_type, cause
        shown.append(cause.message)
    assert "only river disks move live" in shown[0]
    assert "shared disks cannot be live-migrated" in shown[1]
    assert "a disk moves live only within one zone" in shown[2]
    assert "'river-qd-a-archive' is 18 bytes" in shown[3]


def eligible_demo_tasks(simulator: RunningSimulator) -> tuple[set[str], set[str]]:
    """(recyclable, skipped for not-loaded entries) among the demo's finished tasks older than a day."""
    day_ago = datetime.now(UTC) - timedelta(days=1)
    tasks = [
        t
        for t in simulator.fleet.admin_disk_migrations()
        if t["state"] == "complete"
        and not t["src_recycled"]
        and datetime.fromisoformat(t["finished_at"]) < day_ago
    ]
    return {t["task_id"] for t in tasks if not t["dst_not_loaded"]}, {
        t["task_id"] for t in tasks if t["dst_not_loaded"]
    }


async def test_the_worker_creates_the_recycle_schedule_and_its_run_recycles_exactly_the_eligible_tasks(
    stack: Stack, simulator: RunningSimulator
) -> None:
    client = await connect(stack)
    schedule = client.get_schedule_handle(RECYCLE_SCHEDULE_ID)
    described = await schedule.describe()
    assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
    (daily,) = described.schedule.spec.calendars  # the server stores the cron "0 3 * * *" as a calendar
    assert [(r.start, r.end) for r in daily.hour] == [(3, 3)] and [
        (r.start, r.end) for r in daily.minute
    ] == [(0, 0)]
    assert [(r.start, r.end, r.step) for r in daily.day_of_month] == [(1, 31, 1)]
    action = described.schedule.action
    assert (
        getattr(action, "workflow", None) == "DiskRecycle"
        and getattr(action, "task_queue", None) == stack.task_queue
    )
    assert described.schedule.policy.catchup_window == timedelta(days=1)
    # Idempotent: a second start (another worker, a restart) brings the same schedule in line.
    assert await ensure_recycle_schedule(client, stack.task_queue, "0 3 * * *") == "updated"
    recyclable, not_loaded = eligible_demo_tasks(simulator)
    assert recyclable and not_loaded
    runs_before = len(described.info.recent_actions)

    await schedule.trigger(overlap=ScheduleOverlapPolicy.SKIP)

    async def ran() -> str:
        info = (await schedule.describe()).info
        assert len(info.recent_actions) > runs_before, "not started yet"
        started = info.recent_actions[-1].action
        assert isinstance(started, ScheduleActionExecutionStartWorkflow), started
        return started.workflow_id

    run_id = await eventually(ran, within=30)
    report = await asyncio.wait_for(
        client.get_workflow_handle(run_id, result_type=RecycleReport).result(), 120
    )
    outcomes = {t.task_id: t.outcome for t in report.tasks}
    assert {k for k, v in outcomes.items() if v is RecycleOutcome.RECYCLED} == recyclable
    assert {k for k, v in outcomes.items() if v is RecycleOutcome.SKIPPED} == not_loaded
    totals = simulator.fleet.totals()
    assert (totals["recycles"], totals["images_deleted"], totals["sources_deleted_with_dst_not_loaded"]) == (
        len(recyclable),
        len(recyclable),
        0,
    )


@pytest.mark.parametrize("kill_during", ["bsutil_delete_image", "river_admin_migrate_recycle"])
async def test_a_worker_killed_mid_recycle_recycles_no_task_twice_and_skips_none_silently(
    kill_during: str, stack: Stack, simulator: RunningSimulator, admin: SimulatorAdmin
) -> None:
    recyclable, not_loaded = eligible_demo_tasks(simulator)
    # Hold the first such call in flight long enough to kill the worker while it waits on Houyi.
    await admin.inject(action=kill_during, kind="latency", latency_seconds=3, count=1)
    client = await connect(stack)
    handle = await client.start_workflow(
        "DiskRecycle",
        {},
        id=f"disk-recycle-{uuid.uuid4()}",
        task_queue=stack.task_queue,
        result_type=RecycleReport,
    )

    async def in_flight() -> None:
        inflight: dict[str, Any] = (await admin.counters()).get("inflight", {})
        assert inflight.get(kill_during, 0) >= 1, inflight

    await eventually(in_flight, within=60)
    assert stack.worker is not None
    stack.worker.kill()
    await stack.start_worker()
    report = await asyncio.wait_for(handle.result(), timeout=180)

    outcomes = {t.task_id: t.outcome for t in report.tasks}
    assert set(outcomes) == recyclable | not_loaded, "every candidate is in the report"
    assert {k for k, v in outcomes.items() if v is RecycleOutcome.RECYCLED} == recyclable
    totals = simulator.fleet.totals()
    assert (totals["recycles"], totals["images_deleted"]) == (len(recyclable), len(recyclable))
    assert totals["sources_deleted_with_dst_not_loaded"] == 0
