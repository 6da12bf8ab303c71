"""The intake over real HTTP (issue 6): the Alertmanager webhook turns each distinct firing alert into at
most one operation, records resolved and unmapped ones, and refuses what it can never accept with a 4xx
naming the problem; manual reports; approvals with the caller's identity; tokens and roles; health,
readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from domain.operations import OpsState
from domain.opscodes import OpsCode
from store.intake import IntakeStore
from tests.fixtures.intake import IntakeUnderTest
from tests.helpers import eventually
from workflows.lifecycle import OperationStatus


def alert(
    name: str,
    nc_ip: str,
    *,
    status: str = "firing",
    fingerprint: str | None = None,
    starts: str = "2026-11-25T06:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "nc_ip": nc_ip, "severity": "P1", **labels},
        "annotations": {"summary": f"{name} on {nc_ip}"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint or uuid.uuid4().hex[:16],
    }


def webhook(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="nc_hang_exception"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "ecs-opsflow",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


async def free_hosts(intake: IntakeUnderTest, count: int) -> list[str]:
    return [nc["nc_ip"] for nc in await intake.admin.ncs() if nc["biz_status"] == "free"][:count]


async def test_a_firing_alert_delivered_again_and_again_becomes_one_operation(
    intake: IntakeUnderTest,
) -> None:
    (host,) = await free_hosts(intake, 1)
    hang = alert("nc_hang_exception", host)

    answers = [
        await intake.call("POST", "/v1/alertmanager", who="alertmanager", body=webhook(hang))
        for _ in range(3)
    ]

    assert [status for status, _ in answers] == [200, 200, 200]
    outcomes = [body["results"][0]["outcome"] for _, body in answers]
    assert outcomes == ["started", "deduplicated", "deduplicated"]
    assert answers[0][1]["results"][0]["workflow_id"] == f"0x400012-{host}"
    assert "delivery 3 of this alert; it was started (0x400012-" in answers[2][1]["results"][0]["message"]

    async def one() -> None:
        assert await intake.workflows() == [f"0x400012-{host}"]

    await eventually(one, within=10)
    handle = intake.client.get_workflow_handle(f"0x400012-{host}")
    status = await handle.query("status", result_type=OperationStatus)
    assert status.source is not None and status.source.value == "alert" and status.requester == "alertmanager"
    (receipt,) = await IntakeStore.of(intake.store).receipts()
    assert (receipt.outcome, receipt.deliveries, receipt.rule_name) == ("started", 3, "nc-hang-reboot")


async def test_the_same_alert_firing_anew_deduplicates_on_the_running_operation(
    intake: IntakeUnderTest,
) -> None:
    (host,) = await free_hosts(intake, 1)
    first = alert("nc_hang_exception", host, starts="2026-11-25T06:00:00Z")
    again = {**first, "startsAt": "2026-11-25T07:00:00Z"}  # resolved and fired again: a distinct alert

    _, one = await intake.call("POST", "/v1/alertmanager", who="alertmanager", body=webhook(first))
    _, two = await intake.call("POST", "/v1/alertmanager", who="alertmanager", body=webhook(again))

    assert one["results"][0]["outcome"] == "started"
    assert two["results"][0]["outcome"] == "deduplicated"
    assert two["results"][0]["message"] == f"0x400012 already runs on {host}"


async def test_resolved_unmapped_and_unusable_alerts_are_recorded_and_start_nothing(
    intake: IntakeUnderTest,
) -> None:
    (host,) = await free_hosts(intake, 1)
    body = webhook(
        alert("nc_hang_exception", host, status="resolved"),
        alert("vm_monitor_qemu_exception", host),
        alert("nc_hang_exception", "10.12.999.1"),
        alert("hardware_exception_alarm", "no-ip-here"),
    )

    status, answer = await intake.call("POST", "/v1/alertmanager", who="alertmanager", body=body)

    assert status == 200
    assert [(r["outcome"], r["message"]) for r in answer["results"]] == [
        ("resolved", "resolved: recorded, nothing started"),
        ("unmapped", "no alert rule maps 'vm_monitor_qemu_exception'"),
        ("refused", "label nc_ip='10.12.999.1' of alert nc_hang_exception is not an IPv4 address"),
        ("refused", "label nc_ip='no-ip-here' of alert hardware_exception_alarm is not an IPv4 address"),
    ]
    assert await intake.workflows() == []
    receipts = await IntakeStore.of(intake.store).receipts()
    assert sorted(r.outcome for r in receipts) == ["refused", "refused", "resolved", "unmapped"]


async def test_what_can_never_be_accepted_is_a_4xx_naming_the_problem(intake: IntakeUnderTest) -> None:
    (host,) = await free_hosts(intake, 1)
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"raw": b"{not json"}, 400, "MalformedJson", "the body is not JSON at line 1 column 2"),
        ({"body": [1, 2]}, 422, "InvalidInput", "the body must be a JSON object, got list"),
        ({"body": {**webhook(alert("nc_hang_exception", host)), "version": "3"}}, 422, "InvalidInput", "version: String should match pattern '^4$'"),
        ({"body": {"version": "4", "status": "firing"}}, 422, "InvalidInput", "alerts: Field required"),
        ({"body": webhook({**alert("nc_hang_exception", host), "startsAt": "yesterday"})}, 422, "InvalidInput", "alerts.0.startsAt: Input should be a valid datetime"),
        ({"body": webhook(alert("nc_hang_exception", host, rack="r\u0000")), }, 422, "InvalidInput", "alerts.0.labels.rack contains a NUL character"),
        ({"body": webhook(alert("nc_hang_exception", host)), "who": None}, 401, "Unauthenticated", "send Authorization: Bearer <token>"),
        ({"body": webhook(alert("nc_hang_exception", host)), "headers": {"Authorization": "Bearer not-a-token-we-know"}, "who": None}, 401, "Unauthenticated", "unknown token"),
        ({"body": webhook(alert("nc_hang_exception", host)), "who": "approver1"}, 403, "Forbidden", "approver1 lacks role alertmanager"),
    ]  # fmt: skip
    for options, code, error, fragment in cases:
        status, answer = await intake.call("POST", "/v1/alertmanager", **{"who": "alertmanager", **options})
        assert (status, answer["error"]) == (code, error), (options, answer)
        assert fragment in answer["message"], (fragment, answer)
    assert await intake.workflows() == []


def report(hosts: str, opscode: str = "0x410A01", **fields: Any) -> dict[str, Any]:
    return {
        "hosts": hosts,
        "opscode": opscode,
        "reason_category": "hardware",
        "reason": "CPU MCE",
        "ticket": "CHG-9",
        **fields,
    }


async def test_a_manual_report_starts_one_operation_per_host_or_one_for_several(
    intake: IntakeUnderTest,
) -> None:
    a, b, c, d = await free_hosts(intake, 4)

    status, locks = await intake.call("POST", "/v1/reports", body=report(f"{a}, {b}"))
    assert status == 202, locks
    assert [(o["hosts"], o["workflow_id"], o["outcome"]) for o in locks["operations"]] == [
        ([a], f"0x410A01-{a}", "started"),
        ([b], f"0x410A01-{b}", "started"),
    ]
    status, re_online = await intake.call(
        "POST", "/v1/reports", body=report(f"{c},{d}", "0x400011", reason_category="internal reboot")
    )
    assert status == 202, re_online
    assert [(o["hosts"], o["workflow_type"]) for o in re_online["operations"]] == [([c, d], "NcReOnline")]

    async def locked() -> None:
        assert {(await intake.admin.nc(ip))["biz_status"] for ip in (a, b)} == {"mlock"}

    await eventually(locked, within=20)
    handle = intake.client.get_workflow_handle(f"0x410A01-{a}")
    status_a = await handle.query("status", result_type=OperationStatus)
    assert status_a.requester == "alice" and status_a.source is not None and status_a.source.value == "manual"


async def test_a_bad_manual_report_is_refused_naming_the_problem_and_starts_nothing(
    intake: IntakeUnderTest,
) -> None:
    (host,) = await free_hosts(intake, 1)
    await intake.store.lifecycle.set_approval_policy(
        OpsCode.NC_FORCED_REBOOT, allow_manual_report=False, updated_by="test"
    )
    cases: list[tuple[dict[str, Any], str, int, str, str]] = [
        (report(host, "0x999999"), "alice", 422, "UnknownOpscode", "unknown opscode '0x999999'"),
        (report(host, "reboot"), "alice", 422, "UnknownOpscode", "not a hexadecimal code"),
        (report(f"{host},10.0.0.300"), "alice", 422, "InvalidInput", "hosts: not an IPv4 address: '10.0.0.300'"),
        (report(host, reason_category="cosmic rays"), "alice", 422, "InvalidInput", "unknown reason category 'cosmic rays'"),
        (report(host, "0x400012"), "alice", 422, "ManualReportNotAllowed", "0x400012 does not allow manual report"),
        (report(host, "0x400016"), "alice", 422, "OpscodeNotImplemented", "0x400016"),
        (report(host, requester="bob"), "alice", 403, "Forbidden", "alice may report only as themselves, not as bob"),
        (report(host, settings={"preLock": 7}), "alice", 422, "InvalidSettings", "settings.preLock"),
        (report(host, ignore_checks=True), "alice", 422, "InvalidInput", "ignore_checks"),
        (report(host), "approver1", 403, "Forbidden", "approver1 lacks role submitter"),
    ]  # fmt: skip
    for body, who, code, error, fragment in cases:
        status, answer = await intake.call("POST", "/v1/reports", who=who, body=body)
        assert (status, answer["error"]) == (code, error), (body, answer)
        assert fragment in answer["message"], (fragment, answer)
    assert await intake.workflows() == []
    assert (await intake.admin.nc(host))["biz_status"] == "free"


async def test_approvers_list_what_waits_for_them_and_decide_as_themselves(intake: IntakeUnderTest) -> None:
    (host,) = await free_hosts(intake, 1)
    status, started = await intake.call(
        "POST", "/v1/reports", body=report(host, "0x400012", reason_category="hang")
    )
    assert status == 202, started
    workflow_id = started["operations"][0]["workflow_id"]

    async def listed() -> list[dict[str, Any]]:
        code, pending = await intake.call("GET", "/v1/approvals", who="approver1")
        assert code == 200 and [p["workflow_id"] for p in pending] == [workflow_id], pending
        return pending

    (pending,) = await eventually(listed, within=20)
    assert pending["requester"] == "alice" and pending["hosts"] == [host] and pending["plan"]
    assert (await intake.call("GET", "/v1/approvals", who="alice"))[0] == 403

    code, refused = await intake.call("POST", f"/v1/approvals/{workflow_id}/approve", who="alice", body={})
    assert code == 403
    code, decided = await intake.call(
        "POST", f"/v1/approvals/{workflow_id}/approve", who="approver1", body={"comment": "hang confirmed"}
    )
    assert code == 200 and decided["approvals"] == 1, decided
    code, again = await intake.call("POST", f"/v1/approvals/{workflow_id}/approve", who="approver1", body={})
    assert code in (200, 409), again  # a repeat vote is refused while it waits; ended: nothing to vote on
    code, missing = await intake.call(
        "POST", "/v1/approvals/0x400012-nowhere/approve", who="approver1", body={}
    )
    assert (code, missing["error"]) == (404, "NotFound")

    async def rebooted() -> None:
        handle = intake.client.get_workflow_handle(workflow_id)
        status = await handle.query("status", result_type=OperationStatus)
        assert status.state is OpsState.SUCCEEDED, status.state

    await eventually(rebooted, within=30)


async def test_health_readiness_metrics_and_the_openapi_document_need_no_token(
    intake: IntakeUnderTest,
) -> None:
    assert await intake.call("GET", "/healthz", who=None) == (200, {"status": "ok"})
    assert await intake.call("GET", "/readyz", who=None) == (200, {"status": "ready"})
    await intake.call("POST", "/v1/alertmanager", who=None, body={})
    code, metrics = await intake.call("GET", "/metrics", who=None)
    assert (
        code == 200 and 'opsflow_intake_requests_total{code="401",endpoint="/v1/alertmanager"} 1.0' in metrics
    )
    code, document = await intake.call("GET", "/openapi.json", who=None)
    assert code == 200 and document["openapi"].startswith("3.1")
    assert {
        "/v1/alertmanager",
        "/v1/reports",
        "/v1/approvals",
        "/v1/approvals/{workflow_id}/{decision}",
    } <= set(document["paths"])
    assert "AlertmanagerPayload" in document["components"]["schemas"]


async def test_concurrent_clients_sending_each_alert_twice_start_exactly_the_distinct_ones(
    intake: IntakeUnderTest,
) -> None:
    distinct = [
        alert("nc_hang_exception", f"10.250.0.{i}", fingerprint=f"conc{i:03d}") for i in range(1, 101)
    ]
    bodies = [webhook(a) for a in distinct for _ in range(2)]
    random.Random(3).shuffle(bodies)
    queue = list(bodies)

    async def client() -> list[str]:
        seen = []
        while queue:
            status, answer = await intake.call(
                "POST", "/v1/alertmanager", who="alertmanager", body=queue.pop()
            )
            assert status == 200, answer
            seen += [r["outcome"] for r in answer["results"]]
        return seen

    outcomes = [o for seen in await asyncio.gather(*(client() for _ in range(20))) for o in seen]

    assert (outcomes.count("started"), outcomes.count("deduplicated")) == (100, 100)

    async def all_there() -> None:
        assert len(await intake.workflows()) == 100

    await eventually(all_there, within=20)


async def test_no_token_reaches_a_log_line(
    intake: IntakeUnderTest, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    (host,) = await free_hosts(intake, 1)
    await intake.call(
        "POST", "/v1/alertmanager", who="alertmanager", body=webhook(alert("nc_hang_exception", host))
    )
    await intake.call("POST", "/v1/reports", who="alice", body=report(host, "0x410A01"))
    await intake.call("POST", "/v1/reports", who="approver1", body=report(host))  # refused: 403
    await intake.call(
        "POST",
        "/v1/reports",
        who=None,
        body=report(host),
        headers={"Authorization": "Bearer wrong-token-123456789"},
    )
    await intake.call("GET", "/v1/approvals", who="approver1")

    captured = capsys.readouterr()
    logged = captured.out + captured.err + caplog.text
    assert "alert handled" in logged and "manual report" in logged  # the intake did log
    # Each line about an operation names it, its opscode and its host.
    handled = next(line for line in logged.splitlines() if "alert handled" in line)
    for field, value in (("workflow_id", f"0x400012-{host}"), ("opscode", "0x400012"), ("nc_ip", host)):
        assert f"{field}={value}" in handled or f'"{field}": "{value}"' in handled, (field, handled)
    for token in [*intake.tokens.values(), "wrong-token-123456789"]:
        assert token not in logged
