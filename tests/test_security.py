"""Security: every intake endpoint that acts needs a token of the right role (taken from the OpenAPI document,
so a new endpoint is covered as soon as it is documented); a requester cannot approve their own operation,
by the intake, by signal or by update, not even an admin; an approver outside the opscode's list is refused;
no token or password reaches a workflow history or the store."""

from __future__ import annotations

import json
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from domain import errors
from domain.operations import OpsState
from tests.fixtures.intake import IntakeUnderTest
from tests.helpers import eventually
from tests.test_intake import alert, free_hosts, report, webhook
from workflows.lifecycle import ApprovalInput, DecisionInput, OperationStatus

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

# Which identity of the intake fixture holds which role, and the role each secured endpoint wants.
NEEDS = {
    ("post", "/v1/alertmanager"): "alertmanager",
    ("post", "/v1/reports"): "submitter",
    ("get", "/v1/approvals"): "approver",
    ("post", "/v1/approvals/{workflow_id}/{decision}"): "approver",
}
HOLDERS = {"alertmanager": "alertmanager", "submitter": "alice", "approver": "approver1"}
PUBLIC = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json")}


async def test_every_documented_endpoint_needs_a_token_of_its_role(intake: IntakeUnderTest) -> None:
    code, document = await intake.call("GET", "/openapi.json", who=None)
    assert code == 200
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    secured = {key for key in documented if document["paths"][key[1]][key[0]].get("security")}
    assert secured == set(NEEDS), "a secured endpoint without a role in this test"
    assert documented - secured == PUBLIC - {("get", "/openapi.json")}, (
        "an endpoint that answers without a token"
    )

    for (method, path), role in NEEDS.items():
        url = path.replace("{workflow_id}", "0x400012-10.0.0.1").replace("{decision}", "approve")
        # No token, a malformed header, an unknown token: 401 naming what is missing, nothing done.
        for headers in ({}, {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer nope-123456"}):
            code, body = await intake.call(method.upper(), url, who=None, body={}, headers=headers)
            assert (code, body["error"]) == (401, "Unauthenticated"), (method, path, headers, body)
        # Every identity without the role: 403 naming the role it lacks.
        for identity in ("alertmanager", "alice", "approver1"):
            if identity == HOLDERS[role]:
                continue
            code, body = await intake.call(method.upper(), url, who=identity, body={})
            assert code == 403 and f"lacks role {role}" in body["message"], (method, path, identity, body)
        # The role's holder and admin get past authentication (to validation or a 404).
        for identity in (HOLDERS[role], "admin"):
            code, body = await intake.call(method.upper(), url, who=identity, body={})
            assert code not in (401, 403), (method, path, identity, code, body)
    for method, path in PUBLIC:
        code, _ = await intake.call(method.upper(), path, who=None)
        assert code == 200, (method, path)
    assert await intake.workflows() == [], "no refused call started anything"


async def pending(intake: IntakeUnderTest, workflow_id: str) -> OperationStatus:
    async def waiting() -> OperationStatus:
        status: OperationStatus = await intake.client.get_workflow_handle(workflow_id).query(
            "status", result_type=OperationStatus
        )
        assert status.state is OpsState.PENDING_APPROVAL, status.state
        return status

    return await eventually(waiting, within=30)


async def test_nobody_approves_their_own_operation_and_only_listed_approvers_decide(
    intake: IntakeUnderTest,
) -> None:
    (host,) = await free_hosts(intake, 1)
    # An admin may submit and approve, but never both on one operation.
    code, started = await intake.call(
        "POST", "/v1/reports", who="admin", body=report(host, "0x400012", reason_category="hang")
    )
    assert code == 202, started
    workflow_id = started["operations"][0]["workflow_id"]
    status = await pending(intake, workflow_id)
    assert status.requester == "admin"

    code, body = await intake.call("POST", f"/v1/approvals/{workflow_id}/approve", who="admin", body={})
    assert (code, body["error"]) == (409, errors.SELF_APPROVAL), body
    handle = intake.client.get_workflow_handle(workflow_id)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("decide", DecisionInput(approver="admin", approve=True))
    assert (
        isinstance(refused.value.cause, ApplicationError) and refused.value.cause.type == errors.SELF_APPROVAL
    )
    with pytest.raises(WorkflowUpdateFailedError) as outsider:
        await handle.execute_update("decide", DecisionInput(approver="mallory", approve=True))
    cause = outsider.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == errors.APPROVER_NOT_ALLOWED
    assert "mallory is not an approver of 0x400012" in str(cause)
    # Signals cannot answer: they are recorded as refused and change nothing.
    await handle.signal("approve", ApprovalInput(approver="admin"))
    await handle.signal("approve", ApprovalInput(approver="mallory"))

    async def both_refused() -> OperationStatus:
        now = await pending(intake, workflow_id)
        assert len(now.refused_messages) == 2, now.refused_messages
        return now

    now = await eventually(both_refused, within=20)
    assert now.votes == [] and now.state is OpsState.PENDING_APPROVAL
    audit = [
        (a.action, a.result.value, a.error_type)
        for a in await intake.store.list_audit(workflow_id=workflow_id)
    ]
    assert ("approve", "refused", errors.SELF_APPROVAL) in audit
    assert ("approve", "refused", errors.APPROVER_NOT_ALLOWED) in audit
    await handle.terminate("test over")


async def test_no_token_reaches_a_workflow_history_or_the_store(intake: IntakeUnderTest) -> None:
    hosts = await free_hosts(intake, 2)
    code, _ = await intake.call(
        "POST", "/v1/alertmanager", who="alertmanager", body=webhook(alert("nc_hang_exception", hosts[0]))
    )
    assert code == 200
    code, started = await intake.call("POST", "/v1/reports", who="alice", body=report(hosts[1], "0x410A01"))
    assert code == 202
    workflow_ids = await eventually(lambda: started_operations(intake, 2), within=20)

    secrets = list(intake.tokens.values())
    for workflow_id in workflow_ids:
        history = await intake.client.get_workflow_handle(workflow_id).fetch_history()
        text = json.dumps(history.to_json_dict())
        assert not [s for s in secrets if s in text], workflow_id
    rows: list[Any] = [
        *(await intake.store.list_operations()),
        *(await intake.store.list_audit()),
        *(await intake.store.list_houyi_calls()),
    ]
    stored = json.dumps([row.model_dump(mode="json") for row in rows])
    assert not [s for s in secrets if s in stored]


async def started_operations(intake: IntakeUnderTest, count: int) -> list[str]:
    found = await intake.workflows()
    assert len(found) == count, found
    return found
