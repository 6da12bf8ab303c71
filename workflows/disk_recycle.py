"""Disk source recycle: delete the source images that finished disk migrations left, once the destination
is confirmed whole (DOMAIN.md, "Disk live migration and recycle", recycle steps 1-4).

Run daily by a Temporal Schedule (runtime/schedules.py, overlap policy skip), or by hand with
``{"dry_run": true}`` to only report. Each task is handled by one ``RecycleDiskSource`` activity whose Houyi
tokens are the task's own, so a worker dying mid-task, or a later run coming back to it, replays instead of
acting twice; every task ends in the report as recycled, skipped (with why, and the not-loaded count) or
failed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.disk import DiskActivities, RecycleListInput, RecycleTaskInput
    from domain.disk import RecycleCandidate, RecycleOutcome, RecycleReport, RecycleTaskReport
    from domain.operations import InputRefused, OpsState, parse_input
    from runtime import search_attributes as sa
    from workflows.common import HOUYI_READ, run_lanes

WORKFLOW_TYPE = "DiskRecycle"

RECYCLE_ONE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    # The activity beats every 2 s while it works (2/5 of this timeout): a dead worker's task is retried
    # within seconds.
    "heartbeat_timeout": timedelta(seconds=5),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60), maximum_attempts=5
    ),
}


class DiskRecycleInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dry_run: bool = False
    older_than_hours: float = Field(
        default=24.0, gt=0, le=24 * 365, description="finished at least this long ago"
    )
    parallel: int = Field(default=4, ge=1, le=32, description="tasks handled at once")
    requester: str = Field(default="schedule", min_length=1, max_length=128)


@workflow.defn(name=WORKFLOW_TYPE)
class DiskRecycleWorkflow:
    def __init__(self) -> None:
        self._report: RecycleReport | None = None

    @workflow.run
    async def run(self, raw_input: Any = None) -> RecycleReport:
        try:
            request = parse_input(DiskRecycleInput, {} if raw_input is None else raw_input)
        except InputRefused as refused:  # a wrong input fails at once, no retry
            raise ApplicationError(str(refused), type=refused.error_type, non_retryable=True) from None
        finished_before = workflow.now() - timedelta(hours=request.older_than_hours)
        report = RecycleReport(dry_run=request.dry_run, finished_before=finished_before)
        self._report = report
        self._publish(OpsState.RUNNING)
        candidates = await workflow.execute_activity_method(
            DiskActivities.list_recycle_candidates,
            RecycleListInput(caller=workflow.info().workflow_id, finished_before=finished_before),
            **HOUYI_READ,
        )
        lanes = asyncio.Semaphore(request.parallel)

        async def handle(candidate: RecycleCandidate) -> None:
            async with lanes:
                outcome = await self._recycle(candidate, request, report)
            report.tasks.append(outcome)
            report.tasks.sort(key=lambda t: t.task_id)
            self._publish(OpsState.RUNNING)

        await run_lanes(*(handle(c) for c in candidates))
        failed = report.count(RecycleOutcome.FAILED)
        self._publish(OpsState.FAILED if failed else OpsState.SUCCEEDED)
        workflow.logger.info(report.summary(), extra={"opscode": WORKFLOW_TYPE})
        return report

    async def _recycle(
        self, candidate: RecycleCandidate, request: DiskRecycleInput, report: RecycleReport
    ) -> RecycleTaskReport:
        try:
            return await workflow.execute_activity_method(
                DiskActivities.recycle_task,
                RecycleTaskInput(
                    workflow_id=workflow.info().workflow_id,
                    candidate=candidate,
                    finished_before=report.finished_before,
                    dry_run=request.dry_run,
                ),
                **RECYCLE_ONE,
            )
        except ActivityError as failure:
            return RecycleTaskReport(
                task_id=candidate.task_id,
                disk_id=candidate.disk_id,
                outcome=RecycleOutcome.FAILED,
                reason=str(failure.cause or failure),
            )

    @workflow.query(name="report")
    def query_report(self) -> RecycleReport | None:
        return self._report

    def _publish(self, state: OpsState) -> None:
        workflow.upsert_search_attributes(
            [sa.OPS_CODE.value_set(WORKFLOW_TYPE), sa.OPS_STATE.value_set(state.value)]
        )
        if self._report is not None:
            workflow.set_current_details(self._report.markdown())
