"""Evacuating a host: which VM leaves how, whether the cluster can take them all, how long it takes.

Pure: the workflows call these on what the activities read from Houyi. DOMAIN.md, "0x400003", "Live
migration (Houyi)" and "Audit and monitoring" (spare capacity) are the spec.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, Field

from domain.model import (
    LiveMigrationBlocker,
    Nc,
    NcBizStatus,
    PowerState,
    Vm,
    VmStatus,
    live_migration_blockers,
)

# A cold migration stops the VM, moves its record and disks' attachment and boots it elsewhere: minutes.
COLD_MIGRATION_ESTIMATE_SECONDS = 180.0
# OOB power off, settle, power on, settle: the product polls every 60 s, a cycle takes ~10 minutes.
POWER_CYCLE_ESTIMATE_SECONDS = 600.0
# Fixed cost of a live migration besides copying memory: setup, final pause, switch-over.
LIVE_MIGRATION_SETUP_SECONDS = 5.0


class MigrationMethod(StrEnum):
    LIVE = "live"
    COLD = "cold"


class VmMoveState(StrEnum):
    """Where one VM of an evacuation stands."""

    PENDING = "pending"
    MIGRATING = "migrating"
    MIGRATED = "migrated"  # live, now on another host
    HANDED_TO_COLD = "handed_to_cold"  # waits for RecoverVmInTnb
    COLD_MIGRATING = "cold_migrating"
    COLD_MIGRATED = "cold_migrated"
    STUCK = "stuck"  # in migrating, cannot be cancelled: an operator says where it runs
    FAILED = "failed"
    CANCELLED = "cancelled"
    GONE = "gone"  # released or deleted meanwhile: nothing to move

    @property
    def moved(self) -> bool:
        return self in (VmMoveState.MIGRATED, VmMoveState.COLD_MIGRATED, VmMoveState.GONE)


class VmPlan(BaseModel):
    """One VM of the host as the plan shows it before approval."""

    vm_id: str
    status: VmStatus
    instance_type: str
    vcpu: int
    memory_gib: int
    method: MigrationMethod
    blockers: list[str] = Field(default_factory=list, description="why it cannot be live-migrated")
    estimated_seconds: float


class VmMove(BaseModel):
    """The per-VM record of an evacuation: shown in the UI, kept in the result."""

    vm_id: str
    vcpu: int
    memory_gib: int
    status_before: VmStatus
    method: MigrationMethod
    blockers: list[str] = Field(default_factory=list)
    estimated_seconds: float = 0.0
    state: VmMoveState = VmMoveState.PENDING
    nc_id: str = Field(description="where the VM is, as last read")
    status: VmStatus | None = None
    target_nc_id: str | None = None
    migration_id: str | None = None
    live_attempts: int = 0
    cold_attempts: int = 0
    message: str = ""


class SizeCapacity(BaseModel):
    """DOMAIN.md's spare capacity of the cluster for one VM size, against the VMs of that size to place."""

    vcpu: int
    memory_gib: int
    vm_count: int
    spare: int


class EvacuationPlan(BaseModel):
    vms: list[VmPlan]
    capacity: list[SizeCapacity]
    target_hosts: int = Field(description="free, powered-on hosts of the cluster other than the source")
    unplaceable: list[str] = Field(
        default_factory=list, description="VMs a first-fit-decreasing placement finds no room for"
    )
    estimated_seconds: float

    @property
    def live(self) -> list[VmPlan]:
        return [vm for vm in self.vms if vm.method is MigrationMethod.LIVE]

    @property
    def cold(self) -> list[VmPlan]:
        return [vm for vm in self.vms if vm.method is MigrationMethod.COLD]

    def lines(self) -> list[str]:
        """The plan as the approver reads it."""
        lines = [
            f"{len(self.vms)} VM(s): {len(self.live)} live-migrated, {len(self.cold)} cold-migrated in the "
            f"maintenance window; {self.target_hosts} free target host(s)"
        ]
        for size in self.capacity:
            lines.append(
                f"spare capacity for {size.vcpu} vCPU / {size.memory_gib} GiB: {size.spare} "
                f"(needed {size.vm_count})"
            )
        if self.unplaceable:
            lines.append(f"no room in the cluster for: {', '.join(self.unplaceable)}")
        minutes = self.estimated_seconds / 60
        lines.append(f"estimated duration {minutes:.0f} min (maintenance-window wait not included)")
        return lines


def live_migration_seconds(memory_gib: int, rate_mb_per_second: int) -> float:
    """One copy of the VM's memory at ``rate`` plus the switch-over (DOMAIN.md: the rate caps the copy)."""
    return LIVE_MIGRATION_SETUP_SECONDS + memory_gib * 1024 / max(rate_mb_per_second, 1)


def target_hosts(source: Nc, cluster: Iterable[Nc], target_nc_id: str | None = None) -> list[Nc]:
    """Hosts that can receive the source's VMs now: same cluster, free, powered on (the given one only)."""
    return [
        nc
        for nc in cluster
        if nc.nc_id != source.nc_id
        and nc.cluster_id == source.cluster_id
        and nc.biz_status is NcBizStatus.FREE
        and nc.power_state is PowerState.ON
        and (target_nc_id is None or nc.nc_id == target_nc_id)
    ]


