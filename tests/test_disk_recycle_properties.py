"""Property tests (hypothesis) of disk recycle over generated fleets, against the real simulator over HTTP
and the real store: whatever the finished tasks look like, whatever changes on a destination between the
not-loaded count and the delete, and however often a task's activity is retried (a worker dying mid-task),
no source whose destination has a not-loaded entry is deleted, no task is recycled twice, and every
eligible task is recycled.

The activity runs in the SDK's ``ActivityEnvironment`` (heartbeats and context, no server): the workflow
around it only fans tasks out, and the end-to-end tests run it whole."""

from __future__ import annotations

import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.testing import ActivityEnvironment

from activities.disk import DiskActivities, RecycleListInput, RecycleTaskInput
from domain.disk import RecycleOutcome
from houyi.http_client import HttpHouyiClient
from simulator.disk_fleet import RecycleTaskSpec, build_disk_fleet
from simulator.server import start_simulator
from store.disk import DiskStore
from store.repository import OperationStore

tasks = st.lists(
    st.builds(
        RecycleTaskSpec,
        finished_hours_ago=st.sampled_from([1.0, 23.0, 25.0, 72.0, 500.0]),
        src_recycled=st.booleans(),
        dst_not_loaded=st.sampled_from([0, 0, 0, 1, 7]),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=tasks,
    changes=st.lists(st.integers(0, 5), min_size=8, max_size=8),
    retries=st.lists(st.integers(1, 3), min_size=8, max_size=8),
)
async def test_recycle_never_deletes_a_source_whose_destination_is_not_whole(
    store: OperationStore, specs: list[RecycleTaskSpec], changes: list[int], retries: list[int]
) -> None:
    """``changes[i]``: not-loaded entries task i's destination gains right after its next count (0: none);
    ``retries[i]``: how many times task i's activity runs (an attempt after a worker died replays)."""
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.json"
        path.write_text(json.dumps(build_disk_fleet(0, recycle_tasks=specs, now=now)), encoding="utf-8")
        running = await start_simulator(path, speed=1000.0)
    try:
        async with HttpHouyiClient(running.url, recorder=store) as houyi:
            disks = DiskStore.of(store)
            async with store.pool.acquire() as conn:
                await conn.execute("DELETE FROM disk_recycles")
            activities = DiskActivities(houyi, houyi, disks, poll_seconds=0.01)
            env = ActivityEnvironment()
            finished_before = now - timedelta(hours=24)
            workflow_id = f"disk-recycle-{uuid.uuid4()}"
            candidates = await env.run(
                activities.list_recycle_candidates,
                RecycleListInput(caller=workflow_id, finished_before=finished_before),
            )
            by_task = {t["task_id"]: t for t in running.fleet.admin_disk_migrations()}
            for index, candidate in enumerate(candidates):
                if changes[index]:
                    running.fleet.set_not_loaded(
                        candidate.dst_pangu_path, changes[index], after_next_check=True
                    )
            outcomes: dict[str, list[RecycleOutcome]] = {}
            for index, candidate in enumerate(candidates):
                for _ in range(retries[index]):
                    report = await env.run(
                        activities.recycle_task,
                        RecycleTaskInput(
                            workflow_id=workflow_id, candidate=candidate, finished_before=finished_before
                        ),
                    )
                    outcomes.setdefault(candidate.task_id, []).append(report.outcome)
    finally:
        await running.stop()

    totals = running.fleet.totals()
    assert totals["sources_deleted_with_dst_not_loaded"] == 0
    assert totals["live_images_deleted"] == 0
    eligible = {
        task_id
        for index, (task_id, task) in enumerate(sorted(by_task.items()))
        if specs[index].finished_hours_ago > 24 and not task["src_recycled"] and not task["dst_not_loaded"]
    }
    listed = {c.task_id for c in candidates}
    assert eligible <= listed, "an eligible task was never looked at"
    recycled = {task_id for task_id, seen in outcomes.items() if seen[0] is RecycleOutcome.RECYCLED}
    changed = {c.task_id for index, c in enumerate(candidates) if changes[index]}
    assert recycled == eligible - changed
    # Each recycled once, whatever the retries; a retry of a recycled task says recycled again.
    assert totals["recycles"] == len(recycled) == totals["images_deleted"]
    for task_id, seen in outcomes.items():
        assert len(set(seen)) == 1, (task_id, seen)
    after = {t["task_id"]: t for t in running.fleet.admin_disk_migrations()}
    for task_id, task in after.items():
        if not task["src_image"] and task_id not in recycled:
            assert by_task[task_id]["src_recycled"], f"{task_id}: source gone but never recycled by us"
