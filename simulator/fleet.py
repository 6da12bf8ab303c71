"""The simulated fleet: what Houyi knows about regions, clusters, NCs, VMs and disks, and the state machines
that change them.

Every method here is synchronous and runs to completion on the event loop, so one call never sees another
half done. Slow things (OOB power, live migrations, disk copies) are not background tasks: each records when
it started and how long it takes, and the state is worked out from the clock whenever the fleet is read
(``_advance``). Durations are simulated seconds divided by ``speed``; all randomness comes from one
``random.Random(seed)``, so the same seed and the same calls give the same results.

Fleet file format (JSON; every object rejects unknown keys; keys marked ``?`` are optional, default shown)::

    {
      "name": "demo",
      "settings": {"residue_rate?": 0.0, "power_settle_seconds?": 120, "disk_copy_mib_per_second?": 500},
      "regions": [{"region_id": "cn-qd-d01", "zones": ["cn-qd-d01-a"]}],
      "clusters": [{"cluster_id": "ECS-CPU-A-8976", "region_id": "cn-qd-d01", "zone_id": "cn-qd-d01-a",
                    "kind": "CPU|MOC|GPU|FPGA|SCC|STORAGE_CONVERGED", "tenancy?": "shared|exclusive|bare_metal"}],
      "storage_clusters": [{"name": "river-qd-a1", "zone_id": "cn-qd-d01-a", "oss_domain": "oss-qd-1"}],
      "ncs": [{"nc_id": "14783-4", "nc_ip": "10.12.0.4", "hostname": "...", "sn": "...",
               "cluster_id": "ECS-CPU-A-8976", "biz_status?": "free", "power_state?": "on",
               "cpu_model": "...", "software_version": "...", "vcpu_total": 96, "memory_gib_total": 384,
               "has_storage_node?": false, "load_high?": false}],
      "vms": [{"vm_id": "i-8qe00ybpqhvtg", "nc_id": "14783-4", "status?": "running",
               "instance_type": "ecs.g6.large", "vcpu": 2, "memory_gib": 8, "image_id?": "img-std",
               "image_supported?": true, "has_local_disk?": false, "devices?": ["gpu"], "has_trunk_nic?": false,
               "created_before_v33?": false, "restarted_since_v33?": true, "dirty_rate_mbps?": 20}],
      "disks": [{"disk_id": "d-...", "vm_id?": null, "category": "river|local_ssd|local_hdd|pangu_legacy",
                 "size_gib": 40, "format?": "raw", "shared?": false, "storage_cluster": "river-qd-a1"}],
      "residues?": [{"nc_id": "14783-5", "vm_id": "i-...", "state?": "paused", "guest_active?": false}],
      "disk_migrations?": [{"task_id": "dmt-900001", "disk_id": "d-...", "src_storage_cluster": "...",
                            "dst_storage_cluster": "...", "src_recycled?": 0,
                            "finished_at": "2025-01-10T03:00:00Z"}],
      "bsutil_not_loaded?": {"pangu://river-qd-a2/river/d-...": 3}
    }

Derived, never written: an NC's region and zone (from its cluster) and its ``vcpu_used`` /
``memory_gib_used`` (the sum of the VMs placed on it that are not released); a VM's region (from its NC); a
disk's zone and OSS domain (from its storage cluster); Pangu paths (``pangu://<storage cluster>/river/<disk>``).
``disk_migrations`` are finished tasks (history for disk recycle); ``residues`` are VM processes left on a
host that the VM's record does not point to.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.disk import LARGE_DISK_GIB, STORAGE_CLUSTER_NAME_LIMIT_BYTES
from domain.model import (
    Cluster,
    ClusterKind,
    ClusterTenancy,
    DeviceKind,
    Disk,
    DiskCategory,
    DiskFormat,
    LiveMigrationBlocker,
    Nc,
    NcBizStatus,
    NcDetail,
    NcId,
    NcIp,
    PowerState,
    Vm,
    VmId,
    VmStatus,
    live_migration_blockers,
)
from domain.transitions import NcAction, TransitionRefused, allowed_from, apply, can_apply
from houyi.port import (
    Ack,
    AfterMigrationState,
    ColdMigrateBootMode,
    DeviceMigrateLogEntry,
    DiskMigrationProgress,
    DiskMigrationState,
    DiskMigrationTask,
    DiskSnapshot,
    DumpResult,
    LiveMigrationProgress,
    LiveMigrationTask,
    MigrationLogEntry,
    MigrationState,
    NcStatusChange,
    PowerStatus,
    ProcessState,
    RiReservation,
    StorageClusterInfo,
    VmProcess,
    VmStatusChange,
)
from simulator.errors import (
    invalid_parameter,
    not_found,
    throttled,
    unsupported,
    wrong_state,
)

DEMO_FLEET_PATH = Path(__file__).parent / "fleets" / "demo.json"

# Live-migration limits (DOMAIN.md, "Live migration").
MIN_DOWNTIME_MS = 200
MAX_DOWNTIME_MS = 2000
# A migration whose VM dirties memory at least as fast as it is copied never converges: it gives up after
# this many times the time one copy of the memory takes.
NON_CONVERGING_TIMEOUT_FACTOR = 3
# Progress a non-converging migration reaches before it gives up (it keeps re-sending dirty pages).
NON_CONVERGING_PROGRESS_CAP = 90


# VM statuses whose process runs on the VM's NC.
_PROCESS_STATUSES = frozenset({VmStatus.RUNNING, VmStatus.MIGRATING, VmStatus.STARTING, VmStatus.STOPPING})
_COLD_MIGRATABLE_STATUSES = frozenset({VmStatus.RUNNING, VmStatus.STOPPED, VmStatus.PENDING})
_STARTABLE_STATUSES = frozenset({VmStatus.STOPPED, VmStatus.PENDING})

# Counters kept per NC; the admin API shows all of them, zero or not.
NC_COUNTER_NAMES = (
    "lock_applied",
    "unlock_applied",
    "status_changes",
    "power_offs",
    "power_ons",
    "power_cycles",
    "power_offs_with_vms",
    "migrations_in",
    "migrations_out",
    "migrations_timed_out",
    "cold_migrations_in",
    "cold_migrations_out",
    "residues_destroyed",
    "authoritative_destroyed",
    "dumps",
)

# Counters of the fleet as a whole; the admin API shows them all beside the per-NC ones summed.
FLEET_COUNTER_NAMES = (
    "cold_migrations",
    "repair_boots",
    "ri_reserved",
    "ri_released",
    "events_published",
    "notifications",
    "snapshots",
    "disk_migrations_started",
    "disk_migrations_without_snapshot",
    "images_deleted",
    "live_images_deleted",
    # A source deleted while its destination still had not-loaded entries: data loss; tests assert 0.
    "sources_deleted_with_dst_not_loaded",
    "deletes_refused_not_loaded",
    "recycles",
)

_VERBS = {
    NcAction.LOCK: "lock",
    NcAction.RESERVE_LOCK: "reserve-lock",
    NcAction.UNLOCK: "unlock",
    NcAction.BRING_ONLINE: "bring online",
    NcAction.REBOOT: "reboot",
    NcAction.RE_ONLINE: "re-online",
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def pangu_path(storage_cluster: str, disk_id: str) -> str:
    return f"pangu://{storage_cluster}/river/{disk_id}"


# ---- the fleet file ---------------------------------------------------------------------------------


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FleetSettings(_Entry):
    residue_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="chance a live migration leaves a residue"
    )
    power_settle_seconds: float = Field(
        default=120.0, gt=0, description="simulated seconds an OOB power change takes"
    )
    disk_copy_mib_per_second: float = Field(default=500.0, gt=0, description="disk live-migration copy speed")


class RegionEntry(_Entry):
    region_id: str
    zones: list[str] = Field(min_length=1)


class ClusterEntry(_Entry):
    cluster_id: str
    region_id: str
    zone_id: str
    kind: ClusterKind
    tenancy: ClusterTenancy = ClusterTenancy.SHARED


class StorageClusterEntry(_Entry):
    name: str
    zone_id: str
    oss_domain: str


class NcEntry(_Entry):
    nc_id: NcId
    nc_ip: NcIp
    hostname: str
    sn: str
    cluster_id: str
    biz_status: NcBizStatus = NcBizStatus.FREE
    power_state: PowerState = PowerState.ON
    cpu_model: str
    software_version: str
    vcpu_total: int = Field(ge=0)
    memory_gib_total: int = Field(ge=0)
    has_storage_node: bool = False
    load_high: bool = Field(
        default=False, description="live migrations off this host are refused as 'load too high'"
    )


class VmEntry(_Entry):
    vm_id: VmId
    nc_id: NcId
    status: VmStatus = VmStatus.RUNNING
    instance_type: str
    vcpu: int = Field(ge=1)
    memory_gib: int = Field(ge=1)
    image_id: str = "img-std"
    image_supported: bool = True
    has_local_disk: bool = False
    devices: list[DeviceKind] = Field(default_factory=list)
    has_trunk_nic: bool = False
    created_before_v33: bool = False
    restarted_since_v33: bool = True
    dirty_rate_mbps: int = Field(default=20, ge=0)


class DiskEntry(_Entry):
    disk_id: str
    vm_id: VmId | None = None
    category: DiskCategory
    size_gib: int = Field(ge=1)
    format: DiskFormat = DiskFormat.RAW
    shared: bool = False
    storage_cluster: str


class ResidueEntry(_Entry):
    nc_id: NcId
    vm_id: VmId
    state: ProcessState = ProcessState.PAUSED
    guest_active: bool = False


class DiskMigrationEntry(_Entry):
    """A finished disk live migration, as the storage logs keep it."""

    task_id: str
    disk_id: str
    src_storage_cluster: str
    dst_storage_cluster: str
    src_recycled: int = Field(default=0, ge=0, le=1)
    finished_at: datetime


def _duplicates(values: Iterable[str]) -> list[str]:
    return sorted(value for value, n in Counter(values).items() if n > 1)


class FleetFile(_Entry):
    name: str
    settings: FleetSettings = Field(default_factory=FleetSettings)
    regions: list[RegionEntry]
    clusters: list[ClusterEntry]
    storage_clusters: list[StorageClusterEntry] = Field(default_factory=list)
    ncs: list[NcEntry]
    vms: list[VmEntry] = Field(default_factory=list)
    disks: list[DiskEntry] = Field(default_factory=list)
    residues: list[ResidueEntry] = Field(default_factory=list)
    disk_migrations: list[DiskMigrationEntry] = Field(default_factory=list)
    bsutil_not_loaded: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references_hold(self) -> FleetFile:
        """Every reference points at something that exists, ids are unique, no host is overcommitted."""
        problems: list[str] = []
        for kind, values in (
            ("region", [r.region_id for r in self.regions]),
            ("cluster", [c.cluster_id for c in self.clusters]),
            ("storage cluster", [s.name for s in self.storage_clusters]),
            ("nc id", [n.nc_id for n in self.ncs]),
            ("nc ip", [n.nc_ip for n in self.ncs]),
            ("vm", [v.vm_id for v in self.vms]),
            ("disk", [d.disk_id for d in self.disks]),
            ("disk migration task", [m.task_id for m in self.disk_migrations]),
        ):
            if duplicated := _duplicates(values):
                problems.append(f"duplicate {kind}: {', '.join(duplicated)}")
        zones = {zone: r.region_id for r in self.regions for zone in r.zones}
        for cluster in self.clusters:
            if zones.get(cluster.zone_id) != cluster.region_id:
                problems.append(
                    f"cluster {cluster.cluster_id}: zone {cluster.zone_id} is not in region {cluster.region_id}"
                )
        for storage in self.storage_clusters:
            if storage.zone_id not in zones:
                problems.append(f"storage cluster {storage.name}: unknown zone {storage.zone_id}")
        clusters = {c.cluster_id for c in self.clusters}
        ncs = {n.nc_id: n for n in self.ncs}
        for nc in self.ncs:
            if nc.cluster_id not in clusters:
                problems.append(f"nc {nc.nc_id}: unknown cluster {nc.cluster_id}")
        used: dict[str, tuple[int, int]] = {}
        vms = {v.vm_id: v for v in self.vms}
        for vm in self.vms:
            if vm.nc_id not in ncs:
                problems.append(f"vm {vm.vm_id}: unknown nc {vm.nc_id}")
            elif vm.status is not VmStatus.RELEASED:
                vcpu, memory = used.get(vm.nc_id, (0, 0))
                used[vm.nc_id] = (vcpu + vm.vcpu, memory + vm.memory_gib)
        for nc_id, (vcpu, memory) in used.items():
            nc = ncs[nc_id]
            if vcpu > nc.vcpu_total or memory > nc.memory_gib_total:
                problems.append(
                    f"nc {nc_id}: its vms use {vcpu} vCPU / {memory} GiB, more than its {nc.vcpu_total} vCPU / "
                    f"{nc.memory_gib_total} GiB"
                )
        storage_names = {s.name for s in self.storage_clusters}
        for disk in self.disks:
            if disk.storage_cluster not in storage_names:
                problems.append(f"disk {disk.disk_id}: unknown storage cluster {disk.storage_cluster}")
            if disk.vm_id is not None and disk.vm_id not in vms:
                problems.append(f"disk {disk.disk_id}: unknown vm {disk.vm_id}")
        for residue in self.residues:
            if residue.nc_id not in ncs:
                problems.append(f"residue of {residue.vm_id}: unknown nc {residue.nc_id}")
            if residue.vm_id not in vms:
                problems.append(f"residue on {residue.nc_id}: unknown vm {residue.vm_id}")
            elif (
                vms[residue.vm_id].nc_id == residue.nc_id
                and vms[residue.vm_id].status is not VmStatus.RELEASED
            ):
                problems.append(
                    f"residue of {residue.vm_id} on {residue.nc_id}: that is the vm's own nc, not a residue"
                )
        disks = {d.disk_id for d in self.disks}
        for migration in self.disk_migrations:
            if migration.disk_id not in disks:
                problems.append(f"disk migration {migration.task_id}: unknown disk {migration.disk_id}")
            for name in (migration.src_storage_cluster, migration.dst_storage_cluster):
                if name not in storage_names:
                    problems.append(f"disk migration {migration.task_id}: unknown storage cluster {name}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ---- moving parts -----------------------------------------------------------------------------------


@dataclass
class PowerTimeline:
    """An NC's OOB power: states that hold until a (real, monotonic) time, then the state it settles in."""

    final: PowerState
    phases: list[tuple[float, PowerState]] = field(default_factory=list)

    def state_at(self, now: float) -> PowerState:
        for until, state in self.phases:
            if now < until:
                return state
        return self.final


