"""Activities of residue cleanup: what runs on a host and what the control plane says of it, and the
guarded destroy that re-reads both right before acting."""

from __future__ import annotations

import structlog
from pydantic import BaseModel
from temporalio import activity

from activities.errors import from_houyi
from activities.heartbeat import Pulse, heartbeating
from domain.model import Vm
from domain.residue import ProcessOutcome, ProcessPlan, classify
from houyi.errors import HouyiError, HouyiNotFound
from houyi.port import CallContext, HouyiPort, VmProcess

log = structlog.get_logger(__name__)


class InventoryInput(BaseModel):
    caller: str
    nc_id: str
    force_clean_wild_vm: bool = False


class DestroyInput(BaseModel):
    caller: str
    step: str
    nc_id: str
    vm_id: str
    force_clean_wild_vm: bool = False


class ResidueActivities:
    def __init__(self, houyi: HouyiPort) -> None:
        self._houyi = houyi

    @activity.defn(name="InventoryVmProcesses")
    async def inventory(self, request: InventoryInput) -> list[ProcessPlan]:
        """Every VM process on the host with the control plane's record of its VM, classified."""
        ctx = CallContext(caller=request.caller)
        try:
            processes = await heartbeating(self._houyi.list_vm_processes(ctx, nc_id=request.nc_id))
            plans = []
            pulse = Pulse()
            for process in processes:
                record = await self._record(ctx, process.vm_id)
                plans.append(self._classify(request.nc_id, process, record, request.force_clean_wild_vm))
                pulse.beat(len(plans))
        except HouyiError as error:
            raise from_houyi(error) from None
        return plans

    @activity.defn(name="DestroyResidue")
    async def destroy(self, request: DestroyInput) -> ProcessPlan:
        """Re-reads the process and the VM's record, then destroys the process only if it is still a quiet
        residue. The token (``<workflow>/<step>/<vm>``) makes a retry after a lost answer a replay."""
        ctx = CallContext(caller=request.caller)
        bound = log.bind(nc_id=request.nc_id, vm_id=request.vm_id)
        try:
            processes = await heartbeating(self._houyi.list_vm_processes(ctx, nc_id=request.nc_id))
            process = next((p for p in processes if p.vm_id == request.vm_id), None)
            record = await self._record(ctx, request.vm_id)
            token = ctx.step(f"{request.step}/{request.vm_id}")
            if process is None:
                # Gone: destroyed by an earlier attempt of ours (the token replays its answer) or by
                # someone else (Houyi answers not found).
                try:
                    await heartbeating(
                        self._houyi.destroy_vm_process(token, nc_id=request.nc_id, vm_id=request.vm_id)
                    )
                except HouyiNotFound:
                    return self._gone(request, record)
                return self._gone(request, record, ours=True)
            plan = self._classify(request.nc_id, process, record, request.force_clean_wild_vm)
            if not plan.destroy:
                bound.warning("not destroyed: it is no longer a quiet residue", reason=plan.reason)
                return plan.model_copy(
                    update={
                        "outcome": ProcessOutcome.SKIPPED,
                        "message": f"re-read before destroying: {plan.reason}",
                    }
                )
            await heartbeating(
                self._houyi.destroy_vm_process(token, nc_id=request.nc_id, vm_id=request.vm_id)
            )
        except HouyiError as error:
            raise from_houyi(error) from None
        bound.info("residue destroyed", reason=plan.reason)
        return plan.model_copy(update={"outcome": ProcessOutcome.DESTROYED, "message": plan.reason})

    async def _record(self, ctx: CallContext, vm_id: str) -> Vm | None:
        try:
            return await self._houyi.describe_vm(ctx, vm_id=vm_id)
        except HouyiNotFound:
            return None

    @staticmethod
    def _classify(nc_id: str, process: VmProcess, record: Vm | None, force: bool) -> ProcessPlan:
        return classify(
            nc_id=nc_id,
            vm_id=process.vm_id,
            pid=process.pid,
            process_state=process.state.value,
            guest_active=process.guest_active,
            record=record,
            force_clean_wild_vm=force,
        )

    @staticmethod
    def _gone(request: DestroyInput, record: Vm | None, *, ours: bool = False) -> ProcessPlan:
        return ProcessPlan(
            nc_id=request.nc_id,
            vm_id=request.vm_id,
            pid=0,
            process_state="gone",
            guest_active=False,
            record_nc_id=record.nc_id if record else None,
            record_status=record.status if record else None,
            verdict=classify(
                nc_id=request.nc_id,
                vm_id=request.vm_id,
                pid=0,
                process_state="gone",
                guest_active=False,
                record=record,
                force_clean_wild_vm=False,
            ).verdict,
            destroy=ours,
            reason="destroyed by this operation" if ours else "the process was gone already",
            outcome=ProcessOutcome.DESTROYED if ours else ProcessOutcome.SKIPPED,
            message="destroyed (answer replayed)" if ours else "the process was gone already",
        )
