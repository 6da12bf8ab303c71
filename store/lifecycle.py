"""What the operation lifecycle keeps in PostgreSQL: flow control admissions, the storm breaker, the
capacity guard, approval policies and approver groups, and host leases (issue 3; DOMAIN.md "Flow
control", "Approval and manual report").

Every write is safe to repeat, because the activities calling it are retried: an admission is keyed by
(workflow, opscode) and a repeat returns the first decision; a lease already held by the caller is
acquired again; a release of a lease the caller no longer holds deletes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import asyncpg
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from domain.operations import OperationSource
from domain.opscodes import ApprovalPolicy, OpsCode, spec_for
from store.db import pooled_connection
from store.errors import StoreConflict

# storm_breakers and capacity_guards: the row that applies to every cluster without one of its own.
DEFAULT_CLUSTER = "*"

# What an opscode's approval policy is when it has no row (issue 3 "Approval gate").
DEFAULT_APPROVERS = ("ops-admins",)
DEFAULT_MIN_APPROVALS = 1
DEFAULT_APPROVAL_TIMEOUT_MINUTES = 24 * 60


class AdmissionVerdict(StrEnum):
    ADMITTED = "admitted"
    ABANDONED = "abandoned"  # over a flow control limit: the product drops it, never queues it
    HELD_FOR_APPROVAL = "held_for_approval"  # the storm breaker tripped: a person decides


# Verdicts that count against the windows: an abandoned execution never ran, a held one may still run.
_COUNTED_VERDICTS = [AdmissionVerdict.ADMITTED.value, AdmissionVerdict.HELD_FOR_APPROVAL.value]


class FlowControlRule(BaseModel):
    """An opscode's flow control (flow_control_rules); defaults are the product's recommended values."""

    model_config = ConfigDict(frozen=True)

    opscode: OpsCode
    enabled: bool = True
    region_window_minutes: int = Field(default=7 * 24 * 60, gt=0)
    region_limit: int = Field(default=1, ge=0)
    cluster_window_minutes: int = Field(default=7 * 24 * 60, gt=0)
    cluster_limit: int = Field(default=1, ge=0)
    host_window_minutes: int | None = Field(default=None, gt=0)
    host_limit: int | None = Field(default=None, ge=0)
    policy: str = Field(
        default="abandon", pattern="^abandon$", description="the product only drops an execution over a limit"
    )

    @model_validator(mode="after")
    def _host_window_and_limit_together(self) -> FlowControlRule:
        if (self.host_window_minutes is None) != (self.host_limit is None):
            raise ValueError("host_window_minutes and host_limit are set together or not at all")
        return self


class StormBreaker(BaseModel):
    """Holds a cluster's automatic operations for approval once ``threshold`` ran within the window."""

    model_config = ConfigDict(frozen=True)

    cluster_id: str = Field(min_length=1, description="'*' for the default row")
    enabled: bool = True
    threshold: int = Field(default=10, ge=0)
    window_minutes: int = Field(default=60, gt=0)


class CapacityGuard(BaseModel):
    """Holds an operation taking hosts out of service when fewer than this share would stay schedulable."""

    model_config = ConfigDict(frozen=True)

    cluster_id: str = Field(min_length=1, description="'*' for the default row")
    enabled: bool = True
    min_schedulable_share: float = Field(default=0.8, ge=0.0, le=1.0)


