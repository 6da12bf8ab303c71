"""Disk live migration: move a river cloud disk to another storage cluster of its zone, online.

DOMAIN.md, "Disk live migration and recycle". The plan reads the disk and both storage clusters and refuses,
each with its own error, what the product cannot move (not river, shared, large, a format or size change,
the same cluster, another zone, another OSS domain, a storage cluster name of 15 bytes or more). Then:
hold the disk, wait for a copy slot (at most N copies per storage cluster, both ends counted), snapshot,
start the copy, follow it to the end.

There is no rollback: once the copy is asked for, a cancel is refused (recorded, shown in the details) and
the copy runs to completion; before that a cancel ends the operation with nothing done. The source stays
where it was until disk recycle deletes it (workflows/disk_recycle.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.disk import (
        DiskActivities,
        DiskFacts,
        DiskFactsInput,
        DiskLeaseInput,
        DiskProgressInput,
        DiskReleaseInput,
        DiskStepInput,
        SlotInput,
    )
    from domain import errors
    from domain.disk import (
        DiskMigrationPhase,
        DiskMigrationReport,
        disk_migration_refusals,
        refusal_summary,
    )
    from domain.operations import DiskLiveMigrationInput, OperationResult
    from domain.opscodes import OpsCode
    from houyi.port import DiskMigrationProgress, DiskMigrationState
    from runtime import search_attributes as sa
    from store.repository import AuditResult, NewOperation
    from workflows.common import HOUYI_READ, HOUYI_STEP, STORE, cause_type
    from workflows.lifecycle import OperationWorkflow

CLAIM_SLOT = "ClaimCopySlot"
SNAPSHOT = "SnapshotDisk"
START_COPY = "StartDiskMigration"
FOLLOW_COPY = "FollowDiskMigration"

# One progress report of the copy: a few polls, heartbeating each (activities/disk.py).
FOLLOW: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}


@workflow.defn(name="DiskLiveMigration")
class DiskLiveMigrationWorkflow(OperationWorkflow[DiskLiveMigrationInput]):
    """Input ``DiskLiveMigrationInput`` as raw JSON."""

    OPSCODE = OpsCode.DISK_LIVE_MIGRATION
    INPUT = DiskLiveMigrationInput

    def __init__(self) -> None:
        super().__init__()
        self._facts: DiskFacts | None = None
        self._disk_held = False

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    @property
    def report(self) -> DiskMigrationReport:
        assert self.status.disk is not None
        return self.status.disk

    # ---- plan --------------------------------------------------------------------------------------------

    async def plan(self, request: DiskLiveMigrationInput) -> list[str]:
        try:
            facts = await workflow.execute_activity_method(
                DiskActivities.read_disk_facts,
                DiskFactsInput(
                    caller=self.workflow_id,
                    disk_id=request.disk_id,
                    dst_storage_cluster=request.dst_storage_cluster,
                ),
                **HOUYI_READ,
            )
        except ActivityError as failure:
            missing = cause_type(failure)
            if missing in (errors.DISK_NOT_FOUND, errors.STORAGE_CLUSTER_NOT_FOUND):
                cause = failure.cause
                await self.refuse(
                    missing, cause.message if isinstance(cause, ApplicationError) else str(failure)
                )
            raise
        self._facts = facts
        disk = facts.disk
        self.status.disk = DiskMigrationReport(
            disk_id=disk.disk_id,
            size_gib=disk.size_gib,
            src_storage_cluster=facts.source.name,
            dst_storage_cluster=facts.destination.name,
        )
        workflow.upsert_search_attributes([sa.CLUSTER.value_set(facts.source.name)])
        refusals = disk_migration_refusals(
            disk, facts.source, facts.destination, format=request.format, size_gib=request.size_gib
        )
        if refusals:
            refusal = refusal_summary(refusals)
            await self.refuse(refusal.error_type, refusal.message)
        self.declare_steps((CLAIM_SLOT, False), (SNAPSHOT, False), (START_COPY, False), (FOLLOW_COPY, False))
        return [
            f"disk {disk.disk_id}: river, {disk.size_gib} GiB {disk.format.value}, zone {disk.zone_id}, "
            f"{'attached to ' + disk.vm_id if disk.vm_id else 'not attached'}",
            f"copy {facts.source.name} -> {facts.destination.name} (OSS domain {facts.source.oss_domain}), "
            "IO stalls under 1 s",
            "snapshot first; no rollback: once the copy starts a cancel is refused and the copy completes",
            "the source image stays until disk recycle deletes it (destination checked whole first)",
        ]

    # ---- the disk instead of a host: its lease, its operation row; no host flow control ------------------

    async def _acquire_leases(self) -> None:
        report = self.report
        result = await workflow.execute_activity_method(
            DiskActivities.acquire_disk,
            DiskLeaseInput(
                workflow_id=self.workflow_id,
                disk_id=report.disk_id,
                src_storage_cluster=report.src_storage_cluster,
                dst_storage_cluster=report.dst_storage_cluster,
            ),
            **STORE,
        )
        if not result.acquired:
            since = f" since {result.held_since:%Y-%m-%d %H:%M:%S} UTC" if result.held_since else ""
            await self.refuse(
                errors.DISK_BUSY,
                f"disk {report.disk_id} is held by workflow {result.holder_workflow_id}{since}",
            )
        self._disk_held = True

    async def _release_leases(self) -> None:
        if self._disk_held:
            await workflow.execute_activity_method(
                DiskActivities.release_disk,
                DiskReleaseInput(workflow_id=self.workflow_id, disk_id=self.report.disk_id),
                **STORE,
            )
            self._disk_held = False

    async def _admit(self) -> None:
        # Disk copies are bounded by the copy slots of their storage clusters (ClaimCopySlot), not by the
        # per-host flow-control windows.
        return None

    def _new_operation(self) -> NewOperation:
        request = self.request
        return NewOperation(
            workflow_id=self.workflow_id,
            run_id=workflow.info().run_id,
            opscode=self.OPSCODE,
            workflow_type=self.spec.workflow_type,
            cluster_id=self.report.src_storage_cluster,
            source=request.source,
            requester=request.requester,
            reason_category=request.reason_category,
            reason=request.reason,
            ticket=request.ticket,
            settings={"disk_id": request.disk_id, "dst_storage_cluster": request.dst_storage_cluster},
        )

    # ---- steps -------------------------------------------------------------------------------------------

    async def execute(self, request: DiskLiveMigrationInput) -> None:
        report = self.report
        await self.step(CLAIM_SLOT, self._claim_slot, lambda waited: f"slot granted after {waited:.0f} s")
        snapshot = await self.step(
            SNAPSHOT,
            lambda: workflow.execute_activity_method(
                DiskActivities.snapshot_disk,
                DiskStepInput(caller=self.workflow_id, step=SNAPSHOT, disk_id=report.disk_id),
                **HOUYI_STEP,
            ),
            lambda taken: f"snapshot {taken.snapshot_id}",
        )
        if snapshot is not None:
            report.snapshot_id = snapshot.snapshot_id
            report.phase = DiskMigrationPhase.SNAPSHOTTED
        # From here on the copy may be running: no rollback exists, so a cancel is refused.
        task = await self.step(
            START_COPY,
            lambda: self._uncancellable(
                lambda: workflow.start_activity_method(
                    DiskActivities.start_disk_migration,
                    DiskStepInput(
                        caller=self.workflow_id,
                        step=START_COPY,
                        disk_id=report.disk_id,
                        dst_storage_cluster=report.dst_storage_cluster,
                    ),
                    **HOUYI_STEP,
                )
            ),
            lambda started: f"task {started.task_id}",
        )
        if task is None:
            return
        report.task_id, report.phase = task.task_id, DiskMigrationPhase.COPYING
        self.publish_details()
        await self.step(
            FOLLOW_COPY, self._follow, lambda progress: f"copy complete ({progress.progress_pct}%)"
        )
        report.phase, report.progress_pct = DiskMigrationPhase.COMPLETE, 100
        self.publish_details()

    async def _claim_slot(self) -> float:
        report = self.report
        began = workflow.now()
        while True:
            claim = await workflow.execute_activity_method(
                DiskActivities.claim_copy_slot,
                SlotInput(workflow_id=self.workflow_id, disk_id=report.disk_id),
                **STORE,
            )
            if claim.granted:
                return (workflow.now() - began).total_seconds()
            report.phase = DiskMigrationPhase.WAITING_FOR_SLOT
            self.status.progress = (
                f"waiting: storage cluster {claim.full_cluster} runs {len(claim.running)} of "
                f"{claim.limit} disk copies ({', '.join(claim.running)})"
            )
            self.status.plan = [line for line in self.status.plan if not line.startswith("waiting: ")]
            self.status.plan.append(self.status.progress)
            self.publish_details()
            await workflow.sleep(timedelta(seconds=claim.retry_after_seconds))

    async def _follow(self) -> DiskMigrationProgress:
        report = self.report
        assert report.task_id is not None
        while True:
            progress: DiskMigrationProgress = await self._uncancellable(
                lambda: workflow.start_activity_method(
                    DiskActivities.follow_disk_migration,
                    DiskProgressInput(caller=self.workflow_id, task_id=report.task_id or ""),
                    **FOLLOW,
                )
            )
            report.progress_pct = progress.progress_pct
            self.publish_details()
            if progress.state is DiskMigrationState.COMPLETE:
                return progress

    async def _uncancellable(self, start: Any) -> Any:
        """Runs the activity to its end even when the operation is cancelled meanwhile: the cancel is
        refused and recorded (there is no rollback of a disk copy)."""
        handle = start()
        while True:
            try:
                return await asyncio.shield(handle)
            except asyncio.CancelledError:
                await self._refuse_cancel()

    async def _refuse_cancel(self) -> None:
        report = self.report
        if report.cancel_refused:
            return
        report.cancel_refused = True
        message = (
            f"cancel refused: disk live migration has no rollback; the copy of {report.disk_id} to "
            f"{report.dst_storage_cluster} runs to completion"
        )
        self.status.plan.append(message)
        workflow.logger.warning(message, extra={"opscode": self.OPSCODE.value})
        await self.audit(
            "cancel", AuditResult.REFUSED, error_type=errors.CANCEL_REFUSED, error_message=message
        )
        self.publish_details()
