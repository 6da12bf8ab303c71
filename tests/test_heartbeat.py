"""How often activities beat: a few times per heartbeat timeout, none for one that ends well within it.

Runs in the SDK's ``ActivityEnvironment`` (the real activity context and heartbeat hook, no server): what
is checked is which beats an activity hands to the SDK, each of which the server would record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities.heartbeat import (
    BEATS_PER_TIMEOUT,
    DEFAULT_INTERVAL_SECONDS,
    Pulse,
    heartbeat_interval,
    heartbeating,
)


def environment(
    heartbeat_timeout: timedelta | None, beats: list[tuple[float, tuple[Any, ...]]]
) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=heartbeat_timeout)
    env.on_heartbeat = lambda *details: beats.append((time.monotonic(), details))
    return env


def test_the_interval_is_the_heartbeat_timeout_over_the_beats_per_timeout() -> None:
    assert BEATS_PER_TIMEOUT > 2  # one late beat must not time an activity out
    assert environment(timedelta(seconds=5), []).run(heartbeat_interval) == 5 / BEATS_PER_TIMEOUT
    assert environment(None, []).run(heartbeat_interval) == DEFAULT_INTERVAL_SECONDS


async def test_a_loop_ending_within_the_interval_sends_no_beat() -> None:
    beats: list[tuple[float, tuple[Any, ...]]] = []

    async def fast_loop() -> int:
        pulse = Pulse()
        for done in range(1, 51):
            await asyncio.sleep(0)
            pulse.beat(done)
        return done

    assert await environment(timedelta(seconds=5), beats).run(fast_loop) == 50
    assert beats == []


async def test_a_long_loop_beats_its_latest_details_at_most_once_per_interval() -> None:
    beats: list[tuple[float, tuple[Any, ...]]] = []
    timeout = timedelta(seconds=0.5)  # interval 0.2 s

    async def slow_loop() -> float:
        started = time.monotonic()
        pulse = Pulse()
        for done in range(1, 101):  # about 1 s of 10 ms polls
            await asyncio.sleep(0.01)
            pulse.beat({"polls": done})
        return started

    started = await environment(timeout, beats).run(slow_loop)
    interval = timeout.total_seconds() / BEATS_PER_TIMEOUT
    assert 3 <= len(beats) <= 5, beats
    assert beats[0][0] - started >= interval  # none at the start
    gaps = [later[0] - earlier[0] for earlier, later in zip(beats, beats[1:], strict=False)]
    assert all(gap >= interval for gap in gaps), gaps
    polls = [details[0]["polls"] for _, details in beats]
    assert polls == sorted(polls) and polls[-1] >= 80, polls


async def test_waiting_on_a_slow_call_beats_every_interval_and_a_fast_one_not_at_all() -> None:
    beats: list[tuple[float, tuple[Any, ...]]] = []
    env = environment(timedelta(seconds=0.25), beats)  # interval 0.1 s

    async def call(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    async def waiting(seconds: float) -> str:
        return await heartbeating(call(seconds))

    assert await env.run(waiting, 0.01) == "slept 0.01"
    assert beats == []
    assert await env.run(waiting, 0.45) == "slept 0.45"
    assert 3 <= len(beats) <= 4, beats
