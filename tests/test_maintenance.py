"""Maintenance windows: when a cluster's window is open (pure), stored and edited (real PostgreSQL), read by the
activity the evacuation workflows call, and the ``python -m store.maintenance`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta

import pytest
from pydantic import ValidationError
from temporalio.testing import ActivityEnvironment

from activities.maintenance import MaintenanceActivities, WindowQuery
from domain.maintenance import MaintenanceWindow, window_state
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore

CLUSTER = "ECS-CPU-A-8976"


def window(weekday: int, start: str, minutes: int, tz: str = "UTC") -> MaintenanceWindow:
    return MaintenanceWindow(
        cluster_id=CLUSTER,
        weekday=weekday,
        start=time.fromisoformat(start),
        duration_minutes=minutes,
        time_zone=tz,
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# 2026-11-25 is a Wednesday (weekday 2).


def test_a_window_is_open_from_its_start_up_to_but_not_including_its_end() -> None:
    wednesday_night = [window(2, "22:00", 120)]
    before = window_state(wednesday_night, at("2026-11-25T21:59:59"))
    at_start = window_state(wednesday_night, at("2026-11-25T22:00:00"))
    at_end = window_state(wednesday_night, at("2026-11-26T00:00:00"))

    assert before is not None and not before.open_now and before.opens_at == at("2026-11-25T22:00:00")
    assert at_start is not None and at_start.open_now and at_start.closes_at == at("2026-11-26T00:00:00")
    assert at_end is not None and not at_end.open_now and at_end.opens_at == at("2026-12-02T22:00:00")


def test_a_window_crossing_the_end_of_the_week_is_open_on_monday_morning() -> None:
    sunday_late = [window(6, "22:00", 240)]
    state = window_state(sunday_late, at("2026-11-30T01:00:00"))  # Monday
    assert state is not None and state.open_now and state.closes_at == at("2026-11-30T02:00:00")


def test_a_window_keeps_its_local_hours_across_a_dst_change() -> None:
    # Europe/Berlin: Sunday 02:00 local is 01:00 UTC in winter, 00:00 UTC in summer (from 2026-03-29).
    sunday = [window(6, "02:00", 60, "Europe/Berlin")]
    winter = window_state(sunday, at("2026-03-16T12:00:00"))
    summer = window_state(sunday, at("2026-03-30T12:00:00"))
    assert winter is not None and winter.opens_at == at("2026-03-22T01:00:00")
    assert summer is not None and summer.opens_at == at("2026-04-05T00:00:00")


def test_windows_in_another_zone_open_at_their_local_time() -> None:
    thursday_shanghai = [window(3, "02:00", 240, "Asia/Shanghai")]
    state = window_state(thursday_shanghai, at("2026-11-25T03:00:00"))
    assert state is not None and not state.open_now
    assert (state.opens_at, state.closes_at) == (at("2026-11-25T18:00:00"), at("2026-11-25T22:00:00"))
    assert state.describe() == "opens 2026-11-25 18:00 UTC, closes 2026-11-25 22:00 UTC"


def test_touching_windows_merge_and_an_always_open_week_closes_at_the_horizon() -> None:
    back_to_back = [window(2, "22:00", 120), window(3, "00:00", 60)]
    state = window_state(back_to_back, at("2026-11-25T23:00:00"))
    assert state is not None and state.closes_at == at("2026-11-26T01:00:00")

    always = [window(day, "00:00", 1440) for day in range(7)]
    now = at("2026-11-25T03:00:00")
    state = window_state(always, now)
    assert state is not None and state.open_now and state.closes_at == now + timedelta(days=15)


def test_no_window_and_bad_windows() -> None:
    assert window_state([], at("2026-11-25T03:00:00")) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        window_state([window(0, "00:00", 60)], datetime(2026, 11, 25))
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        window(0, "00:00", 60, "Mars/Olympus")
    with pytest.raises(ValidationError, match="less than or equal to 6"):
        window(7, "00:00", 60)


async def test_windows_are_stored_replaced_on_the_same_start_and_removed(store: OperationStore) -> None:
    windows = MaintenanceWindowStore.of(store)
    await windows.set_window(window(3, "02:00", 240, "Asia/Shanghai"), note="weekly", updated_by="alice")
    await windows.set_window(window(3, "02:00", 180, "Asia/Shanghai"))
    await windows.set_window(window(5, "01:00", 60))
    await windows.set_window(
        MaintenanceWindow(cluster_id="ECS-MOC-A-0012", weekday=0, start=time(3), duration_minutes=30)
    )

    assert await windows.windows_for(CLUSTER) == [
        window(3, "02:00", 180, "Asia/Shanghai"),
        window(5, "01:00", 60),
    ]
    assert len(await windows.all_windows()) == 3
    assert await windows.remove_windows(CLUSTER, 5) == 1
    assert await windows.remove_windows(CLUSTER) == 1
    assert await windows.windows_for(CLUSTER) == []


async def test_the_activity_answers_the_state_at_the_workflow_clock(store: OperationStore) -> None:
    windows = MaintenanceWindowStore.of(store)
    await windows.set_window(window(2, "22:00", 120))
    activities = MaintenanceActivities(windows)
    env = ActivityEnvironment()

    answer = await env.run(
        activities.window_state, WindowQuery(cluster_id=CLUSTER, at=at("2026-11-25T21:00:00"))
    )
    none = await env.run(
        activities.window_state, WindowQuery(cluster_id="nowhere", at=at("2026-11-25T21:00:00"))
    )

    assert answer.state is not None and answer.state.opens_at == at("2026-11-25T22:00:00")
    assert answer.windows == [window(2, "22:00", 120)]
    assert none.state is None and none.windows == []


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store.maintenance", *args],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_cli_sets_lists_and_refuses_a_bad_time_zone(database_url: str) -> None:
    set_ = run_cli(
        database_url,
        "set",
        "--cluster",
        CLUSTER,
        "--weekday",
        "3",
        "--start",
        "02:00",
        "--minutes",
        "240",
        "--tz",
        "Asia/Shanghai",
    )
    listed = run_cli(database_url, "list")
    bad = run_cli(
        database_url,
        "set",
        "--cluster",
        CLUSTER,
        "--weekday",
        "3",
        "--start",
        "02:00",
        "--minutes",
        "60",
        "--tz",
        "Mars/Olympus",
    )
    bad_time = run_cli(
        database_url, "set", "--cluster", CLUSTER, "--weekday", "3", "--start", "25:00", "--minutes", "60"
    )

    assert set_.returncode == 0, set_.stderr
    assert listed.stdout.strip() == f"{CLUSTER}\tThu 02:00 Asia/Shanghai for 240 min"
    assert bad.returncode == 2 and "unknown time zone 'Mars/Olympus'" in bad.stderr
    assert bad_time.returncode == 2 and "--start '25:00' is not a time of day" in bad_time.stderr