class AdmissionRequest(BaseModel):
    """One execution asking to run. ``at`` is the workflow's clock (``workflow.now()``), so the windows
    slide with workflow time and tests can move it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str = Field(min_length=1)
    opscode: OpsCode
    region_id: str = Field(min_length=1)
    cluster_id: str = Field(min_length=1)
    nc_ip: str = Field(min_length=1)
    source: OperationSource
    at: AwareDatetime
    bypass_flow_control: bool = Field(default=False, description="the setting needLimit = 0")


class AdmissionDecision(BaseModel):
    """What ``admit`` decided and the evidence: the counts, and the rule and breaker as they were.

    Counts are 0 (``host_count`` None) for a scope that was not counted: no enabled rule, no host window,
    a source other than alert or a disabled breaker for ``storm_count``.
    """

    model_config = ConfigDict(frozen=True)

    verdict: AdmissionVerdict
    reason: str | None
    rule: FlowControlRule | None
    storm: StormBreaker | None = Field(description="the breaker consulted; None unless the source is alert")
    region_count: int
    cluster_count: int
    host_count: int | None
    storm_count: int
    bypassed: bool
    replayed: bool = Field(description="True when this workflow's earlier decision was returned")

    @property
    def admitted(self) -> bool:
        return self.verdict is AdmissionVerdict.ADMITTED


class ApproverPolicy(BaseModel):
    """An opscode's approval and manual-report policy (approval_policies, or the catalog's defaults)."""

    model_config = ConfigDict(frozen=True)

    opscode: OpsCode
    allow_manual_report: bool
    manual_report_needs_approval: bool
    approvers: list[str] = Field(description="user names and approver group names")
    min_approvals: int = Field(ge=1)
    approval_timeout_minutes: int = Field(gt=0)
    fixed: bool = Field(
        description="the catalog says never approved: needs approval is False whatever the row says, "
        "and the policy cannot be changed"
    )


class Lease(BaseModel):
    """The one mutating operation allowed on a host at a time."""

    model_config = ConfigDict(frozen=True)

    nc_ip: str
    nc_id: str | None
    cluster_id: str | None
    workflow_id: str
    opscode: OpsCode
    acquired_at: datetime


class LeaseResult(BaseModel):
    """``holder`` is the caller's lease when ``acquired``, otherwise the workflow that has the host."""

    model_config = ConfigDict(frozen=True)

    acquired: bool
    holder: Lease


# ---- advisory locks ---------------------------------------------------------------------------------
#
# admit() counts a window and records its row in one transaction; two admissions counting the same
# window at once would both see room under the limit. They are serialised with transaction-scoped
# advisory locks (released at commit or rollback, so a crashed worker never leaves one behind):
#   1. (opscode, region): the region window spans clusters;
#   2. the cluster: the cluster and host windows of that opscode, and the storm count, which spans
#      every opscode in the cluster (a host is in one cluster).
# Every admission takes both, always in that order, so no two admissions wait on each other in a cycle.
# The two-key form pg_advisory_xact_lock(class, key) puts each kind in its own class: even when two
# names hash alike, the lock taken first is a class-1 lock and the second a class-2 one, so the order
# holds and there is still no deadlock; a collision only serialises two unrelated admissions.
# Both classes differ from store.db's migration lock, which uses the one-bigint form.

_OPSCODE_REGION_LOCK_CLASS = int.from_bytes(b"fcor", "big", signed=True)
_CLUSTER_LOCK_CLASS = int.from_bytes(b"fccl", "big", signed=True)


def _lock_key(*parts: str) -> int:
    """A 32-bit key that every process computes alike (Python's ``hash`` of a str differs per process)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class _WindowCount:
    """Admissions counted in one scope's window, and what that means against its limit."""

    scope: str  # region, cluster or host
    subject: str  # the region, cluster or host itself
    count: int
    limit: int
    window_minutes: int
    latest_workflow_id: str | None

    @property
    def exceeded(self) -> bool:
        return self.count >= self.limit

    def reason(self, opscode: OpsCode) -> str:
        said = (
            f"{self.scope} {self.subject} already had {self.count} of at most {self.limit} {opscode.value} "
            f"within {self.window_minutes} min"
        )
        # A limit of 0 forbids the opscode outright: there is no earlier execution to name.
        return said if self.latest_workflow_id is None else f"{said} (latest: {self.latest_workflow_id})"


# Columns a window is counted on; interpolated into SQL, so only these names ever are.
_SCOPE_COLUMNS = {"region": "region_id", "cluster": "cluster_id", "host": "nc_ip"}

_RULE_COLUMNS = (
    "opscode, enabled, region_window_minutes, region_limit, cluster_window_minutes, cluster_limit, "
    "host_window_minutes, host_limit, policy"
)
_LEASE_COLUMNS = "nc_ip, nc_id, cluster_id, workflow_id, opscode, acquired_at"


