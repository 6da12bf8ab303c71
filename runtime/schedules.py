"""The Temporal Schedules the service owns, created (or brought in line) at every worker start.

``disk-recycle`` starts ``DiskRecycle`` daily by default (``OPSFLOW_RECYCLE_SCHEDULE``, a cron in UTC), with
overlap policy skip: a run still going when the next is due makes that one be skipped, never doubled.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from runtime import search_attributes as sa

RECYCLE_SCHEDULE_ID = "disk-recycle"
RECYCLE_WORKFLOW_ID = "disk-recycle"  # each run's id is this plus the scheduled time


def recycle_schedule(task_queue: str, cron: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "DiskRecycle",
            {"dry_run": False},
            id=RECYCLE_WORKFLOW_ID,
            task_queue=task_queue,
            typed_search_attributes=TypedSearchAttributes([SearchAttributePair(sa.OPS_CODE, "DiskRecycle")]),
        ),
        spec=ScheduleSpec(cron_expressions=[cron]),
        # A worker down over the run's hour catches it up once when back, within a day; not a year's worth.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
        state=ScheduleState(note="disk source recycle (ecs-opsflow worker)"),
    )


async def ensure_recycle_schedule(client: Client, task_queue: str, cron: str) -> str:
    """Creates the schedule, or updates its spec and action to these; returns "created" or "updated"."""
    wanted = recycle_schedule(task_queue, cron)
    try:
        await client.create_schedule(RECYCLE_SCHEDULE_ID, wanted)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        schedule = current.description.schedule
        schedule.action, schedule.spec, schedule.policy = wanted.action, wanted.spec, wanted.policy
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(RECYCLE_SCHEDULE_ID).update(update)
    return "updated"
