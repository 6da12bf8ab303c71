"""0x410A01 lock NC ("[NE] lock NC -> done"): the host goes free -> mlock; its VMs keep running, nothing new lands."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.nc import LockNcInput, NcActionInput, NcActivities
    from domain import transitions
    from domain.model import NcBizStatus
    from domain.operations import HostOutcomeKind, NcLockInput, OperationResult
    from domain.opscodes import OpsCode
    from workflows.common import HOUYI_STEP, HOUYI_WRITE
    from workflows.lifecycle import OperationWorkflow
    from workflows.nc_steps import check_status, refuse_unless

LOCK_NC = "LockNc"
CHECK_LOCKED = "CheckLocked"


@workflow.defn(name="NcLock")
class NcLockWorkflow(OperationWorkflow[NcLockInput]):
    """Input ``NcLockInput`` as raw JSON: the lifecycle validates it, so bad input is an audited refusal."""

    OPSCODE = OpsCode.NC_LOCK
    INPUT = NcLockInput

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    async def plan(self, request: NcLockInput) -> list[str]:
        nc = (await self.describe(request.nc_ip)).nc
        await refuse_unless(self, nc, transitions.NcAction.LOCK)
        self.declare_steps((LOCK_NC, False), (CHECK_LOCKED, False))
        vms = len(self.details[request.nc_ip].vms)
        return [f"lock {nc.nc_ip} ({nc.nc_id}): {nc.biz_status.value} -> mlock; its {vms} VM(s) keep running"]

    async def execute(self, request: NcLockInput) -> None:
        nc = self.details[request.nc_ip].nc
        action = NcActionInput(caller=self.workflow_id, step=LOCK_NC, nc_id=nc.nc_id, nc_ip=nc.nc_ip)
        change = await self.step(
            LOCK_NC,
            lambda: workflow.execute_activity_method(
                NcActivities.lock_nc, LockNcInput(**action.model_dump()), **HOUYI_STEP
            ),
            lambda c: f"{c.status_before.value} -> {c.status_after.value}",
        )
        if change is not None:
            self.on_cancel(
                f"unlock {nc.nc_ip}",
                lambda: workflow.execute_activity_method(
                    NcActivities.unlock_nc,
                    action.model_copy(update={"step": "CompensateUnlock"}),
                    **HOUYI_WRITE,
                ),
            )
        await self.step(
            CHECK_LOCKED, lambda: check_status(self, nc.nc_id, NcBizStatus.MLOCK), lambda s: s.value
        )
        outcome = self.outcome(nc.nc_ip)
        outcome.status_after, outcome.outcome = NcBizStatus.MLOCK, HostOutcomeKind.SUCCEEDED
        workflow.logger.info(
            "nc locked", extra={"nc_ip": nc.nc_ip, "nc_id": nc.nc_id, "opscode": self.OPSCODE.value}
        )