class LifecycleStore:
    """Reads and writes the lifecycle's tables through one asyncpg pool.

    Like ``OperationStore``, every method raises ``StoreUnavailable`` when the database cannot be
    reached and ``StoreConflict`` when a constraint rejects the write; configuration setters raise
    ``ValueError`` for a value no row may hold.
    """

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout: float = 10.0) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        async with pooled_connection(self._pool, doing, acquire_timeout=self._acquire_timeout) as conn:
            yield conn

    async def _fetchrow(self, doing: str, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection(doing) as conn:
            row: asyncpg.Record | None = await conn.fetchrow(query, *args)
            return row

    async def _fetch(self, doing: str, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection(doing) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    async def _execute(self, doing: str, query: str, *args: Any) -> None:
        async with self._connection(doing) as conn:
            await conn.execute(query, *args)

    # ---- admission ------------------------------------------------------------------------------

    async def admit(self, request: AdmissionRequest) -> AdmissionDecision:
        """Decides whether the execution runs, and records the decision, in one transaction.

        In order: a workflow asking again gets its first decision back (``replayed``), counted once.
        Over the opscode's host, cluster or region limit (narrowest named first) it is abandoned, unless
        ``bypass_flow_control``. An alert-sourced execution in a cluster whose storm breaker has seen
        ``threshold`` alert-sourced executions of any opscode within its window is held for approval;
        the bypass does not skip this, since it guards against false alarms, not repeats. Otherwise it
        is admitted. Windows are ``(at - window, at]`` and count admitted and held executions.
        """
        doing = f"admitting {request.opscode.value} for workflow {request.workflow_id}"
        async with self._connection(doing) as conn, conn.transaction():
            # See "advisory locks" above for why these two, in this order.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                _OPSCODE_REGION_LOCK_CLASS,
                _lock_key(request.opscode.value, request.region_id),
            )
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", _CLUSTER_LOCK_CLASS, _lock_key(request.cluster_id)
            )
            earlier = await _recorded_decision(conn, request.workflow_id, request.opscode)
            if earlier is not None:
                return earlier
            decision = await _decide(conn, request)
            recorded = await conn.fetchval(
                """
                INSERT INTO flow_control_admissions
                    (opscode, region_id, cluster_id, nc_ip, workflow_id, admitted_at,
                     source, verdict, reason, bypassed, decision)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                ON CONFLICT (workflow_id, opscode) DO NOTHING
                RETURNING id
                """,
                request.opscode.value,
                request.region_id,
                request.cluster_id,
                request.nc_ip,
                request.workflow_id,
                request.at,
                request.source.value,
                decision.verdict.value,
                decision.reason,
                decision.bypassed,
                decision.model_dump(mode="json"),
            )
            if recorded is None:
                # The same workflow asked under another region or cluster (so other locks) at this very
                # moment and committed first: its decision stands.
                replayed = await _recorded_decision(conn, request.workflow_id, request.opscode)
                if replayed is None:
                    raise StoreConflict(f"{doing}: the conflicting admission row vanished")
                return replayed
            return decision

    async def admissions(self, workflow_id: str) -> list[AdmissionDecision]:
        """The decisions recorded for a workflow, oldest first (one per opscode it asked for)."""
        rows = await self._fetch(
            f"reading the admissions of workflow {workflow_id}",
            "SELECT * FROM flow_control_admissions WHERE workflow_id = $1 ORDER BY id",
            workflow_id,
        )
        return [_stored_decision(row) for row in rows]

    # ---- flow control rules and breakers --------------------------------------------------------

    async def flow_control_rule(self, opscode: OpsCode) -> FlowControlRule | None:
        """The opscode's rule, or None when it has none (no flow control)."""
        async with self._connection(f"reading the flow control rule of {opscode.value}") as conn:
            return await _flow_control_rule(conn, opscode)

    async def set_flow_control_rule(self, rule: FlowControlRule, updated_by: str | None = None) -> None:
        """Creates or replaces the opscode's rule; it applies to admissions from now on."""
        await self._execute(
            f"setting the flow control rule of {rule.opscode.value}",
            f"""
            INSERT INTO flow_control_rules ({_RULE_COLUMNS}, updated_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT (opscode) DO UPDATE SET
                enabled = EXCLUDED.enabled,
                region_window_minutes = EXCLUDED.region_window_minutes,
                region_limit = EXCLUDED.region_limit,
                cluster_window_minutes = EXCLUDED.cluster_window_minutes,
                cluster_limit = EXCLUDED.cluster_limit,
                host_window_minutes = EXCLUDED.host_window_minutes,
                host_limit = EXCLUDED.host_limit,
                policy = EXCLUDED.policy,
                updated_by = EXCLUDED.updated_by,
                updated_at = now()
            """,
            rule.opscode.value,
            rule.enabled,
            rule.region_window_minutes,
            rule.region_limit,
            rule.cluster_window_minutes,
            rule.cluster_limit,
            rule.host_window_minutes,
            rule.host_limit,
            rule.policy,
            updated_by,
        )

    async def storm_breaker(self, cluster_id: str) -> StormBreaker:
        """The cluster's own breaker, else the '*' row (its ``cluster_id`` says which one applies)."""
        async with self._connection(f"reading the storm breaker of cluster {cluster_id}") as conn:
            return await _storm_breaker(conn, cluster_id)

    async def set_storm_breaker(self, breaker: StormBreaker, updated_by: str | None = None) -> None:
        """Creates or replaces a cluster's breaker, or the default one when ``cluster_id`` is '*'."""
        await self._execute(
            f"setting the storm breaker of cluster {breaker.cluster_id}",
            """
            INSERT INTO storm_breakers (cluster_id, enabled, threshold, window_minutes, updated_by)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (cluster_id) DO UPDATE SET
                enabled = EXCLUDED.enabled,
                threshold = EXCLUDED.threshold,
                window_minutes = EXCLUDED.window_minutes,
                updated_by = EXCLUDED.updated_by,
                updated_at = now()
            """,
            breaker.cluster_id,
            breaker.enabled,
            breaker.threshold,
            breaker.window_minutes,
            updated_by,
        )

    async def capacity_guard(self, cluster_id: str) -> CapacityGuard:
        """The cluster's own guard, else the '*' row (its ``cluster_id`` says which one applies)."""
        row = await self._fetchrow(
            f"reading the capacity guard of cluster {cluster_id}",
            """
            SELECT cluster_id, enabled, min_schedulable_share FROM capacity_guards
            WHERE cluster_id IN ($1, $2)
            ORDER BY cluster_id = $2  -- false sorts first: the cluster's own row wins
            LIMIT 1
            """,
            cluster_id,
            DEFAULT_CLUSTER,
        )
        if row is None:
            # Someone deleted the '*' row: keep guarding with the recommended share rather than not at all.
            return CapacityGuard(cluster_id=DEFAULT_CLUSTER)
        return CapacityGuard(
            cluster_id=row["cluster_id"],
            enabled=row["enabled"],
            min_schedulable_share=float(row["min_schedulable_share"]),
        )

    async def set_capacity_guard(self, guard: CapacityGuard, updated_by: str | None = None) -> None:
        """Creates or replaces a cluster's guard, or the default one when ``cluster_id`` is '*'.

        The share is stored with three decimals.
        """
        await self._execute(
            f"setting the capacity guard of cluster {guard.cluster_id}",
            """
            INSERT INTO capacity_guards (cluster_id, enabled, min_schedulable_share, updated_by)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (cluster_id) DO UPDATE SET
                enabled = EXCLUDED.enabled,
                min_schedulable_share = EXCLUDED.min_schedulable_share,
                updated_by = EXCLUDED.updated_by,
                updated_at = now()
            """,
            guard.cluster_id,
            guard.enabled,
            # Through str: Decimal(0.8) would carry the float's binary error into the numeric.
            Decimal(str(guard.min_schedulable_share)),
            updated_by,
        )

    # ---- approval ---------------------------------------------------------------------------------

    async def approval_policy(self, opscode: OpsCode) -> ApproverPolicy:
        """The opscode's row, or the catalog's defaults with ``DEFAULT_APPROVERS``, one approval and
        24 h when it has none; a fixed policy (catalog: never approved) overrides what the row says."""
        row = await self._fetchrow(
            f"reading the approval policy of {opscode.value}",
            """
            SELECT allow_manual_report, manual_report_needs_approval, approvers, min_approvals,
                   approval_timeout_minutes
            FROM approval_policies WHERE opscode = $1
            """,
            opscode.value,
        )
        spec = spec_for(opscode)
        fixed = spec.approval_policy is ApprovalPolicy.NEVER
        fields: dict[str, Any] = (
            {
                "allow_manual_report": spec.allow_manual_report,
                "manual_report_needs_approval": spec.manual_report_needs_approval,
                "approvers": list(DEFAULT_APPROVERS),
                "min_approvals": DEFAULT_MIN_APPROVALS,
                "approval_timeout_minutes": DEFAULT_APPROVAL_TIMEOUT_MINUTES,
            }
            if row is None
            else dict(row)
        )
        if fixed:
            fields["allow_manual_report"] = spec.allow_manual_report
            fields["manual_report_needs_approval"] = False
        return ApproverPolicy(opscode=opscode, fixed=fixed, **fields)

    async def set_approval_policy(
        self,
        opscode: OpsCode,
        *,
        allow_manual_report: bool | None = None,
        manual_report_needs_approval: bool | None = None,
        approvers: Sequence[str] | None = None,
        min_approvals: int | None = None,
        approval_timeout_minutes: int | None = None,
        updated_by: str,
    ) -> ApproverPolicy:
        """Changes the fields given (None keeps the current value, or the catalog default when the
        opscode has no row yet) and returns the policy now in force.

        Raises ``ValueError`` naming the opscode when its policy is fixed, and for an empty approver
        list, fewer than one approval or a non-positive timeout.
        """
        spec = spec_for(opscode)
        if spec.approval_policy is ApprovalPolicy.NEVER:
            raise ValueError(
                f"the approval policy of {opscode.value} is fixed by the product (manual report "
                f"{'allowed' if spec.allow_manual_report else 'refused'}, never approved); it cannot be changed"
            )
        names = None if approvers is None else list(dict.fromkeys(name.strip() for name in approvers))
        if names is not None and (not names or not all(names)):
            raise ValueError(f"approvers of {opscode.value} must name at least one user or group, none blank")
        if min_approvals is not None and min_approvals < 1:
            raise ValueError(f"min_approvals of {opscode.value} must be at least 1, not {min_approvals}")
        if approval_timeout_minutes is not None and approval_timeout_minutes <= 0:
            raise ValueError(
                f"approval_timeout_minutes of {opscode.value} must be positive, not {approval_timeout_minutes}"
            )
        # One statement, so two operators changing different fields at once both keep their change.
        await self._execute(
            f"setting the approval policy of {opscode.value}",
            """
            INSERT INTO approval_policies
                (opscode, allow_manual_report, manual_report_needs_approval, approvers, min_approvals,
                 approval_timeout_minutes, updated_by)
            VALUES ($1, COALESCE($2::boolean, $7), COALESCE($3::boolean, $8), COALESCE($4::text[], $9),
                    COALESCE($5::integer, $10), COALESCE($6::integer, $11), $12)
            ON CONFLICT (opscode) DO UPDATE SET
                allow_manual_report = COALESCE($2::boolean, approval_policies.allow_manual_report),
                manual_report_needs_approval =
                    COALESCE($3::boolean, approval_policies.manual_report_needs_approval),
                approvers = COALESCE($4::text[], approval_policies.approvers),
                min_approvals = COALESCE($5::integer, approval_policies.min_approvals),
                approval_timeout_minutes = COALESCE($6::integer, approval_policies.approval_timeout_minutes),
                updated_by = $12,
                updated_at = now()
            """,
            opscode.value,
            allow_manual_report,
            manual_report_needs_approval,
            names,
            min_approvals,
            approval_timeout_minutes,
            spec.allow_manual_report,
            spec.manual_report_needs_approval,
            list(DEFAULT_APPROVERS),
            DEFAULT_MIN_APPROVALS,
            DEFAULT_APPROVAL_TIMEOUT_MINUTES,
            updated_by,
        )
        return await self.approval_policy(opscode)

    async def resolve_approvers(self, names: Sequence[str]) -> list[str]:
        """The users ``names`` stand for, sorted and unique: a group name expands to its members, any
        other name is a user."""
        rows = await self._fetch(
            "resolving approvers",
            "SELECT group_name, members FROM approver_groups WHERE group_name = ANY($1::text[])",
            list(names),
        )
        groups: dict[str, list[str]] = {row["group_name"]: row["members"] for row in rows}
        users: set[str] = set()
        for name in names:
            users.update(groups.get(name, [name]))
        return sorted(users)

    async def set_approver_group(
        self, group_name: str, members: Sequence[str], updated_by: str | None = None
    ) -> None:
        """Creates the group or replaces its members (stored sorted and unique; empty is allowed)."""
        if not group_name.strip():
            raise ValueError("an approver group needs a name")
        await self._execute(
            f"setting approver group {group_name}",
            """
            INSERT INTO approver_groups (group_name, members, updated_by) VALUES ($1, $2, $3)
            ON CONFLICT (group_name) DO UPDATE SET
                members = EXCLUDED.members, updated_by = EXCLUDED.updated_by, updated_at = now()
            """,
            group_name,
            sorted({member.strip() for member in members if member.strip()}),
            updated_by,
        )

    # ---- host leases ----------------------------------------------------------------------------

    async def acquire_lease(
        self, *, nc_ip: str, nc_id: str | None, cluster_id: str | None, workflow_id: str, opscode: OpsCode
    ) -> LeaseResult:
        """Takes the host for ``workflow_id``; acquiring a lease the workflow already holds succeeds
        again unchanged. When another workflow holds it, ``acquired`` is False and ``holder`` names it."""
        doing = f"acquiring the lease of {nc_ip} for workflow {workflow_id}"
        async with self._connection(doing) as conn:
            return await _acquire_lease(
                conn,
                nc_ip=nc_ip,
                nc_id=nc_id,
                cluster_id=cluster_id,
                workflow_id=workflow_id,
                opscode=opscode,
                doing=doing,
            )

    async def take_over_lease(
        self,
        *,
        nc_ip: str,
        from_workflow_id: str,
        nc_id: str | None,
        cluster_id: str | None,
        workflow_id: str,
        opscode: OpsCode,
    ) -> LeaseResult:
        """Moves the lease from ``from_workflow_id`` to ``workflow_id``, only if that one still holds it.

        For a lease left behind by a workflow the caller has seen closed. A compare-and-set: when a
        third workflow took the host meanwhile it keeps it (``acquired`` False); when nobody holds it
        any more this is an ordinary acquire; when ``workflow_id`` already holds it, it is acquired.
        """
        doing = f"taking over the lease of {nc_ip} from workflow {from_workflow_id} for {workflow_id}"
        async with self._connection(doing) as conn:
            row = await conn.fetchrow(
                f"""
                UPDATE host_leases
                SET workflow_id = $3, opscode = $4, nc_id = $5, cluster_id = $6, acquired_at = now()
                WHERE nc_ip = $1 AND workflow_id = $2
                RETURNING {_LEASE_COLUMNS}
                """,
                nc_ip,
                from_workflow_id,
                workflow_id,
                opscode.value,
                nc_id,
                cluster_id,
            )
            if row is not None:
                return LeaseResult(acquired=True, holder=_lease(row))
            return await _acquire_lease(
                conn,
                nc_ip=nc_ip,
                nc_id=nc_id,
                cluster_id=cluster_id,
                workflow_id=workflow_id,
                opscode=opscode,
                doing=doing,
            )

    async def release_lease(self, *, nc_ip: str, workflow_id: str) -> bool:
        """Gives the host back if ``workflow_id`` holds it; True when this call deleted the lease."""
        row = await self._fetchrow(
            f"releasing the lease of {nc_ip} held by workflow {workflow_id}",
            "DELETE FROM host_leases WHERE nc_ip = $1 AND workflow_id = $2 RETURNING nc_ip",
            nc_ip,
            workflow_id,
        )
        return row is not None

    async def void_admissions(self, workflow_id: str, reason: str) -> int:
        """Gives back the flow-control slots of an operation that never executed (rejected, expired,
        cancelled while waiting); a multi-host operation's per-host admissions (``<id>/<ip>``) too.

        Idempotent; returns how many admissions were voided by this call.
        """
        rows = await self._fetch(
            f"voiding the admissions of {workflow_id}",
            """
            UPDATE flow_control_admissions SET voided_at = now(), voided_reason = $2
            WHERE (workflow_id = $1 OR starts_with(workflow_id, $1 || '/')) AND voided_at IS NULL
            RETURNING id
            """,
            workflow_id,
            reason,
        )
        return len(rows)

    async def release_leases_of(self, workflow_id: str) -> list[str]:
        """Gives back every host ``workflow_id`` holds (a multi-host operation's exit); their IPs, sorted."""
        rows = await self._fetch(
            f"releasing the leases of workflow {workflow_id}",
            "DELETE FROM host_leases WHERE workflow_id = $1 RETURNING nc_ip",
            workflow_id,
        )
        return sorted(row["nc_ip"] for row in rows)

    async def lease(self, nc_ip: str) -> Lease | None:
        """Who holds the host, if anyone."""
        row = await self._fetchrow(
            f"reading the lease of {nc_ip}",
            f"SELECT {_LEASE_COLUMNS} FROM host_leases WHERE nc_ip = $1",
            nc_ip,
        )
        return None if row is None else _lease(row)

    async def leases_in_cluster(self, cluster_id: str) -> list[Lease]:
        """The hosts of the cluster that operations hold, oldest lease first."""
        rows = await self._fetch(
            f"listing the leases in cluster {cluster_id}",
            f"SELECT {_LEASE_COLUMNS} FROM host_leases WHERE cluster_id = $1 ORDER BY acquired_at, nc_ip",
            cluster_id,
        )
        return [_lease(row) for row in rows]


