"""0x10001000008002 VM residue on NC cleanup: destroy the VM processes left on a host that the control
plane places elsewhere or has released, and nothing else.

Only residues are destroyed: each destroy re-reads the process and the VM's record right before acting (a
migration finishing between plan and action turns a residue into the authoritative copy), and a VM whose
record points to this host is never destroyed, whatever the input says.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.evacuation import EvacuationActivities, ListClusterInput
    from activities.nc import LockNcInput, NcActionInput, NcActivities
    from activities.residue import DestroyInput, InventoryInput, ResidueActivities
    from domain import errors
    from domain.model import NcBizStatus, PowerState
    from domain.operations import (
        HostOutcomeKind,
        OperationInput,
        OperationResult,
        VmResidueCleanupInput,
        WildVmCleanupInput,
    )
    from domain.opscodes import OpsCode
    from domain.residue import ProcessOutcome, ProcessPlan, Verdict
    from workflows.common import HOUYI_READ, HOUYI_STEP, HOUYI_WRITE, run_lanes
    from workflows.lifecycle import OperationWorkflow

RequestT = TypeVar("RequestT", bound=OperationInput)

PRE_LOCK = "PreLock"
DESTROY = "DestroyResidues"
CHECK = "CheckResidues"
UNLOCK = "Unlock"


class ResidueCleanupWorkflow(OperationWorkflow[RequestT]):
    """What the residue cleanups share: a host's inventory, its guarded destroys, the check afterwards."""

    def force_clean(self) -> bool:
        settings = getattr(self.request, "settings", None)
        return bool(getattr(settings, "force_clean_wild_vm", False))

    async def inventory(self, nc_id: str) -> list[ProcessPlan]:
        return await workflow.execute_activity_method(
            ResidueActivities.inventory,
            InventoryInput(caller=self.workflow_id, nc_id=nc_id, force_clean_wild_vm=self.force_clean()),
            **HOUYI_READ,
        )

    async def destroy_on(self, nc_id: str, step: str) -> str:
        """Destroys the host's planned residues, each re-read right before; fails the step if any failed."""
        on_host = [p for p in self.status.processes if p.nc_id == nc_id]
        doomed = [
            p for p in on_host if p.destroy and p.outcome in (ProcessOutcome.PLANNED, ProcessOutcome.FAILED)
        ]
        for kept in on_host:
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
                        step=step,
                        nc_id=nc_id,
                        vm_id=planned.vm_id,
                        force_clean_wild_vm=self.force_clean(),
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
        failed = [p for p in self.status.processes if p.nc_id == nc_id and p.outcome is ProcessOutcome.FAILED]
        if failed:
            raise ApplicationError(
                f"{len(failed)} residue(s) could not be destroyed: "
                + "; ".join(f"{p.vm_id}: {p.message}" for p in failed),
                type=errors.ACTION_NOT_APPLIED,
                non_retryable=True,
            )
        destroyed = sum(
            1 for p in self.status.processes if p.nc_id == nc_id and p.outcome is ProcessOutcome.DESTROYED
        )
        return f"destroyed {destroyed} of {len(doomed)} planned"

    def _replace(self, plan: ProcessPlan) -> None:
        self.status.processes = [
            plan if (p.nc_id, p.vm_id) == (plan.nc_id, plan.vm_id) else p for p in self.status.processes
        ]
        self.publish_details()

    async def check_on(self, nc_id: str) -> str:
        left = {p.vm_id for p in await self.inventory(nc_id)}
        still = [
            p.vm_id
            for p in self.status.processes
            if p.nc_id == nc_id and p.outcome is ProcessOutcome.DESTROYED and p.vm_id in left
        ]
        if still:
            raise ApplicationError(
                f"destroyed residue(s) still listed on the host: {', '.join(still)}",
                type=errors.ACTION_NOT_APPLIED,
                non_retryable=True,
            )
        return f"{len(left)} VM process(es) left on the host"

    def counts(self, nc_id: str) -> str:
        on_host = [p for p in self.status.processes if p.nc_id == nc_id]
        counts = {o: sum(1 for p in on_host if p.outcome is o) for o in ProcessOutcome}
        return (
            f"{counts[ProcessOutcome.DESTROYED]} destroyed, "
            f"{counts[ProcessOutcome.SKIPPED] + counts[ProcessOutcome.PLANNED]} kept, "
            f"{counts[ProcessOutcome.FAILED]} failed"
        )


