"""The go2hyapi wire format and the error classification, without a network."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import pytest

from domain import errors
from houyi import wire
from houyi.errors import (
    HouyiInvalidParameter,
    HouyiNotFound,
    HouyiThrottled,
    HouyiUnavailable,
    HouyiUnsupported,
    HouyiWrongState,
    error_for,
)


def test_an_envelope_round_trips_nested_data() -> None:
    data = {
        "nc": {"nc_id": "14783-4", "has_storage_node": False, "vcpu_total": 96, "sn": None},
        "vms": [{"vm_id": "i-abc123def", "devices": []}, {"vm_id": "i-abc123deg", "devices": ["gpu"]}],
        "empty": [],
    }
    envelope = wire.Envelope(code=200, msg="successful", request_id="r-1", data=data)
    decoded = wire.decode_envelope(wire.encode_envelope(envelope))
    assert decoded.ok and decoded.request_id == "r-1"
    assert decoded.data == {
        "nc": {"nc_id": "14783-4", "has_storage_node": "false", "vcpu_total": "96", "sn": None},
        "vms": [{"vm_id": "i-abc123def", "devices": []}, {"vm_id": "i-abc123deg", "devices": ["gpu"]}],
        "empty": [],
    }


def _tree_into(element: ET.Element, value: Any) -> None:
    """The envelope's data as an ElementTree, the way the encoder wrote it before it wrote strings."""
    if value is None:
        element.set("nil", "true")
    elif isinstance(value, Mapping):
        element.set("type", "map")
        for key, item in value.items():
            _tree_into(ET.SubElement(element, str(key)), item)
    elif isinstance(value, list | tuple):
        element.set("type", "list")
        for item in value:
            _tree_into(ET.SubElement(element, "item"), item)
    else:
        element.text = wire._scalar_text(value)


def _tree_envelope(envelope: wire.Envelope) -> bytes:
    rsp = ET.Element("rsp")
    ET.SubElement(rsp, "code").text = str(envelope.code)
    ET.SubElement(rsp, "msg").text = envelope.msg
    ET.SubElement(rsp, "requestId").text = envelope.request_id
    _tree_into(ET.SubElement(rsp, "data"), envelope.data)
    return ET.tostring(rsp, encoding="utf-8", xml_declaration=True)


@pytest.mark.parametrize(
    "data",
    [
        None,
        "",
        "a < b & c > d \"quoted\" 'single' \u4e2d\u6587",
        {"nc": {"nc_id": "14783-4", "ok": True, "off": False, "n": 96, "x": 1.5, "sn": None, "s": ""}},
        {"empty_map": {}, "empty_list": [], "nested": [[], [{}], [None, "", "<&>"]]},
        [{"vm_id": f"i-{i}", "devices": ["gpu"] * (i % 3)} for i in range(5)],
    ],
)
def test_the_envelope_is_byte_for_byte_what_elementtree_writes(data: Any) -> None:
    envelope = wire.Envelope(code=400, msg="bad <param> & more", request_id="r-&1", data=data)
    assert wire.encode_envelope(envelope) == _tree_envelope(envelope)
    assert (
        wire.decode_envelope(wire.encode_envelope(envelope)).data
        == wire.decode_envelope(_tree_envelope(envelope)).data
    )


def test_an_error_envelope_carries_code_and_message() -> None:
    body = b"<rsp><code>409</code><msg>nc 14783-4 is mlock</msg><requestId>r-2</requestId><data nil='true'/></rsp>"
    decoded = wire.decode_envelope(body)
    assert (decoded.code, decoded.msg, decoded.ok, decoded.data) == (409, "nc 14783-4 is mlock", False, None)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>502 Bad Gateway</html>", "expected <rsp>"),
        (b"not xml at all", "not XML"),
        (b"<rsp><msg>x</msg></rsp>", "no <code>"),
        (b"<rsp><code>OK</code></rsp>", "not a number"),
    ],
)
def test_malformed_answers_are_protocol_errors(body: bytes, problem: str) -> None:
    with pytest.raises(wire.ProtocolError, match=problem):
        wire.decode_envelope(body)


def test_params_are_name_value_pairs_without_nones() -> None:
    encoded = wire.encode_params({"nc_id": "14783-4", "no_check_load": False, "nc": None, "ids": ["a", "b"]})
    assert wire.decode_params(encoded) == {"nc_id": "14783-4", "no_check_load": "false", "ids": "a,b"}


def test_reads_need_no_token_and_mutations_do() -> None:
    assert not wire.Action.DESCRIBE_NC.mutating and not wire.Action.BSUTIL_RLM.mutating
    assert wire.Action.LOCK_NC.mutating and wire.Action.DESTROY_VM_PROCESS.mutating
    assert wire.Action.BSUTIL_DELETE_IMAGE.mutating


@pytest.mark.parametrize(
    ("code", "cls", "error_type", "retryable"),
    [
        (400, HouyiInvalidParameter, errors.HOUYI_INVALID_PARAMETER, False),
        (404, HouyiNotFound, errors.HOUYI_NOT_FOUND, False),
        (409, HouyiWrongState, errors.HOUYI_WRONG_STATE, False),
        (422, HouyiUnsupported, errors.HOUYI_UNSUPPORTED, False),
        (429, HouyiThrottled, errors.HOUYI_THROTTLED, True),
        (500, HouyiUnavailable, errors.HOUYI_UNAVAILABLE, True),
        (503, HouyiUnavailable, errors.HOUYI_UNAVAILABLE, True),
        (504, HouyiUnavailable, errors.HOUYI_UNAVAILABLE, True),
        (418, HouyiInvalidParameter, errors.HOUYI_INVALID_PARAMETER, False),
        (599, HouyiUnavailable, errors.HOUYI_UNAVAILABLE, True),
    ],
)
def test_codes_are_classified_once(code: int, cls: type, error_type: str, retryable: bool) -> None:
    error = error_for("lock_nc", code, "message", "r-3")
    assert type(error) is cls
    assert error.error_type == error_type and error.retryable is retryable
    assert "lock_nc" in str(error) and str(code) in str(error) and "r-3" in str(error)


def test_distribute_lock_fail_waits_before_retrying() -> None:
    error = error_for("live_migrate_vm", 429, "distribute lock fail")
    assert error.retry_after_seconds is not None and error.retry_after_seconds >= 10
