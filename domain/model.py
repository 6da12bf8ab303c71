"""The fleet as the control plane sees it: regions, zones, clusters, NCs, VMs and disks."""

from __future__ import annotations

import functools
import ipaddress
import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_NC_ID = re.compile(r"^[0-9]+-[0-9]+$")
_VM_ID = re.compile(r"^i-[0-9a-z]{6,32}$")


# Cached: every host record read from Houyi carries its address (a cluster listing, dozens), and ipaddress
# parses one in microseconds; the fleet's addresses are few and recur.
@functools.lru_cache(maxsize=65_536)
def _valid_ipv4(value: str) -> str:
    text = value.strip()
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4 address") from None
    return str(address)


def _valid_nc_id(value: str) -> str:
    if not _NC_ID.match(value):
        raise ValueError(f"{value!r} is not an NC id (expected digits-digits, e.g. 14783-4)")
    return value


def _valid_vm_id(value: str) -> str:
    if not _VM_ID.match(value):
        raise ValueError(
            f"{value!r} is not an instance id (expected i- followed by 6-32 lowercase letters or digits)"
        )
    return value


NcIp = Annotated[str, AfterValidator(_valid_ipv4)]
NcId = Annotated[str, AfterValidator(_valid_nc_id)]
VmId = Annotated[str, AfterValidator(_valid_vm_id)]


class ClusterKind(StrEnum):
    """What the cluster's hosts are for."""

    CPU = "CPU"
    MOC = "MOC"
    GPU = "GPU"
    FPGA = "FPGA"
    SCC = "SCC"
    STORAGE_CONVERGED = "STORAGE_CONVERGED"


class ClusterTenancy(StrEnum):
    SHARED = "shared"
    EXCLUSIVE = "exclusive"
    BARE_METAL = "bare_metal"


class NcBizStatus(StrEnum):
    """Business status of an NC (DOMAIN.md, "NC business status")."""

    FREE = "free"
    MLOCK = "mlock"
    RLOCK = "rlock"
    LOCKED = "locked"
    NC_DOWN = "nc_down"
    OFFLINE = "offline"
    NO_HEARTBEAT = "no_heartbeat"
    INITIALIZING = "initializing"

    @property
    def schedulable(self) -> bool:
        return self is NcBizStatus.FREE


class PowerState(StrEnum):
    """OOB power status; changes pass through a pending state."""

    ON = "on"
    OFF = "off"
    PENDING_ON = "pending_on"
    PENDING_OFF = "pending_off"

    @property
    def settled(self) -> bool:
        return self in (PowerState.ON, PowerState.OFF)


class VmStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    PENDING = "pending"
    STARTING = "starting"
    STOPPING = "stopping"
    RELEASING = "releasing"
    RELEASED = "released"
    MIGRATING = "migrating"


class DeviceKind(StrEnum):
    """Devices that pin a VM to its host."""

    GPU = "gpu"
    FPGA = "fpga"
    PASSTHROUGH = "passthrough"
    SRIOV = "sriov"


class DiskCategory(StrEnum):
    RIVER = "river"
    LOCAL_SSD = "local_ssd"
    LOCAL_HDD = "local_hdd"
    PANGU_LEGACY = "pangu_legacy"


class DiskFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class Region(BaseModel):
    model_config = ConfigDict(frozen=True)

    region_id: str = Field(examples=["cn-qd-d01"])


class Zone(BaseModel):
    model_config = ConfigDict(frozen=True)

    zone_id: str = Field(examples=["cn-qd-d01-a"])
    region_id: str


class Cluster(BaseModel):
    model_config = ConfigDict(frozen=True)

    cluster_id: str = Field(examples=["ECS-CPU-A-8976"])
    region_id: str
    zone_id: str
    kind: ClusterKind
    tenancy: ClusterTenancy = ClusterTenancy.SHARED


class Nc(BaseModel):
    """A physical hypervisor host."""

    nc_id: NcId
    nc_ip: NcIp
    hostname: str
    sn: str
    region_id: str
    zone_id: str
    cluster_id: str
    biz_status: NcBizStatus
    power_state: PowerState = PowerState.ON
    cpu_model: str
    software_version: str
    vcpu_total: int = Field(ge=0)
    memory_gib_total: int = Field(ge=0)
    vcpu_used: int = Field(default=0, ge=0)
    memory_gib_used: int = Field(default=0, ge=0)
    has_storage_node: bool = False

    @property
    def vcpu_free(self) -> int:
        return max(self.vcpu_total - self.vcpu_used, 0)

    @property
    def memory_gib_free(self) -> int:
        return max(self.memory_gib_total - self.memory_gib_used, 0)


class Vm(BaseModel):
    """An ECS instance, with the attributes that decide whether it can be live-migrated."""

    vm_id: VmId
    nc_id: NcId
    region_id: str
    status: VmStatus
    instance_type: str = Field(examples=["ecs.g6.large"])
    vcpu: int = Field(ge=1)
    memory_gib: int = Field(ge=1)
    image_id: str = "img-std"
    image_supported: bool = True
    has_local_disk: bool = False
    devices: list[DeviceKind] = Field(default_factory=list)
    has_trunk_nic: bool = False
    created_before_v33: bool = False
    restarted_since_v33: bool = True
    dirty_rate_mbps: int = Field(default=20, ge=0, description="memory dirtying rate, MB/s")


class Disk(BaseModel):
    disk_id: str = Field(examples=["d-8vb5n3q2"])
    vm_id: VmId | None = None
    zone_id: str
    category: DiskCategory
    size_gib: int = Field(ge=1)
    format: DiskFormat = DiskFormat.RAW
    shared: bool = False
    storage_cluster: str
    oss_domain: str


class NcDetail(BaseModel):
    """An NC with the VMs the control plane places on it."""

    nc: Nc
    vms: list[Vm] = Field(default_factory=list)


class LiveMigrationBlocker(StrEnum):
    """Why a VM cannot be live-migrated (DOMAIN.md, "Live migration")."""

    LOCAL_STORAGE = "local_storage"
    PINNED_DEVICE = "gpu_fpga_passthrough_sriov"
    TRUNK_NIC = "trunk_or_member_nic"
    PRE_V33_NOT_RESTARTED = "created_before_v3.3_not_restarted"
    CPU_MODEL_MISMATCH = "cpu_model_mismatch"
    SOFTWARE_VERSION_MISMATCH = "software_version_mismatch"
    NOT_RUNNING = "not_running"


def live_migration_blockers(vm: Vm, source: Nc, target: Nc | None = None) -> list[LiveMigrationBlocker]:
    """Every reason ``vm`` cannot be live-migrated off ``source`` (onto ``target`` when given)."""
    blockers: list[LiveMigrationBlocker] = []
    if vm.status is not VmStatus.RUNNING:
        blockers.append(LiveMigrationBlocker.NOT_RUNNING)
    if vm.has_local_disk:
        blockers.append(LiveMigrationBlocker.LOCAL_STORAGE)
    if vm.devices:
        blockers.append(LiveMigrationBlocker.PINNED_DEVICE)
    if vm.has_trunk_nic:
        blockers.append(LiveMigrationBlocker.TRUNK_NIC)
    if vm.created_before_v33 and not vm.restarted_since_v33:
        blockers.append(LiveMigrationBlocker.PRE_V33_NOT_RESTARTED)
    if target is not None:
        if target.cpu_model != source.cpu_model:
            blockers.append(LiveMigrationBlocker.CPU_MODEL_MISMATCH)
        if target.software_version != source.software_version:
            blockers.append(LiveMigrationBlocker.SOFTWARE_VERSION_MISMATCH)
    return blockers
