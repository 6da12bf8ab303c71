"""The ports to the control plane: what our activities need from Houyi and from the storage tools.

``HttpHouyiClient`` (houyi.http_client) is the real adapter; the simulator speaks the same protocol.
Every method takes a ``CallContext``: the caller (the workflow id) for the audit, and, on a mutating
call, the idempotency token derived from the workflow id and the step.
"""

from __future__ import annotations

import abc
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from domain.model import Disk, Nc, NcBizStatus, NcDetail, PowerState, Vm, VmStatus


class CallContext(BaseModel):
    model_config = ConfigDict(frozen=True)

    caller: str
    token: str | None = None

    def step(self, step: str) -> CallContext:
        """The context for one mutating step: its token is the caller plus the step name."""
        return CallContext(caller=self.caller, token=f"{self.caller}/{step}")


class MissingIdempotencyToken(ValueError):
    pass


# ---- results --------------------------------------------------------------------------------------


class NcStatusChange(BaseModel):
    nc_id: str
    status_before: NcBizStatus
    status_after: NcBizStatus


class PowerStatus(BaseModel):
    nc_id: str
    power_state: PowerState


class DumpResult(BaseModel):
    nc_id: str
    dump_id: str


class MigrationState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class LiveMigrationTask(BaseModel):
    migration_id: str
    vm_id: str
    source_nc_id: str
    target_nc_id: str | None = None


class LiveMigrationProgress(BaseModel):
    migration_id: str
    vm_id: str
    state: MigrationState
    progress_pct: int = Field(ge=0, le=100)
    source_nc_id: str
    target_nc_id: str | None = None
    message: str = ""


class ColdMigrateBootMode(StrEnum):
    NORMAL = "normal"
    REPAIR = "repair"


class AfterMigrationState(StrEnum):
    START = "start"
    STOP = "stop"
    KEEP = "keep"


class VmStatusChange(BaseModel):
    vm_id: str
    nc_id: str
    status: VmStatus


class RiReservation(BaseModel):
    reservation_id: str
    cluster_id: str
    vcpu: int
    memory_gib: int


class Ack(BaseModel):
    """A mutating call that returns nothing of its own."""

    done: bool = True


class ProcessState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"


class VmProcess(BaseModel):
    """A VM process (libvirt domain) found on a host."""

    vm_id: str
    pid: int
    state: ProcessState
    guest_active: bool = Field(description="the guest did work in the last sampling interval")


class StorageClusterInfo(BaseModel):
    name: str
    zone_id: str
    oss_domain: str


class DiskSnapshot(BaseModel):
    disk_id: str
    snapshot_id: str


