"""The deep offline chain that 0x400003 (with live migration, workflows.nc_deep_offline) and 0x40003000001001
(without, workflows.nc_deep_offline_cold) run: empty the host, reboot it.

The product's 13 steps, under its names and in its order (DOMAIN.md, "0x400003"); the cold variant runs
the same chain without ``OpsEvnLiveMigrate``. The host is never powered off with a VM on it: ``CheckBeforeReboot``
re-reads it, and the power-off activity reads it again right before acting.
"""

from __future__ import annotations

from typing import ClassVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.evacuation import EvacuationActivities, NotifyInput
    from domain import errors
    from domain.model import NcBizStatus
    from domain.operations import HostOutcomeKind, NcDeepOfflineInput
    from workflows.common import HOUYI_STEP
    from workflows.evacuation import RECORD_VMS, EvacuationWorkflow

LOCK_NC = "LockNc"
INIT_VM_STATUS = "InitVmStatus"
LIVE_MIGRATE = "OpsEvnLiveMigrate"
RESERVE_RI = "ReserveRIPoll"
NOTIFY = "OpsEvnNotify"
RECOVER = "RecoverVmInTnb"
CHECK_BEFORE_REBOOT = "CheckBeforeReboot"
PUBLISH_EVENT = "OpsEvnPublishEvent"
SHUTDOWN = "OpsEvnShutdownNc"
POWER_ON = "OnlyPowerOnSpecifiedNc"
RELEASE_RI = "ReleaseRIPoll"
FINISH = "OpsEvnFinishOps"

# Statuses a deep offline starts from: a host in service, or one already locked for it.
STARTS_FROM = (NcBizStatus.FREE, NcBizStatus.MLOCK)


class DeepOfflineWorkflow(EvacuationWorkflow[NcDeepOfflineInput]):
    """Each opscode's workflow class is in a module of its own that imports this one passed through: a
    sandbox that re-runs a workflow's module for every new run (the SDK's default; the worker passes
    ``workflows`` through, worker.WORKFLOW_RUNNER) then re-runs only that small module, not this chain and
    both ``workflow.defn`` classes."""

    INPUT = NcDeepOfflineInput
    LIVE: ClassVar[bool]

    def steps(self) -> list[tuple[str, bool]]:
        # (name, skippable): notification and events may be skipped by an operator; moving VMs, checking
        # the host is empty and power may not.
        steps = [(LOCK_NC, False), (INIT_VM_STATUS, False)]
        if self.LIVE:
            steps.append((LIVE_MIGRATE, False))
        steps += [
            (RESERVE_RI, True),
            (NOTIFY, True),
            (RECOVER, False),
            (CHECK_BEFORE_REBOOT, False),
            (PUBLISH_EVENT, True),
            (SHUTDOWN, False),
            (POWER_ON, False),
            (PUBLISH_EVENT, True),
            (RELEASE_RI, True),
            (FINISH, False),
        ]
        return steps

    async def plan(self, request: NcDeepOfflineInput) -> list[str]:
        detail = await self.describe(request.nc_ip)
        nc = detail.nc
        if nc.biz_status not in STARTS_FROM:
            await self.refuse(
                errors.NC_WRONG_STATUS,
                f"NC {nc.nc_ip} ({nc.nc_id}) is {nc.biz_status.value}: a deep offline starts from "
                f"{' or '.join(s.value for s in STARTS_FROM)}",
            )
        self.declare_steps(*self.steps())
        lines = [f"lock {nc.nc_ip} ({nc.nc_id}): {nc.biz_status.value} -> mlock"]
        lines += await self.plan_evacuation(live=self.LIVE)
        lines.append("power the host off through OOB once it is empty, then on again; it ends nc_down")
        if request.settings.need_limit == 0:
            lines.append("flow control bypassed (needLimit=0)")
        return lines

    async def execute(self, request: NcDeepOfflineInput) -> None:
        settings = request.settings
        nc = self.source
        # The host stays locked on every exit path: unlocking is an operator's act after a deep offline.
        await self.step(LOCK_NC, lambda: self.lock_source(LOCK_NC), _same)
        await self.step(INIT_VM_STATUS, lambda: self.init_vm_status(live=self.LIVE), _same)
        if self.LIVE:
            await self.step(LIVE_MIGRATE, lambda: self.live_migrate_all(LIVE_MIGRATE), _same)
        await self.step(RESERVE_RI, lambda: self.reserve_ri(RESERVE_RI), _same)
        await self.step(NOTIFY, self._notify, _same)
        await self.step(
            RECOVER,
            lambda: self.recover_cold(
                RECOVER, after=settings.after_cold_migration, forced=settings.cold_forced
            ),
            _same,
        )
        await self.step(CHECK_BEFORE_REBOOT, self.check_empty, _same)
        await self.step(PUBLISH_EVENT, lambda: self.publish(PUBLISH_EVENT, "nc_going_offline"), _same)
        await self.step(SHUTDOWN, lambda: self.shut_down(SHUTDOWN), _same)
        await self.step(
            POWER_ON,
            lambda: self.power_on(POWER_ON, only_specified=settings.only_power_on_specified == 1),
            _same,
        )
        await self.step(
            PUBLISH_EVENT, lambda: self.publish(f"{PUBLISH_EVENT}#2", "nc_back_from_offline"), _same
        )
        await self.step(RELEASE_RI, lambda: self.release_ri(RELEASE_RI), _same)
        await self.step(FINISH, self._finish_ops, _same)
        outcome = self.outcome(nc.nc_ip)
        outcome.outcome = HostOutcomeKind.SUCCEEDED
        workflow.logger.info(
            "nc evacuated and rebooted",
            extra={
                "nc_ip": nc.nc_ip,
                "nc_id": nc.nc_id,
                "opscode": self.OPSCODE.value,
                "vms": len(self.status.vms),
            },
        )

    async def _notify(self) -> str:
        target = self.request.requester
        await workflow.execute_activity_method(
            EvacuationActivities.notify,
            NotifyInput(
                caller=self.workflow_id,
                step=NOTIFY,
                target=target,
                message=f"{self.OPSCODE.value} on {self.source.nc_ip}: {self.status.progress}",
            ),
            **HOUYI_STEP,
        )
        return f"notified {target}"

    async def _finish_ops(self) -> str:
        await self.record_placements()
        self.done_on_exit(RECORD_VMS)
        detail = await self.read_source()
        outcome = self.outcome(self.source.nc_ip)
        outcome.status_after = detail.nc.biz_status
        live = sum(1 for m in self.status.vms if m.state.value == "migrated")
        cold = sum(1 for m in self.status.vms if m.state.value == "cold_migrated")
        outcome.message = f"{len(self.status.vms)} VM(s) moved off: {live} live, {cold} cold"
        return f"{outcome.message}; host {detail.nc.biz_status.value}, power {detail.nc.power_state.value}"


def _same(message: str) -> str:
    return message
