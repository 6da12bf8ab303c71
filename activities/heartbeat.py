"""Heartbeats an activity while it waits on a slow call, so a dead worker is noticed in seconds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")

HEARTBEAT_INTERVAL_SECONDS = 1.0


async def heartbeating(call: Awaitable[T], interval: float = HEARTBEAT_INTERVAL_SECONDS) -> T:
    """Awaits ``call`` and heartbeats every ``interval`` seconds; cancelling the activity cancels the call."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()


@contextlib.asynccontextmanager
async def heartbeats(interval: float = HEARTBEAT_INTERVAL_SECONDS) -> AsyncIterator[None]:
    """Heartbeats every ``interval`` seconds while the block runs (several calls in a row)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