# ---- admission internals (run inside admit's transaction) -----------------------------------------


async def _decide(conn: asyncpg.Connection, request: AdmissionRequest) -> AdmissionDecision:
    rule = await _flow_control_rule(conn, request.opscode)
    limits = rule if rule is not None and rule.enabled else None
    windows: list[_WindowCount] = []
    if limits is not None:
        if limits.host_window_minutes is not None and limits.host_limit is not None:
            windows.append(
                await _count_window(
                    conn, request, "host", request.nc_ip, limits.host_limit, limits.host_window_minutes
                )
            )
        windows.append(
            await _count_window(
                conn,
                request,
                "cluster",
                request.cluster_id,
                limits.cluster_limit,
                limits.cluster_window_minutes,
            )
        )
        windows.append(
            await _count_window(
                conn, request, "region", request.region_id, limits.region_limit, limits.region_window_minutes
            )
        )
    counts = {window.scope: window.count for window in windows}
    storm = (
        await _storm_breaker(conn, request.cluster_id) if request.source is OperationSource.ALERT else None
    )

    def decided(verdict: AdmissionVerdict, reason: str | None, storm_count: int = 0) -> AdmissionDecision:
        return AdmissionDecision(
            verdict=verdict,
            reason=reason,
            rule=rule,
            storm=storm,
            region_count=counts.get("region", 0),
            cluster_count=counts.get("cluster", 0),
            host_count=counts.get("host"),
            storm_count=storm_count,
            bypassed=request.bypass_flow_control,
            replayed=False,
        )

    if not request.bypass_flow_control:
        # Narrowest first: "this host already had one this week" explains more than the region count.
        for window in windows:
            if window.exceeded:
                return decided(AdmissionVerdict.ABANDONED, window.reason(request.opscode))
    if storm is not None and storm.enabled:
        storm_count = await _count_storm(conn, request, storm.window_minutes)
        if storm_count >= storm.threshold:
            reason = (
                f"storm breaker: {storm_count} automatic operations in cluster {request.cluster_id} "
                f"within {storm.window_minutes} min (threshold {storm.threshold})"
            )
            return decided(AdmissionVerdict.HELD_FOR_APPROVAL, reason, storm_count)
        return decided(AdmissionVerdict.ADMITTED, None, storm_count)
    return decided(AdmissionVerdict.ADMITTED, None)


