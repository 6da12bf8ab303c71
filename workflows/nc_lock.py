"""0x410A01 lock NC ("[NE] lock NC -> done"): validate, check the host can be locked, lock, verify, record."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.nc import DescribeNcInput, LockNcInput, NcActivities
    from activities.operations import OperationActivities, OperationFinished
    from domain import errors, transitions
    from domain.model import NcBizStatus, NcDetail
    from domain.operations import InputRefused, NcLockInput, NcLockResult, OpsState, parse_input
    from domain.opscodes import CATALOG, OpsCode
    from runtime import search_attributes as sa
    from store.repository import AuditEntry, AuditResult, NewOperation
    from workflows.common import HOUYI_READ, HOUYI_WRITE, STORE, OperationStatus, cause_type

OPSCODE = OpsCode.NC_LOCK
SPEC = CATALOG[OPSCODE]
LOCK_STEP = "LockNc"


@workflow.defn(name=SPEC.workflow_type)
class NcLockWorkflow:
    """Input (``NcLockInput``) is taken as raw JSON and validated here, so that bad input ends as an
    audited refusal instead of a workflow task that fails to decode and retries forever."""

    def __init__(self) -> None:
        self._status = OperationStatus(opscode=OPSCODE, state=OpsState.VALIDATING)

    @workflow.query(name="status")
    def status(self) -> OperationStatus:
        return self._status

    @workflow.run
    async def run(self, raw_input: Any) -> NcLockResult:
        workflow_id = workflow.info().workflow_id
        if isinstance(raw_input, dict) and isinstance(raw_input.get("nc_ip"), str):
            self._status.nc_ip = raw_input["nc_ip"].strip()
        self._publish()
        try:
            request = parse_input(NcLockInput, raw_input)
        except InputRefused as refusal:
            await self._refuse(refusal.error_type, str(refusal), params={"input": raw_input})
        self._status.nc_ip = request.nc_ip
        self._status.requester = request.requester
        workflow.upsert_search_attributes([sa.REQUESTER.value_set(request.requester)])

        detail = await self._describe(request)
        nc = detail.nc
        self._status.nc_id = nc.nc_id
        self._status.status_before = nc.biz_status
        workflow.upsert_search_attributes(
            [sa.REGION.value_set(nc.region_id), sa.CLUSTER.value_set(nc.cluster_id)]
        )
        if not transitions.can_apply(transitions.NcAction.LOCK, nc.biz_status):
            allowed = ", ".join(sorted(s.value for s in transitions.allowed_from(transitions.NcAction.LOCK)))
            await self._refuse(
                errors.NC_WRONG_STATUS,
                f"NC {nc.nc_ip} ({nc.nc_id}) is {nc.biz_status.value}: cannot lock (allowed from: {allowed})",
                request=request,
            )

        started = await workflow.execute_activity_method(
            OperationActivities.record_operation,
            NewOperation(
                workflow_id=workflow_id,
                run_id=workflow.info().run_id,
                opscode=OPSCODE,
                workflow_type=SPEC.workflow_type,
                hosts=[nc.nc_ip],
                nc_ids=[nc.nc_id],
                region_id=nc.region_id,
                cluster_id=nc.cluster_id,
                source=request.source,
                requester=request.requester,
                reason_category=request.reason_category,
                reason=request.reason,
                ticket=request.ticket,
                settings=request.settings.model_dump(by_alias=True),
                state=OpsState.RUNNING,
            ),
            **STORE,
        )
        self._status.operation_id = started.operation_id
        self._set_state(OpsState.RUNNING)
        try:
            result = await self._lock(request, detail, started.operation_id)
        except (ActivityError, ApplicationError) as failure:
            await self._finish_failed(request, OpsState.FAILED, failure)
            raise
        except asyncio.CancelledError as cancelled:
            await self._finish_failed(request, OpsState.CANCELLED, cancelled)
            raise
        return result

    async def _lock(self, request: NcLockInput, detail: NcDetail, operation_id: int) -> NcLockResult:
        workflow_id = workflow.info().workflow_id
        nc = detail.nc
        change = await workflow.execute_activity_method(
            NcActivities.lock_nc,
            LockNcInput(caller=workflow_id, step=LOCK_STEP, nc_id=nc.nc_id, nc_ip=nc.nc_ip),
            **HOUYI_WRITE,
        )
        after = await workflow.execute_activity_method(
            NcActivities.describe_nc, DescribeNcInput(caller=workflow_id, nc_id=nc.nc_id), **HOUYI_READ
        )
        if after.nc.biz_status is not NcBizStatus.MLOCK:
            raise ApplicationError(
                f"lock of NC {nc.nc_ip} ({nc.nc_id}) answered {change.status_after.value} "
                f"but the host now reads {after.nc.biz_status.value}",
                type=errors.ACTION_NOT_APPLIED,
                non_retryable=True,
            )
        self._status.status_after = after.nc.biz_status
        workflow.logger.info(
            "nc locked", extra={"nc_ip": nc.nc_ip, "nc_id": nc.nc_id, "opscode": OPSCODE.value}
        )
        result = NcLockResult(
            operation_id=operation_id,
            workflow_id=workflow_id,
            nc_ip=nc.nc_ip,
            nc_id=nc.nc_id,
            region_id=nc.region_id,
            cluster_id=nc.cluster_id,
            status_before=nc.biz_status,
            status_after=after.nc.biz_status,
            state=OpsState.SUCCEEDED,
            finished_at=workflow.now(),
        )
        await self._audit(request, action="lock_nc", result=AuditResult.OK, params={"nc_id": nc.nc_id})
        await workflow.execute_activity_method(
            OperationActivities.finish_operation,
            OperationFinished(
                workflow_id=workflow_id, state=OpsState.SUCCEEDED, result=result.model_dump(mode="json")
            ),
            **STORE,
        )
        self._set_state(OpsState.SUCCEEDED)
        return result

    async def _describe(self, request: NcLockInput) -> NcDetail:
        try:
            return await workflow.execute_activity_method(
                NcActivities.describe_nc,
                DescribeNcInput(caller=workflow.info().workflow_id, nc_ip=request.nc_ip),
                **HOUYI_READ,
            )
        except ActivityError as failure:
            if cause_type(failure) == errors.NC_NOT_FOUND:
                await self._refuse(errors.NC_NOT_FOUND, f"no NC with IP {request.nc_ip}", request=request)
            raise

    async def _refuse(
        self,
        error_type: str,
        message: str,
        *,
        request: NcLockInput | None = None,
        params: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Records the refusal in the audit and fails the workflow; nothing else has been touched."""
        self._status.error = message
        await self._audit(
            request,
            action="refuse",
            result=AuditResult.REFUSED,
            error_type=error_type,
            error_message=message,
            params=params,
        )
        self._set_state(OpsState.REFUSED)
        # The message says all; the activity failure or parse error it came from would only repeat it.
        raise ApplicationError(message, type=error_type, non_retryable=True) from None

    async def _finish_failed(self, request: NcLockInput, state: OpsState, failure: BaseException) -> None:
        error_type = cause_type(failure) or type(failure).__name__
        message = str(failure.cause) if isinstance(failure, ActivityError) and failure.cause else str(failure)
        self._status.error = message
        workflow_id = workflow.info().workflow_id
        action = "cancel" if state is OpsState.CANCELLED else "lock_nc"
        await self._audit(
            request, action=action, result=AuditResult.FAILED, error_type=error_type, error_message=message
        )
        await workflow.execute_activity_method(
            OperationActivities.finish_operation,
            OperationFinished(
                workflow_id=workflow_id, state=state, error_type=error_type, error_message=message
            ),
            **STORE,
        )
        self._set_state(state)

    async def _audit(
        self,
        request: NcLockInput | None,
        *,
        action: str,
        result: AuditResult,
        error_type: str | None = None,
        error_message: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        workflow_id = workflow.info().workflow_id
        await workflow.execute_activity_method(
            OperationActivities.record_audit,
            AuditEntry(
                dedupe_key=f"{workflow_id}/{action}/{result.value}",
                workflow_id=workflow_id,
                opscode=OPSCODE,
                nc_ip=self._status.nc_ip,
                action=action,
                result=result,
                error_type=error_type,
                error_message=error_message,
                params=params or {},
                operator=request.requester if request else None,
                reason=request.reason if request else None,
                ticket=request.ticket if request else None,
            ),
            **STORE,
        )

    def _set_state(self, state: OpsState) -> None:
        self._status.state = state
        self._publish()

    def _publish(self) -> None:
        """Search attributes and the UI's current details follow the state."""
        attributes = [sa.OPS_CODE.value_set(OPSCODE.value), sa.OPS_STATE.value_set(self._status.state.value)]
        if self._status.nc_ip:
            attributes.append(sa.NC_IP.value_set(self._status.nc_ip))
        workflow.upsert_search_attributes(attributes)
        workflow.set_current_details(self._status.markdown(SPEC.title))