class DiskMigrationState(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


class DiskMigrationTask(BaseModel):
    task_id: str
    disk_id: str
    src_storage_cluster: str
    dst_storage_cluster: str


class DiskMigrationProgress(BaseModel):
    task_id: str
    disk_id: str
    state: DiskMigrationState
    progress_pct: int = Field(ge=0, le=100)
    message: str = ""


class DeviceMigrateLogEntry(BaseModel):
    task_id: str
    disk_id: str
    status: str


class MigrationLogEntry(BaseModel):
    task_id: str
    src_pangu_path: str
    dst_pangu_path: str
    status: int
    src_recycled: int
    finished_at: datetime


# ---- ports ----------------------------------------------------------------------------------------


class HouyiPort(abc.ABC):
    """The ECS control plane, as our activities use it."""

    # reads
    @abc.abstractmethod
    async def describe_nc(
        self, ctx: CallContext, *, nc_ip: str | None = None, nc_id: str | None = None
    ) -> NcDetail:
        """An NC, by IP or id, with the VMs the control plane places on it."""

    @abc.abstractmethod
    async def list_ncs(
        self, ctx: CallContext, *, region_id: str | None = None, cluster_id: str | None = None
    ) -> list[Nc]: ...

    @abc.abstractmethod
    async def describe_vm(self, ctx: CallContext, *, vm_id: str) -> Vm: ...

    @abc.abstractmethod
    async def get_oob_power_status(self, ctx: CallContext, *, nc_id: str) -> PowerStatus: ...

    @abc.abstractmethod
    async def get_live_migration_progress(self, ctx: CallContext, *, vm_id: str) -> LiveMigrationProgress: ...

    @abc.abstractmethod
    async def list_vm_processes(self, ctx: CallContext, *, nc_id: str) -> list[VmProcess]: ...

    @abc.abstractmethod
    async def describe_disk(self, ctx: CallContext, *, disk_id: str) -> Disk: ...

    @abc.abstractmethod
    async def describe_storage_cluster(self, ctx: CallContext, *, name: str) -> StorageClusterInfo: ...

    @abc.abstractmethod
    async def get_disk_migration_progress(
        self, ctx: CallContext, *, task_id: str
    ) -> DiskMigrationProgress: ...

    # host status and power
    @abc.abstractmethod
    async def lock_nc(
        self, ctx: CallContext, *, nc_id: str, status: NcBizStatus = NcBizStatus.MLOCK
    ) -> NcStatusChange:
        """``free -> mlock`` (or ``rlock``)."""

    @abc.abstractmethod
    async def unlock_nc(self, ctx: CallContext, *, nc_id: str) -> NcStatusChange: ...

    @abc.abstractmethod
    async def set_nc_status(self, ctx: CallContext, *, nc_id: str, status: NcBizStatus) -> NcStatusChange: ...

    @abc.abstractmethod
    async def oob_power_off(self, ctx: CallContext, *, nc_id: str) -> PowerStatus: ...

    @abc.abstractmethod
    async def oob_power_on(self, ctx: CallContext, *, nc_id: str) -> PowerStatus: ...

    @abc.abstractmethod
    async def oob_power_cycle(self, ctx: CallContext, *, nc_id: str) -> PowerStatus: ...

    @abc.abstractmethod
    async def dump_cn_memory(self, ctx: CallContext, *, nc_id: str) -> DumpResult: ...

    # VMs
    @abc.abstractmethod
    async def live_migrate_vm(
        self,
        ctx: CallContext,
        *,
        vm_id: str,
        target_nc_id: str | None = None,
        rate: int = 80,
        no_check_image: bool = False,
        no_check_load: bool = False,
        downtime: int = 300,
    ) -> LiveMigrationTask: ...

    @abc.abstractmethod
    async def cancel_live_migrate_vm(self, ctx: CallContext, *, region_id: str, vm_id: str) -> Ack: ...

    @abc.abstractmethod
    async def manually_change_migration_status(
        self, ctx: CallContext, *, vm_id: str, region_id: str, where: str
    ) -> VmStatusChange: ...

    @abc.abstractmethod
    async def cold_migrate_vm(
        self,
        ctx: CallContext,
        *,
        vm_id: str,
        target_nc_id: str | None = None,
        forced: bool = True,
        boot_mode: ColdMigrateBootMode = ColdMigrateBootMode.NORMAL,
        after: AfterMigrationState = AfterMigrationState.KEEP,
        ticket: str | None = None,
        reason: str = "",
    ) -> VmStatusChange: ...

    @abc.abstractmethod
    async def start_vm(self, ctx: CallContext, *, vm_id: str) -> VmStatusChange: ...

    @abc.abstractmethod
    async def stop_vm(self, ctx: CallContext, *, vm_id: str) -> VmStatusChange: ...

    # capacity, events
    @abc.abstractmethod
    async def reserve_ri_capacity(
        self, ctx: CallContext, *, cluster_id: str, vcpu: int, memory_gib: int
    ) -> RiReservation: ...

    @abc.abstractmethod
    async def release_ri_capacity(self, ctx: CallContext, *, reservation_id: str) -> Ack: ...

    @abc.abstractmethod
    async def publish_event(self, ctx: CallContext, *, nc_id: str, event: str, detail: str = "") -> Ack: ...

    @abc.abstractmethod
    async def notify(self, ctx: CallContext, *, target: str, message: str) -> Ack: ...

    # residues
    @abc.abstractmethod
    async def destroy_vm_process(self, ctx: CallContext, *, nc_id: str, vm_id: str) -> Ack: ...

    # disks
    @abc.abstractmethod
    async def create_disk_snapshot(self, ctx: CallContext, *, disk_id: str) -> DiskSnapshot: ...

    @abc.abstractmethod
    async def start_disk_live_migration(
        self, ctx: CallContext, *, disk_id: str, dst_storage_cluster: str
    ) -> DiskMigrationTask: ...


class StorageToolsPort(abc.ABC):
    """River / Pangu admin tools used by disk recycle (``bsutil``, ``river_admin``, the migration logs)."""

    @abc.abstractmethod
    async def query_device_migrate_log(
        self, ctx: CallContext, *, status: str = "complete"
    ) -> list[DeviceMigrateLogEntry]: ...

    @abc.abstractmethod
    async def query_migration_log(
        self,
        ctx: CallContext,
        *,
        task_id: str,
        status: int = 2,
        src_recycled: int | None = 0,
        finished_before: datetime,
    ) -> list[MigrationLogEntry]:
        """The task's migration_log rows so filtered (``src_recycled`` None: either)."""

    @abc.abstractmethod
    async def bsutil_rlm_not_loaded_count(self, ctx: CallContext, *, dir: str) -> int: ...

    @abc.abstractmethod
    async def bsutil_delete_image(
        self, ctx: CallContext, *, dir: str, unless_not_loaded: str | None = None
    ) -> Ack:
        """Deletes the image under ``dir``. With ``unless_not_loaded`` (a destination directory) the storage
        side re-counts that directory's not-loaded entries under the same lock as the delete and refuses
        (``HouyiConflict``) when any is there: a check and a delete that nothing can slip between."""

    @abc.abstractmethod
    async def river_admin_migrate_recycle(self, ctx: CallContext, *, task_id: str) -> Ack: ...


class HouyiCallRecord(BaseModel):
    """One control-plane call, as the audit keeps it (DOMAIN.md, "Audit and monitoring")."""

    action: str
    request_id: str
    code: int = Field(description="the envelope code; 0 when no answer came back")
    message: str
    caller: str
    token: str | None
    latency_ms: float
    params: dict[str, str]
    started_at: datetime


class CallRecorder(Protocol):
    async def record_houyi_call(self, call: HouyiCallRecord) -> None: ...