@dataclass
class Residue:
    """A VM process left on a host its VM's record does not point to."""

    state: ProcessState
    guest_active: bool


@dataclass
class LiveMigration:
    migration_id: str
    vm_id: str
    source_nc_id: str
    target_nc_id: str
    vcpu: int
    memory_gib: int
    started_at: float
    copy_seconds: float  # real seconds one copy of the VM's memory takes
    ends_at: float | None  # real time it ends by itself; None when stuck
    converges: bool
    leaves_residue: bool
    stuck: bool
    state: MigrationState = MigrationState.RUNNING
    final_progress: int | None = None
    message: str = ""

    def progress_at(self, now: float) -> int:
        if self.final_progress is not None:
            return self.final_progress
        elapsed = max(now - self.started_at, 0.0)
        if self.converges:
            return min(int(100 * elapsed / self.copy_seconds), 99)
        timeout = NON_CONVERGING_TIMEOUT_FACTOR * self.copy_seconds
        return min(int(NON_CONVERGING_PROGRESS_CAP * elapsed / timeout), NON_CONVERGING_PROGRESS_CAP)


@dataclass
class DiskMigration:
    task_id: str
    disk_id: str
    size_gib: int
    src_storage_cluster: str
    dst_storage_cluster: str
    state: DiskMigrationState
    started_at: float | None  # real monotonic time; None for history loaded from the fleet file
    ends_at: float | None
    finished_at: datetime | None
    src_recycled: int = 0
    started_wall: datetime | None = None
    had_snapshot: bool = True

    @property
    def src_pangu_path(self) -> str:
        return pangu_path(self.src_storage_cluster, self.disk_id)

    @property
    def dst_pangu_path(self) -> str:
        return pangu_path(self.dst_storage_cluster, self.disk_id)

    def progress_at(self, now: float) -> int:
        if self.state is not DiskMigrationState.RUNNING or self.started_at is None or self.ends_at is None:
            return 100
        span = max(self.ends_at - self.started_at, 1e-9)
        return min(int(100 * (now - self.started_at) / span), 99)


# ---- the fleet --------------------------------------------------------------------------------------


