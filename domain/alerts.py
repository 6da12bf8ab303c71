"""Alerts as the intake receives them, and the rules that turn an alert into an operation. Pure.

The webhook payload is Prometheus Alertmanager's (version 4). A rule maps an alert name, and optionally
label values, to an opscode; the host is read from one of the alert's labels. Alertmanager delivers at
least once and repeats whole groups: an alert is known by its ``fingerprint`` and ``startsAt`` (the same
alert firing again after it resolved has a new ``startsAt``), which is what the intake deduplicates on.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domain.operations import ReasonCategory
from domain.opscodes import OpsCode


def _nul_path(value: Any, path: str = "") -> str | None:
    """Where a NUL character hides in JSON-shaped ``value`` (keys included), or None. PostgreSQL text
    cannot hold one, so it is refused up front rather than failing the store later."""
    if isinstance(value, str):
        return path or "input" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return where
            found = _nul_path(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


class _NoNul(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        where = _nul_path(value)
        if where:
            raise ValueError(f"{where} contains a NUL character")
        return value


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Alert(BaseModel):
    """One alert of the webhook's ``alerts[]``."""

    model_config = ConfigDict(extra="allow")

    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=128)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


class AlertmanagerPayload(_NoNul):
    """``POST /v1/alertmanager``: Alertmanager's webhook body."""

    model_config = ConfigDict(extra="allow")

    version: str = Field(pattern=r"^4$", description="the webhook format version; only 4 is understood")
    groupKey: str = ""
    truncatedAlerts: int = 0
    status: AlertStatus
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=1000)


class AlertRule(BaseModel):
    """``alert_rules``: when an alert named ``alertname`` whose labels include ``match`` fires, run
    ``opscode`` on the host named by its ``host_label`` label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    alertname: str = Field(min_length=1, max_length=256)
    match: dict[str, str] = Field(default_factory=dict, description="label values the alert must also carry")
    opscode: OpsCode
    host_label: str = Field(default="nc_ip", min_length=1, max_length=128)
    reason_category: ReasonCategory
    settings: dict[str, Any] = Field(
        default_factory=dict, description="the operation's settings, product names"
    )
    enabled: bool = True
    priority: int = Field(default=100, description="lower first when several rules match")

    def matches(self, alert: Alert) -> bool:
        return (
            self.enabled
            and alert.name == self.alertname
            and all(alert.labels.get(k) == v for k, v in self.match.items())
        )


def rule_for(alert: Alert, rules: list[AlertRule]) -> AlertRule | None:
    """The rule that applies: the most specific (most labels matched), then the lowest priority, then
    the name; None when no rule maps the alert."""
    matching = [r for r in rules if r.matches(alert)]
    if not matching:
        return None
    return min(matching, key=lambda r: (-len(r.match), r.priority, r.name))


def host_of(alert: Alert, rule: AlertRule) -> str:
    """The host's IP from the rule's label; ``instance`` labels of the form ``ip:port`` are accepted.
    Raises ``ValueError`` naming the label and what it held."""
    raw = alert.labels.get(rule.host_label)
    if raw is None:
        raise ValueError(f"alert {alert.name} has no label {rule.host_label!r} to take the host from")
    candidate = raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
    try:
        address = ipaddress.IPv4Address(candidate)
    except ValueError:
        raise ValueError(
            f"label {rule.host_label}={raw!r} of alert {alert.name} is not an IPv4 address"
        ) from None
    return str(address)


class AlertOutcome(StrEnum):
    STARTED = "started"  # a new operation
    DEDUPLICATED = "deduplicated"  # the same alert again, or an operation of that opscode runs on the host
    RESOLVED = "resolved"  # recorded, nothing started
    UNMAPPED = "unmapped"  # no rule: recorded, not an error
    REFUSED = "refused"  # can never become an operation (bad host label, invalid settings, ...)
    RETRY = "retry"  # a part was down: Alertmanager should send it again


class AlertResult(BaseModel):
    fingerprint: str
    alertname: str
    outcome: AlertOutcome
    workflow_id: str | None = None
    message: str = ""


class ManualReport(_NoNul):
    """``POST /v1/reports``: the product's "active ops report"."""

    model_config = ConfigDict(extra="forbid")

    hosts: str | list[str] = Field(description="host IP(s): a list, or comma separated as in the product")
    opscode: str = Field(min_length=1, description="e.g. 0x400012, or a workflow's name for unnumbered ones")
    reason_category: str = Field(
        description="hardware, kernel, network, system, hang, security, internal reboot"
    )
    reason: str = Field(default="", max_length=2000)
    requester: str | None = Field(
        default=None, description="defaults to the caller; only an admin may name another"
    )
    ticket: str | None = Field(default=None, max_length=128)
    ignore_checks: bool = False
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: str | list[str]) -> list[str]:
        items = [h.strip() for h in (value.split(",") if isinstance(value, str) else value)]
        items = [h for h in items if h]
        if not items:
            raise ValueError("no host given")
        bad = []
        for item in items:
            try:
                ipaddress.IPv4Address(item)
            except ValueError:
                bad.append(item)
        if bad:
            raise ValueError(f"not an IPv4 address: {', '.join(repr(b) for b in bad)}")
        repeated = sorted({h for h in items if items.count(h) > 1})
        if repeated:
            raise ValueError(f"hosts listed more than once: {', '.join(repeated)}")
        return items

    @field_validator("reason_category")
    @classmethod
    def _category(cls, value: str) -> str:
        # The product's names ("internal reboot", "abnormal hang") as well as ours.
        normalised = value.strip().lower().replace(" ", "_").replace("-", "_")
        normalised = {"abnormal_hang": "hang"}.get(normalised, normalised)
        try:
            return ReasonCategory(normalised).value
        except ValueError:
            known = ", ".join(c.value for c in ReasonCategory)
            raise ValueError(f"unknown reason category {value!r}: one of {known}") from None

    @property
    def host_list(self) -> list[str]:
        return list(self.hosts)