async def _count_window(
    conn: asyncpg.Connection,
    request: AdmissionRequest,
    scope: str,
    subject: str,
    limit: int,
    window_minutes: int,
) -> _WindowCount:
    column = _SCOPE_COLUMNS[scope]
    row = await conn.fetchrow(
        f"""
        SELECT count(*) AS n, (array_agg(workflow_id ORDER BY admitted_at DESC, id DESC))[1] AS latest
        FROM flow_control_admissions
        WHERE opscode = $1 AND {column} = $2 AND verdict = ANY($3::text[]) AND voided_at IS NULL
          AND admitted_at > $4
        """,
        request.opscode.value,
        subject,
        _COUNTED_VERDICTS,
        # No upper bound: a row stamped later than this request's clock was admitted meanwhile (another
        # workflow's clock ran ahead, or this activity was retried late) and must count all the same.
        request.at - timedelta(minutes=window_minutes),
    )
    assert row is not None  # an aggregate without GROUP BY always yields one row
    return _WindowCount(
        scope=scope,
        subject=subject,
        count=int(row["n"]),
        limit=limit,
        window_minutes=window_minutes,
        latest_workflow_id=row["latest"],
    )


async def _count_storm(conn: asyncpg.Connection, request: AdmissionRequest, window_minutes: int) -> int:
    count = await conn.fetchval(
        """
        SELECT count(*) FROM flow_control_admissions
        WHERE cluster_id = $1 AND source = $2 AND verdict = ANY($3::text[])
          AND admitted_at > $4
        """,
        request.cluster_id,
        OperationSource.ALERT.value,
        _COUNTED_VERDICTS,
        request.at - timedelta(minutes=window_minutes),  # no upper bound, as in _count_window
    )
    return int(count)


