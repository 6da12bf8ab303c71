"""The intake's tables: alert rules (configuration) and alert receipts (deduplication and record).

A receipt is claimed before anything is started for the alert: ``INSERT ... ON CONFLICT`` on
(fingerprint, startsAt, status) makes exactly one request the owner of a distinct alert, across intake
replicas; the others see it and answer "deduplicated". A claim left ``pending`` (its request died midway)
is taken over by the next delivery, whose start is itself deduplicated by the workflow id.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from domain.alerts import Alert, AlertOutcome, AlertRule
from store.db import PoolStore

if TYPE_CHECKING:
    pass

# A pending claim older than this is taken to be dead (requests answer in seconds).
STALE_CLAIM_SECONDS = 60


class Receipt(BaseModel):
    fingerprint: str
    starts_at: datetime
    alertname: str
    status: str
    outcome: str
    rule_name: str | None
    workflow_id: str | None
    message: str
    deliveries: int
    received_at: datetime


class Claim(BaseModel):
    """``owner``: this request handles the alert; otherwise ``previous`` says what became of it."""

    owner: bool
    previous: Receipt | None = None


class IntakeStore(PoolStore):
    async def ping(self) -> None:
        async with self._connection("checking the store") as conn:
            await conn.fetchval("SELECT 1")

    # ---- rules -----------------------------------------------------------------------------------------

    async def rules(self) -> list[AlertRule]:
        async with self._connection("reading the alert rules") as conn:
            rows = await conn.fetch(
                "SELECT name, alertname, match, opscode, host_label, reason_category, settings, enabled, priority "
                "FROM alert_rules ORDER BY priority, name"
            )
        return [
            AlertRule(
                **{**dict(r), "match": _json(r["match"]), "settings": _json(r["settings"])},
            )
            for r in rows
        ]

    async def set_rule(self, rule: AlertRule, *, updated_by: str = "") -> None:
        async with self._connection(f"setting alert rule {rule.name}") as conn:
            await conn.execute(
                """
                INSERT INTO alert_rules (name, alertname, match, opscode, host_label, reason_category, settings,
                                         enabled, priority, updated_by)
                VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7::jsonb, $8, $9, $10)
                ON CONFLICT (name) DO UPDATE SET
                    alertname = EXCLUDED.alertname, match = EXCLUDED.match, opscode = EXCLUDED.opscode,
                    host_label = EXCLUDED.host_label, reason_category = EXCLUDED.reason_category,
                    settings = EXCLUDED.settings, enabled = EXCLUDED.enabled, priority = EXCLUDED.priority,
                    updated_by = EXCLUDED.updated_by, updated_at = now()
                """,
                rule.name,
                rule.alertname,
                rule.match,
                rule.opscode.value,
                rule.host_label,
                rule.reason_category.value,
                rule.settings,
                rule.enabled,
                rule.priority,
                updated_by,
            )

    async def remove_rule(self, name: str) -> bool:
        async with self._connection(f"removing alert rule {name}") as conn:
            status: str = await conn.execute("DELETE FROM alert_rules WHERE name = $1", name)
        return status.endswith(" 1")

    # ---- receipts --------------------------------------------------------------------------------------

    async def claim(self, alert: Alert, *, receiver: str) -> Claim:
        """Claims the alert for this request, or says what an earlier delivery did with it."""
        async with self._connection(f"claiming alert {alert.fingerprint}") as conn, conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO alert_receipts (fingerprint, starts_at, alertname, status, outcome, labels, receiver)
                VALUES ($1, $2, $3, $4, 'pending', $5::jsonb, $6)
                ON CONFLICT (fingerprint, starts_at, status) DO NOTHING
                RETURNING 1
                """,
                alert.fingerprint,
                alert.startsAt,
                alert.name,
                alert.status.value,
                alert.labels,
                receiver,
            )
            if inserted:
                return Claim(owner=True)
            row = await conn.fetchrow(
                f"""
                UPDATE alert_receipts SET deliveries = deliveries + 1,
                    updated_at = CASE WHEN outcome = 'pending'
                        AND updated_at < now() - interval '{STALE_CLAIM_SECONDS} seconds' THEN now()
                        ELSE updated_at END
                WHERE fingerprint = $1 AND starts_at = $2 AND status = $3
                RETURNING {_RECEIPT_COLUMNS}, (outcome = 'pending' AND updated_at = now()) AS taken_over
                """,
                alert.fingerprint,
                alert.startsAt,
                alert.status.value,
            )
        assert row is not None
        receipt = _receipt(row)
        return Claim(owner=bool(row["taken_over"]), previous=receipt)

    async def settle(
        self,
        alert: Alert,
        outcome: AlertOutcome,
        *,
        rule_name: str | None = None,
        workflow_id: str | None = None,
        message: str = "",
    ) -> None:
        """Records what became of a claimed alert; ``RETRY`` gives the claim back for the next delivery."""
        async with self._connection(f"recording alert {alert.fingerprint}") as conn:
            if outcome is AlertOutcome.RETRY:
                await conn.execute(
                    "DELETE FROM alert_receipts WHERE fingerprint = $1 AND starts_at = $2 AND status = $3 "
                    "AND outcome = 'pending'",
                    alert.fingerprint,
                    alert.startsAt,
                    alert.status.value,
                )
                return
            await conn.execute(
                """
                UPDATE alert_receipts SET outcome = $4, rule_name = $5, workflow_id = $6, message = $7,
                    updated_at = now()
                WHERE fingerprint = $1 AND starts_at = $2 AND status = $3
                """,
                alert.fingerprint,
                alert.startsAt,
                alert.status.value,
                outcome.value,
                rule_name,
                workflow_id,
                message,
            )

    async def receipts(self, *, limit: int = 100, alertname: str | None = None) -> list[Receipt]:
        async with self._connection("reading the alert receipts") as conn:
            rows = await conn.fetch(
                f"SELECT {_RECEIPT_COLUMNS} FROM alert_receipts WHERE ($1::text IS NULL OR alertname = $1) "
                "ORDER BY received_at DESC, fingerprint LIMIT $2",
                alertname,
                limit,
            )
        return [_receipt(r) for r in rows]


_RECEIPT_COLUMNS = "fingerprint, starts_at, alertname, status, outcome, rule_name, workflow_id, message, deliveries, received_at"


def _receipt(row: Any) -> Receipt:
    return Receipt(**{k: row[k] for k in Receipt.model_fields})


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
