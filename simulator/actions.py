"""One handler per protocol action: read the form parameters, call the fleet, shape the envelope's ``data``.

``data`` is always built from the ``houyi.port`` result models (``model_dump(mode="json")``), so whatever
the simulator answers validates against what our client expects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel

from domain.model import NcBizStatus
from houyi.port import AfterMigrationState, ColdMigrateBootMode
from houyi.wire import Action
from simulator.errors import invalid_parameter
from simulator.fleet import Fleet

_E = TypeVar("_E", bound=StrEnum)

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class Params:
    """The form parameters of one call, read with the checks the control plane makes (400 naming the parameter)."""

    def __init__(self, raw: Mapping[str, str]) -> None:
        self._raw = raw

    def optional_text(self, name: str) -> str | None:
        value = self._raw.get(name, "").strip()
        return value or None

    def text(self, name: str) -> str:
        value = self.optional_text(name)
        if value is None:
            raise invalid_parameter(f"{name} is required")
        return value

    def integer(self, name: str, default: int | None = None) -> int:
        value = self.optional_integer(name)
        if value is not None:
            return value
        if default is None:
            raise invalid_parameter(f"{name} is required")
        return default

    def optional_integer(self, name: str) -> int | None:
        value = self.optional_text(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise invalid_parameter(f"{name} must be a whole number, got {value!r}") from None

    def boolean(self, name: str, default: bool) -> bool:
        value = self.optional_text(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise invalid_parameter(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, kind: type[_E], default: _E | None = None) -> _E:
        value = self.optional_text(name)
        if value is None:
            if default is None:
                raise invalid_parameter(f"{name} is required")
            return default
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise invalid_parameter(f"{name} must be one of {allowed}, got {value!r}") from None

    def optional_datetime(self, name: str) -> datetime | None:
        value = self.optional_text(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise invalid_parameter(f"{name} must be an ISO 8601 date-time, got {value!r}") from None
        # A time without a zone is taken as UTC, the storage logs' zone.
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Call:
    """What a handler needs besides the fleet: the parameters, who calls, and fault effects that let it act."""

    params: Params
    caller: str = ""
    stuck: bool = False


Handler = Callable[[Fleet, Call], Any]


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _describe_nc(fleet: Fleet, call: Call) -> Any:
    nc_ip = call.params.optional_text("nc_ip")
    nc_id = call.params.optional_text("nc_id")
    if nc_ip is None and nc_id is None:
        raise invalid_parameter("nc_ip or nc_id is required")
    return _dump(fleet.describe_nc(nc_ip=nc_ip, nc_id=nc_id))


def _list_ncs(fleet: Fleet, call: Call) -> Any:
    ncs = fleet.list_ncs(
        region_id=call.params.optional_text("region_id"), cluster_id=call.params.optional_text("cluster_id")
    )
    return {"ncs": [_dump(nc) for nc in ncs]}


def _lock_nc(fleet: Fleet, call: Call) -> Any:
    status = call.params.choice("status", NcBizStatus, NcBizStatus.MLOCK)
    return _dump(fleet.lock_nc(call.params.text("nc_id"), status))


def _live_migrate_vm(fleet: Fleet, call: Call) -> Any:
    p = call.params
    task = fleet.live_migrate_vm(
        p.text("vm_name"),
        target_nc_id=p.optional_text("nc_id"),
        rate=p.integer("rate", 80),
        no_check_image=p.boolean("no_check_image", False),
        no_check_load=p.boolean("no_check_load", False),
        downtime=p.integer("downtime", 300),
        stuck=call.stuck,
    )
    return _dump(task)


def _cold_migrate_vm(fleet: Fleet, call: Call) -> Any:
    p = call.params
    change = fleet.cold_migrate_vm(
        p.text("vm_name"),
        target_nc_id=p.optional_text("nc_id"),
        forced=p.boolean("forced", True),
        boot_mode=p.choice("boot_mode", ColdMigrateBootMode, ColdMigrateBootMode.NORMAL),
        after=p.choice("after", AfterMigrationState, AfterMigrationState.KEEP),
        ticket=p.optional_text("ticket"),
        reason=p.optional_text("reason") or "",
    )
    return _dump(change)


def _reserve_ri_capacity(fleet: Fleet, call: Call) -> Any:
    p = call.params
    return _dump(fleet.reserve_ri_capacity(p.text("cluster_id"), p.integer("vcpu"), p.integer("memory_gib")))


def _query_migration_log(fleet: Fleet, call: Call) -> Any:
    p = call.params
    entries = fleet.query_migration_log(
        p.text("task_id"),
        status=p.optional_integer("status"),
        src_recycled=p.optional_integer("src_recycled"),
        finished_before=p.optional_datetime("finished_before"),
    )
    return {"entries": [_dump(entry) for entry in entries]}


HANDLERS: dict[Action, Handler] = {
    # reads
    Action.DESCRIBE_NC: _describe_nc,
    Action.LIST_NCS: _list_ncs,
    Action.DESCRIBE_VM: lambda fleet, call: {"vm": _dump(fleet.describe_vm(call.params.text("vm_name")))},
    Action.GET_OOB_POWER_STATUS: lambda fleet, call: _dump(
        fleet.get_oob_power_status(call.params.text("nc_id"))
    ),
    Action.GET_LIVE_MIGRATION_PROGRESS: lambda fleet, call: _dump(
        fleet.get_live_migration_progress(call.params.text("vm_name"))
    ),
    Action.LIST_VM_PROCESSES: lambda fleet, call: {
        "processes": [_dump(p) for p in fleet.list_vm_processes(call.params.text("nc_id"))]
    },
    Action.DESCRIBE_DISK: lambda fleet, call: {
        "disk": _dump(fleet.describe_disk(call.params.text("disk_id")))
    },
    Action.DESCRIBE_STORAGE_CLUSTER: lambda fleet, call: {
        "storage_cluster": _dump(fleet.describe_storage_cluster(call.params.text("name")))
    },
    Action.GET_DISK_MIGRATION_PROGRESS: lambda fleet, call: _dump(
        fleet.get_disk_migration_progress(call.params.text("task_id"))
    ),
    # host status and power
    Action.LOCK_NC: _lock_nc,
    Action.UNLOCK_NC: lambda fleet, call: _dump(fleet.unlock_nc(call.params.text("nc_id"))),
    Action.SET_NC_STATUS: lambda fleet, call: _dump(
        fleet.set_nc_status(call.params.text("nc_id"), call.params.choice("status", NcBizStatus))
    ),
    Action.OOB_POWER_OFF: lambda fleet, call: _dump(fleet.oob_power_off(call.params.text("nc_id"))),
    Action.OOB_POWER_ON: lambda fleet, call: _dump(fleet.oob_power_on(call.params.text("nc_id"))),
    Action.OOB_POWER_CYCLE: lambda fleet, call: _dump(fleet.oob_power_cycle(call.params.text("nc_id"))),
    Action.DUMP_CN_MEMORY: lambda fleet, call: _dump(fleet.dump_cn_memory(call.params.text("nc_id"))),
    # VMs
    Action.LIVE_MIGRATE_VM: _live_migrate_vm,
    Action.CANCEL_LIVE_MIGRATE_VM: lambda fleet, call: _dump(
        fleet.cancel_live_migrate_vm(call.params.text("region_id"), call.params.text("vm_name"))
    ),
    Action.MANUALLY_CHANGE_MIGRATION_STATUS: lambda fleet, call: _dump(
        fleet.manually_change_migration_status(
            call.params.text("vm_name"), call.params.text("region_id"), call.params.text("where")
        )
    ),
    Action.COLD_MIGRATE_VM: _cold_migrate_vm,
    Action.START_VM: lambda fleet, call: _dump(fleet.start_vm(call.params.text("vm_name"))),
    Action.STOP_VM: lambda fleet, call: _dump(fleet.stop_vm(call.params.text("vm_name"))),
    # capacity, events
    Action.RESERVE_RI_CAPACITY: _reserve_ri_capacity,
    Action.RELEASE_RI_CAPACITY: lambda fleet, call: _dump(
        fleet.release_ri_capacity(call.params.text("reservation_id"))
    ),
    Action.PUBLISH_EVENT: lambda fleet, call: _dump(
        fleet.publish_event(
            call.params.text("nc_id"),
            call.params.text("event"),
            call.params.optional_text("detail") or "",
            caller=call.caller,
        )
    ),
    Action.NOTIFY: lambda fleet, call: _dump(
        fleet.notify(call.params.text("target"), call.params.text("message"), caller=call.caller)
    ),
    # residues
    Action.DESTROY_VM_PROCESS: lambda fleet, call: _dump(
        fleet.destroy_vm_process(call.params.text("nc_id"), call.params.text("vm_name"))
    ),
    # disks
    Action.CREATE_DISK_SNAPSHOT: lambda fleet, call: _dump(
        fleet.create_disk_snapshot(call.params.text("disk_id"))
    ),
    Action.START_DISK_LIVE_MIGRATION: lambda fleet, call: _dump(
        fleet.start_disk_live_migration(call.params.text("disk_id"), call.params.text("dst_storage_cluster"))
    ),
    # storage tools
    Action.QUERY_DEVICE_MIGRATE_LOG: lambda fleet, call: {
        "entries": [_dump(e) for e in fleet.query_device_migrate_log(call.params.optional_text("status"))]
    },
    Action.QUERY_MIGRATION_LOG: _query_migration_log,
    Action.BSUTIL_RLM: lambda fleet, call: {"not_loaded": fleet.bsutil_rlm(call.params.text("dir"))},
    Action.BSUTIL_DELETE_IMAGE: lambda fleet, call: _dump(
        fleet.bsutil_delete_image(
            call.params.text("dir"), unless_not_loaded=call.params.optional_text("unless_not_loaded")
        )
    ),
    Action.RIVER_ADMIN_MIGRATE_RECYCLE: lambda fleet, call: _dump(
        fleet.river_admin_migrate_recycle(call.params.text("task_id"))
    ),
}