async def _recorded_decision(
    conn: asyncpg.Connection, workflow_id: str, opscode: OpsCode
) -> AdmissionDecision | None:
    row = await conn.fetchrow(
        "SELECT * FROM flow_control_admissions WHERE workflow_id = $1 AND opscode = $2",
        workflow_id,
        opscode.value,
    )
    return None if row is None else _stored_decision(row)


def _stored_decision(row: asyncpg.Record) -> AdmissionDecision:
    """The decision as first made, marked replayed."""
    if row["decision"] is not None:
        return AdmissionDecision.model_validate({**row["decision"], "replayed": True})
    # Recorded before migration 0003 kept whole decisions: only the verdict and its reason are known.
    return AdmissionDecision(
        verdict=AdmissionVerdict(row["verdict"]),
        reason=row["reason"],
        rule=None,
        storm=None,
        region_count=0,
        cluster_count=0,
        host_count=None,
        storm_count=0,
        bypassed=row["bypassed"],
        replayed=True,
    )


async def _flow_control_rule(conn: asyncpg.Connection, opscode: OpsCode) -> FlowControlRule | None:
    row = await conn.fetchrow(
        f"SELECT {_RULE_COLUMNS} FROM flow_control_rules WHERE opscode = $1", opscode.value
    )
    return None if row is None else FlowControlRule.model_validate(dict(row))


