"""The Houyi wire protocol: the ``go2hyapi`` convention over HTTP. Client and simulator both use this module.

A call is ``go2hyapi <action> name=value ...``. Over HTTP it is one request per action::

    POST /go2hyapi/<action>
    Content-Type: application/x-www-form-urlencoded

    nc_id=14783-4&status=mlock&client_token=wf-1%2FLockNc&caller=wf-1

Every mutating action carries ``client_token``: the control plane answers a repeated token with the
first answer and does not act again. ``caller`` names who calls (the workflow id) for the audit.

The answer is always HTTP 200 with an XML envelope; the outcome is the envelope's ``code``::

    <rsp><code>200</code><msg>successful</msg><requestId>…</requestId><data>…</data></rsp>

Any code other than 200 is an error with a message. ``data`` encodes JSON-shaped values: a mapping is an
element per key (``type="map"``), a list is ``type="list"`` with one ``<item>`` per entry, ``None`` is
``nil="true"``, booleans are ``true``/``false``, everything else is its text.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape

PATH_PREFIX = "/go2hyapi/"
CONTENT_TYPE = "application/x-www-form-urlencoded"
TOKEN_PARAM = "client_token"
CALLER_PARAM = "caller"
SUCCESS_MSG = "successful"


class Code(IntEnum):
    """Return codes of the envelope."""

    OK = 200
    INVALID_PARAMETER = 400
    NOT_FOUND = 404
    WRONG_STATE = 409
    UNSUPPORTED = 422
    THROTTLED = 429  # "distribute lock fail", "load too high": try again after a while
    INTERNAL_ERROR = 500
    UNAVAILABLE = 503
    TIMEOUT = 504


class Action(StrEnum):
    """Every action of the protocol. Reads first, then mutations (which need a client token)."""

    DESCRIBE_NC = "describe_nc"
    LIST_NCS = "list_ncs"
    DESCRIBE_VM = "describe_vm"
    GET_OOB_POWER_STATUS = "get_oob_power_status"
    GET_LIVE_MIGRATION_PROGRESS = "get_live_migration_progress"
    LIST_VM_PROCESSES = "list_vm_processes"
    DESCRIBE_DISK = "describe_disk"
    DESCRIBE_STORAGE_CLUSTER = "describe_storage_cluster"
    GET_DISK_MIGRATION_PROGRESS = "get_disk_migration_progress"

    LOCK_NC = "lock_nc"
    UNLOCK_NC = "unlock_nc"
    SET_NC_STATUS = "set_nc_status"
    OOB_POWER_OFF = "oob_power_off"
    OOB_POWER_ON = "oob_power_on"
    OOB_POWER_CYCLE = "oob_power_cycle"
    DUMP_CN_MEMORY = "dump_cn_memory"
    LIVE_MIGRATE_VM = "live_migrate_vm"
    CANCEL_LIVE_MIGRATE_VM = "cancel_live_migrate_vm"
    MANUALLY_CHANGE_MIGRATION_STATUS = "manually_change_migration_status"
    COLD_MIGRATE_VM = "cold_migrate_vm"
    START_VM = "start_vm"
    STOP_VM = "stop_vm"
    RESERVE_RI_CAPACITY = "reserve_ri_capacity"
    RELEASE_RI_CAPACITY = "release_ri_capacity"
    PUBLISH_EVENT = "publish_event"
    NOTIFY = "notify"
    DESTROY_VM_PROCESS = "destroy_vm_process"
    CREATE_DISK_SNAPSHOT = "create_disk_snapshot"
    START_DISK_LIVE_MIGRATION = "start_disk_live_migration"

    # Storage-side tools (River / Pangu), used by disk recycle.
    QUERY_DEVICE_MIGRATE_LOG = "query_device_migrate_log"
    QUERY_MIGRATION_LOG = "query_migration_log"
    BSUTIL_RLM = "bsutil_rlm"
    BSUTIL_DELETE_IMAGE = "bsutil_delete_image"
    RIVER_ADMIN_MIGRATE_RECYCLE = "river_admin_migrate_recycle"

    @property
    def mutating(self) -> bool:
        return self not in _READS


_READS = frozenset(
    {
        Action.DESCRIBE_NC,
        Action.LIST_NCS,
        Action.DESCRIBE_VM,
        Action.GET_OOB_POWER_STATUS,
        Action.GET_LIVE_MIGRATION_PROGRESS,
        Action.LIST_VM_PROCESSES,
        Action.DESCRIBE_DISK,
        Action.DESCRIBE_STORAGE_CLUSTER,
        Action.GET_DISK_MIGRATION_PROGRESS,
        Action.QUERY_DEVICE_MIGRATE_LOG,
        Action.QUERY_MIGRATION_LOG,
        Action.BSUTIL_RLM,
    }
)


@dataclass(frozen=True)
class Envelope:
    code: int
    msg: str
    request_id: str
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.code == Code.OK


class ProtocolError(ValueError):
    """The answer is not a well-formed envelope."""


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


def _decode(element: ET.Element) -> Any:
    if element.get("nil") == "true":
        return None
    kind = element.get("type")
    if kind == "list":
        return [_decode(child) for child in element]
    if kind == "map" or len(element):
        return {child.tag: _decode(child) for child in element}
    return element.text or ""


def encode_params(params: Mapping[str, Any]) -> str:
    """``name=value`` pairs; ``None`` values are left out, lists are comma separated."""
    pairs = []
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(_scalar_text(v) for v in value)
        pairs.append((name, _scalar_text(value)))
    return urlencode(pairs)


def decode_params(body: str) -> dict[str, str]:
    return dict(parse_qsl(body, keep_blank_values=True))


def _write(parts: list[str], tag: str, value: Any) -> None:
    """``value`` as the element ``tag``: byte for byte what ElementTree writes for the same tree
    (tests/test_houyi_wire.py holds that tree's builder)."""
    if value is None:
        parts.append(f'<{tag} nil="true" />')
    elif isinstance(value, str | int | float):  # most values; spares them the abstract Mapping check
        _write_text(parts, tag, _scalar_text(value))
    elif isinstance(value, Mapping):
        _write_children(parts, tag, "map", [(str(key), item) for key, item in value.items()])
    elif isinstance(value, list | tuple):
        _write_children(parts, tag, "list", [("item", item) for item in value])
    else:
        _write_text(parts, tag, _scalar_text(value))


def _write_children(parts: list[str], tag: str, kind: str, children: list[tuple[str, Any]]) -> None:
    if not children:
        parts.append(f'<{tag} type="{kind}" />')
        return
    parts.append(f'<{tag} type="{kind}">')
    for child_tag, item in children:
        _write(parts, child_tag, item)
    parts.append(f"</{tag}>")


def _write_text(parts: list[str], tag: str, text: str) -> None:
    parts.append(f"<{tag}>{escape(text)}</{tag}>" if text else f"<{tag} />")


def encode_envelope(envelope: Envelope) -> bytes:
    # Written directly rather than through an ElementTree: the simulator answers every call with one, and
    # ElementTree's serializer was a third of its CPU (a cluster listing is hundreds of elements).
    parts = ["<?xml version='1.0' encoding='utf-8'?>\n<rsp>"]
    _write_text(parts, "code", str(envelope.code))
    _write_text(parts, "msg", envelope.msg)
    _write_text(parts, "requestId", envelope.request_id)
    _write(parts, "data", envelope.data)
    parts.append("</rsp>")
    return "".join(parts).encode()


def decode_envelope(body: bytes | str) -> Envelope:
    try:
        rsp = ET.fromstring(body)
    except ET.ParseError as error:
        raise ProtocolError(f"answer is not XML: {error}") from None
    if rsp.tag != "rsp":
        raise ProtocolError(f"answer root is <{rsp.tag}>, expected <rsp>")
    code_text = rsp.findtext("code")
    if code_text is None:
        raise ProtocolError("answer has no <code>")
    try:
        code = int(code_text.strip())
    except ValueError:
        raise ProtocolError(f"answer code {code_text!r} is not a number") from None
    data_element = rsp.find("data")
    return Envelope(
        code=code,
        msg=(rsp.findtext("msg") or "").strip(),
        request_id=(rsp.findtext("requestId") or "").strip(),
        data=_decode(data_element) if data_element is not None else None,
    )
