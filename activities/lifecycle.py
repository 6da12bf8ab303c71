"""Activities of the lifecycle every operation shares: policies, host leases, flow control, capacity."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog
from pydantic import BaseModel
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import from_houyi, store_rejected, store_unavailable
from activities.heartbeat import Pulse
from domain import errors
from domain.model import NcBizStatus
from domain.opscodes import OpsCode
from houyi.errors import HouyiError
from houyi.port import CallContext, HouyiPort
from runtime.metrics import METRICS, ServiceMetrics
from store.errors import StoreConflict, StoreError, StoreUnavailable
from store.lifecycle import AdmissionDecision, AdmissionRequest, ApproverPolicy, LeaseResult
from store.repository import OperationStore

log = structlog.get_logger(__name__)

T = TypeVar("T")


class PolicyRequest(BaseModel):
    opscode: OpsCode


class OperationPolicy(BaseModel):
    """The approval policy as it stood when the operation started, approver groups expanded.

    A rule changed later applies to new operations, never to this one.
    """

    policy: ApproverPolicy
    approvers: list[str]


class LeaseRequest(BaseModel):
    nc_ip: str
    nc_id: str
    cluster_id: str
    workflow_id: str
    opscode: OpsCode


class LeaseRelease(BaseModel):
    nc_ip: str
    workflow_id: str


class LeaseReleased(BaseModel):
    released: bool


class AdmissionBatch(BaseModel):
    """The admissions of a multi-host operation, decided in this order (the first hosts get the slots)."""

    requests: list[AdmissionRequest]


class AdmissionDecisions(BaseModel):
    decisions: list[AdmissionDecision]


class VoidAdmissions(BaseModel):
    workflow_id: str
    reason: str


class AdmissionsVoided(BaseModel):
    voided: int


class CapacityRequest(BaseModel):
    caller: str
    cluster_id: str
    taking: list[str]  # the NC IPs this operation takes out of service


class CapacityCheck(BaseModel):
    cluster_id: str
    total: int
    schedulable_now: int
    held_by_others: int
    schedulable_after: int
    min_share: float
    enabled: bool
    below_minimum: bool
    reason: str


class LifecycleActivities:
    """Store-backed lifecycle decisions. The Temporal client is injected to tell a stale lease (its
    workflow closed without releasing it, e.g. terminated) from a live one."""

    def __init__(
        self, store: OperationStore, houyi: HouyiPort, client: Client, metrics: ServiceMetrics = METRICS
    ) -> None:
        self._lifecycle = store.lifecycle
        self._houyi = houyi
        self._client = client
        self._metrics = metrics

    async def _store(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreConflict as error:
            # A race on a lease or an admission row (another operation won in between): trying again decides.
            raise ApplicationError(str(error), type=errors.STORE_CONFLICT) from None
        except StoreError as error:
            raise store_rejected(error) from None

    @activity.defn(name="LoadOperationPolicy")
    async def load_policy(self, request: PolicyRequest) -> OperationPolicy:
        policy = await self._store(self._lifecycle.approval_policy(request.opscode))
        approvers = await self._store(self._lifecycle.resolve_approvers(policy.approvers))
        return OperationPolicy(policy=policy, approvers=approvers)

    @activity.defn(name="AcquireHostLease")
    async def acquire_lease(self, request: LeaseRequest) -> LeaseResult:
        """At most one mutating operation per host: refuses naming the holder, unless the holder is closed."""
        fields = request.model_dump()
        result = await self._store(self._lifecycle.acquire_lease(**fields))
        if result.acquired or await self._holder_running(result.holder.workflow_id):
            return result
        log.warning(
            "taking over a stale host lease", nc_ip=request.nc_ip, stale_holder=result.holder.workflow_id
        )
        fields.pop("nc_ip")
        return await self._store(
            self._lifecycle.take_over_lease(
                nc_ip=request.nc_ip, from_workflow_id=result.holder.workflow_id, **fields
            )
        )

    async def _holder_running(self, workflow_id: str) -> bool:
        try:
            description = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status is WorkflowExecutionStatus.RUNNING

    @activity.defn(name="ReleaseHostLease")
    async def release_lease(self, request: LeaseRelease) -> LeaseReleased:
        released = await self._store(
            self._lifecycle.release_lease(nc_ip=request.nc_ip, workflow_id=request.workflow_id)
        )
        return LeaseReleased(released=released)

    @activity.defn(name="AdmitOperation")
    async def admit(self, request: AdmissionRequest) -> AdmissionDecision:
        """Flow control and the storm breaker, decided in one transaction; a retry replays the first decision."""
        decision = await self._store(self._lifecycle.admit(request))
        if not decision.replayed:
            self._metrics.admissions.labels(request.opscode.value, decision.verdict.value).inc()
        return decision

    @activity.defn(name="AdmitHosts")
    async def admit_hosts(self, batch: AdmissionBatch) -> AdmissionDecisions:
        """The admissions of several hosts in one activity, one transaction each, in the given order: what
        ``AdmitOperation`` decides per host, without a workflow task between hosts. A retry replays the
        decisions already recorded and decides the rest."""
        decisions = []
        pulse = Pulse()
        for request in batch.requests:
            decisions.append(await self.admit(request))
            pulse.beat(len(decisions))
        return AdmissionDecisions(decisions=decisions)

    @activity.defn(name="VoidAdmissions")
    async def void_admissions(self, request: VoidAdmissions) -> AdmissionsVoided:
        """An operation that ended without executing gives its flow-control slots back."""
        voided = await self._store(self._lifecycle.void_admissions(request.workflow_id, request.reason))
        return AdmissionsVoided(voided=voided)

    @activity.defn(name="CheckCapacity")
    async def check_capacity(self, request: CapacityRequest) -> CapacityCheck:
        """Would taking these hosts out leave the cluster with too few schedulable hosts?

        Counts the hosts other running operations hold (their leases) as already gone.
        """
        guard = await self._store(self._lifecycle.capacity_guard(request.cluster_id))
        others = await self._store(self._lifecycle.leases_in_cluster(request.cluster_id))
        try:
            ncs = await self._houyi.list_ncs(
                CallContext(caller=request.caller), cluster_id=request.cluster_id
            )
        except HouyiError as error:
            raise from_houyi(error) from None
        if not ncs:
            raise ApplicationError(
                f"cluster {request.cluster_id} has no hosts in the control plane", type=errors.NC_NOT_FOUND
            )
        held = {lease.nc_ip for lease in others if lease.workflow_id != request.caller}
        taking = set(request.taking)
        schedulable = {nc.nc_ip for nc in ncs if nc.biz_status is NcBizStatus.FREE}
        after = schedulable - held - taking
        share = len(after) / len(ncs)
        below = guard.enabled and share < guard.min_schedulable_share
        reason = (
            f"capacity guard: taking {len(taking & schedulable)} host(s) out would leave {len(after)} of {len(ncs)} "
            f"hosts schedulable in {request.cluster_id} ({share:.0%} < {guard.min_schedulable_share:.0%}; "
            f"{len(held & schedulable)} held by other operations)"
            if below
            else f"{len(after)} of {len(ncs)} hosts stay schedulable ({share:.0%})"
        )
        return CapacityCheck(
            cluster_id=request.cluster_id,
            total=len(ncs),
            schedulable_now=len(schedulable),
            held_by_others=len(held & schedulable),
            schedulable_after=len(after),
            min_share=guard.min_schedulable_share,
            enabled=guard.enabled,
            below_minimum=below,
            reason=reason,
        )