async def _storm_breaker(conn: asyncpg.Connection, cluster_id: str) -> StormBreaker:
    row = await conn.fetchrow(
        """
        SELECT cluster_id, enabled, threshold, window_minutes FROM storm_breakers
        WHERE cluster_id IN ($1, $2)
        ORDER BY cluster_id = $2  -- false sorts first: the cluster's own row wins
        LIMIT 1
        """,
        cluster_id,
        DEFAULT_CLUSTER,
    )
    if row is None:
        # Someone deleted the '*' row: keep the recommended breaker rather than none.
        return StormBreaker(cluster_id=DEFAULT_CLUSTER)
    return StormBreaker.model_validate(dict(row))


# ---- lease internals ------------------------------------------------------------------------------


async def _acquire_lease(
    conn: asyncpg.Connection,
    *,
    nc_ip: str,
    nc_id: str | None,
    cluster_id: str | None,
    workflow_id: str,
    opscode: OpsCode,
    doing: str,
) -> LeaseResult:
    # The insert and the read of the holder are two statements: the holder may release in between, and
    # then the next insert wins. Three rounds of that in a row would take a host flapping at a rate no
    # operation produces.
    for _ in range(3):
        inserted = await conn.fetchrow(
            f"""
            INSERT INTO host_leases (nc_ip, nc_id, cluster_id, workflow_id, opscode)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (nc_ip) DO NOTHING
            RETURNING {_LEASE_COLUMNS}
            """,
            nc_ip,
            nc_id,
            cluster_id,
            workflow_id,
            opscode.value,
        )
        if inserted is not None:
            return LeaseResult(acquired=True, holder=_lease(inserted))
        held = await conn.fetchrow(f"SELECT {_LEASE_COLUMNS} FROM host_leases WHERE nc_ip = $1", nc_ip)
        if held is not None:
            holder = _lease(held)
            return LeaseResult(acquired=holder.workflow_id == workflow_id, holder=holder)
    raise StoreConflict(f"{doing}: the lease kept changing hands", constraint="host_leases_pkey")


def _lease(row: asyncpg.Record) -> Lease:
    return Lease.model_validate(dict(row))
