"""What every operation that empties a host shares: the plan of who leaves how, live migrations in lanes,
stuck migrations corrected by an operator, cold migrations inside the maintenance window, RI capacity, and
the record of where each VM went.

History size, for a 200-VM host: each VM costs about 7 events per attempt (its activity's scheduled,
started, completed, and the workflow task its completion wakes), and the rest of the operation about 150;
a 200-VM deep offline measured 1,483 events and 1.25 MB (``tests/test_evacuation.py`` prints it), against
Temporal's limits of 50,000 events and 50 MB (warnings from 10,000 / 10 MB). So one workflow holds the whole
evacuation: child workflows or continue-as-new would split the step table, the operator commands and the
cancellation of migrations in flight across runs for no gain at this size. Progress goes to the UI through
``set_current_details``, which adds no event.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.evacuation import (
        CancelMigrationsInput,
        ColdMigrateInput,
        CorrectMigrationInput,
        EvacuationActivities,
        ListClusterInput,
        LiveMigrateInput,
        PowerInput,
        PublishInput,
        ReleaseRiInput,
        ReserveRiInput,
        VmPlacement,
        VmPlacementsInput,
    )
    from activities.maintenance import MaintenanceActivities, WindowQuery
    from activities.nc import DescribeNcInput, LockNcInput, NcActivities, WaitPowerInput
    from domain import errors
    from domain.evacuation import (
        EvacuationPlan,
        MigrationMethod,
        VmMove,
        VmMoveState,
        moves_from_plan,
        plan_evacuation,
        progress_line,
    )
    from domain.model import Nc, NcBizStatus, NcDetail, PowerState, VmStatus
    from domain.operations import OperationRequest
    from domain.settings import AfterColdMigration, LiveMigrationSettings
    from houyi.port import RiReservation
    from store.repository import AuditResult
    from workflows.common import (
        HOUYI_READ,
        HOUYI_STEP,
        HOUYI_WRITE,
        LANES_END_TOGETHER,
        STORE,
        cause_type,
        run_lanes,
    )
    from workflows.lifecycle import STEP_FAILED_TIMEOUT, OperationWorkflow, OpsState, StepStatus

RequestT = TypeVar("RequestT", bound=OperationRequest)

# Live migrations: refusals that pass ("distribute lock fail", load too high) are retried with backoff;
# Houyi's own throttle answer sets the first wait. Ends that mean "not this way" are non-retryable.
LIVE_MIGRATE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=8,
    non_retryable_error_types=[errors.MIGRATION_TIMED_OUT, errors.MIGRATION_STUCK, errors.MIGRATION_FAILED],
)
# Short enough that a cancel reaches the activity in seconds (it arrives with a heartbeat's answer).
LIVE_MIGRATE_HEARTBEAT = timedelta(seconds=10)

WAIT_POWER: dict[str, Any] = {
    **HOUYI_STEP,
    "start_to_close_timeout": timedelta(minutes=30),
    "heartbeat_timeout": timedelta(minutes=3),
}

RELEASE_RI = "release the reserved RI capacity"
RECORD_VMS = "record where each VM is"


class CorrectMigrationSignal(BaseModel):
    """Payload of ``correct_migration``: where a VM stuck in ``migrating`` really runs."""

    operator: str = Field(min_length=1)
    vm_id: str = Field(min_length=1)
    where: str = Field(min_length=1, description="nc_id of the host the VM really runs on")
    comment: str = ""


class EvacuationWorkflow(OperationWorkflow[RequestT]):
    """Base of the workflows that move every VM off one host."""

    # Cold-migrated VMs: only inside the cluster's maintenance window (deep offline) or at once.
    COLD_IN_WINDOW: ClassVar[bool] = True
    EARLY_PATCHES = (*OperationWorkflow.EARLY_PATCHES, LANES_END_TOGETHER)

    def __init__(self) -> None:
        super().__init__()
        self.evacuation: EvacuationPlan | None = None
        self._corrections: dict[str, CorrectMigrationSignal] = {}
        self._stuck: set[str] = set()
        self._stuck_targets: dict[str, str | None] = {}
        self._correction_count: dict[str, int] = {}
        self._reservation: RiReservation | None = None
        self._window_closes_at: datetime | None = None
        self._carried_vms = False

    # ---- plan ------------------------------------------------------------------------------------

    @property
    def source(self) -> Nc:
        return self.details[self.request.nc_ip].nc

    def live_settings(self) -> LiveMigrationSettings:
        settings = getattr(self.request, "settings", None)
        assert isinstance(settings, LiveMigrationSettings)
        return settings

    def target_nc_id(self) -> str | None:
        return getattr(self.live_settings(), "target", None)

    async def read_cluster(self) -> list[Nc]:
        return await workflow.execute_activity_method(
            EvacuationActivities.list_cluster_ncs,
            ListClusterInput(caller=self.workflow_id, cluster_id=self.source.cluster_id),
            **HOUYI_READ,
        )

    def _evacuation_plan(self, detail: NcDetail, cluster: list[Nc], *, live: bool) -> EvacuationPlan:
        settings = self.live_settings()
        return plan_evacuation(
            detail.nc,
            detail.vms,
            cluster,
            live=live,
            rate=settings.rate,
            parallel=settings.parallel,
            target_nc_id=self.target_nc_id(),
        )

    async def plan_evacuation(self, *, live: bool) -> list[str]:
        """Every VM with its status, size and how it leaves; refuses when the cluster has no room."""
        detail = self.details[self.request.nc_ip]
        target = self.target_nc_id()
        cluster = await self.read_cluster()
        if target is not None and not any(nc.nc_id == target for nc in cluster):
            await self.refuse(
                errors.INVALID_SETTINGS,
                f"target {target} is not a host of cluster {detail.nc.cluster_id}: VMs stay within their cluster",
            )
        plan = self._evacuation_plan(detail, cluster, live=live)
        if plan.unplaceable:
            shown = ", ".join(plan.unplaceable[:10]) + (" …" if len(plan.unplaceable) > 10 else "")
            sizes = "; ".join(
                f"{c.vcpu} vCPU / {c.memory_gib} GiB: spare {c.spare}, needed {c.vm_count}"
                for c in plan.capacity
            )
            await self.refuse(
                errors.INSUFFICIENT_CAPACITY,
                f"cluster {detail.nc.cluster_id} cannot take the VMs of {detail.nc.nc_ip}: "
                f"no room for {len(plan.unplaceable)} of {len(plan.vms)} VM(s) ({shown}) on its "
                f"{plan.target_hosts} free host(s) [{sizes}]",
            )
        self.evacuation = plan
        self.status.vms = moves_from_plan(plan, detail.nc.nc_id)
        self.status.progress = progress_line(self.status.vms)
        lines = plan.lines()
        if plan.cold and self.COLD_IN_WINDOW:
            lines.append(await self._window_line())
        return lines

    async def _window_line(self) -> str:
        answer = await workflow.execute_activity_method(
            MaintenanceActivities.window_state,
            WindowQuery(cluster_id=self.source.cluster_id, at=workflow.now()),
            **STORE,
        )
        if answer.state is None:
            await self.refuse(
                errors.NO_MAINTENANCE_WINDOW,
                f"cluster {self.source.cluster_id} has no maintenance window, and "
                f"{len(self.evacuation.cold) if self.evacuation else 0} VM(s) of {self.source.nc_ip} must be "
                "cold-migrated inside one: configure it first (python -m store.maintenance set ...)",
            )
        return f"maintenance window of {self.source.cluster_id}: {answer.state.describe()}"

    # ---- LockNc ------------------------------------------------------------------------------------

    async def lock_source(self, step: str) -> str:
        """free -> mlock; a host already mlock stays so. Nothing unlocks it on exit: after an evacuation,
        unlocking is an operator's decision."""
        nc = self.source
        if nc.biz_status is NcBizStatus.MLOCK:
            return "already mlock"
        change = await workflow.execute_activity_method(
            NcActivities.lock_nc,
            LockNcInput(caller=self.workflow_id, step=step, nc_id=nc.nc_id, nc_ip=nc.nc_ip),
            **HOUYI_STEP,
        )
        return f"{change.status_before.value} -> {change.status_after.value}"

    # ---- InitVmStatus ------------------------------------------------------------------------------

    async def init_vm_status(self, *, live: bool) -> str:
        """Re-reads the host and its cluster now the host is locked: the record every later step follows."""
        detail = await self.read_source()
        cluster = await self.read_cluster()
        plan = self._evacuation_plan(detail, cluster, live=live)
        known = {move.vm_id: move for move in self.status.vms}
        fresh = moves_from_plan(plan, detail.nc.nc_id)
        gone = [vm_id for vm_id in known if vm_id not in {m.vm_id for m in fresh}]
        for vm_id in gone:
            known[vm_id].state, known[vm_id].message = (
                VmMoveState.GONE,
                "no longer on the host at InitVmStatus",
            )
        self.status.vms = fresh + [known[vm_id] for vm_id in gone]
        self.evacuation = plan
        self._carried_vms = bool(fresh)
        if fresh:
            self.on_exit(RECORD_VMS, self.record_placements)
        self.update_progress()
        running = sum(1 for m in fresh if m.status_before.value == "running")
        return (
            f"{len(fresh)} VM(s), {running} running: {len(plan.live)} to live-migrate, {len(plan.cold)} to move cold"
            + (f"; {len(gone)} left since the plan" if gone else "")
        )

    def update_progress(self) -> None:
        self.status.progress = progress_line(self.status.vms)
        self.publish_details()

    # ---- live migration ----------------------------------------------------------------------------

    async def live_migrate_all(self, step: str) -> str:
        """Migrates the live-eligible VMs, ``parallel`` at a time, longest first (shortest makespan)."""
        if not self.status.vms:
            return "there is no vms on the nc, go on"
        queue = sorted(
            (
                m
                for m in self.status.vms
                if m.method is MigrationMethod.LIVE and m.state in (VmMoveState.PENDING, VmMoveState.FAILED)
            ),
            key=lambda m: (-m.estimated_seconds, m.vm_id),
        )
        if not queue:
            return f"no VM can be live-migrated: {len(self.status.vms)} handed to RecoverVmInTnb"
        total = len(queue)

        async def lane() -> None:
            while queue and not _being_cancelled():
                await self._live_migrate(step, queue.pop(0))

        await run_lanes(*(lane() for _ in range(min(self.live_settings().parallel, total))))
        moved = sum(1 for m in self.status.vms if m.state is VmMoveState.MIGRATED)
        handed = sum(
            1
            for m in self.status.vms
            if m.state is VmMoveState.HANDED_TO_COLD
            or (m.method is MigrationMethod.COLD and m.state is VmMoveState.PENDING)
        )
        return f"live-migrated {moved}/{total}; {handed} VM(s) for RecoverVmInTnb"

    async def _live_migrate(self, step: str, move: VmMove) -> None:
        settings = self.live_settings()
        source = self.source
        while True:
            move.live_attempts += 1
            move.state, move.message = VmMoveState.MIGRATING, f"attempt {move.live_attempts}"
            self.update_progress()
            try:
                result = await workflow.execute_activity_method(
                    EvacuationActivities.live_migrate_vm,
                    LiveMigrateInput(
                        caller=self.workflow_id,
                        step=step,
                        nc_id=source.nc_id,
                        nc_ip=source.nc_ip,
                        region_id=source.region_id,
                        vm_id=move.vm_id,
                        attempt=move.live_attempts,
                        target_nc_id=self.target_nc_id(),
                        rate=settings.rate,
                        downtime=settings.downtime,
                        no_check_image=settings.no_check_image,
                        no_check_load=settings.no_check_load,
                        estimated_seconds=move.estimated_seconds,
                    ),
                    start_to_close_timeout=timedelta(seconds=4 * move.estimated_seconds + 600),
                    heartbeat_timeout=LIVE_MIGRATE_HEARTBEAT,
                    retry_policy=LIVE_MIGRATE_RETRY,
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            except ActivityError as failure:
                if is_cancelled_exception(failure):
                    move.state, move.message = (
                        VmMoveState.CANCELLED,
                        "live migration cancelled with the operation",
                    )
                    raise
                kind = cause_type(failure)
                message = _root_message(failure)
                if _being_cancelled() and kind != errors.MIGRATION_STUCK:
                    # It ended on its own as the cancel came: the VM stays here, and no cold move follows.
                    move.state = VmMoveState.CANCELLED
                    move.message = f"live migration ended ({kind}) as the operation was cancelled: {message}"
                    self.update_progress()
                    return
                if kind == errors.MIGRATION_STUCK:
                    self._stuck_targets[move.vm_id] = _detail(failure, "target_nc_id")
                    await self._await_correction(move, message)
                    return
                if kind == errors.MIGRATION_TIMED_OUT and move.live_attempts <= settings.live_retries:
                    move.message = f"attempt {move.live_attempts} timed out, trying again: {message}"
                    continue
                move.state = VmMoveState.HANDED_TO_COLD
                move.message = f"live migration failed ({kind}): {message}; moved cold in RecoverVmInTnb"
                self.update_progress()
                return
            move.state, move.nc_id = VmMoveState.MIGRATED, result.target_nc_id or move.nc_id
            move.target_nc_id, move.migration_id = result.target_nc_id, result.migration_id
            move.status, move.message = move.status_before, ""
            self.update_progress()
            return

    async def _await_correction(self, move: VmMove, message: str) -> None:
        """A migration stuck in ``migrating`` waits for an operator to say where the VM runs."""
        move.state = VmMoveState.STUCK
        move.message = (
            f"{message}. Send signal correct_migration with "
            f'{{"operator": "<you>", "vm_id": "{move.vm_id}", "where": "<nc_id>"}} '
            f"(source {self.source.nc_id}, target {self._stuck_targets.get(move.vm_id) or 'unknown'})"
        )
        self._stuck.add(move.vm_id)
        self.update_progress()
        if self.status.state is OpsState.RUNNING:
            await self._enter(OpsState.STEP_FAILED)
        await self.audit(
            "migration_stuck",
            AuditResult.FAILED,
            error_type=errors.MIGRATION_STUCK,
            error_message=message,
            params={"vm_id": move.vm_id},
        )
        try:
            while True:
                try:
                    await workflow.wait_condition(
                        lambda: move.vm_id in self._corrections, timeout=STEP_FAILED_TIMEOUT
                    )
                except TimeoutError:
                    move.state = VmMoveState.FAILED
                    move.message = f"stuck in migrating and nobody corrected it within {STEP_FAILED_TIMEOUT}"
                    return
                given = self._corrections.pop(move.vm_id)
                self._correction_count[move.vm_id] = self._correction_count.get(move.vm_id, 0) + 1
                try:
                    change = await workflow.execute_activity_method(
                        EvacuationActivities.correct_migration_status,
                        CorrectMigrationInput(
                            caller=self.workflow_id,
                            step="CorrectMigration",
                            vm_id=move.vm_id,
                            region_id=self.source.region_id,
                            where=given.where,
                            correction=self._correction_count[move.vm_id],
                        ),
                        **HOUYI_STEP,
                    )
                except ActivityError as failure:
                    if is_cancelled_exception(failure):
                        raise
                    await self._refused_message(
                        given.operator, "correct_migration", cause_type(failure) or "", _root_message(failure)
                    )
                    continue
                await self.audit(
                    "correct_migration",
                    AuditResult.OK,
                    operator=given.operator,
                    params={"vm_id": move.vm_id, "where": given.where, "comment": given.comment},
                )
                move.nc_id, move.status = change.nc_id, change.status
                if change.nc_id == self.source.nc_id:
                    move.state = VmMoveState.HANDED_TO_COLD
                    move.message = f"runs on the source (said {given.operator}); moved cold in RecoverVmInTnb"
                else:
                    move.state, move.target_nc_id = VmMoveState.MIGRATED, change.nc_id
                    move.message = f"runs on {change.nc_id} (said {given.operator})"
                return
        finally:
            self._stuck.discard(move.vm_id)
            self.update_progress()
            if (
                not self._stuck
                and self.status.state is OpsState.STEP_FAILED
                and not any(step.status is StepStatus.WAITING for step in self.status.steps)
            ):
                await self._enter(OpsState.RUNNING)

    @workflow.signal(name="correct_migration")
    async def correct_migration(self, given: CorrectMigrationSignal) -> None:
        if given.vm_id not in self._stuck:
            stuck = ", ".join(sorted(self._stuck)) or "none"
            await self._refused_message(
                given.operator,
                "correct_migration",
                errors.STEP_NOT_WAITING,
                f"vm {given.vm_id} is not stuck in migrating (stuck: {stuck})",
            )
            return
        self._corrections[given.vm_id] = given

    # ---- RI capacity -------------------------------------------------------------------------------

    def _left_for_cold(self) -> list[VmMove]:
        return [
            m
            for m in self.status.vms
            if m.state in (VmMoveState.HANDED_TO_COLD, VmMoveState.FAILED)
            or (m.method is MigrationMethod.COLD and m.state is VmMoveState.PENDING)
        ]

    async def reserve_ri(self, step: str) -> str:
        if self._reservation is not None:
            return f"already reserved ({self._reservation.reservation_id})"
        left = self._left_for_cold()
        if not left:
            return "nothing to reserve: no VM left for RecoverVmInTnb"
        vcpu, memory = sum(m.vcpu for m in left), sum(m.memory_gib for m in left)
        reservation = await workflow.execute_activity_method(
            EvacuationActivities.reserve_ri_capacity,
            ReserveRiInput(
                caller=self.workflow_id,
                step=step,
                cluster_id=self.source.cluster_id,
                vcpu=vcpu,
                memory_gib=memory,
            ),
            **HOUYI_STEP,
        )
        self._reservation = reservation
        self.on_exit(RELEASE_RI, lambda: self._release_ri("ReleaseRIPoll"))
        return (
            f"reserved {vcpu} vCPU / {memory} GiB in {self.source.cluster_id} ({reservation.reservation_id})"
        )

    async def release_ri(self, step: str) -> str:
        if self._reservation is None:
            return "nothing reserved"
        await self._release_ri(step)
        self.done_on_exit(RELEASE_RI)
        return f"released {self._reservation.reservation_id}"

    async def _release_ri(self, step: str) -> None:
        assert self._reservation is not None
        await workflow.execute_activity_method(
            EvacuationActivities.release_ri_capacity,
            ReleaseRiInput(
                caller=self.workflow_id, step=step, reservation_id=self._reservation.reservation_id
            ),
            **HOUYI_WRITE,
        )

    # ---- cold migration ----------------------------------------------------------------------------

    async def recover_cold(self, step: str, *, after: AfterColdMigration, forced: bool) -> str:
        """Cold-migrates every VM left (inside the maintenance window when ``COLD_IN_WINDOW``)."""
        left = self._left_for_cold()
        if not left:
            return "nothing to recover: every VM left live"
        failed: list[VmMove] = []
        for move in left:
            if self.COLD_IN_WINDOW:
                await self._inside_window(step)
            move.cold_attempts += 1
            move.state, move.message = VmMoveState.COLD_MIGRATING, f"cold attempt {move.cold_attempts}"
            self.update_progress()
            try:
                change = await workflow.execute_activity_method(
                    EvacuationActivities.cold_migrate_vm,
                    ColdMigrateInput(
                        caller=self.workflow_id,
                        step=step,
                        vm_id=move.vm_id,
                        attempt=move.cold_attempts,
                        target_nc_id=self.target_nc_id(),
                        forced=forced,
                        after=after,
                        reason=self.request.reason,
                        ticket=self.request.ticket,
                    ),
                    **HOUYI_STEP,
                )
            except ActivityError as failure:
                if is_cancelled_exception(failure):
                    raise
                move.state, move.message = (
                    VmMoveState.FAILED,
                    f"cold migration failed: {_root_message(failure)}",
                )
                failed.append(move)
                self.update_progress()
                continue
            move.state, move.nc_id, move.status = VmMoveState.COLD_MIGRATED, change.nc_id, change.status
            move.target_nc_id, move.message = change.nc_id, ""
            self.update_progress()
        if failed:
            listed = "; ".join(f"{m.vm_id}: {m.message}" for m in failed[:10])
            raise ApplicationError(
                f"{len(failed)} of {len(left)} VM(s) could not be cold-migrated: {listed}",
                {"vm_ids": [m.vm_id for m in failed]},
                type=errors.VMS_NOT_MOVED,
                non_retryable=True,
            )
        return f"cold-migrated {len(left)} VM(s)" + (
            " in the maintenance window" if self.COLD_IN_WINDOW else ""
        )

    async def _inside_window(self, step: str) -> None:
        """Returns once the cluster's maintenance window is open; sleeps on a durable timer until then."""
        while self._window_closes_at is None or workflow.now() >= self._window_closes_at:
            answer = await workflow.execute_activity_method(
                MaintenanceActivities.window_state,
                WindowQuery(cluster_id=self.source.cluster_id, at=workflow.now()),
                **STORE,
            )
            if answer.state is None:
                raise ApplicationError(
                    f"cluster {self.source.cluster_id} has no maintenance window; configure one, then retry",
                    type=errors.NO_MAINTENANCE_WINDOW,
                    non_retryable=True,
                )
            if answer.state.open_now:
                self._window_closes_at = answer.state.closes_at
                return
            record = self._step(step)
            record.message = f"waiting for the maintenance window: {answer.state.describe()}"
            self.publish_details()
            await self.audit(
                "wait_maintenance_window",
                AuditResult.OK,
                params={"cluster_id": self.source.cluster_id, "opens_at": answer.state.opens_at.isoformat()},
            )
            await workflow.sleep(max(answer.state.opens_at - workflow.now(), timedelta(seconds=1)))

    # ---- checks, power, events ---------------------------------------------------------------------

    async def read_source(self) -> NcDetail:
        """The source host as Houyi has it now."""
        return await workflow.execute_activity_method(
            NcActivities.describe_nc,
            DescribeNcInput(caller=self.workflow_id, nc_id=self.source.nc_id),
            **HOUYI_READ,
        )

    async def check_empty(self) -> str:
        """Re-reads the host: any VM still on it stops the operation here, listed."""
        detail = await self.read_source()
        if detail.vms:
            by_id = {m.vm_id: m for m in self.status.vms}
            for vm in detail.vms:
                if vm.vm_id in by_id:
                    move = by_id[vm.vm_id]
                    move.state, move.nc_id, move.status = VmMoveState.FAILED, vm.nc_id, vm.status
                    move.message = f"on the source again ({vm.status.value})"
            self.update_progress()
            listed = ", ".join(f"{vm.vm_id} ({vm.status.value})" for vm in detail.vms)
            raise ApplicationError(
                f"NC {self.source.nc_ip} still carries {len(detail.vms)} VM(s): {listed}; it is not powered "
                "off with VMs on it. Move them, then retry_step",
                {"vm_ids": [vm.vm_id for vm in detail.vms]},
                type=errors.NC_NOT_EMPTY,
                non_retryable=True,
            )
        return "no VM on the host"

    def _power(self, step: str) -> PowerInput:
        return PowerInput(
            caller=self.workflow_id, step=step, nc_id=self.source.nc_id, nc_ip=self.source.nc_ip
        )

    async def shut_down(self, step: str) -> str:
        await workflow.execute_activity_method(
            EvacuationActivities.power_off_empty_nc, self._power(step), **HOUYI_STEP
        )
        settled = await self._wait_power(PowerState.OFF)
        return f"power {settled.value}"

    async def power_on(self, step: str, *, only_specified: bool) -> str:
        carries = self._carried_vms or self.source.has_storage_node
        if only_specified and not carries:
            return "left powered off: it carried no VM and has no storage node (onlyPowerOnSpecifiedNc=1)"
        await workflow.execute_activity_method(
            EvacuationActivities.power_on_nc, self._power(step), **HOUYI_STEP
        )
        settled = await self._wait_power(PowerState.ON)
        return f"power {settled.value}"

    async def _wait_power(self, expected: PowerState) -> PowerState:
        status = await workflow.execute_activity_method(
            NcActivities.wait_power_settled,
            WaitPowerInput(
                caller=self.workflow_id, nc_id=self.source.nc_id, nc_ip=self.source.nc_ip, expected=expected
            ),
            **WAIT_POWER,
        )
        return status.power_state

    async def publish(self, step: str, event: str) -> str:
        await workflow.execute_activity_method(
            EvacuationActivities.publish_event,
            PublishInput(
                caller=self.workflow_id,
                step=step,
                nc_id=self.source.nc_id,
                event=event,
                detail=f"{self.OPSCODE.value} {self.workflow_id}",
            ),
            **HOUYI_STEP,
        )
        return event

    # ---- the record ---------------------------------------------------------------------------------

    async def record_placements(self) -> None:
        """Reads where each VM is now: the result's per-VM record, and the proof that none was lost."""
        if not self.status.vms:
            return
        placements = await self._read_placements()
        still_migrating = [
            p.vm_id
            for p in placements
            if p.status is VmStatus.MIGRATING and p.nc_id == self.source.nc_id and p.vm_id not in self._stuck
        ]
        if still_migrating:
            # The operation ends with migrations of ours still running (a cancel reached their activities
            # late): cancel them here, then read those VMs again.
            stopped = await workflow.execute_activity_method(
                EvacuationActivities.cancel_live_migrations,
                CancelMigrationsInput(
                    caller=self.workflow_id,
                    step="CancelMigrationsAtExit",
                    region_id=self.source.region_id,
                    vm_ids=still_migrating,
                ),
                **HOUYI_WRITE,
            )
            for vm_id, why in stopped.not_cancelled.items():
                self.status.refused_messages.append(f"migration of {vm_id} could not be cancelled: {why}")
            placements = await self._read_placements()
        by_id = {p.vm_id: p for p in placements}
        for move in self.status.vms:
            placement = by_id.get(move.vm_id)
            if placement is None or placement.nc_id is None:
                move.state, move.message = VmMoveState.GONE, "the control plane no longer knows this VM"
                continue
            move.nc_id, move.status = placement.nc_id, placement.status
            if move.state is VmMoveState.MIGRATING:
                move.state = (
                    VmMoveState.CANCELLED if placement.nc_id == self.source.nc_id else VmMoveState.MIGRATED
                )
        self.update_progress()

    async def _read_placements(self) -> list[VmPlacement]:
        return await workflow.execute_activity_method(
            EvacuationActivities.read_vm_placements,
            VmPlacementsInput(
                caller=self.workflow_id,
                source_nc_id=self.source.nc_id,
                vm_ids=[m.vm_id for m in self.status.vms],
            ),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=HOUYI_READ["retry_policy"],
        )

    def vms_on_source(self) -> list[VmMove]:
        """VMs last read on the source host."""
        return [
            m for m in self.status.vms if m.nc_id == self.source.nc_id and m.state is not VmMoveState.GONE
        ]


def _being_cancelled() -> bool:
    """Whether this coroutine's task has been asked to cancel (the operation is being cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _root_message(failure: BaseException) -> str:
    current: BaseException | None = failure
    while isinstance(current, ActivityError) and current.cause is not None:
        current = current.cause
    return str(current)


def _detail(failure: BaseException, key: str) -> str | None:
    current: BaseException | None = failure
    while isinstance(current, ActivityError) and current.cause is not None:
        current = current.cause
    if isinstance(current, ApplicationError) and current.details and isinstance(current.details[0], dict):
        value = current.details[0].get(key)
        return str(value) if value is not None else None
    return None
