"""The intake: the HTTP front door for alert pipelines, manual reports and approvers.

    POST /v1/alertmanager         Prometheus Alertmanager's webhook (version 4)        role alertmanager
    POST /v1/reports              a manual report ("active ops report")                role submitter
    GET  /v1/approvals            operations waiting for the caller's approval         role approver
    POST /v1/approvals/{id}/approve | /reject   {"comment": "..."}                    role approver
    GET  /healthz, /readyz, /metrics, /openapi.json                                   no token

Answers: 2xx for what was accepted or deduplicated; 4xx, with ``{"error", "message"}`` naming the
problem, for what can never be accepted; 503 only when a retry can help (the store or Temporal is down),
which is what makes Alertmanager deliver again. Each distinct firing alert (fingerprint, startsAt)
becomes at most one operation: the alert receipt is claimed first (store/intake.py), and the workflow id
``<opscode>-<host>`` deduplicates against an operation already running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from pydantic import BaseModel, Field, ValidationError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from domain.alerts import (
    Alert,
    AlertmanagerPayload,
    AlertOutcome,
    AlertResult,
    AlertStatus,
    ManualReport,
    host_of,
    rule_for,
)
from domain.operations import InputRefused, OperationSource, describe_validation_error, parse_input
from domain.opscodes import CATALOG, OpsCode
from starter.auth import Caller, Role, Tokens
from starter.openapi import openapi_document
from store.errors import StoreError, StoreUnavailable
from store.intake import IntakeStore
from store.repository import OperationStore
from workflows.lifecycle import DecisionInput, DecisionResult, OperationStatus, OperationWorkflow

log = structlog.get_logger("intake")

ALERT_REQUESTER = "alertmanager"
UNAVAILABLE_CODES = (
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
)


class HttpProblem(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class ReportStarted(BaseModel):
    hosts: list[str]
    workflow_id: str
    workflow_type: str
    outcome: str = Field(description="started, or already_running (the operation that runs for it)")


class ReportAnswer(BaseModel):
    opscode: str
    operations: list[ReportStarted]


class AlertmanagerAnswer(BaseModel):
    received: int
    results: list[AlertResult]


class PendingApproval(BaseModel):
    workflow_id: str
    opscode: str
    title: str
    hosts: list[str]
    requester: str | None
    plan: list[str]
    approvals: int
    needed: int
    deadline: str | None


class ApprovalBody(BaseModel):
    comment: str = Field(default="", max_length=2000)


@dataclass(frozen=True)
class Workflow:
    name: str
    input_model: type[BaseModel]


def workflows_by_opscode() -> dict[OpsCode, Workflow]:
    """Every implemented opscode's workflow type and input model, from the worker's registry."""
    from worker import WORKFLOWS

    found: dict[OpsCode, Workflow] = {}
    for cls in WORKFLOWS:
        if isinstance(cls, type) and issubclass(cls, OperationWorkflow):
            found[cls.OPSCODE] = Workflow(CATALOG[cls.OPSCODE].workflow_type, cls.INPUT)
    return found


# The *_created series double every counter's series for a start time Prometheus does not need.
disable_created_metrics()


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "opsflow_intake_requests",
            "Intake requests by endpoint and answer",
            ["endpoint", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "opsflow_intake_request_seconds",
            "Intake request latency",
            ["endpoint"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.alerts = Counter("opsflow_intake_alerts", "Alerts by outcome", ["outcome"], registry=registry)
        for outcome in AlertOutcome:  # at 0 from the start, so an alert rule's increase() sees the first one
            self.alerts.labels(outcome.value)


class Intake:
    def __init__(
        self,
        client: Client,
        store: OperationStore,
        tokens: Tokens,
        *,
        task_queue: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.alerts = IntakeStore.of(store)
        self.tokens = tokens
        self.task_queue = task_queue
        self.workflows = workflows_by_opscode()
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)

    # ---- plumbing --------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/alertmanager", self.alertmanager)
        app.router.add_post("/v1/reports", self.report)
        app.router.add_get("/v1/approvals", self.pending_approvals)
        app.router.add_post("/v1/approvals/{workflow_id}/{decision}", self.decide)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource
        endpoint = route.canonical if route is not None else "unmatched"
        began = time.perf_counter()
        try:
            response = await handler(request)
        except HttpProblem as problem:
            response = _problem(problem.status, problem.error, problem.message)
        except web.HTTPException as http:
            response = _problem(http.status, http.reason or "HTTPError", http.text or http.reason or "")
        except Exception:
            log.exception("intake request failed", endpoint=endpoint, method=request.method)
            response = _problem(500, "InternalError", "the intake failed on this request; see its log")
        self.metrics.requests.labels(endpoint, str(response.status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - began)
        return response

    def _caller(self, request: web.Request, role: Role) -> Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpProblem(401, "Unauthenticated", "send Authorization: Bearer <token>")
        caller = self.tokens.caller(token.strip())
        if caller is None:
            raise HttpProblem(401, "Unauthenticated", "unknown token")
        if not caller.may(role):
            raise HttpProblem(
                403,
                "Forbidden",
                f"{caller.identity} lacks role {role.value} (has {', '.join(sorted(caller.roles))})",
            )
        return caller

    @staticmethod
    async def _json(request: web.Request) -> Any:
        if request.content_type not in ("application/json", ""):
            raise HttpProblem(
                415, "UnsupportedMediaType", f"send application/json, not {request.content_type}"
            )
        raw = await request.read()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            where = (
                f" at line {error.lineno} column {error.colno}"
                if isinstance(error, json.JSONDecodeError)
                else ""
            )
            raise HttpProblem(400, "MalformedJson", f"the body is not JSON{where}: {error}") from None

    @staticmethod
    def _model(model: type[Any], raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise HttpProblem(
                422, "InvalidInput", f"the body must be a JSON object, got {type(raw).__name__}"
            )
        try:
            return model.model_validate(raw)
        except ValidationError as error:
            raise HttpProblem(
                422, "InvalidInput", f"invalid {model.__name__}: {describe_validation_error(error)}"
            ) from None

    # ---- the webhook -----------------------------------------------------------------------------------

    async def alertmanager(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.ALERTMANAGER)
        payload: AlertmanagerPayload = self._model(AlertmanagerPayload, await self._json(request))
        try:
            rules = await self.alerts.rules()
        except StoreUnavailable as error:
            raise HttpProblem(503, "StoreUnavailable", f"cannot read the alert rules: {error}") from None
        results = [await self._one_alert(alert, payload, rules, caller) for alert in payload.alerts]
        for result in results:
            self.metrics.alerts.labels(result.outcome.value).inc()
        answer = AlertmanagerAnswer(received=len(results), results=results)
        retry = any(r.outcome is AlertOutcome.RETRY for r in results)
        return web.json_response(answer.model_dump(mode="json"), status=503 if retry else 200)

    async def _one_alert(
        self, alert: Alert, payload: AlertmanagerPayload, rules: list[Any], caller: Caller
    ) -> AlertResult:
        bound = log.bind(fingerprint=alert.fingerprint, alertname=alert.name, status=alert.status.value)

        def result(outcome: AlertOutcome, message: str = "", workflow_id: str | None = None) -> AlertResult:
            return AlertResult(
                fingerprint=alert.fingerprint, alertname=alert.name, outcome=outcome,
                workflow_id=workflow_id, message=message,
            )  # fmt: skip

        try:
            claim = await self.alerts.claim(alert, receiver=payload.receiver)
        except StoreUnavailable as error:
            return result(AlertOutcome.RETRY, f"store unavailable: {error}")
        if not claim.owner:
            previous = claim.previous
            assert previous is not None
            said = previous.outcome + (f" ({previous.workflow_id})" if previous.workflow_id else "")
            return result(
                AlertOutcome.DEDUPLICATED,
                f"delivery {previous.deliveries} of this alert; it was {said}",
                previous.workflow_id,
            )

        async def settle(
            outcome: AlertOutcome, message: str = "", workflow_id: str | None = None, rule: str | None = None
        ) -> AlertResult:
            try:
                await self.alerts.settle(
                    alert, outcome, rule_name=rule, workflow_id=workflow_id, message=message
                )
            except StoreUnavailable as error:
                # Started but not recorded: the next delivery finds the claim pending, takes it over, and
                # its start is deduplicated by the workflow id.
                bound.warning("alert outcome not recorded", outcome=outcome.value, error=str(error))
                if outcome is not AlertOutcome.STARTED:
                    return result(AlertOutcome.RETRY, f"store unavailable: {error}")
            bound.info("alert handled", outcome=outcome.value, workflow_id=workflow_id, detail=message)
            return result(outcome, message, workflow_id)

        if alert.status is AlertStatus.RESOLVED:
            return await settle(AlertOutcome.RESOLVED, "resolved: recorded, nothing started")
        rule = rule_for(alert, rules)
        if rule is None:
            return await settle(AlertOutcome.UNMAPPED, f"no alert rule maps {alert.name!r}")
        bound = bound.bind(opscode=rule.opscode.value)  # settle() logs with what is known by then
        workflow = self.workflows.get(rule.opscode)
        if workflow is None:
            return await settle(
                AlertOutcome.REFUSED,
                f"rule {rule.name}: opscode {rule.opscode.value} has no workflow",
                rule=rule.name,
            )
        try:
            host = host_of(alert, rule)
        except ValueError as error:
            return await settle(AlertOutcome.REFUSED, str(error), rule=rule.name)
        bound = bound.bind(nc_ip=host)
        summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
        raw = {
            **_hosts_field(workflow, [host]),
            "requester": caller.identity if caller.identity else ALERT_REQUESTER,
            "reason_category": rule.reason_category.value,
            "reason": f"{alert.name}: {summary}".strip(": ")[:2000],
            "source": OperationSource.ALERT.value,
            "settings": rule.settings,
        }
        try:
            parse_input(workflow.input_model, raw)
        except InputRefused as refused:
            return await settle(AlertOutcome.REFUSED, f"rule {rule.name}: {refused}", rule=rule.name)
        workflow_id = f"{rule.opscode.value}-{host}"
        try:
            await self._start(workflow, raw, workflow_id)
        except WorkflowAlreadyStartedError:
            return await settle(
                AlertOutcome.DEDUPLICATED,
                f"{rule.opscode.value} already runs on {host}",
                workflow_id,
                rule.name,
            )
        except RPCError as error:
            if error.status in UNAVAILABLE_CODES:
                await self._give_back(alert)
                return result(AlertOutcome.RETRY, f"Temporal unavailable: {error.message}")
            raise
        return await settle(
            AlertOutcome.STARTED,
            f"{rule.opscode.value} on {host} by rule {rule.name}",
            workflow_id,
            rule.name,
        )

    async def _give_back(self, alert: Alert) -> None:
        try:
            await self.alerts.settle(alert, AlertOutcome.RETRY)
        except StoreError:
            pass  # a stale pending claim is taken over by the next delivery anyway

    async def _start(self, workflow: Workflow, raw: dict[str, Any], workflow_id: str) -> None:
        await self.client.start_workflow(
            workflow.name,
            raw,
            id=workflow_id,
            task_queue=self.task_queue,
            # A closed operation of the same id does not block a new one: flow control decides on repeats.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )

    # ---- manual reports --------------------------------------------------------------------------------

    async def report(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.SUBMITTER)
        report: ManualReport = self._model(ManualReport, await self._json(request))
        try:
            opscode = OpsCode.parse(report.opscode)
        except ValueError as error:
            raise HttpProblem(422, "UnknownOpscode", str(error)) from None
        workflow = self.workflows.get(opscode)
        if workflow is None:
            raise HttpProblem(
                422,
                "OpscodeNotImplemented",
                f"opscode {opscode.value} ({CATALOG[opscode].title}) has no workflow yet",
            )
        if (
            "nc_ip" not in workflow.input_model.model_fields
            and "nc_ips" not in workflow.input_model.model_fields
        ):
            raise HttpProblem(
                422,
                "NotAHostOperation",
                f"{workflow.name} does not take hosts: start it from the Temporal UI or opsctl",
            )
        requester = report.requester or caller.identity
        if requester != caller.identity and Role.ADMIN not in caller.roles:
            raise HttpProblem(
                403, "Forbidden", f"{caller.identity} may report only as themselves, not as {requester}"
            )
        if report.ignore_checks:
            raise HttpProblem(
                422, "InvalidInput", f"ignore_checks: {workflow.name} has no pre-check that may be skipped"
            )
        try:
            policy = await self.store.lifecycle.approval_policy(opscode)
        except StoreUnavailable as error:
            raise HttpProblem(503, "StoreUnavailable", str(error)) from None
        if not policy.allow_manual_report:
            raise HttpProblem(
                422,
                "ManualReportNotAllowed",
                f"opscode {opscode.value} does not allow manual report; it runs only from alerts",
            )
        hosts = report.host_list
        groups = [hosts] if "nc_ips" in workflow.input_model.model_fields else [[h] for h in hosts]
        planned = []
        for group in groups:
            raw = {
                **_hosts_field(workflow, group),
                "requester": requester,
                "reason_category": report.reason_category,
                "reason": report.reason,
                "ticket": report.ticket,
                "source": OperationSource.MANUAL.value,
                "settings": report.settings,
            }
            try:
                parse_input(workflow.input_model, raw)
            except InputRefused as refused:
                raise HttpProblem(422, refused.error_type, str(refused)) from None
            workflow_id = f"{opscode.value}-{group[0]}" + (f"+{len(group) - 1}" if len(group) > 1 else "")
            planned.append((group, raw, workflow_id))
        started = []
        for group, raw, workflow_id in planned:
            try:
                await self._start(workflow, raw, workflow_id)
                outcome = "started"
            except WorkflowAlreadyStartedError:
                outcome = "already_running"
            except RPCError as error:
                if error.status in UNAVAILABLE_CODES:
                    raise HttpProblem(503, "TemporalUnavailable", error.message) from None
                raise
            log.info(
                "manual report",
                workflow_id=workflow_id,
                opscode=opscode.value,
                nc_ip=",".join(group),
                requester=requester,
                outcome=outcome,
            )
            started.append(
                ReportStarted(
                    hosts=group, workflow_id=workflow_id, workflow_type=workflow.name, outcome=outcome
                )
            )
        answer = ReportAnswer(opscode=opscode.value, operations=started)
        return web.json_response(answer.model_dump(mode="json"), status=202)

    # ---- approvals -------------------------------------------------------------------------------------

    async def pending_approvals(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.APPROVER)
        pending: list[PendingApproval] = []
        try:
            async for execution in self.client.list_workflows(
                "OpsState = 'PendingApproval' AND ExecutionStatus = 'Running'"
            ):
                handle = self.client.get_workflow_handle(execution.id)
                try:
                    status = await handle.query("status", result_type=OperationStatus)
                except RPCError:
                    continue  # closed meanwhile
                if caller.identity not in status.approvers or caller.identity == status.requester:
                    continue
                if any(v.approver == caller.identity for v in status.votes):
                    continue
                pending.append(
                    PendingApproval(
                        workflow_id=execution.id,
                        opscode=status.opscode.value,
                        title=status.title,
                        hosts=[h.nc_ip for h in status.hosts],
                        requester=status.requester,
                        plan=status.plan,
                        approvals=sum(1 for v in status.votes if v.approve),
                        needed=status.min_approvals,
                        deadline=status.approval_deadline.isoformat() if status.approval_deadline else None,
                    )
                )
        except RPCError as error:
            if error.status in UNAVAILABLE_CODES:
                raise HttpProblem(503, "TemporalUnavailable", error.message) from None
            raise
        return web.json_response([p.model_dump(mode="json") for p in pending])

    async def decide(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.APPROVER)
        decision = request.match_info["decision"]
        if decision not in ("approve", "reject"):
            raise HttpProblem(404, "NotFound", f"no such decision {decision!r}: approve or reject")
        raw = await self._json(request) if await request.read() else {}
        body: ApprovalBody = self._model(ApprovalBody, raw)
        workflow_id = request.match_info["workflow_id"]
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            description = await handle.describe()
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                raise HttpProblem(404, "NotFound", f"no operation {workflow_id}") from None
            raise
        if description.status is not WorkflowExecutionStatus.RUNNING:
            raise HttpProblem(409, "NotPending", f"operation {workflow_id} has ended")
        try:
            result = await handle.execute_update(
                "decide",
                DecisionInput(approver=caller.identity, approve=decision == "approve", comment=body.comment),
                result_type=DecisionResult,
            )
        except WorkflowUpdateFailedError as failed:
            cause = failed.cause
            if isinstance(cause, ApplicationError):
                raise HttpProblem(409, cause.type or "Refused", cause.message) from None
            raise
        log.info("approval decided", workflow_id=workflow_id, approver=caller.identity, decision=decision)
        return web.json_response(result.model_dump(mode="json"))

    # ---- health, metrics, the document -------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = {}
        try:
            await self.alerts.ping()
        except StoreError as error:
            problems["store"] = str(error)
        try:
            await self.client.workflow_service.get_system_info(_system_info_request(), timeout=_seconds(3))
        except RPCError as error:
            problems["temporal"] = error.message
        if problems:
            return web.json_response({"status": "unavailable", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


def _hosts_field(workflow: Workflow, hosts: list[str]) -> dict[str, Any]:
    if "nc_ips" in workflow.input_model.model_fields:
        return {"nc_ips": hosts}
    return {"nc_ip": hosts[0]}


def _problem(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


def _system_info_request() -> Any:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    return GetSystemInfoRequest()


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)
