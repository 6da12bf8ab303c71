"""Heartbeats an activity while it waits on a slow call, so a dead worker is noticed in seconds.

An activity beats a few times per heartbeat timeout, not at every step of its work: each beat the server
records is a write to the workflow's state, and one that finishes well within its timeout needs none
(the SDK would send the first at once, and a fast activity's only beat is pure cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from temporalio import activity

T = TypeVar("T")

# Beats per heartbeat timeout: more than two fall in every timeout window, so one late beat does not time
# the activity out.
BEATS_PER_TIMEOUT = 2.5
# Without a heartbeat timeout, beats only carry cancellation to the activity.
DEFAULT_INTERVAL_SECONDS = 1.0


def heartbeat_interval() -> float:
    """Seconds between beats for the running activity: its heartbeat timeout / ``BEATS_PER_TIMEOUT``."""
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        return DEFAULT_INTERVAL_SECONDS
    return timeout.total_seconds() / BEATS_PER_TIMEOUT


class Pulse:
    """Beats for a loop of steps (polls, one read per item), at most once per ``heartbeat_interval``,
    counted from the activity's start: a loop that ends within the interval sends no beat."""

    def __init__(self) -> None:
        self._interval = heartbeat_interval()
        self._last = time.monotonic()

    def beat(self, *details: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            activity.heartbeat(*details)


async def heartbeating(call: Awaitable[T], interval: float | None = None) -> T:
    """Awaits ``call`` and heartbeats every ``interval`` seconds (default: ``heartbeat_interval``);
    cancelling the activity cancels the call."""
    every = heartbeat_interval() if interval is None else interval
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()


@contextlib.asynccontextmanager
async def heartbeats(interval: float | None = None) -> AsyncIterator[None]:
    """Heartbeats every ``interval`` seconds (default: ``heartbeat_interval``) while the block runs
    (several calls in a row)."""
    every = heartbeat_interval() if interval is None else interval

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            activity.heartbeat()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
