"""0x4000A000000007 auto-unlock after a lock: the host goes mlock | rlock | no_heartbeat -> free. Manual
report allowed, never approved (the product's fixed policy); the batch unlock of opsctl starts one per host."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.nc import NcActionInput, NcActivities
    from domain import transitions
    from domain.model import NcBizStatus
    from domain.operations import HostOutcomeKind, NcUnlockInput, OperationResult
    from domain.opscodes import OpsCode
    from workflows.common import HOUYI_STEP
    from workflows.lifecycle import OperationWorkflow
    from workflows.nc_steps import check_status, refuse_unless

UNLOCK_NC = "UnlockNc"
CHECK_FREE = "CheckFree"


@workflow.defn(name="NcUnlock")
class NcUnlockWorkflow(OperationWorkflow[NcUnlockInput]):
    """Input ``NcUnlockInput`` as raw JSON."""

    OPSCODE = OpsCode.AUTO_UNLOCK_AFTER_LOCK
    INPUT = NcUnlockInput

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    async def plan(self, request: NcUnlockInput) -> list[str]:
        nc = (await self.describe(request.nc_ip)).nc
        await refuse_unless(self, nc, transitions.NcAction.UNLOCK)
        self.declare_steps((UNLOCK_NC, False), (CHECK_FREE, False))
        return [
            f"unlock {nc.nc_ip} ({nc.nc_id}): {nc.biz_status.value} -> free; new VMs may land on it again"
        ]

    async def execute(self, request: NcUnlockInput) -> None:
        nc = self.details[request.nc_ip].nc
        action = NcActionInput(caller=self.workflow_id, step=UNLOCK_NC, nc_id=nc.nc_id, nc_ip=nc.nc_ip)
        await self.step(
            UNLOCK_NC,
            lambda: workflow.execute_activity_method(NcActivities.unlock_nc, action, **HOUYI_STEP),
            lambda c: f"{c.status_before.value} -> {c.status_after.value}",
        )
        await self.step(CHECK_FREE, lambda: check_status(self, nc.nc_id, NcBizStatus.FREE), lambda s: s.value)
        outcome = self.outcome(nc.nc_ip)
        outcome.status_after, outcome.outcome = NcBizStatus.FREE, HostOutcomeKind.SUCCEEDED
