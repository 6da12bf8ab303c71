"""Whole-host migration: lock the host, move every VM off it by the scheduler's rules, check for residues.

DOMAIN.md, "Whole-host migration and offline repair": the host must be free or mlock; submitting locks it;
the scheduler picks every target (none is chosen); stopped and pending VMs are started on arrival; the
host is checked for residues afterwards; unlocking stays a separate, manual act (0x410A01's inverse). A run
that leaves VMs behind waits in ``StepFailed``: ``relaunch`` (or ``retry_step``) moves the remaining ones.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.evacuation import EvacuationActivities, NcInput
    from domain import errors
    from domain.evacuation import VmMoveState
    from domain.model import NcBizStatus
    from domain.operations import HostOutcomeKind, OperationResult, WholeHostMigrationInput
    from domain.opscodes import OpsCode
    from domain.settings import AfterColdMigration
    from workflows.common import HOUYI_READ
    from workflows.evacuation import RECORD_VMS, EvacuationWorkflow
    from workflows.lifecycle import StepCommand, StepCommandInput

LOCK_NC = "LockNc"
INIT_VM_STATUS = "InitVmStatus"
MIGRATE_VMS = "MigrateVms"
CHECK_RESIDUES = "CheckResidues"

STARTS_FROM = (NcBizStatus.FREE, NcBizStatus.MLOCK)


@workflow.defn(name="WholeHostMigration")
class WholeHostMigrationWorkflow(EvacuationWorkflow[WholeHostMigrationInput]):
    """Input ``WholeHostMigrationInput`` as raw JSON."""

    OPSCODE = OpsCode.WHOLE_HOST_MIGRATION
    INPUT = WholeHostMigrationInput
    # An operator's explicit act: VMs that cannot go live move cold at once, not in a window.
    COLD_IN_WINDOW = False

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    async def plan(self, request: WholeHostMigrationInput) -> list[str]:
        nc = (await self.describe(request.nc_ip)).nc
        if nc.biz_status not in STARTS_FROM:
            await self.refuse(
                errors.NC_WRONG_STATUS,
                f"NC {nc.nc_ip} ({nc.nc_id}) is {nc.biz_status.value}: whole-host migration needs it free or mlock",
            )
        self.declare_steps(
            (LOCK_NC, False), (INIT_VM_STATUS, False), (MIGRATE_VMS, False), (CHECK_RESIDUES, True)
        )
        lines = [
            f"lock {nc.nc_ip} ({nc.nc_id}): {nc.biz_status.value} -> mlock; unlocking afterwards is up to you"
        ]
        lines += await self.plan_evacuation(live=True)
        lines.append("stopped and pending VMs are started on arrival; the host is then checked for residues")
        return lines

    async def execute(self, request: WholeHostMigrationInput) -> None:
        nc = self.source
        await self.step(LOCK_NC, lambda: self.lock_source(LOCK_NC), _same)
        await self.step(INIT_VM_STATUS, lambda: self.init_vm_status(live=True), _same)
        await self.step(MIGRATE_VMS, self._migrate, _same)
        residues = await self.step(CHECK_RESIDUES, self._check_residues, _same)
        await self.record_placements()
        self.done_on_exit(RECORD_VMS)
        outcome = self.outcome(nc.nc_ip)
        outcome.status_after = (await self.read_source()).nc.biz_status
        outcome.outcome = HostOutcomeKind.SUCCEEDED
        live = sum(1 for m in self.status.vms if m.state is VmMoveState.MIGRATED)
        cold = sum(1 for m in self.status.vms if m.state is VmMoveState.COLD_MIGRATED)
        outcome.message = f"{len(self.status.vms)} VM(s) moved off: {live} live, {cold} cold; " + (
            residues or "residue check skipped"
        )

    async def _migrate(self) -> str:
        """Live where it can, then cold for the rest; a retry (relaunch) moves only what is left."""
        live = await self.live_migrate_all(MIGRATE_VMS)
        cold = await self.recover_cold(MIGRATE_VMS, after=AfterColdMigration.START, forced=True)
        left = self.vms_on_source()
        if left:
            raise ApplicationError(
                f"{len(left)} VM(s) still on {self.source.nc_ip}: "
                + ", ".join(f"{m.vm_id} ({m.state.value})" for m in left[:10])
                + "; send relaunch to move the remaining ones",
                type=errors.VMS_NOT_MOVED,
                non_retryable=True,
            )
        return f"{live}; {cold}"

    async def _check_residues(self) -> str:
        """VM processes left on the host that belong to VMs placed elsewhere: reported, not destroyed
        (cleaning residues is 0x10001000008002's job)."""
        processes = await workflow.execute_activity_method(
            EvacuationActivities.list_vm_processes,
            NcInput(caller=self.workflow_id, nc_id=self.source.nc_id),
            **HOUYI_READ,
        )
        if not processes:
            return "no residue on the host"
        listed = ", ".join(f"{p.vm_id} ({p.state.value})" for p in processes)
        return f"{len(processes)} residue process(es) on the host, clean them with 0x10001000008002: {listed}"

    @workflow.signal(name="relaunch")
    async def relaunch(self, given: StepCommandInput) -> None:
        """The product's "re-launch" of a failed whole-host migration: retry the migration step."""
        await self._command(StepCommand.RETRY, given.model_copy(update={"step": MIGRATE_VMS}))


def _same(message: str) -> str:
    return message
