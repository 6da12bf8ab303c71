"""The intake's OpenAPI 3.1 document, built from the same pydantic models the handlers validate with."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


class Problem(BaseModel):
    error: str
    message: str


def _problems(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "the body is not JSON",
        401: "no or unknown bearer token",
        403: "the caller lacks the role",
        404: "no such operation or decision",
        409: "refused by the operation (not pending, not an approver, the requester, a repeat vote)",
        415: "not application/json",
        422: "valid JSON that can never be accepted; the message names the field",
        503: "the store or Temporal is down: send it again",
    }
    return {
        str(code): {
            "description": meaning[code],
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Problem")}}},
        }
        for code in codes
    }


def _json_body(model: str, required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }


def _ok(model: str, description: str, *, array: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": REF.format(model=model)}
    if array:
        schema = {"type": "array", "items": schema}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def openapi_document() -> dict[str, Any]:
    from domain.alerts import AlertmanagerPayload, ManualReport
    from starter.app import AlertmanagerAnswer, ApprovalBody, PendingApproval, ReportAnswer
    from workflows.lifecycle import DecisionResult

    models: list[type[BaseModel]] = [
        AlertmanagerPayload, AlertmanagerAnswer, ManualReport, ReportAnswer, PendingApproval, ApprovalBody,
        DecisionResult, Problem,
    ]  # fmt: skip
    _, schemas = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ecs-opsflow intake",
            "version": "1",
            "description": "Alerts, manual reports and approvals into ecs-opsflow's Temporal workflows.",
        },
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/alertmanager": {
                "post": {
                    "summary": "Prometheus Alertmanager webhook (version 4)",
                    "security": secured,
                    "requestBody": _json_body("AlertmanagerPayload"),
                    "responses": {
                        "200": _ok("AlertmanagerAnswer", "every alert accepted, deduplicated or recorded"),
                        **_problems(400, 401, 403, 415, 422, 503),
                    },
                }
            },
            "/v1/reports": {
                "post": {
                    "summary": "Manual report: one operation per host (one for several where the opscode takes several)",
                    "security": secured,
                    "requestBody": _json_body("ManualReport"),
                    "responses": {
                        "202": _ok("ReportAnswer", "started, or already running"),
                        **_problems(400, 401, 403, 415, 422, 503),
                    },
                }
            },
            "/v1/approvals": {
                "get": {
                    "summary": "Operations waiting for the caller's approval, with their plans",
                    "security": secured,
                    "responses": {
                        "200": _ok("PendingApproval", "pending approvals", array=True),
                        **_problems(401, 403, 503),
                    },
                }
            },
            "/v1/approvals/{workflow_id}/{decision}": {
                "post": {
                    "summary": "Approve or reject as the caller",
                    "security": secured,
                    "parameters": [
                        {"name": "workflow_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {
                            "name": "decision",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["approve", "reject"]},
                        },
                    ],
                    "requestBody": _json_body("ApprovalBody", required=False),
                    "responses": {
                        "200": _ok("DecisionResult", "the vote counted"),
                        **_problems(400, 401, 403, 404, 409, 415, 422, 503),
                    },
                }
            },
            "/healthz": {"get": {"summary": "alive", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "summary": "the store and Temporal answer",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics"}}}
            },
        },
    }