@workflow.defn(name="VmResidueCleanup")
class VmResidueCleanupWorkflow(ResidueCleanupWorkflow[VmResidueCleanupInput]):
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
        processes = await self.inventory(nc.nc_id)
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
        await self.step(DESTROY, lambda: self.destroy_on(nc.nc_id, DESTROY), _same)
        await self.step(CHECK, lambda: self.check_on(nc.nc_id), _same)
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
        outcome.outcome, outcome.message = HostOutcomeKind.SUCCEEDED, self.counts(nc.nc_id)


def _same(message: str) -> str:
    return message


def clean_step(nc_ip: str) -> str:
    return f"Clean {nc_ip}"


@workflow.defn(name="WildVmCleanup")
class WildVmCleanupWorkflow(ResidueCleanupWorkflow[WildVmCleanupInput]):
    """0x3000000000802: sweeps a cluster (or hosts) and cleans each host's residues, ``parallel`` hosts at
    once; each host with something to destroy is leased and admitted by flow control on its own."""

    OPSCODE = OpsCode.WILD_VM_CLEANUP
    INPUT = WildVmCleanupInput

    def __init__(self) -> None:
        super().__init__()
        self._dirty: list[str] = []

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)

    async def plan(self, request: WildVmCleanupInput) -> list[str]:
        if request.cluster_id is not None:
            hosts = await workflow.execute_activity_method(
                EvacuationActivities.list_cluster_ncs,
                ListClusterInput(caller=self.workflow_id, cluster_id=request.cluster_id),
                **HOUYI_READ,
            )
            if not hosts:
                await self.refuse(errors.INVALID_INPUT, f"cluster {request.cluster_id} has no host")
            candidates = [(nc.nc_ip, nc.nc_id) for nc in hosts if nc.power_state is PowerState.ON]
            scope = f"cluster {request.cluster_id}: {len(candidates)} powered-on host(s) of {len(hosts)}"
        else:
            nc_ips = request.nc_ips or []
            candidates = [
                (nc_ip, detail.nc.nc_id)
                for nc_ip, detail in zip(nc_ips, await self.describe_all(nc_ips), strict=True)
            ]
            scope = f"{len(candidates)} host(s)"
        processes: list[ProcessPlan] = []
        for _, nc_id in candidates:
            found = await self.inventory(nc_id)
            if request.settings.vm is not None:
                found = [p for p in found if p.vm_id == request.settings.vm]
            processes += found
        self.status.processes = processes
        dirty = [
            (ip, nc_id) for ip, nc_id in candidates if any(p.destroy and p.nc_id == nc_id for p in processes)
        ]
        if request.cluster_id is not None:
            # Only the hosts with something to destroy become part of the operation (leased, admitted);
            # a clean sweep still records one host so the operation has its row.
            await self.describe_all([nc_ip for nc_ip, _ in dirty or candidates[:1]])
        self._dirty = [ip for ip, _ in dirty]
        self.declare_steps(*[(clean_step(ip), True) for ip in self._dirty])
        doomed = [p for p in processes if p.destroy]
        lines = [
            f"sweep {scope}: {len(processes)} VM process(es), {len(doomed)} residue(s) to destroy on {len(dirty)} host(s)"
        ]
        lines += [f"destroy {p.vm_id} on {p.nc_id} (pid {p.pid}): {p.reason}" for p in doomed]
        kept = [p for p in processes if not p.destroy and p.verdict is not Verdict.AUTHORITATIVE]
        lines += [f"keep {p.vm_id} on {p.nc_id}: {p.reason}" for p in kept]
        return lines

    async def execute(self, request: WildVmCleanupInput) -> None:
        admitted = {h.nc_ip: h.nc_id for h in self.admitted_hosts()}
        gate = asyncio.Semaphore(request.settings.parallel)

        async def clean(nc_ip: str) -> None:
            async with gate:
                nc_id = admitted[nc_ip]
                outcome = self.outcome(nc_ip)
                cleaned = await self.step(clean_step(nc_ip), lambda: self._clean(nc_id, nc_ip), _same)
                outcome.outcome = (
                    HostOutcomeKind.SUCCEEDED if cleaned is not None else HostOutcomeKind.SKIPPED
                )
                outcome.message = self.counts(nc_id)

        await run_lanes(*(clean(ip) for ip in self._dirty if ip in admitted))
        for host in self.admitted_hosts():
            if host.nc_ip not in self._dirty:
                outcome = self.outcome(host.nc_ip)
                outcome.outcome, outcome.message = HostOutcomeKind.SUCCEEDED, "no residue to destroy"

    async def _clean(self, nc_id: str, nc_ip: str) -> str:
        destroyed = await self.destroy_on(nc_id, clean_step(nc_ip))
        checked = await self.check_on(nc_id)
        return f"{destroyed}; {checked}"