def blockers_against(vm: Vm, source: Nc, targets: Sequence[Nc]) -> list[str]:
    """Every reason the VM cannot be live-migrated; a CPU or software mismatch counts only when it holds
    against every candidate target (one matching host is enough)."""
    reasons = [] if vm.status is VmStatus.RUNNING else [f"not running ({vm.status.value})"]
    reasons += [
        b.value for b in live_migration_blockers(vm, source) if b is not LiveMigrationBlocker.NOT_RUNNING
    ]
    if not targets:
        return reasons
    if all(t.cpu_model != source.cpu_model for t in targets):
        reasons.append(LiveMigrationBlocker.CPU_MODEL_MISMATCH.value)
    if all(t.software_version != source.software_version for t in targets):
        reasons.append(LiveMigrationBlocker.SOFTWARE_VERSION_MISMATCH.value)
    if not reasons and not any(
        t.cpu_model == source.cpu_model and t.software_version == source.software_version for t in targets
    ):
        reasons.append("no target with the same cpu model and software version")
    return reasons


def spare_capacity(vcpu: int, memory_gib: int, hosts: Iterable[Nc]) -> int:
    """DOMAIN.md: Σ over free hosts of min(⌊free vCPU / size vCPU⌋, ⌊free memory / size memory⌋)."""
    return sum(min(nc.vcpu_free // vcpu, nc.memory_gib_free // memory_gib) for nc in hosts)


def lpt_makespan(durations: Iterable[float], parallel: int) -> float:
    """Makespan of longest-first scheduling on ``parallel`` slots: how the evacuation orders migrations."""
    slots = [0.0] * max(parallel, 1)
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(slots, slots[0] + duration)
    return max(slots)


def makespan_lower_bound(durations: Sequence[float], parallel: int) -> float:
    """No schedule beats the longest job nor the total work spread evenly."""
    if not durations:
        return 0.0
    return max(max(durations), sum(durations) / max(parallel, 1))


def _unplaceable(vms: Sequence[Vm], source: Nc, targets: Sequence[Nc], live: set[str]) -> list[str]:
    """First-fit decreasing of the VMs into the targets' free room; live VMs only onto matching hosts."""
    room = {nc.nc_id: [nc.vcpu_free, nc.memory_gib_free] for nc in targets}
    matching = {
        nc.nc_id
        for nc in targets
        if nc.cpu_model == source.cpu_model and nc.software_version == source.software_version
    }
    left: list[str] = []
    for vm in sorted(vms, key=lambda v: (-v.memory_gib, -v.vcpu, v.vm_id)):
        hosts = [nc.nc_id for nc in targets if vm.vm_id not in live or nc.nc_id in matching]
        fit = next((h for h in hosts if room[h][0] >= vm.vcpu and room[h][1] >= vm.memory_gib), None)
        if fit is None:
            left.append(vm.vm_id)
            continue
        room[fit][0] -= vm.vcpu
        room[fit][1] -= vm.memory_gib
    return sorted(left)


def plan_evacuation(
    source: Nc,
    vms: Sequence[Vm],
    cluster: Sequence[Nc],
    *,
    live: bool,
    rate: int,
    parallel: int,
    target_nc_id: str | None = None,
) -> EvacuationPlan:
    """How each VM leaves ``source`` (live where it can, when ``live``), and whether the cluster has room."""
    targets = target_hosts(source, cluster, target_nc_id)
    plans: list[VmPlan] = []
    for vm in sorted(vms, key=lambda v: v.vm_id):
        blockers = blockers_against(vm, source, targets)
        method = MigrationMethod.LIVE if live and not blockers else MigrationMethod.COLD
        estimate = (
            live_migration_seconds(vm.memory_gib, rate)
            if method is MigrationMethod.LIVE
            else COLD_MIGRATION_ESTIMATE_SECONDS
        )
        plans.append(
            VmPlan(
                vm_id=vm.vm_id,
                status=vm.status,
                instance_type=vm.instance_type,
                vcpu=vm.vcpu,
                memory_gib=vm.memory_gib,
                method=method,
                blockers=blockers,
                estimated_seconds=estimate,
            )
        )
    sizes = Counter((vm.vcpu, vm.memory_gib) for vm in vms)
    capacity = [
        SizeCapacity(
            vcpu=vcpu, memory_gib=memory, vm_count=count, spare=spare_capacity(vcpu, memory, targets)
        )
        for (vcpu, memory), count in sorted(sizes.items())
    ]
    live_ids = {p.vm_id for p in plans if p.method is MigrationMethod.LIVE}
    live_seconds = lpt_makespan((p.estimated_seconds for p in plans if p.vm_id in live_ids), parallel)
    cold_seconds = lpt_makespan((p.estimated_seconds for p in plans if p.vm_id not in live_ids), parallel)
    return EvacuationPlan(
        vms=plans,
        capacity=capacity,
        target_hosts=len(targets),
        unplaceable=_unplaceable(vms, source, targets, live_ids),
        estimated_seconds=live_seconds + cold_seconds + POWER_CYCLE_ESTIMATE_SECONDS,
    )


def moves_from_plan(plan: EvacuationPlan, source_nc_id: str) -> list[VmMove]:
    return [
        VmMove(
            vm_id=vm.vm_id,
            vcpu=vm.vcpu,
            memory_gib=vm.memory_gib,
            status_before=vm.status,
            method=vm.method,
            blockers=vm.blockers,
            estimated_seconds=vm.estimated_seconds,
            nc_id=source_nc_id,
            status=vm.status,
        )
        for vm in plan.vms
    ]


def progress_line(moves: Sequence[VmMove]) -> str:
    """``migrated 37/120`` and what is not done yet, for the UI."""
    states = Counter(move.state for move in moves)
    moved = sum(count for state, count in states.items() if state.moved)
    parts = [f"migrated {moved}/{len(moves)}"]
    for state in (
        VmMoveState.MIGRATING,
        VmMoveState.HANDED_TO_COLD,
        VmMoveState.COLD_MIGRATING,
        VmMoveState.STUCK,
        VmMoveState.FAILED,
        VmMoveState.CANCELLED,
    ):
        if states[state]:
            parts.append(f"{states[state]} {state.value.replace('_', ' ')}")
    return ", ".join(parts)
