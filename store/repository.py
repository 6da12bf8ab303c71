"""The operation store: the event list, the audit log and the control-plane call log, in PostgreSQL.

Flow control, approval policies and host leases live in ``store.lifecycle``; ``OperationStore.lifecycle``
hands out that store on the same pool, so callers are given one object.

Every write is safe to repeat, because activities that call it are retried: an operation is keyed by its
workflow id, an audit entry may carry a dedupe key, and a final state is never rewritten.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from domain.model import NcIp
from domain.operations import OperationSource, OpsState, ReasonCategory
from domain.opscodes import OpsCode
from houyi.port import HouyiCallRecord
from store.batching import GroupCommit
from store.db import create_pool, migrate, pooled_connection
from store.errors import OperationNotFound, StoreConflict
from store.lifecycle import LifecycleStore

# The tables count_rows reports, i.e. everything the service writes (not schema_migrations).
TABLES = (
    "operations",
    "audit_log",
    "houyi_calls",
    "flow_control_rules",
    "flow_control_admissions",
    "approval_policies",
    "storm_breakers",
    "capacity_guards",
    "approver_groups",
    "host_leases",
    "maintenance_windows",
    "disk_leases",
    "disk_migration_limits",
    "disk_recycles",
    "alert_rules",
    "alert_receipts",
)

_FINAL_STATES = [state.value for state in OpsState if state.final]


class NewOperation(BaseModel):
    """An operation as its workflow records it on start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str = Field(min_length=1)
    run_id: str | None = None
    opscode: OpsCode
    workflow_type: str = Field(min_length=1)
    hosts: list[NcIp] = Field(default_factory=list)
    nc_ids: list[str] = Field(default_factory=list)
    region_id: str | None = None
    cluster_id: str | None = None
    source: OperationSource
    requester: str = Field(min_length=1)
    reason_category: ReasonCategory
    reason: str = ""
    ticket: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    state: OpsState = OpsState.VALIDATING


