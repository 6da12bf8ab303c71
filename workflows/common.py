"""What every operation workflow shares: activity options, the status it shows, failure helpers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

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

# A step's mutation: a few attempts, then the step fails and waits for an operator (lifecycle.step).
HOUYI_STEP: dict[str, Any] = {
    **HOUYI_WRITE,
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=5
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

# The same writes as local activities (run by the worker that runs the workflow task, recorded as markers):
# retried locally for a minute, then with timers, for up to an hour like STORE.
STORE_LOCAL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(hours=1),
    "retry_policy": STORE["retry_policy"],
}


def cause_type(failure: BaseException) -> str | None:
    """The ``ApplicationError`` type behind an activity or child failure, if any."""
    current: BaseException | None = failure
    while isinstance(current, ActivityError | ChildWorkflowError):
        current = current.cause
    if isinstance(current, ApplicationError):
        return current.type
    return None
