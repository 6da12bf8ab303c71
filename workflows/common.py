"""What every operation workflow shares: activity options, the status it shows, failure helpers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

from domain.model import NcBizStatus
from domain.operations import OpsState
from domain.opscodes import OpsCode

# Reads are cheap and safe to repeat.
HOUYI_READ: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}

# Mutations carry an idempotency token, so a retry replays rather than acts again. The short heartbeat
# timeout notices a dead worker in seconds; the token makes the retry that follows safe.
HOUYI_WRITE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "schedule_to_close_timeout": timedelta(minutes=30),
    "heartbeat_timeout": timedelta(seconds=5),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60)
    ),
}

# The store may be briefly down (a failover): keep retrying for a while, writes are idempotent.
STORE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(hours=1),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}


class OperationStatus(BaseModel):
    """What the ``status`` query answers and the UI's current details show."""

    opscode: OpsCode
    state: OpsState
    operation_id: int | None = None
    nc_ip: str | None = None
    nc_id: str | None = None
    requester: str | None = None
    status_before: NcBizStatus | None = None
    status_after: NcBizStatus | None = None
    error: str | None = None

    def markdown(self, title: str) -> str:
        rows = [
            ("opscode", f"{self.opscode.value} {title}"),
            ("state", self.state.value),
            ("host", f"{self.nc_ip or '-'} ({self.nc_id or '?'})"),
            ("requester", self.requester or "-"),
            ("status before", self.status_before.value if self.status_before else "-"),
            ("status after", self.status_after.value if self.status_after else "-"),
        ]
        if self.error:
            rows.append(("error", self.error.replace("|", "\\|")))
        lines = ["| field | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
        return "\n".join(lines)


def cause_type(failure: BaseException) -> str | None:
    """The ``ApplicationError`` type behind an activity or child failure, if any."""
    current: BaseException | None = failure
    while isinstance(current, ActivityError | ChildWorkflowError):
        current = current.cause
    if isinstance(current, ApplicationError):
        return current.type
    return None
