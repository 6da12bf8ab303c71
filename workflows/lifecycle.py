"""The lifecycle every operation goes through, in one place.

    validate -> plan -> host lease -> record -> flow control -> approval gate -> steps -> finish

An opscode's workflow subclasses ``OperationWorkflow`` and supplies only its input model, its plan (what
it will touch, read from Houyi) and its steps. Everything else here is shared: refusals, leases, flow
control and the storm breaker, the capacity guard, approvals by signal or update, the step table with
operator retry / skip / abort, compensation on cancel, and the record in the store.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.lifecycle import (
        AdmissionBatch,
        CapacityRequest,
        LeaseRelease,
        LeaseRequest,
        LifecycleActivities,
        OperationPolicy,
        PolicyRequest,
        VoidAdmissions,
    )
    from activities.nc import DescribeNcInput, NcActivities
    from activities.operations import OperationActivities, OperationStateChange
    from domain import errors
    from domain.disk import DiskMigrationReport
    from domain.evacuation import VmMove
    from domain.model import NcDetail
    from domain.operations import (
        HostOutcome,
        HostOutcomeKind,
        InputRefused,
        OperationInput,
        OperationResult,
        OperationSource,
        OpsState,
        parse_input,
    )
    from domain.opscodes import CATALOG, OpsCode, OpsCodeSpec
    from domain.residue import ProcessPlan
    from runtime import search_attributes as sa
    from store.lifecycle import AdmissionDecision, AdmissionRequest, AdmissionVerdict, LeaseResult
    from store.repository import AuditEntry, AuditResult, NewOperation
    from workflows.common import HOUYI_READ, STORE, STORE_LOCAL, cause_type

RequestT = TypeVar("RequestT", bound=OperationInput)
T = TypeVar("T")
ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")

# workflow.patched ids: changes made while operations run (tests/test_replay.py replays the older histories).
VOID_UNEXECUTED_ADMISSIONS = "void-unexecuted-admissions"
# The OpsStep search attribute follows the step running (or failed): "which operations wait at PowerCycle?"
OPS_STEP_SEARCH_ATTRIBUTE = "ops-step-search-attribute"
# OpsStep names the step only where the operation stops (StepFailed, or its end), set in the upsert of that
# state: following every step cost a visibility write per step (12 of a deep offline's 14), the running step
# is in the UI's current details and the status query, and the question OpsStep answers is "which operations
# wait (or ended) at PowerCycle?".
OPS_STEP_WHERE_IT_STOPS = "ops-step-where-it-stops"
# After an operator's retry or skip the operation is Running again (it stayed StepFailed to its end: the step
# answered was still counted as waiting).
RUNNING_AGAIN_AFTER_OPERATOR = "running-again-after-operator"
# _publish upserts only the search attributes whose value changed (it upserted them all, every time).
UPSERT_ONLY_CHANGES = "upsert-only-changed-search-attributes"
# The operation row and audit rows are written by local activities (they were regular activities).
LOCAL_STORE_WRITES = "local-store-writes"
# Parallel lanes (live migrations, re-onlines, cleanups, recycles) end together: workflows.common.run_lanes.
# LANES_END_TOGETHER = "lanes-end-together", defined there.
# A multi-host operation reads its hosts and takes their leases side by side, and has them admitted by one
# activity (AdmitHosts): it did each host in turn, ~3 workflow tasks per host before the first action.
BATCHED_HOST_PLANNING = "batched-host-planning"
# A new operation checks, in its first workflow task, the patches every run of its kind reaches
# (``EARLY_PATCHES``), and publishes Region/Cluster with its next state: Temporal upserts TemporalChangeVersion
# in the workflow task where a patch is first checked, and each workflow task with an upsert is a visibility
# write of its own (of a deep offline's 6, two were such patch checks alone and one Region/Cluster alone).
PATCH_CHECKS_AT_START = "patch-checks-at-start"

# Reads and leases of a multi-host operation run at most this many at once: Temporal caps the activities
# a workflow may have pending (2,000 by default), and a cluster sweep may cover more hosts.
SIDE_BY_SIDE = 100


async def side_by_side(items: list[ArgT], call: Callable[[ArgT], Awaitable[T]]) -> list[T | BaseException]:
    """``call`` over ``items`` concurrently, ``SIDE_BY_SIDE`` at a time; the results (or the exception each
    raised) in the order of ``items``, whatever order they came in."""
    results: list[T | BaseException] = []
    for start in range(0, len(items), SIDE_BY_SIDE):
        chunk = items[start : start + SIDE_BY_SIDE]
        results += await asyncio.gather(*(call(item) for item in chunk), return_exceptions=True)
    return results


# How long a failed step waits for an operator before the operation ends as failed.
STEP_FAILED_TIMEOUT = timedelta(hours=24)


# ---- what the status query, the UI's current details and the result show ------------------------------


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    WAITING = "waiting"
    SKIPPED = "skipped"


class StepRecord(BaseModel):
    """One row of the product's step table."""

    name: str
    skippable: bool = False
    status: StepStatus = StepStatus.PENDING
    start_count: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    elapsed_seconds: float | None = None
    message: str = ""


class PlannedHost(BaseModel):
    nc_ip: str
    nc_id: str
    region_id: str
    cluster_id: str
    biz_status: str
    power_state: str
    vm_count: int
    running_vm_count: int


class Vote(BaseModel):
    approver: str
    approve: bool
    comment: str = ""
    at: datetime