class OperationRecord(BaseModel):
    """A row of the event list."""

    model_config = ConfigDict(frozen=True)

    id: int
    workflow_id: str
    run_id: str | None
    opscode: OpsCode
    workflow_type: str
    hosts: list[str]
    nc_ids: list[str]
    region_id: str | None
    cluster_id: str | None
    source: OperationSource
    requester: str
    reason_category: ReasonCategory
    reason: str
    ticket: str | None
    settings: dict[str, Any]
    state: OpsState
    error_type: str | None
    error_message: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class AuditResult(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"


class AuditEntry(BaseModel):
    """A risky action or a refusal, as DOMAIN.md's audit wants it. ``at`` defaults to the database's now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: str = Field(min_length=1, description="e.g. lock_nc, refuse, approve")
    result: AuditResult
    at: datetime | None = None
    workflow_id: str | None = None
    opscode: OpsCode | None = None
    nc_ip: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    operator: str | None = None
    reason: str | None = None
    ticket: str | None = None
    dedupe_key: str | None = Field(
        default=None, description="writers that may run twice set it; the second write is dropped"
    )


class AuditRecord(AuditEntry):
    # A column added by a later migration must not break reading the log.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int
    at: datetime


@dataclass(frozen=True)
class RecordedOperation:
    record: OperationRecord
    inserted: bool


@dataclass(frozen=True)
class StateMove:
    """What ``move_operation`` did: ``previous_state`` None when nothing moved (a final state repeated)."""

    record: OperationRecord
    previous_state: OpsState | None
    previous_since: datetime | None


@dataclass(frozen=True)
class OpenOperations:
    opscode: str
    state: str
    open: int
    oldest_seconds: float


_OPERATION_COLUMNS = (
    "workflow_id, run_id, opscode, workflow_type, hosts, nc_ids, region_id, cluster_id, source, requester, "
    "reason_category, reason, ticket, settings, state, finished_at"
)


# The fields an ``unnest`` insert of a batch takes, in the order of its arrays.
_AUDIT_COLUMNS = (
    "at", "workflow_id", "opscode", "nc_ip", "action", "result", "error_type", "error_message", "request_id",
    "params", "operator", "reason", "ticket", "dedupe_key",
)  # fmt: skip
_HOUYI_CALL_COLUMNS = (
    "started_at", "action", "request_id", "code", "message", "caller", "token", "latency_ms", "params",
)  # fmt: skip


def _columns(rows: Sequence[BaseModel], *fields: str) -> list[list[Any]]:
    """One list per field of the rows' values (an enum by its value): the arrays of an ``unnest`` insert."""
    return [[_column_value(getattr(row, field)) for row in rows] for field in fields]


def _column_value(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def _actions(rows: Sequence[AuditEntry] | Sequence[HouyiCallRecord]) -> str:
    """The actions of a batch of rows, for messages: ``lock_nc, notify``."""
    return ", ".join(sorted({row.action for row in rows}))


class OperationStore:
    """Reads and writes the store through one asyncpg pool; implements ``houyi.port.CallRecorder``.

    Every method raises ``StoreUnavailable`` when the database cannot be reached (or no pooled
    connection frees up within ``acquire_timeout`` seconds) and ``StoreConflict`` when a constraint
    rejects the write.
    """

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout: float = 10.0) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout
        self._lifecycle = LifecycleStore(pool, acquire_timeout=acquire_timeout)
        # Houyi calls and audit entries: many activities append them at once, so they are group-committed.
        self._houyi_calls: GroupCommit[HouyiCallRecord, None] = GroupCommit(self._insert_houyi_calls)
        self._audit_entries: GroupCommit[AuditEntry, bool] = GroupCommit(self._insert_audit_entries)

    @classmethod
    async def connect(cls, url: str, *, acquire_timeout: float = 10.0, **pool_kwargs: Any) -> OperationStore:
        """Creates the pool and brings the schema up to date; ``pool_kwargs`` go to ``create_pool``."""
        pool = await create_pool(url, **pool_kwargs)
        try:
            await migrate(pool)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, acquire_timeout=acquire_timeout)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        await self._houyi_calls.drain()
        await self._audit_entries.drain()
        await self._pool.close()

    @property
    def lifecycle(self) -> LifecycleStore:
        """Flow control, approval policies and host leases, on the same pool."""
        return self._lifecycle

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        async with pooled_connection(self._pool, doing, acquire_timeout=self._acquire_timeout) as conn:
            yield conn

    async def _execute(self, doing: str, query: str, *args: Any) -> None:
        async with self._connection(doing) as conn:
            await conn.execute(query, *args)

    async def _fetchrow(self, doing: str, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection(doing) as conn:
            row: asyncpg.Record | None = await conn.fetchrow(query, *args)
            return row

    async def _fetch(self, doing: str, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection(doing) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    # ---- operations ---------------------------------------------------------------------------

    async def record_operation(self, new: NewOperation) -> OperationRecord:
        """Inserts the operation, or returns the row already recorded under its workflow id untouched.

        Raises ``StoreConflict`` when that row belongs to another opscode: two operations would share an id.
        """
        return (await self.record_operation_once(new)).record

    async def record_operation_once(self, new: NewOperation) -> RecordedOperation:
        """``record_operation``, telling whether this call inserted the row (metrics count a start once)."""
        doing = f"recording operation {new.workflow_id}"
        inserted = await self._fetchrow(
            doing,
            f"""
            INSERT INTO operations ({_OPERATION_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                    CASE WHEN $15 = ANY($16::text[]) THEN now() END)
            ON CONFLICT (workflow_id) DO NOTHING
            RETURNING *
            """,
            new.workflow_id,
            new.run_id,
            new.opscode.value,
            new.workflow_type,
            new.hosts,
            new.nc_ids,
            new.region_id,
            new.cluster_id,
            new.source.value,
            new.requester,
            new.reason_category.value,
            new.reason,
            new.ticket,
            new.settings,
            new.state.value,
            _FINAL_STATES,
        )
        if inserted is not None:
            return RecordedOperation(record=_operation(inserted), inserted=True)
        # A retry, or a concurrent insert that won: this separate statement sees the committed row.
        existing = await self.get_operation(new.workflow_id)
        if existing is None:
            raise OperationNotFound(new.workflow_id)  # deleted in between; nothing deletes rows today
        if existing.opscode != new.opscode:
            raise StoreConflict(
                f"workflow {new.workflow_id} is already recorded as opscode {existing.opscode.value}, "
                f"not {new.opscode.value}",
                constraint="operations_workflow_id_key",
            )
        return RecordedOperation(record=existing, inserted=False)

    async def set_operation_state(
        self,
        workflow_id: str,
        state: OpsState,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> OperationRecord:
        """Moves the operation to ``state``; a final state also stamps ``finished_at``.

        The error fields are replaced (``None`` clears them, e.g. a retried step running again); the result
        is kept unless a new one is given. Once final, the row is frozen: repeating the same final state
        returns it unchanged (the first write's error and result stand), another state raises ``StoreConflict``.
        """
        move = await self.move_operation(
            workflow_id, state, error_type=error_type, error_message=error_message, result=result
        )
        return move.record

    async def move_operation(
        self,
        workflow_id: str,
        state: OpsState,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> StateMove:
        """``set_operation_state``, telling the state it left and since when (metrics: approval wait)."""
        doing = f"setting operation {workflow_id} to {state.value}"
        updated = await self._fetchrow(
            doing,
            """
            UPDATE operations o
            SET state = $2,
                error_type = $3,
                error_message = $4,
                result = COALESCE($5::jsonb, o.result),
                updated_at = now(),
                finished_at = CASE WHEN $2 = ANY($6::text[]) THEN now() END
            FROM (SELECT id, state AS previous_state, updated_at AS previous_since
                  FROM operations WHERE workflow_id = $1 FOR UPDATE) p
            WHERE o.id = p.id AND o.state <> ALL($6::text[])
            RETURNING o.*, p.previous_state, p.previous_since
            """,
            workflow_id,
            state.value,
            error_type,
            error_message,
            result,
            _FINAL_STATES,
        )
        if updated is not None:
            return StateMove(
                record=_operation(updated),
                previous_state=OpsState(updated["previous_state"]),
                previous_since=updated["previous_since"],
            )
        current = await self.get_operation(workflow_id)
        if current is None:
            raise OperationNotFound(workflow_id)
        if current.state != state:
            raise StoreConflict(
                f"operation {workflow_id} already ended {current.state.value}; it cannot become {state.value}"
            )
        return StateMove(record=current, previous_state=None, previous_since=None)

    async def get_operation(self, workflow_id: str) -> OperationRecord | None:
        row = await self._fetchrow(
            f"reading operation {workflow_id}", "SELECT * FROM operations WHERE workflow_id = $1", workflow_id
        )
        return None if row is None else _operation(row)

    async def list_operations(
        self,
        *,
        state: OpsState | None = None,
        opscode: OpsCode | None = None,
        nc_ip: str | None = None,
        limit: int = 100,
    ) -> list[OperationRecord]:
        """The newest operations first, filtered by every criterion given."""
        where, args = _conditions(
            [
                ("state = ${}", None if state is None else state.value),
                ("opscode = ${}", None if opscode is None else opscode.value),
                # @> rather than = ANY so that the GIN index on hosts is used.
                ("hosts @> ARRAY[${}::text]", nc_ip),
            ]
        )
        args.append(limit)
        rows = await self._fetch(
            "listing operations",
            f"SELECT * FROM operations {where} ORDER BY id DESC LIMIT ${len(args)}",
            *args,
        )
        return [_operation(row) for row in rows]

    # ---- audit ----------------------------------------------------------------------------------

    async def record_audit(self, entry: AuditEntry) -> bool:
        """Appends the entry; one whose ``dedupe_key`` is already recorded is dropped silently (False)."""
        # An audit row echoes what was refused, NUL characters included, and PostgreSQL's text holds none.
        return await self._audit_entries.submit(AuditEntry.model_validate(_storable(entry.model_dump())))

    async def _insert_audit_entries(self, entries: Sequence[AuditEntry]) -> list[bool]:
        """One INSERT for a batch of entries (``record_audit``); for each, whether it was inserted."""
        async with self._connection(f"recording audit entries ({_actions(entries)})") as conn:
            inserted = await conn.fetch(
                """
                INSERT INTO audit_log (at, workflow_id, opscode, nc_ip, action, result, error_type, error_message,
                                       request_id, params, operator, reason, ticket, dedupe_key)
                SELECT COALESCE(at, now()), workflow_id, opscode, nc_ip, action, result, error_type,
                       error_message, request_id, params, operator, reason, ticket, dedupe_key
                FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                            $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::text[], $12::text[],
                            $13::text[], $14::text[])
                     AS entry(at, workflow_id, opscode, nc_ip, action, result, error_type, error_message,
                              request_id, params, operator, reason, ticket, dedupe_key)
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING dedupe_key
                """,
                *_columns(entries, *_AUDIT_COLUMNS),
            )
        # Entries without a key are always inserted; of two with the same key in one batch, the first is.
        fresh = {row["dedupe_key"] for row in inserted}
        results = []
        for entry in entries:
            results.append(entry.dedupe_key is None or entry.dedupe_key in fresh)
            fresh.discard(entry.dedupe_key)
        return results

    async def list_audit(
        self, *, workflow_id: str | None = None, nc_ip: str | None = None
    ) -> list[AuditRecord]:
        """Entries in the order they were written."""
        where, args = _conditions([("workflow_id = ${}", workflow_id), ("nc_ip = ${}", nc_ip)])
        rows = await self._fetch(
            "listing audit entries", f"SELECT * FROM audit_log {where} ORDER BY id", *args
        )
        return [AuditRecord.model_validate(dict(row)) for row in rows]

    # ---- open operations (the worker's gauges) ------------------------------------------------

    async def open_operations(self) -> list[OpenOperations]:
        """Operations in a non-final state, per opscode and state, with the oldest one's time in it."""
        rows = await self._fetch(
            "summarising open operations",
            """
            SELECT opscode, state, count(*) AS open,
                   EXTRACT(EPOCH FROM now() - min(updated_at))::float8 AS oldest_seconds
            FROM operations WHERE finished_at IS NULL GROUP BY opscode, state
            """,
        )
        return [
            OpenOperations(
                opscode=row["opscode"],
                state=row["state"],
                open=row["open"],
                oldest_seconds=row["oldest_seconds"],
            )
            for row in rows
        ]

    async def ping(self) -> None:
        """Raises ``StoreUnavailable`` unless the database answers."""
        await self._fetchrow("checking the database", "SELECT 1")

    # ---- control-plane calls -----------------------------------------------------------------

    async def record_houyi_call(self, call: HouyiCallRecord) -> None:
        await self._houyi_calls.submit(call)

    async def _insert_houyi_calls(self, calls: Sequence[HouyiCallRecord]) -> list[None]:
        """One INSERT for a batch of calls (``record_houyi_call``)."""
        async with self._connection(f"recording houyi calls ({_actions(calls)})") as conn:
            await conn.execute(
                """
                INSERT INTO houyi_calls (at, action, request_id, code, message, caller, token, latency_ms, params)
                SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::integer[], $5::text[],
                                     $6::text[], $7::text[], $8::double precision[], $9::jsonb[])
                """,
                *_columns(calls, *_HOUYI_CALL_COLUMNS),
            )
        return [None] * len(calls)

    async def list_houyi_calls(
        self, *, caller: str | None = None, action: str | None = None
    ) -> list[HouyiCallRecord]:
        """Calls in the order they were recorded."""
        where, args = _conditions([("caller = ${}", caller), ("action = ${}", action)])
        rows = await self._fetch(
            "listing houyi calls", f"SELECT * FROM houyi_calls {where} ORDER BY id", *args
        )
        return [_houyi_call(row) for row in rows]

    # ---- inspection -----------------------------------------------------------------------------

    async def count_rows(self) -> dict[str, int]:
        """Rows per table; comparing two snapshots proves that something wrote nothing."""
        counts = ", ".join(f"(SELECT count(*) FROM {table}) AS {table}" for table in TABLES)
        row = await self._fetchrow("counting rows", f"SELECT {counts}")
        assert row is not None  # a SELECT without FROM always yields one row
        return {table: int(row[table]) for table in TABLES}


def _conditions(candidates: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """A WHERE clause of the candidates whose value is not None, with their $n placeholders numbered."""
    clauses: list[str] = []
    args: list[Any] = []
    for template, value in candidates:
        if value is None:
            continue
        args.append(value)
        clauses.append(template.format(len(args)))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _storable(value: Any) -> Any:
    """``value`` with every NUL character in its strings (and keys) shown as U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _operation(row: asyncpg.Record) -> OperationRecord:
    return OperationRecord.model_validate(dict(row))


def _houyi_call(row: asyncpg.Record) -> HouyiCallRecord:
    return HouyiCallRecord(
        action=row["action"],
        request_id=row["request_id"],
        code=row["code"],
        message=row["message"],
        caller=row["caller"],
        token=row["token"],
        latency_ms=row["latency_ms"],
        params=row["params"],
        started_at=row["at"],
    )
