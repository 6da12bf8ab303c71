"""Activities that keep the event list and the audit trail in the store."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import store_rejected, store_unavailable
from domain import errors
from domain.operations import OpsState
from runtime.metrics import METRICS, OPERATOR_ACTIONS, ServiceMetrics
from store.errors import StoreConflict, StoreError, StoreUnavailable
from store.repository import AuditEntry, AuditResult, NewOperation, OperationStore, StateMove


class OperationStateChange(BaseModel):
    workflow_id: str
    state: OpsState
    error_type: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = None


class OperationRef(BaseModel):
    operation_id: int
    state: OpsState


class AuditRecorded(BaseModel):
    dedupe_key: str | None


class OperationActivities:
    """Store writes are idempotent (keyed by workflow id, or the audit's dedupe key): retries are safe.

    The metrics move only on what the store newly wrote, so a retried activity counts nothing twice.
    """

    def __init__(self, store: OperationStore, metrics: ServiceMetrics = METRICS) -> None:
        self._store = store
        self._metrics = metrics

    @activity.defn(name="RecordOperation")
    async def record_operation(self, new: NewOperation) -> OperationRef:
        try:
            recorded = await self._store.record_operation_once(new)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreConflict as error:
            raise ApplicationError(str(error), type=errors.STORE_CONFLICT, non_retryable=True) from None
        except StoreError as error:
            raise store_rejected(error) from None
        record = recorded.record
        if recorded.inserted:
            self._metrics.operations_started.labels(record.opscode.value, record.source.value).inc()
        return OperationRef(operation_id=record.id, state=record.state)

    @activity.defn(name="SetOperationState")
    async def set_operation_state(self, finished: OperationStateChange) -> OperationRef:
        """Moves the operation's row to its new state; a final state also stamps its end."""
        try:
            move = await self._store.move_operation(
                finished.workflow_id,
                finished.state,
                error_type=finished.error_type,
                error_message=finished.error_message,
                result=finished.result,
            )
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreConflict as error:
            raise ApplicationError(str(error), type=errors.STORE_CONFLICT, non_retryable=True) from None
        except StoreError as error:
            raise store_rejected(error) from None
        self._observe_move(move)
        return OperationRef(operation_id=move.record.id, state=move.record.state)

    @activity.defn(name="RecordAudit")
    async def record_audit(self, entry: AuditEntry) -> AuditRecorded:
        try:
            inserted = await self._store.record_audit(entry)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreError as error:
            raise store_rejected(error) from None
        if inserted:
            self._observe_audit(entry)
        return AuditRecorded(dedupe_key=entry.dedupe_key)

    def _observe_move(self, move: StateMove) -> None:
        record, previous = move.record, move.previous_state
        if previous is None or previous == record.state:
            return  # nothing moved: a repeated write
        opscode, state = record.opscode.value, record.state.value
        if previous is OpsState.PENDING_APPROVAL and move.previous_since is not None:
            waited = (record.updated_at - move.previous_since).total_seconds()
            self._metrics.approval_wait.labels(opscode, state).observe(max(waited, 0.0))
        if record.state.final:
            self._metrics.operations_finished.labels(opscode, state).inc()
            ended = record.finished_at or record.updated_at
            took = (ended - record.created_at).total_seconds()
            self._metrics.operation_duration.labels(opscode, state).observe(max(took, 0.0))
        else:
            self._metrics.state_entered.labels(opscode, state).inc()

    def _observe_audit(self, entry: AuditEntry) -> None:
        opscode = entry.opscode.value if entry.opscode is not None else "none"
        if entry.action == "step_failed":
            step = str(entry.params.get("step", "unknown"))
            self._metrics.step_failures.labels(opscode, step).inc()
        elif entry.action == "refuse":
            self._metrics.refusals.labels(opscode, entry.error_type or "unknown").inc()
        elif entry.action in OPERATOR_ACTIONS and entry.result is AuditResult.OK:
            self._metrics.operator_actions.labels(opscode, entry.action).inc()
