"""Activities of disk live migration and of disk source recycle.

Migration: read the disk and both storage clusters (the plan's facts), hold the disk and claim a copy slot
(store), snapshot, start the copy, follow it. Recycle: list the finished tasks whose source may go, then
handle one task at a time: re-read, count the destination's not-loaded entries, delete the source with
that check repeated under the storage side's lock, recycle the task.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import from_houyi, store_rejected, store_unavailable
from activities.heartbeat import Pulse, heartbeating, heartbeats
from domain import errors
from domain.disk import RecycleCandidate, RecycleOutcome, RecycleTaskReport, StorageCluster
from domain.model import Disk
from houyi.errors import HouyiError, HouyiNotFound, HouyiWrongState
from houyi.port import (
    CallContext,
    DiskMigrationProgress,
    DiskMigrationState,
    DiskMigrationTask,
    DiskSnapshot,
    HouyiPort,
    StorageToolsPort,
)
from store.disk import DiskStore, RecycleRecord, SlotClaim
from store.errors import StoreError, StoreUnavailable

log = structlog.get_logger(__name__)

DEFAULT_DISK_POLL_SECONDS = 5.0
DEFAULT_SLOT_RETRY_SECONDS = 30.0
# A progress report returns to the workflow this often (the UI's details follow), or at the end.
REPORTS_PER_POLLS = 10


class DiskFactsInput(BaseModel):
    caller: str
    disk_id: str
    dst_storage_cluster: str


class DiskFacts(BaseModel):
    disk: Disk
    source: StorageCluster
    destination: StorageCluster


class DiskLeaseInput(BaseModel):
    workflow_id: str
    disk_id: str
    src_storage_cluster: str
    dst_storage_cluster: str


class DiskLeaseResult(BaseModel):
    acquired: bool
    holder_workflow_id: str | None = None
    held_since: datetime | None = None


class DiskReleaseInput(BaseModel):
    workflow_id: str
    disk_id: str


class SlotInput(BaseModel):
    workflow_id: str
    disk_id: str


class SlotResult(SlotClaim):
    retry_after_seconds: float = DEFAULT_SLOT_RETRY_SECONDS


class DiskStepInput(BaseModel):
    caller: str
    step: str
    disk_id: str
    dst_storage_cluster: str = ""


class DiskProgressInput(BaseModel):
    caller: str
    task_id: str


class RecycleListInput(BaseModel):
    caller: str
    finished_before: datetime


class RecycleTaskInput(BaseModel):
    workflow_id: str
    candidate: RecycleCandidate
    finished_before: datetime
    dry_run: bool = False


class DiskActivities:
    def __init__(
        self,
        houyi: HouyiPort,
        tools: StorageToolsPort,
        store: DiskStore,
        *,
        poll_seconds: float = DEFAULT_DISK_POLL_SECONDS,
        slot_retry_seconds: float = DEFAULT_SLOT_RETRY_SECONDS,
    ) -> None:
        self._houyi = houyi
        self._tools = tools
        self._store = store
        self._poll_seconds = poll_seconds
        self._slot_retry_seconds = slot_retry_seconds

    # ---- disk live migration ---------------------------------------------------------------------------

    @activity.defn(name="ReadDiskFacts")
    async def read_disk_facts(self, request: DiskFactsInput) -> DiskFacts:
        """The disk and both storage clusters: what the pre-checks need."""
        ctx = CallContext(caller=request.caller)
        try:
            try:
                disk = await self._houyi.describe_disk(ctx, disk_id=request.disk_id)
            except HouyiNotFound:
                raise ApplicationError(
                    f"no disk {request.disk_id}", type=errors.DISK_NOT_FOUND, non_retryable=True
                ) from None
            source = await self._houyi.describe_storage_cluster(ctx, name=disk.storage_cluster)
            try:
                destination = await self._houyi.describe_storage_cluster(
                    ctx, name=request.dst_storage_cluster
                )
            except HouyiNotFound:
                raise ApplicationError(
                    f"no storage cluster {request.dst_storage_cluster}",
                    type=errors.STORAGE_CLUSTER_NOT_FOUND,
                    non_retryable=True,
                ) from None
        except HouyiError as error:
            raise from_houyi(error) from None
        return DiskFacts(
            disk=disk,
            source=StorageCluster(**source.model_dump()),
            destination=StorageCluster(**destination.model_dump()),
        )

    @activity.defn(name="AcquireDisk")
    async def acquire_disk(self, request: DiskLeaseInput) -> DiskLeaseResult:
        try:
            holder = await self._store.acquire_disk(
                disk_id=request.disk_id,
                workflow_id=request.workflow_id,
                src_storage_cluster=request.src_storage_cluster,
                dst_storage_cluster=request.dst_storage_cluster,
            )
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreError as error:
            raise store_rejected(error) from None
        if holder is None:
            return DiskLeaseResult(acquired=True)
        return DiskLeaseResult(
            acquired=False, holder_workflow_id=holder.workflow_id, held_since=holder.acquired_at
        )

    @activity.defn(name="ReleaseDisk")
    async def release_disk(self, request: DiskReleaseInput) -> bool:
        try:
            return await self._store.release_disk(disk_id=request.disk_id, workflow_id=request.workflow_id)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreError as error:
            raise store_rejected(error) from None

    @activity.defn(name="ClaimDiskCopySlot")
    async def claim_copy_slot(self, request: SlotInput) -> SlotResult:
        try:
            claim = await self._store.claim_copy_slot(
                disk_id=request.disk_id, workflow_id=request.workflow_id
            )
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreError as error:
            raise store_rejected(error) from None
        return SlotResult(**claim.model_dump(), retry_after_seconds=self._slot_retry_seconds)

    @activity.defn(name="SnapshotDisk")
    async def snapshot_disk(self, request: DiskStepInput) -> DiskSnapshot:
        ctx = CallContext(caller=request.caller).step(request.step)
        try:
            return await heartbeating(self._houyi.create_disk_snapshot(ctx, disk_id=request.disk_id))
        except HouyiError as error:
            raise from_houyi(error) from None

    @activity.defn(name="StartDiskMigration")
    async def start_disk_migration(self, request: DiskStepInput) -> DiskMigrationTask:
        ctx = CallContext(caller=request.caller).step(request.step)
        try:
            return await heartbeating(
                self._houyi.start_disk_live_migration(
                    ctx, disk_id=request.disk_id, dst_storage_cluster=request.dst_storage_cluster
                )
            )
        except HouyiError as error:
            raise from_houyi(error) from None

    @activity.defn(name="FollowDiskMigration")
    async def follow_disk_migration(self, request: DiskProgressInput) -> DiskMigrationProgress:
        """Polls the copy with heartbeats (their details carry the progress); returns at the end, or after
        a few polls so the workflow can show the progress. A failed copy fails non-retryably."""
        ctx = CallContext(caller=request.caller)
        polls = 0
        pulse = Pulse()
        while True:
            try:
                progress = await self._houyi.get_disk_migration_progress(ctx, task_id=request.task_id)
            except HouyiError as error:
                raise from_houyi(error) from None
            pulse.beat(progress.progress_pct)
            if progress.state is DiskMigrationState.FAILED:
                raise ApplicationError(
                    f"disk migration task {request.task_id} failed: {progress.message}",
                    type=errors.DISK_MIGRATION_FAILED,
                    non_retryable=True,
                )
            polls += 1
            if progress.state is DiskMigrationState.COMPLETE or polls >= REPORTS_PER_POLLS:
                return progress
            await asyncio.sleep(self._poll_seconds)

    # ---- source recycle --------------------------------------------------------------------------------

    @activity.defn(name="ListRecycleCandidates")
    async def list_recycle_candidates(self, request: RecycleListInput) -> list[RecycleCandidate]:
        """DOMAIN.md recycle steps 1-2: complete tasks whose migration_log row is status 2, not recycled,
        finished before ``finished_before``."""
        ctx = CallContext(caller=request.caller)
        candidates: list[RecycleCandidate] = []
        pulse = Pulse()
        try:
            complete = await self._tools.query_device_migrate_log(ctx, status="complete")
            for entry in complete:
                rows = await self._tools.query_migration_log(
                    ctx,
                    task_id=entry.task_id,
                    status=2,
                    src_recycled=0,
                    finished_before=request.finished_before,
                )
                candidates += [
                    RecycleCandidate(
                        task_id=row.task_id,
                        disk_id=entry.disk_id,
                        src_pangu_path=row.src_pangu_path,
                        dst_pangu_path=row.dst_pangu_path,
                        finished_at=row.finished_at,
                    )
                    for row in rows
                ]
                pulse.beat(len(candidates))
        except HouyiError as error:
            raise from_houyi(error) from None
        return sorted(candidates, key=lambda c: c.task_id)

    @activity.defn(name="RecycleDiskSource")
    async def recycle_task(self, request: RecycleTaskInput) -> RecycleTaskReport:
        async with heartbeats():
            return await self._recycle_task(request)

    async def _recycle_task(self, request: RecycleTaskInput) -> RecycleTaskReport:
        """DOMAIN.md recycle steps 3-4 for one task. Tokens are the task's own (``DiskRecycle/<task>/...``),
        not the run's: any run, of any day, that comes back to the task replays the same delete and recycle
        instead of acting again."""
        candidate = request.candidate
        ctx = CallContext(caller=request.workflow_id)
        bound = log.bind(
            workflow_id=request.workflow_id, task_id=candidate.task_id, disk_id=candidate.disk_id
        )

        def report(outcome: RecycleOutcome, reason: str, not_loaded: int | None = None) -> RecycleTaskReport:
            return RecycleTaskReport(
                task_id=candidate.task_id,
                disk_id=candidate.disk_id,
                outcome=outcome,
                reason=reason,
                not_loaded=not_loaded,
            )

        try:
            rows = await self._tools.query_migration_log(
                ctx,
                task_id=candidate.task_id,
                status=2,
                src_recycled=None,
                finished_before=request.finished_before,
            )
            if not rows:
                return await self._settle(
                    request, report(RecycleOutcome.SKIPPED, "no finished migration_log row")
                )
            token = CallContext(caller="DiskRecycle")
            if rows[0].src_recycled:
                mine = await self._store.recycle_record(candidate.task_id)
                if mine is not None and mine.outcome == RecycleOutcome.RECYCLED.value:
                    return report(RecycleOutcome.RECYCLED, f"recycled by {mine.workflow_id}", 0)
                try:
                    # Ours if our token's answer replays: an attempt that died after the recycle.
                    await self._tools.river_admin_migrate_recycle(
                        token.step(f"{candidate.task_id}/recycle"), task_id=candidate.task_id
                    )
                except HouyiWrongState:
                    return await self._settle(
                        request, report(RecycleOutcome.SKIPPED, "already recycled by someone else")
                    )
                return await self._settle(
                    request,
                    report(RecycleOutcome.RECYCLED, "source deleted, task recycled (answer replayed)", 0),
                )
            not_loaded = await self._tools.bsutil_rlm_not_loaded_count(ctx, dir=candidate.dst_pangu_path)
            if not_loaded:
                return await self._settle(
                    request,
                    report(
                        RecycleOutcome.SKIPPED,
                        f"destination {candidate.dst_pangu_path} has {not_loaded} not-loaded entries",
                        not_loaded,
                    ),
                )
            if request.dry_run:
                return report(RecycleOutcome.WOULD_RECYCLE, "destination whole (0 not-loaded entries)", 0)
            try:
                await self._tools.bsutil_delete_image(
                    token.step(f"{candidate.task_id}/delete-source"),
                    dir=candidate.src_pangu_path,
                    unless_not_loaded=candidate.dst_pangu_path,
                )
            except HouyiWrongState as refused:
                # The destination changed between our count and the delete: the storage side refused.
                bound.warning(
                    "source not deleted: destination not whole at delete time", error=refused.message
                )
                return await self._settle(
                    request, report(RecycleOutcome.SKIPPED, f"refused at delete: {refused.message}")
                )
            except HouyiNotFound:
                bound.info("source image already gone")
            activity.heartbeat("source deleted")
            try:
                await self._tools.river_admin_migrate_recycle(
                    token.step(f"{candidate.task_id}/recycle"), task_id=candidate.task_id
                )
            except HouyiWrongState as already:
                if "already recycled" not in already.message:
                    raise
        except HouyiError as error:
            raise from_houyi(error) from None
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreError as error:
            raise store_rejected(error) from None
        bound.info("disk source recycled")
        return await self._settle(
            request, report(RecycleOutcome.RECYCLED, "source deleted, task recycled", 0)
        )

    async def _settle(self, request: RecycleTaskInput, outcome: RecycleTaskReport) -> RecycleTaskReport:
        """Keeps the task's outcome in the store (not for a dry run) and returns it."""
        if request.dry_run:
            return outcome
        try:
            await self._store.record_recycle(
                RecycleRecord(
                    task_id=outcome.task_id,
                    disk_id=outcome.disk_id,
                    outcome=outcome.outcome.value,
                    reason=outcome.reason,
                    not_loaded=outcome.not_loaded,
                    workflow_id=request.workflow_id,
                )
            )
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreError as error:
            raise store_rejected(error) from None
        return outcome
