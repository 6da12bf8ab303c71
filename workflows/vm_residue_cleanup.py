"""0x10001000008002 VM residue on NC cleanup: destroy the VM processes left on a host that the control
plane places elsewhere or has released, and nothing else.

Only residues are destroyed: each destroy re-reads the process and the VM's record right before acting (a
migration finishing between plan and action turns a residue into the authoritative copy), and a VM whose
record points to this host is never destroyed, whatever the input says.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.nc import LockNcInput, NcActionInput, NcActivities
    from activities.residue import DestroyInput, InventoryInput, ResidueActivities
    from domain import errors
    from domain.model import NcBizStatus, PowerState
    from domain.operations import HostOutcomeKind, OperationResult, VmResidueCleanupInput
    from domain.opscodes import OpsCode
    from domain.residue import ProcessOutcome, ProcessPlan
    from workflows.common import HOUYI_READ, HOUYI_STEP, HOUYI_WRITE
    from workflows.lifecycle import OperationWorkflow

PRE_LOCK = "PreLock"
DESTROY = "DestroyResidues"
CHECK = "CheckResidues"
UNLOCK = "Unlock"


@workflow.defn(name="VmResidueCleanup")
class VmResidueCleanupWorkflow(OperationWorkflow[VmResidueCleanupInput]):
    """Input ``VmResidueCleanupInput`` as raw JSON."""

    OPSCODE = OpsCode.VM_RESIDUE_CLEANUP
    INPUT = VmResidueCleanupInput

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    async def plan(self, request: VmResidueCleanupInput) -> list[str]:
        nc = (await self.describe(request.nc_ip)).nc
        if nc.power_state is not PowerState.ON:
            await self.refuse(
                errors.NC_WRONG_STATUS,
                f"NC {nc.nc_ip} ({nc.nc_id}) is powered {nc.power_state.value}: its processes cannot be listed",
            )
        settings = request.settings
        processes = await self._inventory()
        if settings.vm is not None:
            if not any(p.vm_id == settings.vm for p in processes):
                await self.refuse(
                    errors.INVALID_SETTINGS,
                    f"no process of vm {settings.vm} on NC {nc.nc_ip} ({nc.nc_id}): nothing to clean",
                )
            processes = [p for p in processes if p.vm_id == settings.vm]
        self.status.processes = processes
        steps: list[tuple[str, bool]] = [(PRE_LOCK, True)] if self._pre_lock() else []
        steps += [(DESTROY, False), (CHECK, False)]
        if self._pre_lock():
            steps.append((UNLOCK, False))
        self.declare_steps(*steps)
        doomed = [p for p in processes if p.destroy]
        lines = [f"{len(processes)} VM process(es) on {nc.nc_ip} ({nc.nc_id}); {len(doomed)} to destroy"]
        lines += [
            f"{'destroy' if p.destroy else 'keep'} {p.vm_id} (pid {p.pid}): {p.reason}" for p in processes
        ]
        if self._pre_lock():
            lines.append(f"lock {nc.nc_ip} while cleaning (preLock=0), unlock afterwards")
        return lines

    def _pre_lock(self) -> bool:
        nc = self.details[self.request.nc_ip].nc
        return self.request.settings.pre_lock == 0 and nc.biz_status is NcBizStatus.FREE

    async def _inventory(self) -> list[ProcessPlan]:
        nc = self.details[self.request.nc_ip].nc
        return await workflow.execute_activity_method(
            ResidueActivities.inventory,
            InventoryInput(
                caller=self.workflow_id,
                nc_id=nc.nc_id,
                force_clean_wild_vm=self.request.settings.force_clean_wild_vm,
            ),
            **HOUYI_READ,
        )

    async def execute(self, request: VmResidueCleanupInput) -> None:
        nc = self.details[request.nc_ip].nc
        action = NcActionInput(caller=self.workflow_id, step=PRE_LOCK, nc_id=nc.nc_id, nc_ip=nc.nc_ip)
        locked = False
        if self._pre_lock():
            change = await self.step(
                PRE_LOCK,
                lambda: workflow.execute_activity_method(
                    NcActivities.lock_nc, LockNcInput(**action.model_dump()), **HOUYI_STEP
                ),
                lambda c: f"{c.status_before.value} -> {c.status_after.value}",
            )
            locked = change is not None
            if locked:
                self.on_cancel(
                    f"unlock {nc.nc_ip}",
                    lambda: workflow.execute_activity_method(
                        NcActivities.unlock_nc,
                        action.model_copy(update={"step": "CompensateUnlock"}),
                        **HOUYI_WRITE,
                    ),
                )
        await self.step(DESTROY, self._destroy, _same)
        await self.step(CHECK, self._check, _same)
        if locked:
            await self.step(
                UNLOCK,
                lambda: workflow.execute_activity_method(
                    NcActivities.unlock_nc, action.model_copy(update={"step": UNLOCK}), **HOUYI_STEP
                ),
                lambda c: f"{c.status_before.value} -> {c.status_after.value}",
            )
            self.clear_compensations()
        outcome = self.outcome(nc.nc_ip)
        counts = {o: sum(1 for p in self.status.processes if p.outcome is o) for o in ProcessOutcome}
        outcome.outcome = HostOutcomeKind.SUCCEEDED
        outcome.message = (
            f"{counts[ProcessOutcome.DESTROYED]} destroyed, "
            f"{counts[ProcessOutcome.SKIPPED] + counts[ProcessOutcome.PLANNED]} kept, {counts[ProcessOutcome.FAILED]} failed"
        )

    async def _destroy(self) -> str:
        nc = self.details[self.request.nc_ip].nc
        doomed = [
            p
            for p in self.status.processes
            if p.destroy and p.outcome in (ProcessOutcome.PLANNED, ProcessOutcome.FAILED)
        ]
        for kept in self.status.processes:
            if not kept.destroy and kept.outcome is ProcessOutcome.PLANNED:
                self._replace(
                    kept.model_copy(update={"outcome": ProcessOutcome.SKIPPED, "message": kept.reason})
                )
        if not doomed:
            return "nothing to destroy"
        for planned in doomed:
            try:
                done = await workflow.execute_activity_method(
                    ResidueActivities.destroy,
                    DestroyInput(
                        caller=self.workflow_id,
                        step=DESTROY,
                        nc_id=nc.nc_id,
                        vm_id=planned.vm_id,
                        force_clean_wild_vm=self.request.settings.force_clean_wild_vm,
                    ),
                    **HOUYI_STEP,
                )
            except ActivityError as failure:
                if is_cancelled_exception(failure):
                    raise
                done = planned.model_copy(
                    update={"outcome": ProcessOutcome.FAILED, "message": str(failure.cause)}
                )
            self._replace(done)
        failed = [p for p in self.status.processes if p.outcome is ProcessOutcome.FAILED]
        if failed:
            raise ApplicationError(
                f"{len(failed)} residue(s) could not be destroyed: "
                + "; ".join(f"{p.vm_id}: {p.message}" for p in failed),
                type=errors.ACTION_NOT_APPLIED,
                non_retryable=True,
            )
        destroyed = sum(1 for p in self.status.processes if p.outcome is ProcessOutcome.DESTROYED)
        return f"destroyed {destroyed} of {len(doomed)} planned"

    def _replace(self, plan: ProcessPlan) -> None:
        self.status.processes = [plan if p.vm_id == plan.vm_id else p for p in self.status.processes]
        self.publish_details()

    async def _check(self) -> str:
        left = {p.vm_id for p in await self._inventory()}
        still = [
            p.vm_id
            for p in self.status.processes
            if p.outcome is ProcessOutcome.DESTROYED and p.vm_id in left
        ]
        if still:
            raise ApplicationError(
                f"destroyed residue(s) still listed on the host: {', '.join(still)}",
                type=errors.ACTION_NOT_APPLIED,
                non_retryable=True,
            )
        return f"{len(left)} VM process(es) left on the host"


def _same(message: str) -> str:
    return message
