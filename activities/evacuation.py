"""Activities that move VMs off a host: live and cold migration, RI capacity, events, a guarded power-off.

Every mutating call carries a token made of the workflow id, the step and, for per-VM calls, the VM and
the attempt: a retried activity (a lost answer, a killed worker) replays the call instead of acting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import from_houyi
from activities.heartbeat import Pulse, heartbeating
from domain import errors
from domain.model import Nc, PowerState, VmStatus
from domain.settings import AfterColdMigration
from houyi.errors import HouyiError, HouyiNotFound, HouyiWrongState
from houyi.port import (
    AfterMigrationState,
    CallContext,
    HouyiPort,
    LiveMigrationProgress,
    MigrationState,
    PowerStatus,
    RiReservation,
    VmProcess,
    VmStatusChange,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_MIGRATION_POLL_SECONDS = 5.0
# Polls come at least this far apart, however close the migration's end looks.
MIN_MIGRATION_POLL_SECONDS = 0.005
# A migration may take this many times its estimate (plus the grace) before we call it stuck; Houyi gives
# up on a non-converging one by itself well before that.
MIGRATION_DEADLINE_FACTOR = 3.0
MIGRATION_DEADLINE_GRACE_SECONDS = 120.0


class ListClusterInput(BaseModel):
    caller: str
    cluster_id: str


class LiveMigrateInput(BaseModel):
    caller: str
    step: str  # with the VM and the attempt, the idempotency token
    nc_id: str
    nc_ip: str
    region_id: str
    vm_id: str
    attempt: int
    target_nc_id: str | None = None
    rate: int
    downtime: int
    no_check_image: bool
    no_check_load: bool
    estimated_seconds: float


class LiveMigrateResult(BaseModel):
    vm_id: str
    migration_id: str
    target_nc_id: str | None
    state: MigrationState
    message: str = ""


class CorrectMigrationInput(BaseModel):
    caller: str
    step: str
    vm_id: str
    region_id: str
    where: str
    correction: int


class ColdMigrateInput(BaseModel):
    caller: str
    step: str
    vm_id: str
    attempt: int
    target_nc_id: str | None = None
    forced: bool = True
    after: AfterColdMigration = AfterColdMigration.KEEP
    reason: str = ""
    ticket: str | None = None


class ReserveRiInput(BaseModel):
    caller: str
    step: str
    cluster_id: str
    vcpu: int
    memory_gib: int


class ReleaseRiInput(BaseModel):
    caller: str
    step: str
    reservation_id: str


class RiReleased(BaseModel):
    reservation_id: str
    already_released: bool = False


class PublishInput(BaseModel):
    caller: str
    step: str
    nc_id: str
    event: str
    detail: str = ""


class NotifyInput(BaseModel):
    caller: str
    step: str
    target: str
    message: str


class Sent(BaseModel):
    done: bool = True


class PowerInput(BaseModel):
    caller: str
    step: str
    nc_id: str
    nc_ip: str


class NcInput(BaseModel):
    caller: str
    nc_id: str


class VmPlacementsInput(BaseModel):
    caller: str
    source_nc_id: str
    vm_ids: list[str]


class CancelMigrationsInput(BaseModel):
    caller: str
    step: str
    region_id: str
    vm_ids: list[str]


class CancelledMigrations(BaseModel):
    cancelled: list[str]
    not_cancelled: dict[str, str]  # vm id -> why (e.g. stuck)


class VmPlacement(BaseModel):
    vm_id: str
    nc_id: str | None  # None: the control plane no longer knows the VM
    status: VmStatus | None


class EvacuationActivities:
    """The Houyi client is injected; ``time_scale`` shrinks real waits against a fast simulator."""

    def __init__(
        self,
        houyi: HouyiPort,
        *,
        poll_seconds: float = DEFAULT_MIGRATION_POLL_SECONDS,
        time_scale: float = 1.0,
    ) -> None:
        self._houyi = houyi
        self._poll_seconds = poll_seconds
        self._time_scale = time_scale

    # ---- reads ---------------------------------------------------------------------------------------

    @activity.defn(name="ListClusterNcs")
    async def list_cluster_ncs(self, request: ListClusterInput) -> list[Nc]:
        try:
            return await heartbeating(
                self._houyi.list_ncs(CallContext(caller=request.caller), cluster_id=request.cluster_id)
            )
        except HouyiError as error:
            raise from_houyi(error) from None

    @activity.defn(name="ListVmProcesses")
    async def list_vm_processes(self, request: NcInput) -> list[VmProcess]:
        """The VM processes running on a host (residue checks after an evacuation)."""
        try:
            return await heartbeating(
                self._houyi.list_vm_processes(CallContext(caller=request.caller), nc_id=request.nc_id)
            )
        except HouyiError as error:
            raise from_houyi(error, delay_scale=self._time_scale) from None

    @activity.defn(name="ReadVmPlacements")
    async def read_vm_placements(self, request: VmPlacementsInput) -> list[VmPlacement]:
        """Where each VM is now, one read per VM, heartbeating (200 VMs take a while)."""
        ctx = CallContext(caller=request.caller)
        pulse = Pulse()
        placements = []
        for vm_id in request.vm_ids:
            try:
                vm = await self._houyi.describe_vm(ctx, vm_id=vm_id)
            except HouyiNotFound:
                placements.append(VmPlacement(vm_id=vm_id, nc_id=None, status=None))
                continue
            except HouyiError as error:
                raise from_houyi(error, delay_scale=self._time_scale) from None
            placements.append(VmPlacement(vm_id=vm_id, nc_id=vm.nc_id, status=vm.status))
            pulse.beat(len(placements))
        return placements

    # ---- live migration ------------------------------------------------------------------------------

    @activity.defn(name="LiveMigrateVm")
    async def live_migrate_vm(self, request: LiveMigrateInput) -> LiveMigrateResult:
        """Starts (or, on a retry, finds again) the VM's migration and follows it to its end.

        Timed out, failed or refused: a non-retryable error the workflow turns into a new attempt or a
        cold migration. Stuck past the deadline and not cancellable: ``MigrationStuck`` for an operator.
        Cancelled (the workflow was): the migration is cancelled in Houyi before the activity ends.
        """
        bound = log.bind(vm_id=request.vm_id, nc_id=request.nc_id, attempt=request.attempt)
        ctx = CallContext(caller=request.caller).step(f"{request.step}/{request.vm_id}/{request.attempt}")
        try:
            task = await self._houyi.live_migrate_vm(
                ctx,
                vm_id=request.vm_id,
                target_nc_id=request.target_nc_id,
                rate=request.rate,
                no_check_image=request.no_check_image,
                no_check_load=request.no_check_load,
                downtime=request.downtime,
            )
        except HouyiError as error:
            bound.warning("live migration refused", error_type=error.error_type, error=error.message)
            raise from_houyi(error, delay_scale=self._time_scale) from None
        except asyncio.CancelledError:
            # Cancelled while the start was on the wire: it may have started all the same.
            await self._cancel_surely(request, request.target_nc_id)
            raise
        bound.info("live migration started", migration_id=task.migration_id, target=task.target_nc_id)
        deadline = time.monotonic() + self._time_scale * (
            MIGRATION_DEADLINE_FACTOR * request.estimated_seconds + MIGRATION_DEADLINE_GRACE_SECONDS
        )
        try:
            progress = await self._follow(request, task.migration_id, deadline)
        except asyncio.CancelledError:
            # The operation was cancelled: so is the migration, where Houyi still can.
            await self._cancel_surely(request, task.target_nc_id)
            raise
        if progress is None:
            await self._cancel(request, task.target_nc_id, "no end by its deadline")
            raise ApplicationError(
                f"live migration {task.migration_id} of {request.vm_id} did not finish by its deadline; "
                "cancelled, the VM stays on the source",
                type=errors.MIGRATION_TIMED_OUT,
                non_retryable=True,
            )
        if progress.state is MigrationState.SUCCEEDED:
            bound.info("live migration done", target=progress.target_nc_id)
            return LiveMigrateResult(
                vm_id=request.vm_id,
                migration_id=progress.migration_id,
                target_nc_id=progress.target_nc_id,
                state=progress.state,
                message=progress.message,
            )
        error_type = (
            errors.MIGRATION_TIMED_OUT
            if progress.state is MigrationState.TIMED_OUT
            else errors.MIGRATION_FAILED
        )
        bound.warning("live migration ended without moving the vm", state=progress.state.value)
        raise ApplicationError(
            f"live migration {progress.migration_id} of {request.vm_id} {progress.state.value}: {progress.message}",
            type=error_type,
            non_retryable=True,
        )

    async def _follow(
        self, request: LiveMigrateInput, migration_id: str, deadline: float
    ) -> LiveMigrationProgress | None:
        """Polls until the migration ends (its last progress) or the deadline passes (None).

        Polls every ``poll_seconds`` (heartbeating with the progress, so a cancel arrives), or sooner when the
        progress says the end is nearer: the end is seen within about 1 % of the migration's time, and the
        next migration of the lane starts at once.
        """
        ctx = CallContext(caller=request.caller)
        started = time.monotonic()
        expected = request.estimated_seconds * self._time_scale
        pulse = Pulse()
        while True:
            try:
                progress = await self._houyi.get_live_migration_progress(ctx, vm_id=request.vm_id)
            except HouyiError as error:
                raise from_houyi(error, delay_scale=self._time_scale) from None
            if progress.migration_id != migration_id:
                # Someone else migrated the VM meanwhile: ours is over.
                raise ApplicationError(
                    f"vm {request.vm_id} now has migration {progress.migration_id}, not ours ({migration_id})",
                    type=errors.MIGRATION_FAILED,
                    non_retryable=True,
                )
            pulse.beat({"migration_id": migration_id, "progress_pct": progress.progress_pct})
            if progress.state is not MigrationState.RUNNING:
                return progress
            now = time.monotonic()
            if now >= deadline:
                return None
            await asyncio.sleep(self._next_poll(now - started, progress.progress_pct, expected))

    def _next_poll(self, elapsed: float, progress_pct: int, expected: float) -> float:
        remaining = elapsed * (100 - progress_pct) / progress_pct if progress_pct > 0 else expected - elapsed
        return min(self._poll_seconds, max(remaining, MIN_MIGRATION_POLL_SECONDS))

    async def _cancel_surely(self, request: LiveMigrateInput, target_nc_id: str | None) -> None:
        """Cancels the migration when the operation cancelled this activity; a second cancel (a timeout, a
        shutdown) must not cut the call short and leave the migration running.

        Cancelled for another reason (timed out, worker shutting down), the migration is left running: the
        activity's retry finds it again through its token and follows it.
        """
        details = activity.cancellation_details()
        if details is None or not details.cancel_requested:
            log.info(
                "activity stopped, migration left running for the retry",
                vm_id=request.vm_id,
                timed_out=bool(details and details.timed_out),
                worker_shutdown=bool(details and details.worker_shutdown),
            )
            return
        cancelling = asyncio.ensure_future(
            self._cancel(request, target_nc_id, "cancelled with the operation", best_effort=True)
        )
        while not cancelling.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(cancelling)

    async def _cancel(
        self, request: LiveMigrateInput, target_nc_id: str | None, why: str, *, best_effort: bool = False
    ) -> None:
        """Cancels the running migration; one stuck in migrating cannot be, and says so.

        ``best_effort``: the activity is being cancelled and must end as cancelled whatever happens here;
        a VM left migrating is then reported by the workflow's record of where each VM is.
        """
        ctx = CallContext(caller=request.caller).step(
            f"{request.step}/{request.vm_id}/{request.attempt}/cancel"
        )
        try:
            await self._houyi.cancel_live_migrate_vm(ctx, region_id=request.region_id, vm_id=request.vm_id)
        except HouyiWrongState as error:
            if "stuck" in error.message and not best_effort:
                raise ApplicationError(
                    f"vm {request.vm_id} is stuck in migrating and the migration cannot be cancelled ({why}): "
                    f"{error.message}",
                    {"vm_id": request.vm_id, "target_nc_id": target_nc_id},
                    type=errors.MIGRATION_STUCK,
                    non_retryable=True,
                ) from None
            # Already over, or stuck while the operation is cancelled: nothing more to do here.
            log.warning("live migration not cancelled", vm_id=request.vm_id, why=why, error=error.message)
            return
        except HouyiError as error:
            if best_effort:
                log.warning("live migration not cancelled", vm_id=request.vm_id, why=why, error=error.message)
                return
            raise from_houyi(error, delay_scale=self._time_scale) from None
        log.info("live migration cancelled", vm_id=request.vm_id, why=why)

    @activity.defn(name="CancelLiveMigrations")
    async def cancel_live_migrations(self, request: CancelMigrationsInput) -> CancelledMigrations:
        """Cancels the running migrations of these VMs (an operation ending with migrations still running)."""
        cancelled, refused = [], {}
        for vm_id in request.vm_ids:
            ctx = CallContext(caller=request.caller).step(f"{request.step}/{vm_id}")
            try:
                await self._houyi.cancel_live_migrate_vm(ctx, region_id=request.region_id, vm_id=vm_id)
            except (HouyiWrongState, HouyiNotFound) as error:
                refused[vm_id] = error.message
                continue
            except HouyiError as error:
                raise from_houyi(error, delay_scale=self._time_scale) from None
            cancelled.append(vm_id)
            activity.heartbeat(len(cancelled))
        return CancelledMigrations(cancelled=cancelled, not_cancelled=refused)

    @activity.defn(name="CorrectMigrationStatus")
    async def correct_migration_status(self, request: CorrectMigrationInput) -> VmStatusChange:
        """``manually_change_migration_status``: records where a stuck VM really runs."""
        ctx = CallContext(caller=request.caller).step(f"{request.step}/{request.vm_id}/{request.correction}")
        return await self._act(
            request.vm_id,
            "correct migration status",
            self._houyi.manually_change_migration_status(
                ctx, vm_id=request.vm_id, region_id=request.region_id, where=request.where
            ),
        )

    # ---- cold migration --------------------------------------------------------------------------------

    @activity.defn(name="ColdMigrateVm")
    async def cold_migrate_vm(self, request: ColdMigrateInput) -> VmStatusChange:
        ctx = CallContext(caller=request.caller).step(f"{request.step}/{request.vm_id}/{request.attempt}")
        return await self._act(
            request.vm_id,
            "cold migration",
            self._houyi.cold_migrate_vm(
                ctx,
                vm_id=request.vm_id,
                target_nc_id=request.target_nc_id,
                forced=request.forced,
                after=AfterMigrationState(request.after.value),
                ticket=request.ticket,
                reason=request.reason,
            ),
        )

    # ---- RI capacity, notification, events ----------------------------------------------------------

    @activity.defn(name="ReserveRiCapacity")
    async def reserve_ri_capacity(self, request: ReserveRiInput) -> RiReservation:
        ctx = CallContext(caller=request.caller).step(request.step)
        return await self._act(
            request.cluster_id,
            "reserve RI capacity",
            self._houyi.reserve_ri_capacity(
                ctx, cluster_id=request.cluster_id, vcpu=request.vcpu, memory_gib=request.memory_gib
            ),
        )

    @activity.defn(name="ReleaseRiCapacity")
    async def release_ri_capacity(self, request: ReleaseRiInput) -> RiReleased:
        ctx = CallContext(caller=request.caller).step(request.step)
        try:
            await heartbeating(self._houyi.release_ri_capacity(ctx, reservation_id=request.reservation_id))
        except HouyiWrongState:
            # Released already (by an earlier exit path): the goal holds.
            return RiReleased(reservation_id=request.reservation_id, already_released=True)
        except HouyiError as error:
            raise from_houyi(error, delay_scale=self._time_scale) from None
        return RiReleased(reservation_id=request.reservation_id)

    @activity.defn(name="PublishEvent")
    async def publish_event(self, request: PublishInput) -> Sent:
        ctx = CallContext(caller=request.caller).step(request.step)
        await self._act(
            request.nc_id,
            f"publish {request.event}",
            self._houyi.publish_event(ctx, nc_id=request.nc_id, event=request.event, detail=request.detail),
        )
        return Sent()

    @activity.defn(name="Notify")
    async def notify(self, request: NotifyInput) -> Sent:
        ctx = CallContext(caller=request.caller).step(request.step)
        await self._act(
            request.target, "notify", self._houyi.notify(ctx, target=request.target, message=request.message)
        )
        return Sent()

    # ---- power -------------------------------------------------------------------------------------

    @activity.defn(name="PowerOffEmptyNc")
    async def power_off_empty_nc(self, request: PowerInput) -> PowerStatus:
        """Powers the host off only if the control plane places no VM on it right now."""
        ctx = CallContext(caller=request.caller)
        try:
            detail = await heartbeating(self._houyi.describe_nc(ctx, nc_id=request.nc_id))
        except HouyiError as error:
            raise from_houyi(error, delay_scale=self._time_scale) from None
        if detail.vms:
            listed = ", ".join(f"{vm.vm_id} ({vm.status.value})" for vm in detail.vms)
            raise ApplicationError(
                f"NC {request.nc_ip} still carries {len(detail.vms)} VM(s): {listed}; not powering it off",
                {"vm_ids": [vm.vm_id for vm in detail.vms]},
                type=errors.NC_NOT_EMPTY,
                non_retryable=True,
            )
        if detail.nc.power_state is PowerState.OFF:
            return PowerStatus(nc_id=request.nc_id, power_state=PowerState.OFF)
        return await self._act(
            request.nc_id,
            "OOB power off",
            self._houyi.oob_power_off(ctx.step(request.step), nc_id=request.nc_id),
        )

    @activity.defn(name="PowerOnNc")
    async def power_on_nc(self, request: PowerInput) -> PowerStatus:
        ctx = CallContext(caller=request.caller).step(request.step)
        return await self._act(
            request.nc_id, "OOB power on", self._houyi.oob_power_on(ctx, nc_id=request.nc_id)
        )

    async def _act(self, subject: str, doing: str, call: Awaitable[T]) -> T:
        bound = log.bind(subject=subject)
        try:
            result = await heartbeating(call)
        except HouyiError as error:
            bound.warning(f"{doing} failed", error_type=error.error_type, error=error.message)
            raise from_houyi(error, delay_scale=self._time_scale) from None
        bound.info(f"{doing}: done")
        return result
