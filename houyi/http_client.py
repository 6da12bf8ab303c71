"""The real Houyi adapter: one HTTP request per ``go2hyapi`` action (see houyi.wire)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError

from domain.model import Disk, Nc, NcBizStatus, NcDetail, Vm
from houyi import wire
from houyi.errors import HouyiError, HouyiProtocolError, HouyiUnavailable, error_for
from houyi.port import (
    Ack,
    AfterMigrationState,
    CallContext,
    CallRecorder,
    ColdMigrateBootMode,
    DeviceMigrateLogEntry,
    DiskMigrationProgress,
    DiskMigrationTask,
    DiskSnapshot,
    DumpResult,
    HouyiCallRecord,
    HouyiPort,
    LiveMigrationProgress,
    LiveMigrationTask,
    MigrationLogEntry,
    MissingIdempotencyToken,
    NcStatusChange,
    PowerStatus,
    RiReservation,
    StorageClusterInfo,
    StorageToolsPort,
    VmProcess,
    VmStatusChange,
)
from runtime.metrics import METRICS, ServiceMetrics
from store.errors import StoreError

log = structlog.get_logger(__name__)

UNRECORDED_LIMIT = 10_000

ModelT = TypeVar("ModelT", bound=BaseModel)


class HttpHouyiClient(HouyiPort, StorageToolsPort):
    """Speaks the go2hyapi protocol over HTTP; records every call through ``recorder``.

    One instance is shared by all activities of a worker: it holds the connection pool.
    """

    def __init__(
        self,
        base_url: str,
        *,
        recorder: CallRecorder | None = None,
        timeout_seconds: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        metrics: ServiceMetrics = METRICS,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._recorder = recorder
        self._metrics = metrics
        # Call records the store could not take yet; bounded: an outage longer than this loses the oldest.
        self._unrecorded: deque[HouyiCallRecord] = deque(maxlen=UNRECORDED_LIMIT)
        self._flushing = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> HttpHouyiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def call(self, ctx: CallContext, action: wire.Action, params: Mapping[str, Any]) -> Any:
        """Sends one action and returns the envelope's data; raises a classified ``HouyiError``."""
        if action.mutating and not ctx.token:
            raise MissingIdempotencyToken(f"{action.value} changes state and needs an idempotency token")
        sent = {k: v for k, v in params.items() if v is not None}
        body = wire.encode_params({**sent, wire.CALLER_PARAM: ctx.caller, wire.TOKEN_PARAM: ctx.token})
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        envelope: wire.Envelope | None = None
        failure: HouyiError | None = None
        try:
            async with self._http().post(
                f"{self._base_url}{wire.PATH_PREFIX}{action.value}",
                data=body,
                headers={"Content-Type": wire.CONTENT_TYPE},
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    failure = HouyiUnavailable(action.value, response.status, f"HTTP {response.status}")
                else:
                    envelope = wire.decode_envelope(raw)
        except wire.ProtocolError as error:
            failure = HouyiProtocolError(action.value, 0, str(error))
        except TimeoutError:
            failure = HouyiUnavailable(action.value, 0, f"no answer within {self._timeout.total:g} s")
        except aiohttp.ClientError as error:
            failure = HouyiUnavailable(action.value, 0, f"transport error: {error}")
        latency_ms = (time.perf_counter() - started) * 1000
        if envelope is not None and not envelope.ok:
            failure = error_for(action.value, envelope.code, envelope.msg, envelope.request_id)
        self._metrics.houyi_calls.labels(action.value, "ok" if failure is None else failure.error_type).inc()
        self._metrics.houyi_latency.labels(action.value).observe(latency_ms / 1000)
        await self._record(
            HouyiCallRecord(
                action=action.value,
                request_id=envelope.request_id if envelope else "",
                code=envelope.code if envelope else (failure.code if failure else 0),
                message=envelope.msg if envelope else (failure.message if failure else ""),
                caller=ctx.caller,
                token=ctx.token,
                latency_ms=round(latency_ms, 3),
                params={k: str(v) for k, v in sent.items()},
                started_at=started_at,
            )
        )
        if failure is not None:
            log.warning(
                "houyi call failed",
                action=action.value,
                code=failure.code,
                error=failure.message,
                caller=ctx.caller,
                retryable=failure.retryable,
            )
            raise failure
        assert envelope is not None
        return envelope.data

    async def _record(self, call: HouyiCallRecord) -> None:
        """Records the call; when the recorder cannot (the store is down), keeps it to record later.

        The call has happened: failing it because its record could not be written would make the step retry
        (replayed by its token) until its attempts run out, and stop the operation for an operator during a
        store outage. Rows kept back are written with a later call's, by one coroutine at a time (the client
        is shared by every activity of the worker).
        """
        if self._recorder is None:
            return
        if not self._unrecorded:
            try:
                await self._recorder.record_houyi_call(call)
                return
            except StoreError as error:
                log.warning("houyi call not recorded yet", action=call.action, error=str(error))
        self._unrecorded.append(call)
        if self._flushing.locked():
            return  # the coroutine writing the backlog writes this one too
        async with self._flushing:
            while self._unrecorded:
                try:
                    await self._recorder.record_houyi_call(self._unrecorded[0])
                except StoreError as error:
                    log.warning("houyi calls not recorded yet", kept=len(self._unrecorded), error=str(error))
                    return
                self._unrecorded.popleft()

    async def _call_model(
        self,
        ctx: CallContext,
        action: wire.Action,
        params: Mapping[str, Any],
        model: type[ModelT],
        key: str | None = None,
    ) -> ModelT:
        data = await self.call(ctx, action, params)
        try:
            return model.model_validate(data[key] if key else data)
        except (ValidationError, KeyError, TypeError) as error:
            raise HouyiProtocolError(
                action.value, 200, f"unexpected data for {model.__name__}: {error}"
            ) from None

    async def _call_list(
        self, ctx: CallContext, action: wire.Action, params: Mapping[str, Any], model: type[ModelT], key: str
    ) -> list[ModelT]:
        data = await self.call(ctx, action, params)
        try:
            return [model.model_validate(item) for item in data[key]]
        except (ValidationError, KeyError, TypeError) as error:
            raise HouyiProtocolError(
                action.value, 200, f"unexpected data for list of {model.__name__}: {error}"
            ) from None

    # ---- reads ------------------------------------------------------------------------------------

    async def describe_nc(
        self, ctx: CallContext, *, nc_ip: str | None = None, nc_id: str | None = None
    ) -> NcDetail:
        if not (nc_ip or nc_id):
            raise ValueError("describe_nc needs nc_ip or nc_id")
        return await self._call_model(
            ctx, wire.Action.DESCRIBE_NC, {"nc_ip": nc_ip, "nc_id": nc_id}, NcDetail
        )

    async def list_ncs(
        self, ctx: CallContext, *, region_id: str | None = None, cluster_id: str | None = None
    ) -> list[Nc]:
        return await self._call_list(
            ctx, wire.Action.LIST_NCS, {"region_id": region_id, "cluster_id": cluster_id}, Nc, "ncs"
        )

    async def describe_vm(self, ctx: CallContext, *, vm_id: str) -> Vm:
        return await self._call_model(ctx, wire.Action.DESCRIBE_VM, {"vm_name": vm_id}, Vm, "vm")

    async def get_oob_power_status(self, ctx: CallContext, *, nc_id: str) -> PowerStatus:
        return await self._call_model(ctx, wire.Action.GET_OOB_POWER_STATUS, {"nc_id": nc_id}, PowerStatus)

    async def get_live_migration_progress(self, ctx: CallContext, *, vm_id: str) -> LiveMigrationProgress:
        return await self._call_model(
            ctx, wire.Action.GET_LIVE_MIGRATION_PROGRESS, {"vm_name": vm_id}, LiveMigrationProgress
        )

    async def list_vm_processes(self, ctx: CallContext, *, nc_id: str) -> list[VmProcess]:
        return await self._call_list(
            ctx, wire.Action.LIST_VM_PROCESSES, {"nc_id": nc_id}, VmProcess, "processes"
        )

    async def describe_disk(self, ctx: CallContext, *, disk_id: str) -> Disk:
        return await self._call_model(ctx, wire.Action.DESCRIBE_DISK, {"disk_id": disk_id}, Disk, "disk")

    async def describe_storage_cluster(self, ctx: CallContext, *, name: str) -> StorageClusterInfo:
        return await self._call_model(
            ctx, wire.Action.DESCRIBE_STORAGE_CLUSTER, {"name": name}, StorageClusterInfo, "storage_cluster"
        )

    async def get_disk_migration_progress(self, ctx: CallContext, *, task_id: str) -> DiskMigrationProgress:
        return await self._call_model(
            ctx, wire.Action.GET_DISK_MIGRATION_PROGRESS, {"task_id": task_id}, DiskMigrationProgress
        )

    # ---- host status and power --------------------------------------------------------------------

    async def lock_nc(
        self, ctx: CallContext, *, nc_id: str, status: NcBizStatus = NcBizStatus.MLOCK
    ) -> NcStatusChange:
        return await self._call_model(
            ctx, wire.Action.LOCK_NC, {"nc_id": nc_id, "status": status}, NcStatusChange
        )

    async def unlock_nc(self, ctx: CallContext, *, nc_id: str) -> NcStatusChange:
        return await self._call_model(ctx, wire.Action.UNLOCK_NC, {"nc_id": nc_id}, NcStatusChange)

    async def set_nc_status(self, ctx: CallContext, *, nc_id: str, status: NcBizStatus) -> NcStatusChange:
        return await self._call_model(
            ctx, wire.Action.SET_NC_STATUS, {"nc_id": nc_id, "status": status}, NcStatusChange
        )

    async def oob_power_off(self, ctx: CallContext, *, nc_id: str) -> PowerStatus:
        return await self._call_model(ctx, wire.Action.OOB_POWER_OFF, {"nc_id": nc_id}, PowerStatus)

    async def oob_power_on(self, ctx: CallContext, *, nc_id: str) -> PowerStatus:
        return await self._call_model(ctx, wire.Action.OOB_POWER_ON, {"nc_id": nc_id}, PowerStatus)

    async def oob_power_cycle(self, ctx: CallContext, *, nc_id: str) -> PowerStatus:
        return await self._call_model(ctx, wire.Action.OOB_POWER_CYCLE, {"nc_id": nc_id}, PowerStatus)

    async def dump_cn_memory(self, ctx: CallContext, *, nc_id: str) -> DumpResult:
        return await self._call_model(ctx, wire.Action.DUMP_CN_MEMORY, {"nc_id": nc_id}, DumpResult)

    # ---- VMs --------------------------------------------------------------------------------------

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
    ) -> LiveMigrationTask:
        params = {
            "vm_name": vm_id,
            "nc_id": target_nc_id,
            "rate": rate,
            "no_check_image": no_check_image,
            "no_check_load": no_check_load,
            "downtime": downtime,
        }
        return await self._call_model(ctx, wire.Action.LIVE_MIGRATE_VM, params, LiveMigrationTask)

    async def cancel_live_migrate_vm(self, ctx: CallContext, *, region_id: str, vm_id: str) -> Ack:
        return await self._call_model(
            ctx, wire.Action.CANCEL_LIVE_MIGRATE_VM, {"region_id": region_id, "vm_name": vm_id}, Ack
        )

    async def manually_change_migration_status(
        self, ctx: CallContext, *, vm_id: str, region_id: str, where: str
    ) -> VmStatusChange:
        return await self._call_model(
            ctx,
            wire.Action.MANUALLY_CHANGE_MIGRATION_STATUS,
            {"vm_name": vm_id, "region_id": region_id, "where": where},
            VmStatusChange,
        )

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
    ) -> VmStatusChange:
        params = {
            "vm_name": vm_id,
            "nc_id": target_nc_id,
            "forced": forced,
            "boot_mode": boot_mode,
            "after": after,
            "ticket": ticket,
            "reason": reason,
        }
        return await self._call_model(ctx, wire.Action.COLD_MIGRATE_VM, params, VmStatusChange)

    async def start_vm(self, ctx: CallContext, *, vm_id: str) -> VmStatusChange:
        return await self._call_model(ctx, wire.Action.START_VM, {"vm_name": vm_id}, VmStatusChange)

    async def stop_vm(self, ctx: CallContext, *, vm_id: str) -> VmStatusChange:
        return await self._call_model(ctx, wire.Action.STOP_VM, {"vm_name": vm_id}, VmStatusChange)

    # ---- capacity, events -------------------------------------------------------------------------

    async def reserve_ri_capacity(
        self, ctx: CallContext, *, cluster_id: str, vcpu: int, memory_gib: int
    ) -> RiReservation:
        return await self._call_model(
            ctx,
            wire.Action.RESERVE_RI_CAPACITY,
            {"cluster_id": cluster_id, "vcpu": vcpu, "memory_gib": memory_gib},
            RiReservation,
        )

    async def release_ri_capacity(self, ctx: CallContext, *, reservation_id: str) -> Ack:
        return await self._call_model(
            ctx, wire.Action.RELEASE_RI_CAPACITY, {"reservation_id": reservation_id}, Ack
        )

    async def publish_event(self, ctx: CallContext, *, nc_id: str, event: str, detail: str = "") -> Ack:
        return await self._call_model(
            ctx, wire.Action.PUBLISH_EVENT, {"nc_id": nc_id, "event": event, "detail": detail}, Ack
        )

    async def notify(self, ctx: CallContext, *, target: str, message: str) -> Ack:
        return await self._call_model(ctx, wire.Action.NOTIFY, {"target": target, "message": message}, Ack)

    # ---- residues, disks --------------------------------------------------------------------------

    async def destroy_vm_process(self, ctx: CallContext, *, nc_id: str, vm_id: str) -> Ack:
        return await self._call_model(
            ctx, wire.Action.DESTROY_VM_PROCESS, {"nc_id": nc_id, "vm_name": vm_id}, Ack
        )

    async def create_disk_snapshot(self, ctx: CallContext, *, disk_id: str) -> DiskSnapshot:
        return await self._call_model(
            ctx, wire.Action.CREATE_DISK_SNAPSHOT, {"disk_id": disk_id}, DiskSnapshot
        )

    async def start_disk_live_migration(
        self, ctx: CallContext, *, disk_id: str, dst_storage_cluster: str
    ) -> DiskMigrationTask:
        return await self._call_model(
            ctx,
            wire.Action.START_DISK_LIVE_MIGRATION,
            {"disk_id": disk_id, "dst_storage_cluster": dst_storage_cluster},
            DiskMigrationTask,
        )

    # ---- storage tools ----------------------------------------------------------------------------

    async def query_device_migrate_log(
        self, ctx: CallContext, *, status: str = "complete"
    ) -> list[DeviceMigrateLogEntry]:
        return await self._call_list(
            ctx, wire.Action.QUERY_DEVICE_MIGRATE_LOG, {"status": status}, DeviceMigrateLogEntry, "entries"
        )

    async def query_migration_log(
        self,
        ctx: CallContext,
        *,
        task_id: str,
        status: int = 2,
        src_recycled: int | None = 0,
        finished_before: datetime,
    ) -> list[MigrationLogEntry]:
        params: dict[str, object] = {
            "task_id": task_id,
            "status": status,
            "finished_before": finished_before.isoformat(),
        }
        if src_recycled is not None:
            params["src_recycled"] = src_recycled
        return await self._call_list(
            ctx, wire.Action.QUERY_MIGRATION_LOG, params, MigrationLogEntry, "entries"
        )

    async def bsutil_rlm_not_loaded_count(self, ctx: CallContext, *, dir: str) -> int:
        data = await self.call(ctx, wire.Action.BSUTIL_RLM, {"dir": dir})
        try:
            return int(data["not_loaded"])
        except (KeyError, TypeError, ValueError) as error:
            raise HouyiProtocolError(wire.Action.BSUTIL_RLM.value, 200, f"unexpected data: {error}") from None

    async def bsutil_delete_image(
        self, ctx: CallContext, *, dir: str, unless_not_loaded: str | None = None
    ) -> Ack:
        params = (
            {"dir": dir}
            if unless_not_loaded is None
            else {"dir": dir, "unless_not_loaded": unless_not_loaded}
        )
        return await self._call_model(ctx, wire.Action.BSUTIL_DELETE_IMAGE, params, Ack)

    async def river_admin_migrate_recycle(self, ctx: CallContext, *, task_id: str) -> Ack:
        return await self._call_model(ctx, wire.Action.RIVER_ADMIN_MIGRATE_RECYCLE, {"task_id": task_id}, Ack)
