"""What every operation workflow shares: activity options, the status it shows, failure helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from temporalio import workflow
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


# workflow.patched id (listed with the others in workflows/lifecycle.py): parallel lanes end together.
LANES_END_TOGETHER = "lanes-end-together"


async def run_lanes(*lanes: Awaitable[None]) -> None:
    """Runs lanes side by side and returns once every lane has ended, then raises the first lane's failure.

    ``asyncio.gather`` raises as soon as one lane fails or is cancelled, while the other lanes' activities
    still run: a cancelled operation then went on to its final record (and cancelled migrations a lane was
    still following, whose failure the lane read as its own). Waiting for all of them keeps every side
    effect inside the step that started it; a cancel still ends the step cancelled.
    """
    if not workflow.patched(LANES_END_TOGETHER):
        await asyncio.gather(*lanes)
        return
    ended = await asyncio.gather(*lanes, return_exceptions=True)
    for outcome in ended:
        if isinstance(outcome, BaseException):
            raise outcome


def cause_type(failure: BaseException) -> str | None:
    """The ``ApplicationError`` type behind an activity or child failure, if any."""
    current: BaseException | None = failure
    while isinstance(current, ActivityError | ChildWorkflowError):
        current = current.cause
    if isinstance(current, ApplicationError):
        return current.type
    return None