class OperationStatus(BaseModel):
    """What the ``status`` query answers; ``markdown()`` is the UI's current details."""

    opscode: OpsCode
    title: str
    state: OpsState
    operation_id: int | None = None
    requester: str | None = None
    source: OperationSource | None = None
    hosts: list[PlannedHost] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    approval_reasons: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list)
    min_approvals: int = 0
    approval_deadline: datetime | None = None
    votes: list[Vote] = Field(default_factory=list)
    steps: list[StepRecord] = Field(default_factory=list)
    refused_messages: list[str] = Field(default_factory=list)
    outcomes: list[HostOutcome] = Field(default_factory=list)
    progress: str = ""
    vms: list[VmMove] = Field(default_factory=list)
    processes: list[ProcessPlan] = Field(default_factory=list)
    disk: DiskMigrationReport | None = None
    error: str | None = None

    def markdown(self) -> str:
        lines = [f"**{self.opscode.value} {self.title}**: {self.state.value}", ""]
        if self.error:
            lines += [f"> {self.error}", ""]
        if self.hosts:
            lines += [
                "| host | nc_id | region | cluster | status | power | VMs (running) |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {h.nc_ip} | {h.nc_id} | {h.region_id} | {h.cluster_id} | {h.biz_status} | {h.power_state} "
                f"| {h.vm_count} ({h.running_vm_count}) |"
                for h in self.hosts
            ]
            lines.append("")
        if self.disk is not None:
            lines += [f"**{self.disk.line()}**", ""]
        lines += [f"- {line}" for line in self.plan]
        if self.state is OpsState.PENDING_APPROVAL:
            lines += [
                "",
                f"Waiting for {self.min_approvals} approval(s) from {', '.join(self.approvers) or 'nobody'}"
                f" until {self.approval_deadline:%Y-%m-%d %H:%M} UTC"
                if self.approval_deadline
                else "",
                *[f"- because {reason}" for reason in self.approval_reasons],
                'Send signal `approve` or `reject` with `{"approver": "<you>", "comment": "..."}`.',
            ]
        if self.votes:
            lines += [
                "",
                *[
                    f"- {'approved' if v.approve else 'rejected'} by {v.approver}: {v.comment}"
                    for v in self.votes
                ],
            ]
        if self.steps:
            lines += [
                "",
                "| step | status | starts | started | ended | elapsed | message |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for step in self.steps:
                # HH:MM:SS; time().isoformat is a fifth of strftime's cost, and this runs per row and render.
                started = step.started_at.time().isoformat("seconds") if step.started_at else ""
                ended = step.ended_at.time().isoformat("seconds") if step.ended_at else ""
                elapsed = f"{step.elapsed_seconds:.1f} s" if step.elapsed_seconds is not None else ""
                message = step.message.replace("|", "\\|")
                lines.append(
                    f"| {step.name} | {step.status.value} | {step.start_count} | {started} | {ended} | {elapsed} | {message} |"
                )
        if self.state is OpsState.STEP_FAILED:
            lines += [
                "",
                'Send signal `retry_step`, `skip_step` (skippable steps) or `abort` with `{"operator": "<you>", "step": "<name>"}`.',
            ]
        if self.vms:
            lines += ["", f"**VMs: {self.progress}**", "", *_vm_table(self.vms)]
        if self.processes:
            lines += [
                "",
                "| VM process | pid | state | record | verdict | action | outcome | why |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {p.vm_id} | {p.pid} | {p.process_state} | {p.record_nc_id or '-'} "
                f"({p.record_status.value if p.record_status else 'none'}) | {p.verdict.value} "
                f"| {'destroy' if p.destroy else 'keep'} | {p.outcome.value} | {(p.message or p.reason).replace('|', '/')} |"
                for p in self.processes
            ]
        return "\n".join(lines)


# The UI's details stay readable on a 200-VM host: VMs that need a look first, then the rest up to this.
VM_TABLE_ROWS = 60


def _vm_table(vms: list[VmMove]) -> list[str]:
    attention = [vm for vm in vms if not vm.state.moved]
    shown = (attention + [vm for vm in vms if vm.state.moved])[:VM_TABLE_ROWS]
    rows = [
        "| VM | size | before | method | state | on | attempts | message |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for vm in shown:
        message = (vm.message or ", ".join(vm.blockers)).replace("|", "\\|")
        rows.append(
            f"| {vm.vm_id} | {vm.vcpu} vCPU / {vm.memory_gib} GiB | {vm.status_before.value} | {vm.method.value} "
            f"| {vm.state.value} | {vm.nc_id} | {vm.live_attempts + vm.cold_attempts} | {message} |"
        )
    if len(vms) > len(shown):
        rows.append(f"| … {len(vms) - len(shown)} more (query `status` for all) | | | | | | | |")
    return rows


# ---- signal and update payloads ------------------------------------------------------------------------


class ApprovalInput(BaseModel):
    """Payload of the ``approve`` / ``reject`` signals, as typed in the Temporal UI."""

    approver: str = Field(min_length=1)
    comment: str = ""


class MarkCompleteInput(BaseModel):
    """Payload of the ``mark_complete`` signal."""

    operator: str = Field(min_length=1)
    comment: str = ""


class DecisionInput(BaseModel):
    """Payload of the ``decide`` update."""

    approver: str = Field(min_length=1)
    approve: bool
    comment: str = ""


class DecisionResult(BaseModel):
    state: OpsState
    approvals: int
    needed: int


class StepCommand(StrEnum):
    RETRY = "retry_step"
    SKIP = "skip_step"
    ABORT = "abort"


class StepCommandInput(BaseModel):
    """Payload of the ``retry_step`` / ``skip_step`` / ``abort`` signals; ``step`` may be left out when one
    step is waiting."""

    operator: str = Field(min_length=1)
    step: str | None = None
    comment: str = ""


class OperateInput(StepCommandInput):
    """Payload of the ``operate`` update: the same commands, refused at once when they cannot apply."""

    command: StepCommand


class OperateResult(BaseModel):
    step: str
    command: StepCommand


# ---- how an operation ends early -------------------------------------------------------------------------


class OperationEnded(Exception):
    """Ends the operation in ``state`` (abandoned, rejected, expired, failed) without failing the workflow task."""

    def __init__(self, state: OpsState, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.state = state
        self.message = message
        self.error_type = error_type


class OperationWorkflow(abc.ABC, Generic[RequestT]):
    """Base of every opscode workflow. Subclasses set ``OPSCODE`` and ``INPUT`` and implement ``plan`` and
    ``execute``; their ``@workflow.run`` method is ``return await self.lifecycle(raw_input)``."""

    OPSCODE: ClassVar[OpsCode]
    INPUT: ClassVar[type[Any]]  # the opscode's RequestT
    # The patches every run of the kind reaches once it runs a step: checked at start (PATCH_CHECKS_AT_START).
    EARLY_PATCHES: ClassVar[tuple[str, ...]] = (
        LOCAL_STORE_WRITES,
        OPS_STEP_SEARCH_ATTRIBUTE,
        OPS_STEP_WHERE_IT_STOPS,
    )

    def __init__(self) -> None:
        self.spec: OpsCodeSpec = CATALOG[self.OPSCODE]
        self.status = OperationStatus(opscode=self.OPSCODE, title=self.spec.title, state=OpsState.VALIDATING)
        self.details: dict[str, NcDetail] = {}
        self._request: RequestT | None = None
        self._policy: OperationPolicy | None = None
        self._leased: list[str] = []
        self._compensations: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self._cleanups: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        self._commands: dict[str, tuple[StepCommand, StepCommandInput]] = {}
        self._handler_lock = asyncio.Lock()
        self._raw_hosts: list[str] = []
        self._published: dict[str, Any] = {}  # search attribute values last upserted by _publish
        self._details_due = False  # the UI's current details are to be rendered at the end of this activation
        self._marked_complete: MarkCompleteInput | None = None
        self._audit_seq = 0

    # ---- hooks for the opscode ---------------------------------------------------------------------

    @abc.abstractmethod
    async def plan(self, request: RequestT) -> list[str]:
        """Reads the hosts (``self.describe``), refuses what cannot be done (``self.refuse``), declares the
        steps (``self.declare_steps``) and returns the plan's lines."""

    @abc.abstractmethod
    async def execute(self, request: RequestT) -> None:
        """Runs the steps (``self.step``) and fills ``self.status.outcomes``."""

    # ---- the lifecycle -----------------------------------------------------------------------------

    @property
    def request(self) -> RequestT:
        assert self._request is not None
        return self._request

    @property
    def workflow_id(self) -> str:
        return workflow.info().workflow_id

    async def lifecycle(self, raw_input: Any) -> OperationResult:
        self._note_raw_hosts(raw_input)
        self._check_patches_at_start()
        self._publish()
        try:
            self._request = parse_input(self.INPUT, raw_input)
        except InputRefused as refusal:
            await self.refuse(refusal.error_type, str(refusal), params={"input": raw_input})
        request = self.request
        self.status.requester = request.requester
        self.status.source = request.source
        workflow.upsert_search_attributes([sa.REQUESTER.value_set(self.status.requester or "")])

        policy = await workflow.execute_activity_method(
            LifecycleActivities.load_policy, PolicyRequest(opscode=self.OPSCODE), **STORE
        )
        self._policy = policy
        if self.status.source is OperationSource.MANUAL and not policy.policy.allow_manual_report:
            await self.refuse(
                errors.MANUAL_REPORT_NOT_ALLOWED,
                f"opscode {self.OPSCODE.value} does not allow manual report; it runs only from alerts",
            )
        self.status.plan = await self.plan(request)
        self._publish()
        await self._acquire_leases()
        try:
            return await self._run_admitted(request)
        finally:
            await self._release_leases()
            await workflow.wait_condition(workflow.all_handlers_finished)

    async def _run_admitted(self, request: RequestT) -> OperationResult:
        started = await self._store_write(OperationActivities.record_operation, self._new_operation())
        self.status.operation_id = started.operation_id
        executing = False
        try:
            await self._admit()
            await self._approval_gate()
            executing = True
            await self._enter(OpsState.RUNNING)
            await self.execute(request)
        except OperationEnded as ended:
            if not executing:
                await self._void_admissions(ended.state.value)
            await self._clean_up()
            result = await self._finish(ended.state, ended.message, error_type=ended.error_type)
            if ended.state is OpsState.FAILED:
                # A failed operation fails its workflow; the per-host outcomes travel in the error's details.
                raise ApplicationError(
                    ended.message,
                    result.model_dump(mode="json"),
                    type=ended.error_type or errors.OPERATION_FAILED,
                    non_retryable=True,
                ) from None
            # Abandoned, rejected, expired: decisions not to act, so the workflow completes with them.
            return result
        except asyncio.CancelledError:
            await self._cancelled(executing)
            raise
        except (ActivityError, ApplicationError) as failure:
            if is_cancelled_exception(failure):
                # Cancelled while a step's activity ran: the activity's cancellation is how it arrives.
                await self._cancelled(executing)
                raise
            message = (
                str(failure.cause) if isinstance(failure, ActivityError) and failure.cause else str(failure)
            )
            await self._clean_up()
            await self._finish(
                OpsState.FAILED, message, error_type=cause_type(failure) or type(failure).__name__
            )
            raise
        return await self._finish(OpsState.SUCCEEDED, "")

    # ---- validation, plan, refusal -------------------------------------------------------------------

    def _note_raw_hosts(self, raw_input: Any) -> None:
        """Shows the host before validation, so even a refused operation can be found by host."""
        if isinstance(raw_input, dict):
            ips = raw_input.get("nc_ips") or [raw_input.get("nc_ip")]
            if isinstance(ips, list):
                # Only what could be an address: the NcIp search attribute holds at most 2 KB.
                self._raw_hosts = [ip.strip() for ip in ips if isinstance(ip, str) and len(ip) <= 64]
                return
        self._raw_hosts = []

    async def describe(self, nc_ip: str) -> NcDetail:
        """The host as Houyi has it now; an unknown IP is a refusal."""
        try:
            detail = await self._read_nc(nc_ip)
        except ActivityError as failure:
            await self._read_failed(nc_ip, failure)
        return self._plan_host(nc_ip, detail)

    async def describe_all(self, nc_ips: list[str]) -> list[NcDetail]:
        """Several hosts, read side by side and planned in the given order; the first unknown IP (in that
        order) is the refusal."""
        if len(nc_ips) < 2 or not workflow.patched(BATCHED_HOST_PLANNING):
            return [await self.describe(nc_ip) for nc_ip in nc_ips]
        read = await side_by_side(nc_ips, self._read_nc)
        details = []
        for nc_ip, outcome in zip(nc_ips, read, strict=True):
            if isinstance(outcome, BaseException):
                await self._read_failed(nc_ip, outcome)
            details.append(outcome)
        return [self._plan_host(nc_ip, detail) for nc_ip, detail in zip(nc_ips, details, strict=True)]

    async def _read_nc(self, nc_ip: str) -> NcDetail:
        return await workflow.execute_activity_method(
            NcActivities.describe_nc, DescribeNcInput(caller=self.workflow_id, nc_ip=nc_ip), **HOUYI_READ
        )

    async def _read_failed(self, nc_ip: str, failure: BaseException) -> NoReturn:
        if isinstance(failure, ActivityError) and cause_type(failure) == errors.NC_NOT_FOUND:
            await self.refuse(errors.NC_NOT_FOUND, f"no NC with IP {nc_ip}")
        raise failure

    def _plan_host(self, nc_ip: str, detail: NcDetail) -> NcDetail:
        self.details[nc_ip] = detail
        nc = detail.nc
        self.status.hosts.append(
            PlannedHost(
                nc_ip=nc.nc_ip,
                nc_id=nc.nc_id,
                region_id=nc.region_id,
                cluster_id=nc.cluster_id,
                biz_status=nc.biz_status.value,
                power_state=nc.power_state.value,
                vm_count=len(detail.vms),
                running_vm_count=sum(1 for vm in detail.vms if vm.status.value == "running"),
            )
        )
        self.status.outcomes.append(
            HostOutcome(
                nc_ip=nc.nc_ip,
                nc_id=nc.nc_id,
                region_id=nc.region_id,
                cluster_id=nc.cluster_id,
                status_before=nc.biz_status,
            )
        )
        # Since PATCH_CHECKS_AT_START, Region/Cluster go out with the next _publish that upserts.
        if not workflow.patched(PATCH_CHECKS_AT_START):
            first = self.status.hosts[0]
            workflow.upsert_search_attributes(
                [sa.REGION.value_set(first.region_id), sa.CLUSTER.value_set(first.cluster_id)]
            )
        return detail

    def outcome(self, nc_ip: str) -> HostOutcome:
        return next(o for o in self.status.outcomes if o.nc_ip == nc_ip)

    async def refuse(
        self, error_type: str, message: str, *, params: dict[str, Any] | None = None
    ) -> NoReturn:
        """Records the refusal in the audit and fails the workflow; nothing has been touched."""
        self.status.error = message
        workflow.logger.warning(
            "operation refused",
            extra={
                "nc_ip": ",".join(self._hosts()),
                "opscode": self.OPSCODE.value,
                "error_type": error_type,
                "error": message,
            },
        )
        await self.audit(
            "refuse", AuditResult.REFUSED, error_type=error_type, error_message=message, params=params
        )
        self._set_state(OpsState.REFUSED)
        # The message says all; the activity failure or parse error it came from would only repeat it.
        raise ApplicationError(message, type=error_type, non_retryable=True) from None

    def _hosts(self) -> list[str]:
        return [h.nc_ip for h in self.status.hosts] or self._raw_hosts

    def _new_operation(self) -> NewOperation:
        request = self.request
        first = self.status.hosts[0]
        return NewOperation(
            workflow_id=self.workflow_id,
            run_id=workflow.info().run_id,
            opscode=self.OPSCODE,
            workflow_type=self.spec.workflow_type,
            hosts=[h.nc_ip for h in self.status.hosts],
            nc_ids=[h.nc_id for h in self.status.hosts],
            region_id=first.region_id,
            cluster_id=first.cluster_id,
            source=request.source,
            requester=request.requester,
            reason_category=request.reason_category,
            reason=request.reason,
            ticket=request.ticket,
            settings=request.settings_by_product_name,
            state=OpsState.VALIDATING,
        )

    # ---- host lease --------------------------------------------------------------------------------

    async def _acquire_leases(self) -> None:
        hosts = self.status.hosts
        if len(hosts) > 1 and workflow.patched(BATCHED_HOST_PLANNING):
            # Side by side: a lease is taken or refused at once, never waited for, so no two operations
            # can hold each other up; any refusal gives back every lease taken.
            results = await side_by_side(hosts, self._lease)
            self._leased += [
                h.nc_ip
                for h, r in zip(hosts, results, strict=True)
                if isinstance(r, LeaseResult) and r.acquired
            ]
            for host, result in zip(hosts, results, strict=True):
                if isinstance(result, BaseException):
                    await self._release_leases()
                    raise result
                if not result.acquired:
                    await self._release_leases()
                    await self._refuse_busy(host, result)
            return
        for host in hosts:
            result = await self._lease(host)
            if not result.acquired:
                await self._release_leases()
                await self._refuse_busy(host, result)
            self._leased.append(host.nc_ip)

    async def _lease(self, host: PlannedHost) -> LeaseResult:
        return await workflow.execute_activity_method(
            LifecycleActivities.acquire_lease,
            LeaseRequest(
                nc_ip=host.nc_ip,
                nc_id=host.nc_id,
                cluster_id=host.cluster_id,
                workflow_id=self.workflow_id,
                opscode=self.OPSCODE,
            ),
            **STORE,
        )

    async def _refuse_busy(self, host: PlannedHost, result: LeaseResult) -> NoReturn:
        holder = result.holder
        await self.refuse(
            errors.HOST_BUSY,
            f"NC {host.nc_ip} is held by {holder.opscode.value} workflow {holder.workflow_id} "
            f"since {holder.acquired_at:%Y-%m-%d %H:%M:%S} UTC",
        )

    async def _release_leases(self) -> None:
        while self._leased:
            nc_ip = self._leased[-1]
            await workflow.execute_activity_method(
                LifecycleActivities.release_lease,
                LeaseRelease(nc_ip=nc_ip, workflow_id=self.workflow_id),
                **STORE,
            )
            self._leased.pop()

    # ---- flow control, storm breaker, capacity guard -------------------------------------------------

    async def _admit(self) -> None:
        request = self.request
        # needLimit = 0 bypasses flow control; opscodes without that setting never do.
        bypass = getattr(getattr(request, "settings", None), "need_limit", 1) == 0
        held_reasons: list[str] = []
        admitted = 0
        hosts = self.status.hosts

        def asking(host: PlannedHost) -> AdmissionRequest:
            return AdmissionRequest(
                # One admission per host: a multi-host operation counts each host it touches.
                workflow_id=self.workflow_id if len(hosts) == 1 else f"{self.workflow_id}/{host.nc_ip}",
                opscode=self.OPSCODE,
                region_id=host.region_id,
                cluster_id=host.cluster_id,
                nc_ip=host.nc_ip,
                source=request.source,
                at=workflow.now(),
                bypass_flow_control=bypass,
            )

        decided: list[AdmissionDecision] | None = None
        if len(hosts) > 1 and workflow.patched(BATCHED_HOST_PLANNING):
            batch = await workflow.execute_activity_method(
                LifecycleActivities.admit_hosts,
                AdmissionBatch(requests=[asking(h) for h in hosts]),
                **STORE,
            )
            decided = batch.decisions
        for index, host in enumerate(hosts):
            if decided is not None:
                decision = decided[index]
            else:
                decision = await workflow.execute_activity_method(
                    LifecycleActivities.admit, asking(host), **STORE
                )
            if decision.bypassed and not decision.replayed:
                await self.audit(
                    "flow_control_bypass", AuditResult.OK, params={"nc_ip": host.nc_ip, "needLimit": 0}
                )
            if decision.verdict is AdmissionVerdict.ABANDONED:
                outcome = self.outcome(host.nc_ip)
                outcome.outcome, outcome.message = (
                    HostOutcomeKind.ABANDONED,
                    decision.reason or "flow control",
                )
                continue
            admitted += 1
            if decision.verdict is AdmissionVerdict.HELD_FOR_APPROVAL and decision.reason:
                held_reasons.append(decision.reason)
        if admitted == 0:
            reasons = "; ".join(o.message for o in self.status.outcomes)
            await self.audit("abandon", AuditResult.REFUSED, error_type="FlowControl", error_message=reasons)
            raise OperationEnded(OpsState.ABANDONED, f"abandoned by flow control: {reasons}")
        self.status.approval_reasons += held_reasons

    async def _cancelled(self, executing: bool) -> None:
        if not executing:
            await self._void_admissions(OpsState.CANCELLED.value)
        await self._compensate()
        await self._clean_up()
        await self._finish(OpsState.CANCELLED, "cancelled", error_type="Cancelled")

    async def _void_admissions(self, reason: str) -> None:
        """Flow control counts executions: an operation that never ran gives its slots back."""
        # Added after operations were already running; histories from before replay without it.
        if not workflow.patched(VOID_UNEXECUTED_ADMISSIONS):
            return
        await workflow.execute_activity_method(
            LifecycleActivities.void_admissions,
            VoidAdmissions(workflow_id=self.workflow_id, reason=reason),
            **STORE,
        )

    def admitted_hosts(self) -> list[PlannedHost]:
        return [
            h for h in self.status.hosts if self.outcome(h.nc_ip).outcome is not HostOutcomeKind.ABANDONED
        ]

    async def _capacity_reasons(self) -> list[str]:
        if not self.spec.takes_host_out_of_service:
            return []
        reasons = []
        by_cluster: dict[str, list[str]] = {}
        for host in self.admitted_hosts():
            by_cluster.setdefault(host.cluster_id, []).append(host.nc_ip)
        for cluster_id, taking in sorted(by_cluster.items()):
            check = await workflow.execute_activity_method(
                LifecycleActivities.check_capacity,
                CapacityRequest(caller=self.workflow_id, cluster_id=cluster_id, taking=taking),
                **HOUYI_READ,
            )
            self.status.plan.append(check.reason)
            if check.below_minimum:
                reasons.append(check.reason)
        return reasons

    # ---- approval gate ---------------------------------------------------------------------------------

    async def _approval_gate(self) -> None:
        assert self._policy is not None
        policy = self._policy.policy
        reasons = list(self.status.approval_reasons)
        if (
            self.status.source is OperationSource.MANUAL
            and policy.manual_report_needs_approval
            and not policy.fixed
        ):
            reasons.append(f"manual reports of {self.OPSCODE.value} need approval")
        reasons += await self._capacity_reasons()
        if not reasons:
            return
        self.status.approval_reasons = reasons
        self.status.approvers = self._policy.approvers
        self.status.min_approvals = policy.min_approvals
        timeout = timedelta(minutes=policy.approval_timeout_minutes)
        self.status.approval_deadline = workflow.now() + timeout
        await self._enter(OpsState.PENDING_APPROVAL)
        await self.audit(
            "approval_requested",
            AuditResult.OK,
            # The approver decides on the plan, not on a bare opscode.
            params={"reasons": reasons, "approvers": self.status.approvers, "plan": self.status.plan},
        )
        try:
            await workflow.wait_condition(
                lambda: (
                    self._rejection() is not None
                    or self._approvals() >= policy.min_approvals
                    or self._marked_complete is not None
                ),
                timeout=timeout,
            )
        except TimeoutError:
            await self.audit("expire", AuditResult.REFUSED, error_message=f"no decision within {timeout}")
            raise OperationEnded(
                OpsState.EXPIRED, f"no decision within {policy.approval_timeout_minutes} min"
            ) from None
        self._end_if_marked_complete()
        rejection = self._rejection()
        if rejection is not None:
            raise OperationEnded(OpsState.REJECTED, f"rejected by {rejection.approver}: {rejection.comment}")

    def _end_if_marked_complete(self) -> None:
        marked = self._marked_complete
        if marked is not None:
            raise OperationEnded(
                OpsState.SUCCEEDED, f"marked complete by {marked.operator}: {marked.comment}".rstrip(": ")
            )

    def _approvals(self) -> int:
        return sum(1 for vote in self.status.votes if vote.approve)

    def _rejection(self) -> Vote | None:
        return next((vote for vote in self.status.votes if not vote.approve), None)

    def _decision_problem(self, approver: str) -> tuple[str, str] | None:
        """Why ``approver`` cannot vote now (error type, message), or None."""
        if (
            self.status.state is not OpsState.PENDING_APPROVAL
            or self._rejection()
            or self._approvals() >= self.status.min_approvals
        ):
            return (
                errors.NOT_PENDING_APPROVAL,
                f"operation {self.workflow_id} is {self.status.state.value}, not pending approval",
            )
        if approver == self.status.requester:
            return errors.SELF_APPROVAL, f"{approver} requested this operation and cannot decide on it"
        if approver not in self.status.approvers:
            return (
                errors.APPROVER_NOT_ALLOWED,
                f"{approver} is not an approver of {self.OPSCODE.value} ({', '.join(self.status.approvers)})",
            )
        if any(vote.approver == approver for vote in self.status.votes):
            return errors.DUPLICATE_VOTE, f"{approver} has already decided on this operation"
        return None

    async def _vote(self, approver: str, approve: bool, comment: str) -> None:
        async with self._handler_lock:
            problem = self._decision_problem(approver)
            if problem is not None:
                await self._refused_message(approver, "approve" if approve else "reject", *problem)
                return
            self.status.votes.append(
                Vote(approver=approver, approve=approve, comment=comment, at=workflow.now())
            )
            self._publish()
            await self.audit(
                "approve" if approve else "reject",
                AuditResult.OK,
                operator=approver,
                params={"comment": comment},
            )

    async def _refused_message(self, who: str, what: str, error_type: str, message: str) -> None:
        """A signal that cannot apply is recorded and ignored (signals cannot answer)."""
        self.status.refused_messages.append(f"{what} from {who} refused: {message}")
        self._publish()
        await self.audit(
            what, AuditResult.REFUSED, operator=who, error_type=error_type, error_message=message
        )

    @workflow.signal(name="mark_complete")
    async def mark_complete(self, given: MarkCompleteInput) -> None:
        """The product's "mark complete": a person finished by hand what waits for a person."""
        async with self._handler_lock:
            if (
                self.status.state not in (OpsState.PENDING_APPROVAL, OpsState.STEP_FAILED)
                or self._marked_complete
            ):
                await self._refused_message(
                    given.operator,
                    "mark_complete",
                    errors.OPERATION_NOT_WAITING,
                    f"only an operation waiting for a person (PendingApproval, StepFailed) can be marked "
                    f"complete; this one is {self.status.state.value}",
                )
                return
            self._marked_complete = given
            await self.audit(
                "mark_complete", AuditResult.OK, operator=given.operator, params={"comment": given.comment}
            )

    @workflow.signal(name="approve")
    async def approve(self, decision: ApprovalInput) -> None:
        await self._vote(decision.approver, True, decision.comment)

    @workflow.signal(name="reject")
    async def reject(self, decision: ApprovalInput) -> None:
        await self._vote(decision.approver, False, decision.comment)

    @workflow.update(name="decide")
    async def decide(self, decision: DecisionInput) -> DecisionResult:
        await self._vote(decision.approver, decision.approve, decision.comment)
        return DecisionResult(
            state=self.status.state, approvals=self._approvals(), needed=self.status.min_approvals
        )

    @decide.validator
    def _validate_decision(self, decision: DecisionInput) -> None:
        problem = self._decision_problem(decision.approver)
        if problem is not None:
            raise ApplicationError(problem[1], type=problem[0], non_retryable=True)

    # ---- steps -------------------------------------------------------------------------------------

    def declare_steps(self, *steps: tuple[str, bool]) -> None:
        """The step table, shown from the start: (name, skippable) in order."""
        self.status.steps = [StepRecord(name=name, skippable=skippable) for name, skippable in steps]

    def _step(self, name: str) -> StepRecord:
        """The step of that name still to run (a name may repeat, as the product's OpsEvnPublishEvent)."""
        named = [step for step in self.status.steps if step.name == name]
        return next(
            (step for step in named if step.status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)),
            named[-1],
        )

    async def step(
        self, name: str, action: Callable[[], Awaitable[T]], done: Callable[[T], str] | None = None
    ) -> T | None:
        """Runs one step; when it fails for good, waits in ``StepFailed`` for an operator's command.

        Returns the action's result, or None when an operator skipped the step.
        """
        record = self._step(name)
        while True:
            record.status, record.start_count = StepStatus.RUNNING, record.start_count + 1
            record.started_at, record.ended_at, record.elapsed_seconds = workflow.now(), None, None
            record.message = ""
            self._publish()
            try:
                result = await action()
            except (ActivityError, ApplicationError) as failure:
                if is_cancelled_exception(failure):
                    raise
                self._end_step(record, StepStatus.FAILED, _failure_message(failure))
                command, given = await self._await_operator(record, failure)
                if command is StepCommand.RETRY:
                    continue
                if command is StepCommand.SKIP:
                    self._end_step(
                        record, StepStatus.SKIPPED, f"skipped by {given.operator}: {given.comment}"
                    )
                    return None
                raise OperationEnded(
                    OpsState.FAILED,
                    f"aborted by {given.operator} at step {name}: {given.comment or record.message}",
                    errors.OPERATION_ABORTED,
                ) from None
            self._end_step(record, StepStatus.SUCCEEDED, done(result) if done else "")
            await self.audit(name, AuditResult.OK, params={"step": name, "message": record.message})
            return result

    def _end_step(self, record: StepRecord, status: StepStatus, message: str) -> None:
        record.status, record.message, record.ended_at = status, message, workflow.now()
        if record.started_at is not None:
            record.elapsed_seconds = (record.ended_at - record.started_at).total_seconds()
        self._publish()

    async def _await_operator(
        self, record: StepRecord, failure: BaseException
    ) -> tuple[StepCommand, StepCommandInput]:
        record.status = StepStatus.WAITING
        await self._enter(OpsState.STEP_FAILED)
        await self.audit(
            "step_failed",
            AuditResult.FAILED,
            error_type=cause_type(failure),
            error_message=record.message,
            params={"step": record.name},
        )
        try:
            await workflow.wait_condition(
                lambda: record.name in self._commands or self._marked_complete is not None,
                timeout=STEP_FAILED_TIMEOUT,
            )
        except TimeoutError:
            raise OperationEnded(
                OpsState.FAILED,
                f"step {record.name} failed and no operator acted within {STEP_FAILED_TIMEOUT}: {record.message}",
                cause_type(failure),
            ) from None
        self._end_if_marked_complete()
        command, given = self._commands.pop(record.name)
        waiting = [step for step in self.status.steps if step.status is StepStatus.WAITING]
        if workflow.patched(RUNNING_AGAIN_AFTER_OPERATOR):
            waiting = [step for step in waiting if step is not record]  # its operator has answered
        if not waiting:
            await self._enter(OpsState.RUNNING)
        return command, given

    def _command_problem(self, command: StepCommand, given: StepCommandInput) -> tuple[str, str] | str:
        """The step the command applies to, or why it cannot apply (error type, message)."""
        waiting = [
            step
            for step in self.status.steps
            if step.status is StepStatus.WAITING and step.name not in self._commands
        ]
        if given.step is None:
            if len(waiting) != 1:
                names = ", ".join(step.name for step in waiting) or "none"
                return errors.STEP_NOT_WAITING, f"name the step: steps waiting for an operator: {names}"
            target = waiting[0]
        else:
            found = [step for step in waiting if step.name == given.step]
            if not found:
                names = ", ".join(step.name for step in waiting) or "none"
                return (
                    errors.STEP_NOT_WAITING,
                    f"step {given.step} is not waiting for an operator (waiting: {names})",
                )
            target = found[0]
        if command is StepCommand.SKIP and not target.skippable:
            return errors.STEP_NOT_SKIPPABLE, f"step {target.name} cannot be skipped"
        return target.name

    async def _command(self, command: StepCommand, given: StepCommandInput) -> str | None:
        async with self._handler_lock:
            target = self._command_problem(command, given)
            if isinstance(target, tuple):
                await self._refused_message(given.operator, command.value, *target)
                return None
            self._commands[target] = (command, given)
            await self.audit(
                command.value,
                AuditResult.OK,
                operator=given.operator,
                params={"step": target, "comment": given.comment},
            )
            return target

    @workflow.signal(name="retry_step")
    async def retry_step(self, given: StepCommandInput) -> None:
        await self._command(StepCommand.RETRY, given)

    @workflow.signal(name="skip_step")
    async def skip_step(self, given: StepCommandInput) -> None:
        await self._command(StepCommand.SKIP, given)

    @workflow.signal(name="abort")
    async def abort(self, given: StepCommandInput) -> None:
        await self._command(StepCommand.ABORT, given)

    @workflow.update(name="operate")
    async def operate(self, given: OperateInput) -> OperateResult:
        target = await self._command(given.command, given)
        if target is None:  # lost a race with another command between validation and handling
            raise ApplicationError(
                self.status.refused_messages[-1], type=errors.STEP_NOT_WAITING, non_retryable=True
            )
        return OperateResult(step=target, command=given.command)

    @operate.validator
    def _validate_operate(self, given: OperateInput) -> None:
        problem = self._command_problem(given.command, given)
        if isinstance(problem, tuple):
            raise ApplicationError(problem[1], type=problem[0], non_retryable=True)

    @workflow.query(name="status")
    def query_status(self) -> OperationStatus:
        return self.status

    # ---- compensation and finish ---------------------------------------------------------------------

    def on_cancel(self, what: str, compensation: Callable[[], Awaitable[Any]]) -> None:
        """Registers what undoes a step if the operation is cancelled later (run in reverse order)."""
        self._compensations.append((what, compensation))

    def clear_compensations(self) -> None:
        """From here on a cancel leaves things as they are (e.g. after a reboot nothing can be undone)."""
        self._compensations.clear()

    def on_exit(self, what: str, cleanup: Callable[[], Awaitable[Any]]) -> None:
        """Registers what must happen however the operation ends (e.g. release reserved capacity), unless
        a step does it first and calls ``done_on_exit``."""
        self._cleanups.append((what, cleanup))

    def done_on_exit(self, what: str) -> None:
        self._cleanups = [(w, c) for w, c in self._cleanups if w != what]

    async def _clean_up(self) -> None:
        while self._cleanups:
            what, cleanup = self._cleanups.pop()
            await cleanup()
            await self.audit("clean_up", AuditResult.OK, params={"what": what})

    async def _compensate(self) -> None:
        while self._compensations:
            what, compensation = self._compensations.pop()
            await compensation()
            await self.audit("compensate", AuditResult.OK, params={"what": what})

    async def _finish(
        self, state: OpsState, message: str, *, error_type: str | None = None
    ) -> OperationResult:
        if state is not OpsState.SUCCEEDED:
            self.status.error = message
        result = OperationResult(
            operation_id=self.status.operation_id,
            workflow_id=self.workflow_id,
            opscode=self.OPSCODE,
            state=state,
            hosts=self.status.outcomes,
            message=message,
            finished_at=workflow.now(),
            vms=self.status.vms,
            processes=self.status.processes,
            disk=self.status.disk,
        )
        await self._store_write(
            OperationActivities.set_operation_state,
            OperationStateChange(
                workflow_id=self.workflow_id,
                state=state,
                error_type=error_type,
                error_message=message or None,
                result=result.model_dump(mode="json"),
            ),
        )
        await self.audit(
            "finish",
            AuditResult.OK if state is OpsState.SUCCEEDED else AuditResult.FAILED,
            error_type=error_type,
            error_message=message or None,
            params={"state": state.value},
        )
        self._set_state(state)
        workflow.logger.info(
            "operation finished",
            extra={"nc_ip": ",".join(self._hosts()), "opscode": self.OPSCODE.value, "state": state.value},
        )
        return result

    async def audit(
        self,
        action: str,
        result: AuditResult,
        *,
        operator: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        request = self._request
        hosts = self._hosts()
        # Deterministic and unique per event in this run: a retried activity writes the row once.
        self._audit_seq += 1
        await self._store_write(
            OperationActivities.record_audit,
            AuditEntry(
                dedupe_key=f"{self.workflow_id}/{workflow.info().run_id}/{self._audit_seq}",
                workflow_id=self.workflow_id,
                opscode=self.OPSCODE,
                nc_ip=_audited_hosts(hosts),
                action=action,
                result=result,
                error_type=error_type,
                error_message=error_message,
                params=params or {},
                operator=operator or (request.requester if request else None),
                reason=request.reason if request else None,
                ticket=request.ticket if request else None,
            ),
        )

    async def _enter(self, state: OpsState) -> None:
        """A state change the event list shows too (the operations row follows the workflow)."""
        self._set_state(state)
        await self._store_write(
            OperationActivities.set_operation_state,
            OperationStateChange(workflow_id=self.workflow_id, state=state),
        )

    async def _store_write(self, method: Callable[[Any, ArgT], Awaitable[ResultT]], arg: ArgT) -> ResultT:
        """The event list and the audit, written by a local activity: no server round trip per row (each
        write is idempotent by workflow id or dedupe key, so a retry after a crash is safe)."""
        if workflow.patched(LOCAL_STORE_WRITES):
            return await workflow.execute_local_activity_method(method, arg, **STORE_LOCAL)
        return await workflow.execute_activity_method(method, arg, **STORE)

    def _set_state(self, state: OpsState) -> None:
        self.status.state = state
        self._publish()

    def publish_details(self) -> None:
        """Progress the UI shows, without a search-attribute event in the history (frequent updates).

        Rendered once the activation's ready work is done, once however many changes it made: the UI reads
        them only between activations, and a step's end, the next step's start and a state change often fall
        in one (38 renders of a deep offline became 30). They add no event: rendering later changes no
        command."""
        if not self._details_due:
            self._details_due = True
            asyncio.get_running_loop().call_soon(self._render_details)

    def _render_details(self) -> None:
        self._details_due = False
        workflow.set_current_details(self.status.markdown())

    def _check_patches_at_start(self) -> None:
        # Every patched() answer is memoized: later checks of these answer the same, with no marker.
        if workflow.patched(PATCH_CHECKS_AT_START):
            for patch_id in self.EARLY_PATCHES:
                workflow.patched(patch_id)

    def _publish(self) -> None:
        """Search attributes and the UI's current details follow the state."""
        attributes = [
            sa.OPS_CODE.value_set(self.OPSCODE.value),
            sa.OPS_STATE.value_set(self.status.state.value),
        ]
        hosts = self._hosts()
        if hosts:
            attributes.append(sa.NC_IP.value_set(hosts[0]))
        placement = []
        if self.status.hosts and workflow.patched(PATCH_CHECKS_AT_START):
            first = self.status.hosts[0]
            placement = [sa.REGION.value_set(first.region_id), sa.CLUSTER.value_set(first.cluster_id)]
        current = next(
            (step.name for step in reversed(self.status.steps) if step.status is not StepStatus.PENDING), None
        )
        if current is not None and workflow.patched(OPS_STEP_SEARCH_ATTRIBUTE):
            state = self.status.state
            if not workflow.patched(OPS_STEP_WHERE_IT_STOPS) or state is OpsState.STEP_FAILED or state.final:
                attributes.append(sa.OPS_STEP.value_set(current))
            else:
                attributes.append(sa.OPS_STEP.value_unset())
        if workflow.patched(UPSERT_ONLY_CHANGES):
            # Each upsert is a history event and a visibility write: send only what changed.
            attributes = [a for a in attributes if self._published.get(a.key.name) != a.value]
            if attributes:
                # Region/Cluster ride along with an upsert made anyway (the next state at the latest).
                attributes += [a for a in placement if self._published.get(a.key.name) != a.value]
            for update in attributes:
                self._published[update.key.name] = update.value
            if attributes:
                workflow.upsert_search_attributes(attributes)
        else:
            workflow.upsert_search_attributes(attributes)
        self.publish_details()


def _audited_hosts(hosts: list[str]) -> str | None:
    """The audit row's host column: every host while that stays short (an indexed column), else the first few."""
    joined = ",".join(hosts)
    if len(joined) <= 512:
        return joined or None
    shown = ",".join(hosts[:20])
    return f"{shown},... (+{len(hosts) - 20} more)"


def _failure_message(failure: BaseException) -> str:
    current: BaseException | None = failure
    while isinstance(current, ActivityError) and current.cause is not None:
        current = current.cause
    return str(current)
