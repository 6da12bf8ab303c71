"""0x400012 NC forced reboot: OOB power cycle whether or not VMs run on the host; it ends nc_down."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.nc import LockNcInput, NcActionInput, NcActivities, WaitPowerInput
    from domain import transitions
    from domain.model import NcBizStatus, PowerState
    from domain.operations import HostOutcomeKind, NcForcedRebootInput, OperationResult
    from domain.opscodes import OpsCode
    from workflows.common import HOUYI_STEP, HOUYI_WRITE
    from workflows.lifecycle import OperationWorkflow
    from workflows.nc_steps import check_status, refuse_unless

PRE_LOCK = "PreLock"
DUMP_CN = "DumpCnMemory"
POWER_CYCLE = "OpsEvnPowerCycleNc"
WAIT_POWER_ON = "WaitPowerOn"
CHECK_DOWN = "CheckNcDown"

# OOB power changes are slow (minutes); the activity polls and heartbeats, so a dead worker is noticed.
WAIT_POWER: dict[str, Any] = {
    **HOUYI_STEP,
    "start_to_close_timeout": timedelta(minutes=30),
    "heartbeat_timeout": timedelta(minutes=3),
}


@workflow.defn(name="NcForcedReboot")
class NcForcedRebootWorkflow(OperationWorkflow[NcForcedRebootInput]):
    """Input ``NcForcedRebootInput`` as raw JSON."""

    OPSCODE = OpsCode.NC_FORCED_REBOOT
    INPUT = NcForcedRebootInput

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    async def plan(self, request: NcForcedRebootInput) -> list[str]:
        detail = await self.describe(request.nc_ip)
        nc = detail.nc
        await refuse_unless(self, nc, transitions.NcAction.REBOOT)
        settings = request.settings
        steps: list[tuple[str, bool]] = []
        lines = []
        if self._pre_lock(request):
            steps.append((PRE_LOCK, True))
            lines.append(f"lock {nc.nc_ip} first (preLock=0): free -> mlock")
        if settings.need_dump_cn:
            steps.append((DUMP_CN, True))
            lines.append("dump the controller node's memory before the reboot (needDumpCn=1)")
        steps += [(POWER_CYCLE, False), (WAIT_POWER_ON, False), (CHECK_DOWN, False)]
        self.declare_steps(*steps)
        running = sum(1 for vm in detail.vms if vm.status.value == "running")
        lines.append(
            f"power-cycle {nc.nc_ip} ({nc.nc_id}) through OOB: {len(detail.vms)} VM(s) on it, "
            f"{running} running, will go down with it"
        )
        lines.append(
            f"afterwards the host is nc_down (now {nc.biz_status.value}); re-online it with 0x400011"
        )
        if settings.need_limit == 0:
            lines.append("flow control bypassed (needLimit=0)")
        return lines

    def _pre_lock(self, request: NcForcedRebootInput) -> bool:
        # Locking applies only to a free host; any other status already keeps new VMs off it.
        nc = self.details[request.nc_ip].nc
        return request.settings.pre_lock == 0 and nc.biz_status is NcBizStatus.FREE

    async def execute(self, request: NcForcedRebootInput) -> None:
        nc = self.details[request.nc_ip].nc

        def action(step: str) -> NcActionInput:
            return NcActionInput(caller=self.workflow_id, step=step, nc_id=nc.nc_id, nc_ip=nc.nc_ip)

        if self._pre_lock(request):
            locked = await self.step(
                PRE_LOCK,
                lambda: workflow.execute_activity_method(
                    NcActivities.lock_nc, LockNcInput(**action(PRE_LOCK).model_dump()), **HOUYI_STEP
                ),
                lambda c: f"{c.status_before.value} -> {c.status_after.value}",
            )
            if locked is not None:
                self.on_cancel(
                    f"unlock {nc.nc_ip}",
                    lambda: workflow.execute_activity_method(
                        NcActivities.unlock_nc, action("CompensateUnlock"), **HOUYI_WRITE
                    ),
                )
        if request.settings.need_dump_cn:
            await self.step(
                DUMP_CN,
                lambda: workflow.execute_activity_method(
                    NcActivities.dump_cn_memory, action(DUMP_CN), **HOUYI_STEP
                ),
                lambda d: f"dump {d.dump_id}",
            )
        await self.step(
            POWER_CYCLE,
            lambda: workflow.execute_activity_method(
                NcActivities.power_cycle_nc, action(POWER_CYCLE), **HOUYI_STEP
            ),
            lambda p: f"power {p.power_state.value}",
        )
        # Nothing undoes a reboot: a cancel from here on leaves the host as the reboot left it.
        self.clear_compensations()
        await self.step(
            WAIT_POWER_ON,
            lambda: workflow.execute_activity_method(
                NcActivities.wait_power_settled,
                WaitPowerInput(
                    caller=self.workflow_id, nc_id=nc.nc_id, nc_ip=nc.nc_ip, expected=PowerState.ON
                ),
                **WAIT_POWER,
            ),
            lambda p: f"power {p.power_state.value}",
        )
        await self.step(
            CHECK_DOWN, lambda: check_status(self, nc.nc_id, NcBizStatus.NC_DOWN), lambda s: s.value
        )
        outcome = self.outcome(nc.nc_ip)
        outcome.status_after, outcome.outcome = NcBizStatus.NC_DOWN, HostOutcomeKind.SUCCEEDED
        workflow.logger.info(
            "nc rebooted", extra={"nc_ip": nc.nc_ip, "nc_id": nc.nc_id, "opscode": self.OPSCODE.value}
        )