class Fleet:
    """The control plane's view of the fleet and every rule that changes it."""

    def __init__(
        self,
        spec: FleetFile,
        *,
        speed: float = 1.0,
        seed: int = 7,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utc_now,
        residue_rate: float | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if residue_rate is not None and not 0.0 <= residue_rate <= 1.0:
            raise ValueError(f"residue_rate must be between 0 and 1, got {residue_rate}")
        self.name = spec.name
        self.speed = speed
        self.seed = seed
        self._rng = random.Random(seed)
        self._clock = clock
        self._wall_clock = wall_clock
        self.residue_rate = spec.settings.residue_rate if residue_rate is None else residue_rate
        self.power_settle_seconds = spec.settings.power_settle_seconds
        self.disk_copy_mib_per_second = spec.settings.disk_copy_mib_per_second

        self.regions: dict[str, RegionEntry] = {r.region_id: r for r in spec.regions}
        self.clusters: dict[str, Cluster] = {c.cluster_id: Cluster(**c.model_dump()) for c in spec.clusters}
        self.storage_clusters: dict[str, StorageClusterEntry] = {s.name: s for s in spec.storage_clusters}

        self._ncs: dict[str, Nc] = {}
        self._nc_id_by_ip: dict[str, str] = {}
        self._load_high: set[str] = set()
        self._power: dict[str, PowerTimeline] = {}
        self._nc_counters: dict[str, Counter[str]] = {}
        for entry in spec.ncs:
            cluster = self.clusters[entry.cluster_id]
            nc = Nc(
                **entry.model_dump(exclude={"load_high", "power_state"}),
                region_id=cluster.region_id,
                zone_id=cluster.zone_id,
            )
            self._ncs[nc.nc_id] = nc
            self._nc_id_by_ip[nc.nc_ip] = nc.nc_id
            self._power[nc.nc_id] = PowerTimeline(final=entry.power_state)
            self._nc_counters[nc.nc_id] = Counter()
            if entry.load_high:
                self._load_high.add(nc.nc_id)

        self._vms: dict[str, Vm] = {
            entry.vm_id: Vm(**entry.model_dump(), region_id=self._ncs[entry.nc_id].region_id)
            for entry in spec.vms
        }
        self._disks: dict[str, Disk] = {}
        for disk_entry in spec.disks:
            storage = self.storage_clusters[disk_entry.storage_cluster]
            self._disks[disk_entry.disk_id] = Disk(
                **disk_entry.model_dump(), zone_id=storage.zone_id, oss_domain=storage.oss_domain
            )
        self._residues: dict[str, dict[str, Residue]] = {nc_id: {} for nc_id in self._ncs}
        for residue in spec.residues:
            self._residues[residue.nc_id][residue.vm_id] = Residue(residue.state, residue.guest_active)

        self._live_migrations: dict[str, LiveMigration] = {}
        # The ones that may still be running (pruned as they end): every call settles or counts them, and
        # scanning every migration ever started made each call slower the longer the simulator ran.
        self._running_live: dict[str, LiveMigration] = {}
        self._latest_migration_by_vm: dict[str, str] = {}
        self._disk_migrations: dict[str, DiskMigration] = {}
        for history in spec.disk_migrations:
            self._disk_migrations[history.task_id] = DiskMigration(
                task_id=history.task_id,
                disk_id=history.disk_id,
                size_gib=self._disks[history.disk_id].size_gib,
                src_storage_cluster=history.src_storage_cluster,
                dst_storage_cluster=history.dst_storage_cluster,
                state=DiskMigrationState.COMPLETE,
                started_at=None,
                ends_at=None,
                finished_at=history.finished_at,
                src_recycled=history.src_recycled,
            )
        # Pangu directories that hold an image: every disk where it lives now, and the source a finished
        # migration kept (sources are kept until someone deletes them).
        self._images: set[str] = {pangu_path(d.storage_cluster, d.disk_id) for d in self._disks.values()}
        self._images |= {m.src_pangu_path for m in self._disk_migrations.values() if not m.src_recycled}
        self._not_loaded: dict[str, int] = dict(spec.bsutil_not_loaded)
        self._not_loaded_after_check: dict[str, int] = {}
        self._snapshots: dict[str, list[str]] = {}

        self._reservations: dict[str, RiReservation] = {}
        self._released_reservations: set[str] = set()
        self.events: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        self._sequences: Counter[str] = Counter()

    @classmethod
    def load(cls, path: str | Path | None = None, **options: Any) -> Fleet:
        """The fleet from a JSON fleet file (the packaged demo fleet by default)."""
        source = Path(path) if path is not None else DEMO_FLEET_PATH
        return cls(FleetFile.model_validate_json(source.read_text(encoding="utf-8")), **options)

    # ---- summaries ------------------------------------------------------------------------------------

    def summary(self) -> str:
        return (
            f"fleet {self.name}: {len(self.regions)} regions, {len(self.clusters)} clusters, "
            f"{len(self._ncs)} NCs, {len(self._vms)} VMs"
        )

    # Read-only views of the records, for tests that pick "a GPU VM" or "a free host". The objects are the
    # live records (NCs without derived power and usage): change the fleet through its methods only.
    @property
    def ncs(self) -> Mapping[str, Nc]:
        return MappingProxyType(self._ncs)

    @property
    def vms(self) -> Mapping[str, Vm]:
        return MappingProxyType(self._vms)

    @property
    def disks(self) -> Mapping[str, Disk]:
        return MappingProxyType(self._disks)

    # ---- lookups --------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock()

    def _real_seconds(self, simulated_seconds: float) -> float:
        return simulated_seconds / self.speed

    def _next_id(self, prefix: str, taken: Iterable[str] = ()) -> str:
        taken_ids = set(taken)
        while True:
            self._sequences[prefix] += 1
            candidate = f"{prefix}-{self._sequences[prefix]:06d}"
            if candidate not in taken_ids:
                return candidate

    def _nc(self, nc_id: str) -> Nc:
        nc = self._ncs.get(nc_id)
        if nc is None:
            raise not_found(f"nc {nc_id} not found")
        return nc

    def _nc_by_ip(self, nc_ip: str) -> Nc:
        nc_id = self._nc_id_by_ip.get(nc_ip.strip())
        if nc_id is None:
            raise not_found(f"nc {nc_ip} not found")
        return self._ncs[nc_id]

    def resolve_nc(self, key: str) -> Nc:
        """An NC by IP or id."""
        if key in self._ncs:
            return self._ncs[key]
        return self._nc_by_ip(key)

    def _vm(self, vm_id: str) -> Vm:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise not_found(f"vm {vm_id} not found")
        return vm

    def _disk(self, disk_id: str) -> Disk:
        disk = self._disks.get(disk_id)
        if disk is None:
            raise not_found(f"disk {disk_id} not found")
        return disk

    def nc_ids_touched(self, params: dict[str, str]) -> set[str]:
        """The NCs a call is about (its nc_id / nc_ip, the NC of its VM), for faults scoped to one NC."""
        touched = {params[name] for name in ("nc_id", "where") if params.get(name)}
        if nc_ip := params.get("nc_ip"):
            if nc_id := self._nc_id_by_ip.get(nc_ip):
                touched.add(nc_id)
        if (vm_id := params.get("vm_name")) and vm_id in self._vms:
            touched.add(self._vms[vm_id].nc_id)
        return touched

    # ---- derived state --------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Settle whatever finished by now: live migrations in the order they end, then disk copies."""
        now = self._now()
        running = self._running_live
        for ended in [key for key, m in running.items() if m.state is not MigrationState.RUNNING]:
            del running[ended]
        due = [m for m in running.values() if m.ends_at is not None and m.ends_at <= now]
        for migration in sorted(due, key=lambda m: (m.ends_at or 0.0, m.migration_id)):
            self._finish_live_migration(migration)
        for task in self._disk_migrations.values():
            if task.state is DiskMigrationState.RUNNING and task.ends_at is not None and task.ends_at <= now:
                self._finish_disk_migration(task)

    def _power_state(self, nc_id: str) -> PowerState:
        return self._power[nc_id].state_at(self._now())

    def _vms_placed_on(self, nc_id: str) -> list[Vm]:
        """VMs whose record points to this NC and that still hold resources there."""
        return [vm for vm in self._vms.values() if vm.nc_id == nc_id and vm.status is not VmStatus.RELEASED]

    def _vms_with_process_on(self, nc_id: str) -> list[Vm]:
        return [vm for vm in self._vms.values() if vm.nc_id == nc_id and vm.status in _PROCESS_STATUSES]

    def _used(self, nc_id: str) -> tuple[int, int]:
        placed = self._vms_placed_on(nc_id)
        return sum(vm.vcpu for vm in placed), sum(vm.memory_gib for vm in placed)

    def _incoming(self, nc_id: str) -> tuple[int, int]:
        """Capacity held for live migrations still running towards this NC."""
        incoming = [
            m
            for m in self._running_live.values()
            if m.target_nc_id == nc_id and m.state is MigrationState.RUNNING
        ]
        return sum(m.vcpu for m in incoming), sum(m.memory_gib for m in incoming)

    def _free(self, nc: Nc) -> tuple[int, int]:
        used_vcpu, used_memory = self._used(nc.nc_id)
        held_vcpu, held_memory = self._incoming(nc.nc_id)
        return nc.vcpu_total - used_vcpu - held_vcpu, nc.memory_gib_total - used_memory - held_memory

    def _has_room(self, nc: Nc, vcpu: int, memory_gib: int) -> bool:
        free_vcpu, free_memory = self._free(nc)
        return free_vcpu >= vcpu and free_memory >= memory_gib

    def _schedulable(self, nc: Nc) -> bool:
        return nc.biz_status.schedulable and self._power_state(nc.nc_id) is PowerState.ON

    def _used_by_nc(self) -> dict[str, tuple[int, int]]:
        """``_used`` of every NC in one pass over the VMs (a cluster listing would scan them once per NC)."""
        used: dict[str, tuple[int, int]] = {}
        for vm in self._vms.values():
            if vm.status is not VmStatus.RELEASED:
                vcpu, memory = used.get(vm.nc_id, (0, 0))
                used[vm.nc_id] = (vcpu + vm.vcpu, memory + vm.memory_gib)
        return used

    def _view(self, nc: Nc, used: tuple[int, int] | None = None) -> Nc:
        used_vcpu, used_memory = self._used(nc.nc_id) if used is None else used
        return nc.model_copy(
            update={
                "power_state": self._power_state(nc.nc_id),
                "vcpu_used": used_vcpu,
                "memory_gib_used": used_memory,
            }
        )

    def _require_powered_on(self, nc: Nc, doing: str) -> None:
        state = self._power_state(nc.nc_id)
        if state is not PowerState.ON:
            raise wrong_state(f"nc {nc.nc_id} is not powered on (power state {state.value}), cannot {doing}")

    # ---- reads ----------------------------------------------------------------------------------------

    def describe_nc(self, *, nc_ip: str | None = None, nc_id: str | None = None) -> NcDetail:
        self._advance()
        nc = self._nc(nc_id) if nc_id else self._nc_by_ip(nc_ip or "")
        return NcDetail(nc=self._view(nc), vms=[vm.model_copy() for vm in self._vms_placed_on(nc.nc_id)])

    def list_ncs(self, *, region_id: str | None = None, cluster_id: str | None = None) -> list[Nc]:
        self._advance()
        used = self._used_by_nc()
        return [
            self._view(nc, used.get(nc.nc_id, (0, 0)))
            for nc in self._ncs.values()
            if (region_id is None or nc.region_id == region_id)
            and (cluster_id is None or nc.cluster_id == cluster_id)
        ]

    def describe_vm(self, vm_id: str) -> Vm:
        self._advance()
        return self._vm(vm_id).model_copy()

    def describe_disk(self, disk_id: str) -> Disk:
        self._advance()
        return self._disk(disk_id).model_copy()

    def describe_storage_cluster(self, name: str) -> StorageClusterInfo:
        self._advance()
        entry = self.storage_clusters.get(name)
        if entry is None:
            raise not_found(f"storage cluster {name} not found")
        return StorageClusterInfo(name=entry.name, zone_id=entry.zone_id, oss_domain=entry.oss_domain)

    def get_oob_power_status(self, nc_id: str) -> PowerStatus:
        self._advance()
        return PowerStatus(nc_id=self._nc(nc_id).nc_id, power_state=self._power_state(nc_id))

    # ---- business status ------------------------------------------------------------------------------

    def _transition(self, nc: Nc, action: NcAction) -> NcStatusChange:
        before = nc.biz_status
        try:
            after = apply(action, before)
        except TransitionRefused:
            allowed = ", ".join(sorted(s.value for s in allowed_from(action)))
            raise wrong_state(
                f"nc {nc.nc_id} is {before.value}, cannot {_VERBS[action]} (allowed from: {allowed})"
            ) from None
        nc.biz_status = after
        return NcStatusChange(nc_id=nc.nc_id, status_before=before, status_after=after)

    def lock_nc(self, nc_id: str, status: NcBizStatus = NcBizStatus.MLOCK) -> NcStatusChange:
        self._advance()
        nc = self._nc(nc_id)
        if status is NcBizStatus.MLOCK:
            action = NcAction.LOCK
        elif status is NcBizStatus.RLOCK:
            action = NcAction.RESERVE_LOCK
        else:
            raise invalid_parameter(f"status must be mlock or rlock to lock, got {status.value}")
        change = self._transition(nc, action)
        self._nc_counters[nc_id]["lock_applied"] += 1
        return change

    def unlock_nc(self, nc_id: str) -> NcStatusChange:
        self._advance()
        nc = self._nc(nc_id)
        change = self._transition(nc, NcAction.UNLOCK)
        self._nc_counters[nc_id]["unlock_applied"] += 1
        return change

    def set_nc_status(self, nc_id: str, status: NcBizStatus) -> NcStatusChange:
        """The operator transition that leads to ``status``; refused like that transition is."""
        self._advance()
        nc = self._nc(nc_id)
        if status is NcBizStatus.FREE:
            if nc.biz_status is NcBizStatus.NC_DOWN:
                action = NcAction.RE_ONLINE
            elif can_apply(NcAction.UNLOCK, nc.biz_status):
                action = NcAction.UNLOCK
            else:
                action = NcAction.BRING_ONLINE
            if can_apply(action, nc.biz_status):
                # A host that is off cannot take VMs: bringing it online would only mislead the scheduler.
                self._require_powered_on(nc, f"{_VERBS[action]} it")
        elif status is NcBizStatus.MLOCK:
            action = NcAction.LOCK
        elif status is NcBizStatus.RLOCK:
            action = NcAction.RESERVE_LOCK
        elif status is NcBizStatus.NC_DOWN:
            action = NcAction.REBOOT
        else:
            raise invalid_parameter(
                f"status {status.value} cannot be set with set_nc_status (allowed: free, mlock, rlock, nc_down)"
            )
        change = self._transition(nc, action)
        self._nc_counters[nc_id]["status_changes"] += 1
        return change

    # ---- OOB power --------------------------------------------------------------------------------------

    def _require_power_settled(self, nc: Nc) -> PowerState:
        state = self._power_state(nc.nc_id)
        if not state.settled:
            raise wrong_state(
                f"nc {nc.nc_id} power status is {state.value}: power status pending, retry after 60 seconds"
            )
        return state

    def _power_goes_down(self, nc: Nc) -> None:
        """What any power-off does: VM processes die with the host (residues too); a reboot leaves nc_down."""
        counters = self._nc_counters[nc.nc_id]
        crashed = self._vms_with_process_on(nc.nc_id)
        if crashed:
            # Allowed (forced-reboot semantics), but counted: tests prove evacuating workflows never do it.
            counters["power_offs_with_vms"] += 1
        for vm in crashed:
            # The guests die with the host; their records stay on it until someone starts them again.
            vm.status = VmStatus.STOPPED
        self._residues[nc.nc_id].clear()
        if can_apply(NcAction.REBOOT, nc.biz_status):
            nc.biz_status = apply(NcAction.REBOOT, nc.biz_status)

    def oob_power_off(self, nc_id: str) -> PowerStatus:
        self._advance()
        nc = self._nc(nc_id)
        if self._require_power_settled(nc) is PowerState.OFF:
            return PowerStatus(nc_id=nc_id, power_state=PowerState.OFF)
        self._power_goes_down(nc)
        self._nc_counters[nc_id]["power_offs"] += 1
        settle = self._real_seconds(self.power_settle_seconds)
        self._power[nc_id] = PowerTimeline(
            final=PowerState.OFF, phases=[(self._now() + settle, PowerState.PENDING_OFF)]
        )
        return PowerStatus(nc_id=nc_id, power_state=PowerState.PENDING_OFF)

    def oob_power_on(self, nc_id: str) -> PowerStatus:
        self._advance()
        nc = self._nc(nc_id)
        if self._require_power_settled(nc) is PowerState.ON:
            return PowerStatus(nc_id=nc_id, power_state=PowerState.ON)
        self._nc_counters[nc_id]["power_ons"] += 1
        settle = self._real_seconds(self.power_settle_seconds)
        self._power[nc_id] = PowerTimeline(
            final=PowerState.ON, phases=[(self._now() + settle, PowerState.PENDING_ON)]
        )
        return PowerStatus(nc_id=nc_id, power_state=PowerState.PENDING_ON)

    def oob_power_cycle(self, nc_id: str) -> PowerStatus:
        self._advance()
        nc = self._nc(nc_id)
        if self._require_power_settled(nc) is PowerState.OFF:
            raise wrong_state(f"nc {nc_id} is powered off, cannot power cycle it (power it on instead)")
        self._power_goes_down(nc)
        self._nc_counters[nc_id]["power_cycles"] += 1
        settle = self._real_seconds(self.power_settle_seconds)
        now = self._now()
        self._power[nc_id] = PowerTimeline(
            final=PowerState.ON,
            phases=[(now + settle, PowerState.PENDING_OFF), (now + 2 * settle, PowerState.PENDING_ON)],
        )
        return PowerStatus(nc_id=nc_id, power_state=PowerState.PENDING_OFF)

    def dump_cn_memory(self, nc_id: str) -> DumpResult:
        self._advance()
        nc = self._nc(nc_id)
        self._require_powered_on(nc, "dump its memory")
        self._nc_counters[nc_id]["dumps"] += 1
        return DumpResult(nc_id=nc_id, dump_id=self._next_id("dump"))

    # ---- live migration ---------------------------------------------------------------------------------

    def _live_migration_target(self, vm: Vm, source: Nc, target_nc_id: str | None) -> Nc:
        if target_nc_id is None:
            candidates = [
                nc
                for nc in self._ncs.values()
                if nc.cluster_id == source.cluster_id
                and nc.nc_id != source.nc_id
                and nc.cpu_model == source.cpu_model
                and nc.software_version == source.software_version
                and self._schedulable(nc)
                and self._has_room(nc, vm.vcpu, vm.memory_gib)
            ]
            if not candidates:
                raise wrong_state(
                    f"no capacity: no free nc in cluster {source.cluster_id} with cpu {source.cpu_model} and "
                    f"software {source.software_version} has room for vm {vm.vm_id} ({vm.vcpu} vCPU / {vm.memory_gib} GiB)"
                )

            # Spread: the host with the most free vCPU, then memory, then the lowest id, so the choice is stable.
            def spread_order(nc: Nc) -> tuple[int, int, str]:
                free_vcpu, free_memory = self._free(nc)
                return (-free_vcpu, -free_memory, nc.nc_id)

            return min(candidates, key=spread_order)
        target = self._nc(target_nc_id)
        if target.nc_id == source.nc_id:
            raise unsupported(
                f"vm {vm.vm_id} already runs on nc {target.nc_id}: the target must be another nc"
            )
        if target.cluster_id != source.cluster_id:
            raise unsupported(
                f"target nc {target.nc_id} is in cluster {target.cluster_id}, vm {vm.vm_id} is in cluster "
                f"{source.cluster_id}: live migration stays within a cluster"
            )
        mismatches = [
            blocker.value
            for blocker in live_migration_blockers(vm, source, target)
            if blocker
            in (LiveMigrationBlocker.CPU_MODEL_MISMATCH, LiveMigrationBlocker.SOFTWARE_VERSION_MISMATCH)
        ]
        if mismatches:
            raise unsupported(
                f"vm {vm.vm_id} cannot be live-migrated to nc {target.nc_id}: {', '.join(mismatches)} "
                f"(source {source.cpu_model} / {source.software_version}, target {target.cpu_model} / "
                f"{target.software_version})"
            )
        if not target.biz_status.schedulable:
            raise wrong_state(
                f"nc {target.nc_id} is {target.biz_status.value}, cannot receive vms (must be free)"
            )
        self._require_powered_on(target, "receive vms")
        if not self._has_room(target, vm.vcpu, vm.memory_gib):
            free_vcpu, free_memory = self._free(target)
            raise wrong_state(
                f"nc {target.nc_id} has no room for vm {vm.vm_id}: needs {vm.vcpu} vCPU / {vm.memory_gib} GiB, "
                f"free {free_vcpu} vCPU / {free_memory} GiB"
            )
        return target

    def live_migrate_vm(
        self,
        vm_id: str,
        *,
        target_nc_id: str | None = None,
        rate: int = 80,
        no_check_image: bool = False,
        no_check_load: bool = False,
        downtime: int = 300,
        stuck: bool = False,
    ) -> LiveMigrationTask:
        """Start a live migration; ``stuck`` (a fault) makes it never finish and refuse cancel."""
        self._advance()
        vm = self._vm(vm_id)
        if not MIN_DOWNTIME_MS <= downtime <= MAX_DOWNTIME_MS:
            raise invalid_parameter(
                f"downtime {downtime} ms is out of range ({MIN_DOWNTIME_MS}-{MAX_DOWNTIME_MS} ms)"
            )
        if rate < 1:
            raise invalid_parameter(f"rate must be at least 1 MB/s, got {rate}")
        if vm.status is not VmStatus.RUNNING:
            raise wrong_state(f"vm {vm_id} is {vm.status.value}, cannot be live-migrated (must be running)")
        source = self._nc(vm.nc_id)
        blockers = [
            b.value for b in live_migration_blockers(vm, source) if b is not LiveMigrationBlocker.NOT_RUNNING
        ]
        if blockers:
            raise unsupported(f"vm {vm_id} cannot be live-migrated: {', '.join(blockers)}")
        if not vm.image_supported and not no_check_image:
            raise unsupported(
                f"image not supported: vm {vm_id} runs {vm.image_id}, which is not on the live-migration list "
                "(no_check_image forces it, without SLA)"
            )
        if source.nc_id in self._load_high and not no_check_load:
            raise throttled(
                f"load too high on nc {source.nc_id}: live migration of vm {vm_id} refused, retry later"
            )
        self._require_powered_on(source, "live-migrate its vms")
        target = self._live_migration_target(vm, source, target_nc_id)

        now = self._now()
        copy_seconds = self._real_seconds(max(1.0, vm.memory_gib * 1024 / rate))
        converges = vm.dirty_rate_mbps < rate
        if stuck:
            ends_at = None
        elif converges:
            ends_at = now + copy_seconds
        else:
            ends_at = now + NON_CONVERGING_TIMEOUT_FACTOR * copy_seconds
        # Drawn only when residues can happen, so fleets without them keep the random stream untouched.
        leaves_residue = converges and self.residue_rate > 0 and self._rng.random() < self.residue_rate
        migration = LiveMigration(
            migration_id=self._next_id("lm"),
            vm_id=vm_id,
            source_nc_id=source.nc_id,
            target_nc_id=target.nc_id,
            vcpu=vm.vcpu,
            memory_gib=vm.memory_gib,
            started_at=now,
            copy_seconds=copy_seconds,
            ends_at=ends_at,
            converges=converges,
            leaves_residue=leaves_residue,
            stuck=stuck,
        )
        self._live_migrations[migration.migration_id] = migration
        self._running_live[migration.migration_id] = migration
        self._latest_migration_by_vm[vm_id] = migration.migration_id
        vm.status = VmStatus.MIGRATING
        return LiveMigrationTask(
            migration_id=migration.migration_id,
            vm_id=vm_id,
            source_nc_id=source.nc_id,
            target_nc_id=target.nc_id,
        )

    def _finish_live_migration(self, migration: LiveMigration) -> None:
        vm = self._vms[migration.vm_id]
        if migration.converges:
            self._land(migration, vm)
            if migration.leaves_residue:
                self._residues[migration.source_nc_id][vm.vm_id] = Residue(
                    ProcessState.PAUSED, guest_active=False
                )
            return
        migration.state = MigrationState.TIMED_OUT
        migration.final_progress = NON_CONVERGING_PROGRESS_CAP
        migration.message = (
            f"timed out: vm {vm.vm_id} dirties memory at {vm.dirty_rate_mbps} MB/s, not slower than the migration "
            "rate; the vm keeps running on the source"
        )
        if vm.status is VmStatus.MIGRATING:
            vm.status = VmStatus.RUNNING
        self._nc_counters[migration.source_nc_id]["migrations_timed_out"] += 1

    def _land(self, migration: LiveMigration, vm: Vm) -> None:
        """The VM now runs on the target: its record and its capacity move there."""
        vm.nc_id = migration.target_nc_id
        vm.status = VmStatus.RUNNING
        migration.state = MigrationState.SUCCEEDED
        migration.final_progress = 100
        self._nc_counters[migration.source_nc_id]["migrations_out"] += 1
        self._nc_counters[migration.target_nc_id]["migrations_in"] += 1

    def _latest_migration(self, vm_id: str) -> LiveMigration | None:
        migration_id = self._latest_migration_by_vm.get(vm_id)
        return self._live_migrations[migration_id] if migration_id else None

    def get_live_migration_progress(self, vm_id: str) -> LiveMigrationProgress:
        self._advance()
        self._vm(vm_id)
        migration = self._latest_migration(vm_id)
        if migration is None:
            raise not_found(f"vm {vm_id} has no live migration")
        return LiveMigrationProgress(
            migration_id=migration.migration_id,
            vm_id=vm_id,
            state=migration.state,
            progress_pct=migration.progress_at(self._now()),
            source_nc_id=migration.source_nc_id,
            target_nc_id=migration.target_nc_id,
            message=migration.message,
        )

    def _vm_in_region(self, vm_id: str, region_id: str) -> Vm:
        vm = self._vm(vm_id)
        if vm.region_id != region_id:
            raise not_found(f"vm {vm_id} not found in region {region_id} (it is in {vm.region_id})")
        return vm

    def cancel_live_migrate_vm(self, region_id: str, vm_id: str) -> Ack:
        self._advance()
        vm = self._vm_in_region(vm_id, region_id)
        migration = self._latest_migration(vm_id)
        if migration is None or migration.state is not MigrationState.RUNNING:
            latest = (
                f" (its latest migration {migration.migration_id} is {migration.state.value})"
                if migration
                else ""
            )
            raise wrong_state(f"vm {vm_id} has no running live migration to cancel{latest}")
        if migration.stuck:
            raise wrong_state(
                f"migration cannot be cancelled: {migration.migration_id} of vm {vm_id} is stuck in migrating; "
                "correct it with manually_change_migration_status"
            )
        migration.final_progress = migration.progress_at(self._now())
        migration.state = MigrationState.CANCELLED
        migration.message = "cancelled; the vm keeps running on the source"
        vm.status = VmStatus.RUNNING
        return Ack()

    def manually_change_migration_status(self, vm_id: str, region_id: str, where: str) -> VmStatusChange:
        """Correct a migration stuck in ``migrating``: the VM is recorded as running on ``where``."""
        self._advance()
        vm = self._vm_in_region(vm_id, region_id)
        self._nc(where)
        migration = self._latest_migration(vm_id)
        if (
            vm.status is not VmStatus.MIGRATING
            or migration is None
            or migration.state is not MigrationState.RUNNING
        ):
            raise wrong_state(
                f"vm {vm_id} is {vm.status.value}, not migrating: there is no migration status to change"
            )
        if where not in (migration.source_nc_id, migration.target_nc_id):
            raise unsupported(
                f"vm {vm_id} migrates from nc {migration.source_nc_id} to nc {migration.target_nc_id}; "
                f"where must be one of them, got {where}"
            )
        if where == migration.target_nc_id:
            self._land(migration, vm)
        else:
            migration.state = MigrationState.FAILED
            migration.final_progress = migration.progress_at(self._now())
            vm.status = VmStatus.RUNNING
        migration.message = f"status changed manually: the vm runs on nc {where}"
        return VmStatusChange(vm_id=vm_id, nc_id=vm.nc_id, status=vm.status)

    # ---- cold migration, start, stop --------------------------------------------------------------------

    def _random_host(self, vm: Vm, cluster_id: str, exclude: str) -> Nc | None:
        candidates = sorted(
            (
                nc
                for nc in self._ncs.values()
                if nc.cluster_id == cluster_id
                and nc.nc_id != exclude
                and self._schedulable(nc)
                and self._has_room(nc, vm.vcpu, vm.memory_gib)
            ),
            key=lambda nc: nc.nc_id,
        )
        return self._rng.choice(candidates) if candidates else None

    def cold_migrate_vm(
        self,
        vm_id: str,
        *,
        target_nc_id: str | None = None,
        forced: bool = True,
        boot_mode: ColdMigrateBootMode = ColdMigrateBootMode.NORMAL,
        after: AfterMigrationState = AfterMigrationState.KEEP,
        ticket: str | None = None,
        reason: str = "",
    ) -> VmStatusChange:
        """Stop, move and (per ``after``) start the VM; done by the time the call answers."""
        self._advance()
        vm = self._vm(vm_id)
        if vm.status not in _COLD_MIGRATABLE_STATUSES:
            allowed = ", ".join(sorted(s.value for s in _COLD_MIGRATABLE_STATUSES))
            raise wrong_state(
                f"vm {vm_id} is {vm.status.value}, cannot be cold-migrated (allowed from: {allowed})"
            )
        source = self._nc(vm.nc_id)
        if target_nc_id is None:
            chosen = self._random_host(vm, source.cluster_id, exclude=source.nc_id)
            if chosen is None:
                raise wrong_state(
                    f"no capacity: no free nc in cluster {source.cluster_id} has room for vm {vm_id} "
                    f"({vm.vcpu} vCPU / {vm.memory_gib} GiB)"
                )
            target = chosen
        else:
            target = self._nc(target_nc_id)
            if target.nc_id == source.nc_id:
                raise unsupported(
                    f"vm {vm_id} is already on nc {target.nc_id}: the target must be another nc"
                )
            if target.cluster_id != source.cluster_id:
                raise unsupported(
                    f"target nc {target.nc_id} is in cluster {target.cluster_id}, vm {vm_id} is in cluster "
                    f"{source.cluster_id}: cold migration stays within a cluster"
                )
            if not target.biz_status.schedulable:
                raise wrong_state(
                    f"nc {target.nc_id} is {target.biz_status.value}, cannot receive vms (must be free)"
                )
            self._require_powered_on(target, "receive vms")
            if not self._has_room(target, vm.vcpu, vm.memory_gib):
                raise wrong_state(
                    f"nc {target.nc_id} has no room for vm {vm_id} ({vm.vcpu} vCPU / {vm.memory_gib} GiB)"
                )
        vm.nc_id = target.nc_id
        if after is AfterMigrationState.START:
            vm.status = VmStatus.RUNNING
        elif after is AfterMigrationState.STOP:
            vm.status = VmStatus.STOPPED
        self._nc_counters[source.nc_id]["cold_migrations_out"] += 1
        self._nc_counters[target.nc_id]["cold_migrations_in"] += 1
        self.counters["cold_migrations"] += 1
        if boot_mode is ColdMigrateBootMode.REPAIR:
            self.counters["repair_boots"] += 1
        return VmStatusChange(vm_id=vm_id, nc_id=target.nc_id, status=vm.status)

    def start_vm(self, vm_id: str) -> VmStatusChange:
        """Start a stopped VM; on a host that cannot run it (not free, not on) it is placed elsewhere."""
        self._advance()
        vm = self._vm(vm_id)
        if vm.status not in _STARTABLE_STATUSES:
            allowed = ", ".join(sorted(s.value for s in _STARTABLE_STATUSES))
            raise wrong_state(f"vm {vm_id} is {vm.status.value}, cannot start (allowed from: {allowed})")
        host = self._nc(vm.nc_id)
        if not self._schedulable(host):
            elsewhere = self._random_host(vm, host.cluster_id, exclude=host.nc_id)
            if elsewhere is None:
                raise wrong_state(
                    f"no capacity to start vm {vm_id}: its nc {host.nc_id} is {host.biz_status.value} "
                    f"(power {self._power_state(host.nc_id).value}) and no free nc in cluster {host.cluster_id} has room"
                )
            vm.nc_id = elsewhere.nc_id
        vm.status = VmStatus.RUNNING
        return VmStatusChange(vm_id=vm_id, nc_id=vm.nc_id, status=vm.status)

    def stop_vm(self, vm_id: str) -> VmStatusChange:
        self._advance()
        vm = self._vm(vm_id)
        if vm.status is not VmStatus.RUNNING:
            raise wrong_state(f"vm {vm_id} is {vm.status.value}, cannot stop (allowed from: running)")
        vm.status = VmStatus.STOPPED
        return VmStatusChange(vm_id=vm_id, nc_id=vm.nc_id, status=vm.status)

    # ---- RI capacity, events ----------------------------------------------------------------------------

    def reserve_ri_capacity(self, cluster_id: str, vcpu: int, memory_gib: int) -> RiReservation:
        self._advance()
        if cluster_id not in self.clusters:
            raise not_found(f"cluster {cluster_id} not found")
        if vcpu < 1 or memory_gib < 1:
            raise invalid_parameter(f"vcpu and memory_gib must be at least 1, got {vcpu} and {memory_gib}")
        free_vcpu = free_memory = 0
        for nc in self._ncs.values():
            if nc.cluster_id == cluster_id and self._schedulable(nc):
                nc_vcpu, nc_memory = self._free(nc)
                free_vcpu += max(nc_vcpu, 0)
                free_memory += max(nc_memory, 0)
        for reservation in self._reservations.values():
            if (
                reservation.cluster_id == cluster_id
                and reservation.reservation_id not in self._released_reservations
            ):
                free_vcpu -= reservation.vcpu
                free_memory -= reservation.memory_gib
        if vcpu > free_vcpu or memory_gib > free_memory:
            raise wrong_state(
                f"insufficient capacity in cluster {cluster_id}: asked {vcpu} vCPU / {memory_gib} GiB, "
                f"unreserved {max(free_vcpu, 0)} vCPU / {max(free_memory, 0)} GiB"
            )
        reservation = RiReservation(
            reservation_id=self._next_id("ri"), cluster_id=cluster_id, vcpu=vcpu, memory_gib=memory_gib
        )
        self._reservations[reservation.reservation_id] = reservation
        self.counters["ri_reserved"] += 1
        return reservation

    def release_ri_capacity(self, reservation_id: str) -> Ack:
        self._advance()
        if reservation_id not in self._reservations:
            raise not_found(f"reservation {reservation_id} not found")
        if reservation_id in self._released_reservations:
            raise wrong_state(f"reservation {reservation_id} is already released")
        self._released_reservations.add(reservation_id)
        self.counters["ri_released"] += 1
        return Ack()

    def live_migration_spans(self) -> list[dict[str, Any]]:
        """Every live migration with its start, end (None unless it succeeded) and copy time, in real
        monotonic seconds of this process: how benchmarks measure a schedule against its lower bound."""
        self._advance()
        return [
            {
                "vm_id": m.vm_id,
                "migration_id": m.migration_id,
                "state": m.state.value,
                "started_s": m.started_at,
                "ended_s": m.ends_at if m.state is MigrationState.SUCCEEDED else None,
                "copy_seconds": m.copy_seconds,
                "simulated_seconds": m.copy_seconds * self.speed,
            }
            for m in self._live_migrations.values()
        ]

    def active_reservations(self) -> list[RiReservation]:
        return [r for r in self._reservations.values() if r.reservation_id not in self._released_reservations]

    def publish_event(self, nc_id: str, event: str, detail: str = "", *, caller: str = "") -> Ack:
        self._advance()
        self._nc(nc_id)
        self.events.append(
            {
                "kind": "event",
                "nc_id": nc_id,
                "event": event,
                "detail": detail,
                "caller": caller,
                "at": self._wall_clock().isoformat(),
            }
        )
        self.counters["events_published"] += 1
        return Ack()

    def notify(self, target: str, message: str, *, caller: str = "") -> Ack:
        self._advance()
        self.events.append(
            {
                "kind": "notification",
                "target": target,
                "message": message,
                "caller": caller,
                "at": self._wall_clock().isoformat(),
            }
        )
        self.counters["notifications"] += 1
        return Ack()

    # ---- VM processes -----------------------------------------------------------------------------------

    @staticmethod
    def _pid(nc_id: str, vm_id: str) -> int:
        # Stable across runs and resets, so a test can compare listings.
        return 10_000 + zlib.crc32(f"{nc_id}/{vm_id}".encode()) % 90_000

    def list_vm_processes(self, nc_id: str) -> list[VmProcess]:
        self._advance()
        nc = self._nc(nc_id)
        self._require_powered_on(nc, "list its processes")
        processes = [
            VmProcess(
                vm_id=vm.vm_id, pid=self._pid(nc_id, vm.vm_id), state=ProcessState.RUNNING, guest_active=True
            )
            for vm in self._vms_with_process_on(nc_id)
        ]
        listed = {p.vm_id for p in processes}
        processes += [
            VmProcess(
                vm_id=vm_id,
                pid=self._pid(nc_id, vm_id),
                state=residue.state,
                guest_active=residue.guest_active,
            )
            for vm_id, residue in self._residues[nc_id].items()
            if vm_id not in listed
        ]
        return processes

    def destroy_vm_process(self, nc_id: str, vm_id: str) -> Ack:
        """Kill a VM process. Like the real thing it obeys even for the authoritative copy, but counts that."""
        self._advance()
        self._nc(nc_id)
        if vm_id in self._residues[nc_id]:
            del self._residues[nc_id][vm_id]
            self._nc_counters[nc_id]["residues_destroyed"] += 1
            return Ack()
        vm = self._vms.get(vm_id)
        if vm is not None and vm.nc_id == nc_id and vm.status in _PROCESS_STATUSES:
            self._nc_counters[nc_id]["authoritative_destroyed"] += 1
            vm.status = VmStatus.STOPPED
            return Ack()
        raise not_found(f"no process of vm {vm_id} on nc {nc_id}")

    # ---- disks ------------------------------------------------------------------------------------------

    def create_disk_snapshot(self, disk_id: str) -> DiskSnapshot:
        self._advance()
        self._disk(disk_id)
        snapshot_id = self._next_id("s")
        self._snapshots.setdefault(disk_id, []).append(snapshot_id)
        self.counters["snapshots"] += 1
        return DiskSnapshot(disk_id=disk_id, snapshot_id=snapshot_id)

    def start_disk_live_migration(self, disk_id: str, dst_storage_cluster: str) -> DiskMigrationTask:
        self._advance()
        disk = self._disk(disk_id)
        destination = self.storage_clusters.get(dst_storage_cluster)
        if destination is None:
            raise not_found(f"storage cluster {dst_storage_cluster} not found")
        source = self.storage_clusters[disk.storage_cluster]
        if disk.category is not DiskCategory.RIVER:
            raise unsupported(
                f"disk {disk_id} is {disk.category.value}: only river disks can be live-migrated"
            )
        if disk.shared:
            raise unsupported(f"disk {disk_id} is shared: shared disks cannot be live-migrated")
        if disk.size_gib > LARGE_DISK_GIB:
            raise unsupported(
                f"disk {disk_id} is {disk.size_gib} GiB: disks larger than {LARGE_DISK_GIB} GiB cannot be live-migrated"
            )
        if destination.name == source.name:
            raise unsupported(f"disk {disk_id} is already on storage cluster {destination.name}")
        if destination.zone_id != source.zone_id:
            raise unsupported(
                f"disk {disk_id} is in zone {source.zone_id}, storage cluster {destination.name} is in zone "
                f"{destination.zone_id}: disk live migration stays within one zone"
            )
        if destination.oss_domain != source.oss_domain:
            raise unsupported(
                f"storage clusters {source.name} ({source.oss_domain}) and {destination.name} "
                f"({destination.oss_domain}) are in different OSS domains"
            )
        for name in (source.name, destination.name):
            size = len(name.encode("utf-8"))
            if size >= STORAGE_CLUSTER_NAME_LIMIT_BYTES:
                raise unsupported(
                    f"storage cluster name {name!r} is {size} bytes: disk live migration needs names shorter than "
                    f"{STORAGE_CLUSTER_NAME_LIMIT_BYTES} bytes"
                )
        for task in self._disk_migrations.values():
            if task.disk_id == disk_id and task.state is DiskMigrationState.RUNNING:
                raise wrong_state(f"disk {disk_id} is already migrating (task {task.task_id})")
        now = self._now()
        copy_seconds = self._real_seconds(max(1.0, disk.size_gib * 1024 / self.disk_copy_mib_per_second))
        had_snapshot = bool(self._snapshots.get(disk_id))
        if not had_snapshot:
            # DOMAIN.md says to take a snapshot first; not refused, but counted so tests can prove we do.
            self.counters["disk_migrations_without_snapshot"] += 1
        task = DiskMigration(
            task_id=self._next_id("dmt", self._disk_migrations),
            disk_id=disk_id,
            size_gib=disk.size_gib,
            src_storage_cluster=source.name,
            dst_storage_cluster=destination.name,
            state=DiskMigrationState.RUNNING,
            started_at=now,
            ends_at=now + copy_seconds,
            finished_at=None,
            started_wall=self._wall_clock(),
            had_snapshot=had_snapshot,
        )
        self._disk_migrations[task.task_id] = task
        self._images.add(task.dst_pangu_path)
        self.counters["disk_migrations_started"] += 1
        return DiskMigrationTask(
            task_id=task.task_id,
            disk_id=disk_id,
            src_storage_cluster=source.name,
            dst_storage_cluster=destination.name,
        )

    def _finish_disk_migration(self, task: DiskMigration) -> None:
        disk = self._disks[task.disk_id]
        destination = self.storage_clusters[task.dst_storage_cluster]
        disk.storage_cluster = destination.name
        disk.zone_id = destination.zone_id
        disk.oss_domain = destination.oss_domain
        task.state = DiskMigrationState.COMPLETE
        started_wall = task.started_wall or self._wall_clock()
        task.finished_at = started_wall + timedelta(seconds=(task.ends_at or 0.0) - (task.started_at or 0.0))

    def _disk_task(self, task_id: str) -> DiskMigration:
        task = self._disk_migrations.get(task_id)
        if task is None:
            raise not_found(f"disk migration task {task_id} not found")
        return task

    def get_disk_migration_progress(self, task_id: str) -> DiskMigrationProgress:
        self._advance()
        task = self._disk_task(task_id)
        return DiskMigrationProgress(
            task_id=task_id,
            disk_id=task.disk_id,
            state=task.state,
            progress_pct=task.progress_at(self._now()),
        )

    def query_device_migrate_log(self, status: str | None = None) -> list[DeviceMigrateLogEntry]:
        self._advance()
        return [
            DeviceMigrateLogEntry(task_id=task.task_id, disk_id=task.disk_id, status=task.state.value)
            for task in self._disk_migrations.values()
            if status is None or task.state.value == status
        ]

    def query_migration_log(
        self,
        task_id: str,
        *,
        status: int | None = None,
        src_recycled: int | None = None,
        finished_before: datetime | None = None,
    ) -> list[MigrationLogEntry]:
        """The task's migration_log row (status 2 once the copy is complete), filtered like the SQL would."""
        self._advance()
        task = self._disk_migrations.get(task_id)
        if task is None or task.state is not DiskMigrationState.COMPLETE or task.finished_at is None:
            return []
        entry = MigrationLogEntry(
            task_id=task.task_id,
            src_pangu_path=task.src_pangu_path,
            dst_pangu_path=task.dst_pangu_path,
            status=2,
            src_recycled=task.src_recycled,
            finished_at=task.finished_at,
        )
        if status is not None and entry.status != status:
            return []
        if src_recycled is not None and entry.src_recycled != src_recycled:
            return []
        if finished_before is not None and not entry.finished_at < finished_before:
            return []
        return [entry]

    def _require_image(self, directory: str) -> None:
        if directory not in self._images:
            raise not_found(f"no image at {directory}")

    def bsutil_rlm(self, directory: str) -> int:
        """How many entries under ``directory`` are not loaded yet (non-zero while a copy is still running)."""
        self._advance()
        self._require_image(directory)
        count = self._not_loaded_count(directory)
        gains = self._not_loaded_after_check.pop(directory, None)
        if gains is not None:
            # The destination changes right after it was checked (a repair re-marks entries): what the
            # recycle must survive without deleting its source.
            self._not_loaded[directory] = gains
        return count

    def set_not_loaded(self, directory: str, count: int, *, after_next_check: bool = False) -> None:
        """Admin: ``directory`` has ``count`` not-loaded entries now, or right after its next ``bsutil rlm``."""
        self._require_image(directory)
        if after_next_check:
            self._not_loaded_after_check[directory] = count
        else:
            self._not_loaded[directory] = count

    def _not_loaded_count(self, directory: str) -> int:
        not_loaded = self._not_loaded.get(directory, 0)
        now = self._now()
        for task in self._disk_migrations.values():
            if task.state is DiskMigrationState.RUNNING and task.dst_pangu_path == directory:
                remaining = math.ceil(task.size_gib * (100 - task.progress_at(now)) / 100)
                not_loaded = max(not_loaded, remaining, 1)
        return not_loaded

    def bsutil_delete_image(self, directory: str, *, unless_not_loaded: str | None = None) -> Ack:
        self._advance()
        self._require_image(directory)
        if unless_not_loaded is not None:
            guarded = self._not_loaded_count(unless_not_loaded) if unless_not_loaded in self._images else 0
            if guarded:
                self.counters["deletes_refused_not_loaded"] += 1
                raise wrong_state(
                    f"not deleting {directory}: {unless_not_loaded} has {guarded} not-loaded entries"
                )
        for task in self._disk_migrations.values():
            if task.src_pangu_path == directory and task.dst_pangu_path in self._images:
                if self._not_loaded_count(task.dst_pangu_path):
                    self.counters["sources_deleted_with_dst_not_loaded"] += 1
        self._images.discard(directory)
        self.counters["images_deleted"] += 1
        if any(pangu_path(d.storage_cluster, d.disk_id) == directory for d in self._disks.values()):
            # The disk's live data: obeyed like the real tool would, counted so tests prove we never do it.
            self.counters["live_images_deleted"] += 1
        return Ack()

    def river_admin_migrate_recycle(self, task_id: str) -> Ack:
        self._advance()
        task = self._disk_task(task_id)
        if task.state is not DiskMigrationState.COMPLETE:
            raise wrong_state(
                f"disk migration task {task_id} is {task.state.value}, cannot recycle its source"
            )
        if task.src_recycled:
            raise wrong_state(f"disk migration task {task_id}: its source is already recycled")
        task.src_recycled = 1
        self.counters["recycles"] += 1
        return Ack()

    # ---- admin (the test harness's view and hands) ------------------------------------------------------

    def admin_nc_summaries(self) -> list[dict[str, Any]]:
        self._advance()
        return [
            {
                "nc_id": nc.nc_id,
                "nc_ip": nc.nc_ip,
                "region_id": nc.region_id,
                "zone_id": nc.zone_id,
                "cluster_id": nc.cluster_id,
                "biz_status": nc.biz_status.value,
                "power_state": self._power_state(nc.nc_id).value,
            }
            for nc in self._ncs.values()
        ]

    def nc_counters(self, nc_id: str) -> dict[str, int]:
        counters = self._nc_counters[self._nc(nc_id).nc_id]
        return {name: counters[name] for name in NC_COUNTER_NAMES}

    def admin_nc_detail(self, key: str) -> dict[str, Any]:
        self._advance()
        nc = self.resolve_nc(key)
        return {
            "nc": self._view(nc).model_dump(mode="json"),
            "biz_status": nc.biz_status.value,
            "power_state": self._power_state(nc.nc_id).value,
            "load_high": nc.nc_id in self._load_high,
            "vms": [vm.model_dump(mode="json") for vm in self._vms_placed_on(nc.nc_id)],
            "residues": [
                {"vm_id": vm_id, "state": residue.state.value, "guest_active": residue.guest_active}
                for vm_id, residue in self._residues[nc.nc_id].items()
            ],
            "counters": self.nc_counters(nc.nc_id),
        }

    def _migration_json(self, migration: LiveMigration) -> dict[str, Any]:
        return {
            "migration_id": migration.migration_id,
            "state": migration.state.value,
            "progress_pct": migration.progress_at(self._now()),
            "source_nc_id": migration.source_nc_id,
            "target_nc_id": migration.target_nc_id,
            "stuck": migration.stuck,
            "message": migration.message,
        }

    def admin_vm(self, vm_id: str) -> dict[str, Any]:
        self._advance()
        vm = self._vm(vm_id)
        migrations = [m for m in self._live_migrations.values() if m.vm_id == vm_id]
        return {
            "vm": vm.model_dump(mode="json"),
            "residues_on": sorted(nc_id for nc_id, residues in self._residues.items() if vm_id in residues),
            "live_migrations": [self._migration_json(m) for m in migrations],
            "disks": [d.disk_id for d in self._disks.values() if d.vm_id == vm_id],
        }

    def admin_disk_migrations(self) -> list[dict[str, Any]]:
        """Every disk migration task with what disk recycle looks at: the images still there, the
        destination's not-loaded count."""
        self._advance()
        return [
            {
                "task_id": t.task_id,
                "disk_id": t.disk_id,
                "state": t.state.value,
                "src_recycled": t.src_recycled,
                "finished_at": t.finished_at.isoformat() if t.finished_at else None,
                "src_pangu_path": t.src_pangu_path,
                "dst_pangu_path": t.dst_pangu_path,
                "src_image": t.src_pangu_path in self._images,
                "dst_not_loaded": self._not_loaded_count(t.dst_pangu_path),
            }
            for t in sorted(self._disk_migrations.values(), key=lambda t: t.task_id)
        ]

    def admin_disk(self, disk_id: str) -> dict[str, Any]:
        self._advance()
        disk = self._disk(disk_id)
        now = self._now()
        return {
            "disk": disk.model_dump(mode="json"),
            "snapshots": list(self._snapshots.get(disk_id, [])),
            "migrations": [
                {
                    "task_id": t.task_id,
                    "state": t.state.value,
                    "progress_pct": t.progress_at(now),
                    "src_storage_cluster": t.src_storage_cluster,
                    "dst_storage_cluster": t.dst_storage_cluster,
                    "src_recycled": t.src_recycled,
                    "started_at": t.started_wall.isoformat() if t.started_wall else None,
                    "finished_at": t.finished_at.isoformat() if t.finished_at else None,
                    "had_snapshot": t.had_snapshot,
                }
                for t in self._disk_migrations.values()
                if t.disk_id == disk_id
            ],
            "images": sorted(path for path in self._images if path.endswith(f"/{disk_id}")),
        }

    def totals(self) -> dict[str, int]:
        """Fleet-wide counters: the per-NC ones summed, plus the fleet's own."""
        totals: Counter[str] = Counter({name: 0 for name in (*NC_COUNTER_NAMES, *FLEET_COUNTER_NAMES)})
        for counters in self._nc_counters.values():
            totals.update(counters)
        totals.update(self.counters)
        return dict(sorted(totals.items()))

    def patch_nc(
        self,
        key: str,
        *,
        biz_status: NcBizStatus | None = None,
        power_state: PowerState | None = None,
        load_high: bool | None = None,
    ) -> None:
        """Set an NC's state directly, bypassing the rules (test setup: "this host just went down")."""
        nc = self.resolve_nc(key)
        if biz_status is not None:
            nc.biz_status = biz_status
        if power_state is not None:
            self._power[nc.nc_id] = PowerTimeline(final=power_state)
        if load_high is True:
            self._load_high.add(nc.nc_id)
        elif load_high is False:
            self._load_high.discard(nc.nc_id)

    def patch_vm(
        self,
        vm_id: str,
        *,
        status: VmStatus | None = None,
        dirty_rate_mbps: int | None = None,
        image_supported: bool | None = None,
        nc_id: str | None = None,
    ) -> None:
        """Sets a VM's record directly (test setup); ``nc_id``: the control plane now places it on that
        host (e.g. "a VM reappears on the host being drained")."""
        vm = self._vm(vm_id)
        if nc_id is not None:
            vm.nc_id = self._nc(nc_id).nc_id
        if status is not None:
            vm.status = status
        if dirty_rate_mbps is not None:
            vm.dirty_rate_mbps = dirty_rate_mbps
        if image_supported is not None:
            vm.image_supported = image_supported

    def plant_residue(self, nc_id: str, vm_id: str, *, state: ProcessState, guest_active: bool) -> None:
        self._nc(nc_id)
        vm = self._vm(vm_id)
        if vm.nc_id == nc_id and vm.status is not VmStatus.RELEASED:
            raise wrong_state(f"vm {vm_id} is placed on nc {nc_id}: its process there is not a residue")
        self._residues[nc_id][vm_id] = Residue(state, guest_active)
