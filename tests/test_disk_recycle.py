"""Disk source recycle (issue 5) with the real worker, simulator and PostgreSQL: exactly the finished tasks
older than a day whose destination is whole are recycled, once; the others are skipped with why; a dry run
only reports; a destination that changes between the count and the delete keeps its source.

On the dev server: the recycle's age cut-off is the workflow clock, which must be the simulator's (real)
clock; the shared time-skipping server's has run days ahead by the time these tests run.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from domain.disk import RecycleOutcome, RecycleReport
from simulator.disk_fleet import RecycleTaskSpec, recycle_task
from store.disk import DiskStore
from tests.fixtures.evacuation import Fleet
from tests.lifecycle_helpers import Operations

OLD = 48.0

TASKS = [
    RecycleTaskSpec(finished_hours_ago=OLD),  # 1: recycled
    RecycleTaskSpec(finished_hours_ago=OLD + 24),  # 2: recycled
    RecycleTaskSpec(finished_hours_ago=OLD, dst_not_loaded=3),  # 3: skipped, 3 not loaded
    RecycleTaskSpec(finished_hours_ago=2),  # 4: too young, not a candidate
    RecycleTaskSpec(finished_hours_ago=OLD, src_recycled=True),  # 5: done before, not a candidate
]


async def recycle(ops: Operations, **raw: Any) -> RecycleReport:
    return await ops.client.execute_workflow(
        "DiskRecycle",
        raw,
        id=f"disk-recycle-test-{uuid.uuid4()}",
        task_queue=ops.task_queue,
        result_type=RecycleReport,
    )


def by_task(report: RecycleReport) -> dict[str, tuple[RecycleOutcome, int | None]]:
    return {t.task_id: (t.outcome, t.not_loaded) for t in report.tasks}


async def test_exactly_the_eligible_tasks_are_recycled_once_and_the_rest_skipped_with_why(
    make_disk_fleet: Callable[..., Awaitable[Fleet]],
    ops_on_dev_server: Callable[[Fleet], Awaitable[Operations]],
    disks: DiskStore,
) -> None:
    fleet = await make_disk_fleet(recycle_tasks=TASKS)
    ops = await ops_on_dev_server(fleet)

    report = await recycle(ops)

    assert by_task(report) == {
        recycle_task(1): (RecycleOutcome.RECYCLED, 0),
        recycle_task(2): (RecycleOutcome.RECYCLED, 0),
        recycle_task(3): (RecycleOutcome.SKIPPED, 3),
    }
    (skipped,) = [t for t in report.tasks if t.outcome is RecycleOutcome.SKIPPED]
    assert "has 3 not-loaded entries" in skipped.reason
    tasks = {t["task_id"]: t for t in await fleet.admin.disk_migrations()}
    assert [tasks[recycle_task(i)]["src_image"] for i in (1, 2, 3, 4)] == [False, False, True, True]
    assert [tasks[recycle_task(i)]["src_recycled"] for i in (1, 2, 3, 4, 5)] == [1, 1, 0, 0, 1]
    totals = fleet.totals()
    assert (totals["recycles"], totals["images_deleted"], totals["sources_deleted_with_dst_not_loaded"]) == (
        2,
        2,
        0,
    )
    assert report.summary().endswith(
        "3 finished task(s) older than "
        + f"{report.finished_before:%Y-%m-%d %H:%M} UTC: 2 recycled, 1 skipped"
    )
    stored = {r.task_id: r.outcome for r in await disks.recycle_records()}
    assert stored == {recycle_task(1): "recycled", recycle_task(2): "recycled", recycle_task(3): "skipped"}

    again = await recycle(ops)

    assert by_task(again) == {recycle_task(3): (RecycleOutcome.SKIPPED, 3)}
    assert (fleet.totals()["recycles"], fleet.totals()["images_deleted"]) == (2, 2)


async def test_a_dry_run_reports_what_it_would_do_and_does_nothing(
    make_disk_fleet: Callable[..., Awaitable[Fleet]],
    ops_on_dev_server: Callable[[Fleet], Awaitable[Operations]],
    disks: DiskStore,
) -> None:
    fleet = await make_disk_fleet(recycle_tasks=TASKS)
    ops = await ops_on_dev_server(fleet)

    report = await recycle(ops, dry_run=True)

    assert report.dry_run
    assert by_task(report) == {
        recycle_task(1): (RecycleOutcome.WOULD_RECYCLE, 0),
        recycle_task(2): (RecycleOutcome.WOULD_RECYCLE, 0),
        recycle_task(3): (RecycleOutcome.SKIPPED, 3),
    }
    totals = fleet.totals()
    assert (totals["recycles"], totals["images_deleted"]) == (0, 0)
    assert await disks.recycle_records() == []


async def test_a_destination_that_changes_between_count_and_delete_keeps_its_source(
    make_disk_fleet: Callable[..., Awaitable[Fleet]],
    ops_on_dev_server: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_disk_fleet(recycle_tasks=TASKS[:2])
    changing = next(t for t in await fleet.admin.disk_migrations() if t["task_id"] == recycle_task(1))
    await fleet.admin.set_not_loaded(changing["dst_pangu_path"], 5, after_next_check=True)
    ops = await ops_on_dev_server(fleet)

    report = await recycle(ops)

    assert by_task(report) == {
        recycle_task(1): (RecycleOutcome.SKIPPED, None),
        recycle_task(2): (RecycleOutcome.RECYCLED, 0),
    }
    (kept,) = [t for t in report.tasks if t.task_id == recycle_task(1)]
    assert (
        kept.reason.startswith("refused at delete: not deleting")
        and "has 5 not-loaded entries" in kept.reason
    )
    tasks = {t["task_id"]: t for t in await fleet.admin.disk_migrations()}
    assert tasks[recycle_task(1)]["src_image"] and not tasks[recycle_task(1)]["src_recycled"]
    totals = fleet.totals()
    assert (totals["deletes_refused_not_loaded"], totals["sources_deleted_with_dst_not_loaded"]) == (1, 0)


async def test_bad_input_fails_at_once_naming_the_field(
    make_disk_fleet: Callable[..., Awaitable[Fleet]],
    ops_on_dev_server: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import ApplicationError

    fleet = await make_disk_fleet()
    ops = await ops_on_dev_server(fleet)
    try:
        await recycle(ops, dry_run=True, older_than_hours=-1, parallel=0)
    except WorkflowFailureError as failed:
        assert isinstance(failed.cause, ApplicationError) and failed.cause.type == "InvalidInput"
        assert "older_than_hours: Input should be greater than 0" in failed.cause.message
        assert "parallel: Input should be greater than or equal to 1" in failed.cause.message
    else:
        raise AssertionError("a negative age was accepted")
    assert fleet.totals()["images_deleted"] == 0
