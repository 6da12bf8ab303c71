"""Activities that keep the event list and the audit trail in the store."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import store_unavailable
from domain import errors
from domain.operations import OpsState
from store.errors import StoreConflict, StoreUnavailable
from store.repository import AuditEntry, NewOperation, OperationStore


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
    """Store writes are idempotent (keyed by workflow id, or the audit's dedupe key): retries are safe."""

    def __init__(self, store: OperationStore) -> None:
        self._store = store

    @activity.defn(name="RecordOperation")
    async def record_operation(self, new: NewOperation) -> OperationRef:
        try:
            record = await self._store.record_operation(new)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        except StoreConflict as error:
            raise ApplicationError(str(error), type=errors.STORE_CONFLICT, non_retryable=True) from None
        return OperationRef(operation_id=record.id, state=record.state)

    @activity.defn(name="SetOperationState")
    async def set_operation_state(self, finished: OperationStateChange) -> OperationRef:
        """Moves the operation's row to its new state; a final state also stamps its end."""
        try:
            record = await self._store.set_operation_state(
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
        return OperationRef(operation_id=record.id, state=record.state)

    @activity.defn(name="RecordAudit")
    async def record_audit(self, entry: AuditEntry) -> AuditRecorded:
        try:
            await self._store.record_audit(entry)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        return AuditRecorded(dedupe_key=entry.dedupe_key)
