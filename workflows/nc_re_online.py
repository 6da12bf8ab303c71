"""0x400011 restore NC online: after a reboot, once the fault is understood, hosts go nc_down -> free.

Several hosts at once (``nc_ips``), at most ``parallel`` in flight; one host failing does not stop the others.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.nc import NcActivities, SetNcStatusInput
    from domain import errors, transitions
    from domain.model import Nc, NcBizStatus, PowerState
    from domain.operations import HostOutcomeKind, NcReOnlineInput, OperationResult, OpsState
    from domain.opscodes import OpsCode
    from workflows.common import HOUYI_STEP, run_lanes
    from workflows.lifecycle import OperationEnded, OperationWorkflow
    from workflows.nc_steps import check_status

WAIT_AFTER_REBOOT = "WaitAfterReboot"


def re_online_step(nc_ip: str) -> str:
    return f"ReOnline {nc_ip}"


def check_online_step(nc_ip: str) -> str:
    return f"CheckOnline {nc_ip}"


@workflow.defn(name="NcReOnline")
class NcReOnlineWorkflow(OperationWorkflow[NcReOnlineInput]):
    """Input ``NcReOnlineInput`` as raw JSON."""

    OPSCODE = OpsCode.NC_RE_ONLINE
    INPUT = NcReOnlineInput

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    async def plan(self, request: NcReOnlineInput) -> list[str]:
        ncs = [detail.nc for detail in await self.describe_all(request.nc_ips)]
        settings = request.settings
        if not settings.ignore_status:
            problems = [problem for nc in ncs if (problem := self._not_ready(nc))]
            if problems:
                await self.refuse(
                    errors.NC_WRONG_STATUS, "; ".join(problems) + " (ReOnline.ignoreStatus skips this check)"
                )
        steps: list[tuple[str, bool]] = [(WAIT_AFTER_REBOOT, True)]
        for nc in ncs:
            # A host's steps are skippable: skipping leaves that host as it is while the others go on.
            steps += [(re_online_step(nc.nc_ip), True), (check_online_step(nc.nc_ip), True)]
        self.declare_steps(*steps)
        lines = [f"re-online {nc.nc_ip} ({nc.nc_id}): {nc.biz_status.value} -> free" for nc in ncs]
        lines.append(
            f"at most {settings.parallel} host(s) at once, after waiting {settings.nc_re_online_seconds} s"
        )
        if settings.ignore_status:
            lines.append("status and heartbeat checks skipped (ReOnline.ignoreStatus)")
        return lines

    @staticmethod
    def _not_ready(nc: Nc) -> str | None:
        if nc.biz_status is NcBizStatus.NO_HEARTBEAT:
            return f"NC {nc.nc_ip} ({nc.nc_id}) has no heartbeat"
        if not transitions.can_apply(transitions.NcAction.RE_ONLINE, nc.biz_status):
            return f"NC {nc.nc_ip} ({nc.nc_id}) is {nc.biz_status.value}: cannot re-online (allowed from: nc_down)"
        if nc.power_state is not PowerState.ON:
            return f"NC {nc.nc_ip} ({nc.nc_id}) power is {nc.power_state.value}, not on"
        return None

    async def execute(self, request: NcReOnlineInput) -> None:
        settings = request.settings
        wait = timedelta(seconds=settings.nc_re_online_seconds)
        await self.step(WAIT_AFTER_REBOOT, lambda: workflow.sleep(wait), lambda _: f"waited {wait}")
        slots = asyncio.Semaphore(settings.parallel)

        async def re_online(nc: Nc) -> None:
            async with slots:
                await self._re_online(nc)

        hosts = [self.details[h.nc_ip].nc for h in self.admitted_hosts()]
        await run_lanes(*(re_online(nc) for nc in hosts))
        failed = [
            o for o in self.status.outcomes if o.outcome in (HostOutcomeKind.FAILED, HostOutcomeKind.SKIPPED)
        ]
        if failed:
            done = sum(1 for o in self.status.outcomes if o.outcome is HostOutcomeKind.SUCCEEDED)
            raise OperationEnded(
                OpsState.FAILED,
                f"{done} of {len(self.status.outcomes)} host(s) re-onlined; not: "
                + "; ".join(f"{o.nc_ip}: {o.message}" for o in failed),
                errors.ACTION_NOT_APPLIED,
            )

    async def _re_online(self, nc: Nc) -> None:
        outcome = self.outcome(nc.nc_ip)
        try:
            changed = await self.step(
                re_online_step(nc.nc_ip),
                lambda: workflow.execute_activity_method(
                    NcActivities.set_nc_status,
                    SetNcStatusInput(
                        caller=self.workflow_id,
                        step=re_online_step(nc.nc_ip),
                        nc_id=nc.nc_id,
                        nc_ip=nc.nc_ip,
                        status=NcBizStatus.FREE,
                    ),
                    **HOUYI_STEP,
                ),
                lambda c: f"{c.status_before.value} -> {c.status_after.value}",
            )
            if changed is None:
                outcome.outcome, outcome.message = HostOutcomeKind.SKIPPED, "skipped by an operator"
                return
            status = await self.step(
                check_online_step(nc.nc_ip),
                lambda: check_status(self, nc.nc_id, NcBizStatus.FREE),
                lambda s: s.value,
            )
        except OperationEnded as ended:
            # An operator aborted this host, or nobody acted in time: the others go on.
            outcome.outcome, outcome.message = HostOutcomeKind.FAILED, ended.message
            return
        outcome.status_after = NcBizStatus.FREE
        outcome.outcome = HostOutcomeKind.SUCCEEDED if status is not None else HostOutcomeKind.SKIPPED
        outcome.message = "" if status is not None else "check skipped by an operator"
        workflow.logger.info(
            "nc re-onlined", extra={"nc_ip": nc.nc_ip, "nc_id": nc.nc_id, "opscode": self.OPSCODE.value}
        )
