"""Which VM processes on a host are garbage (DOMAIN.md, "0x10001000008002 — VM residue on NC cleanup").

A process is a **residue** when the control plane's record of its VM points to another host or says the VM
is released; it is **authoritative** when the record points to this host. Only residues are ever destroyed,
and only when their process is quiet, unless ``foreCleanWildVm`` allows a released VM to go without that
check. Pure: the workflows call ``classify`` on what the activities read, again right before each destroy.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from domain.model import Vm, VmStatus


class Verdict(StrEnum):
    RESIDUE_ELSEWHERE = "residue_elsewhere"  # the record places the VM on another host
    RESIDUE_RELEASED = "residue_released"  # the VM is released
    AUTHORITATIVE = "authoritative"  # the record places the VM here: never destroyed
    UNKNOWN = "unknown"  # the control plane has no record: not provably garbage


class ProcessOutcome(StrEnum):
    PLANNED = "planned"
    DESTROYED = "destroyed"
    SKIPPED = "skipped"
    FAILED = "failed"


class ProcessPlan(BaseModel):
    """One VM process found on the host: what it is, what will happen to it, and what did."""

    nc_id: str
    vm_id: str
    pid: int
    process_state: str
    guest_active: bool
    record_nc_id: str | None
    record_status: VmStatus | None
    verdict: Verdict
    destroy: bool
    reason: str
    outcome: ProcessOutcome = ProcessOutcome.PLANNED
    message: str = ""


def classify(
    *,
    nc_id: str,
    vm_id: str,
    pid: int,
    process_state: str,
    guest_active: bool,
    record: Vm | None,
    force_clean_wild_vm: bool,
) -> ProcessPlan:
    """The verdict on one process of host ``nc_id`` and whether it may be destroyed, with the reason."""

    def plan(verdict: Verdict, destroy: bool, reason: str) -> ProcessPlan:
        return ProcessPlan(
            nc_id=nc_id,
            vm_id=vm_id,
            pid=pid,
            process_state=process_state,
            guest_active=guest_active,
            record_nc_id=record.nc_id if record else None,
            record_status=record.status if record else None,
            verdict=verdict,
            destroy=destroy,
            reason=reason,
        )

    if record is None:
        return plan(Verdict.UNKNOWN, False, "the control plane has no record of this VM: left for a person")
    released = record.status is VmStatus.RELEASED
    if record.nc_id == nc_id and not released:
        return plan(
            Verdict.AUTHORITATIVE,
            False,
            f"authoritative: the record places {vm_id} on this host ({record.status.value}); never destroyed",
        )
    verdict = Verdict.RESIDUE_RELEASED if released else Verdict.RESIDUE_ELSEWHERE
    why = (
        "the VM is released"
        if released
        else f"the record places {vm_id} on {record.nc_id} ({record.status.value})"
    )
    if released and force_clean_wild_vm:
        return plan(
            verdict, True, f"residue: {why}; foreCleanWildVm=true, cleaned without checking the process"
        )
    if guest_active or process_state == "running":
        return plan(
            verdict,
            False,
            f"residue ({why}) but its process is {process_state} with guest activity={guest_active}: "
            "not destroyed while it may run guest work",
        )
    return plan(verdict, True, f"residue: {why}; its process is {process_state} and quiet")
