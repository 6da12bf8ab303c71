"""Maintenance windows: when a cluster's window is open (pure), stored and edited (real PostgreSQL, one
fresh database per test), read by the activity the evacuation workflows call, and the
``python -m store.maintenance`` CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, time, timedelta

import asyncpg
import pytest
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.maintenance import MaintenanceActivities, WindowAnswer, WindowQuery
from domain import errors
from domain.maintenance import MaintenanceWindow, WindowState, window_state
from store.db import create_pool, load_migrations
from store.errors import StoreError, StoreUnavailable
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore
from store.seed import seed_dev_windows
from tests.fixtures.pg import REPO_ROOT

CLUSTER = "ECS-CPU-A-8976"
OTHER_CLUSTER = "ECS-MOC-A-0012"

# 2026-11-25 is a Wednesday (weekday 2). Europe/Berlin changes to summer time on Sunday 2026-03-29 at
# 01:00 UTC (02:00 -> 03:00 local) and back on Sunday 2026-10-25 at 01:00 UTC (03:00 -> 02:00 local);
# America/New_York on Sunday 2026-03-08 at 07:00 UTC (02:00 EST -> 03:00 EDT). Asia/Shanghai is UTC+8.


def window(
    weekday: int, start: str, minutes: int, tz: str = "UTC", cluster: str = CLUSTER
) -> MaintenanceWindow:
    return MaintenanceWindow(
        cluster_id=cluster,
        weekday=weekday,
        start=time.fromisoformat(start),
        duration_minutes=minutes,
        time_zone=tz,
    )


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def state_at(windows: list[MaintenanceWindow], moment: str) -> WindowState:
    state = window_state(windows, utc(moment))
    assert state is not None
    return state


# ---- when a window is open ------------------------------------------------------------------------


def test_a_window_is_open_from_its_start_included_to_its_end_excluded() -> None:
    wednesday_night = [window(2, "22:00", 120)]

    assert state_at(wednesday_night, "2026-11-25T21:59:59") == WindowState(
        open_now=False, opens_at=utc("2026-11-25T22:00"), closes_at=utc("2026-11-26T00:00")
    )
    assert state_at(wednesday_night, "2026-11-25T22:00") == WindowState(
        open_now=True, opens_at=utc("2026-11-25T22:00"), closes_at=utc("2026-11-26T00:00")
    )
    assert state_at(wednesday_night, "2026-11-25T23:59:59") == WindowState(
        open_now=True, opens_at=utc("2026-11-25T23:59:59"), closes_at=utc("2026-11-26T00:00")
    )
    assert state_at(wednesday_night, "2026-11-26T00:00") == WindowState(
        open_now=False, opens_at=utc("2026-12-02T22:00"), closes_at=utc("2026-12-03T00:00")
    )


def test_a_window_crossing_midnight_and_the_end_of_the_week_is_open_on_monday_morning() -> None:
    sunday_late = [window(6, "22:00", 240)]

    monday_early = state_at(sunday_late, "2026-11-30T01:00")  # Monday
    monday_at_close = state_at(sunday_late, "2026-11-30T02:00")

    assert monday_early.open_now and monday_early.closes_at == utc("2026-11-30T02:00")
    assert not monday_at_close.open_now
    assert (monday_at_close.opens_at, monday_at_close.closes_at) == (
        utc("2026-12-06T22:00"),
        utc("2026-12-07T02:00"),
    )
    assert monday_at_close.describe() == "opens 2026-12-06 22:00 UTC, closes 2026-12-07 02:00 UTC"


def test_a_window_opens_at_its_local_time_in_its_zone() -> None:
    thursday_shanghai = [window(3, "02:00", 240, "Asia/Shanghai")]  # Thu 02:00 +08:00 = Wed 18:00 UTC

    before = state_at(thursday_shanghai, "2026-11-25T03:00")
    inside = window_state(thursday_shanghai, datetime.fromisoformat("2026-11-26T02:30+08:00"))

    assert before == WindowState(
        open_now=False,
        opens_at=utc("2026-11-25T18:00"),
        closes_at=utc("2026-11-25T22:00"),
        opens_local="Thu 02:00 Asia/Shanghai",
    )
    assert before.describe() == "opens 2026-11-25 18:00 UTC (Thu 02:00 Asia/Shanghai), closes 22:00 UTC"
    assert inside is not None and inside.open_now
    assert inside.opens_at == utc("2026-11-25T18:30") and inside.opens_at.tzinfo is UTC
    assert inside.describe() == "open until 2026-11-25 22:00 UTC"


def test_a_sunday_window_in_shanghai_crosses_into_monday_local_time() -> None:
    sunday_late = [window(6, "22:00", 240, "Asia/Shanghai")]  # Sun 22:00 +08:00 = Sun 14:00 UTC

    inside = state_at(sunday_late, "2026-11-29T17:00")  # Monday 01:00 in Shanghai

    assert inside.open_now and inside.closes_at == utc("2026-11-29T18:00")


def test_a_window_keeps_its_wall_clock_start_across_dst_in_berlin() -> None:
    sunday_two = [window(6, "02:00", 60, "Europe/Berlin")]

    winter = state_at(sunday_two, "2026-03-16T12:00")
    summer = state_at(sunday_two, "2026-03-30T12:00")

    assert (winter.opens_at, winter.closes_at) == (utc("2026-03-22T01:00"), utc("2026-03-22T02:00"))
    assert (summer.opens_at, summer.closes_at) == (utc("2026-04-05T00:00"), utc("2026-04-05T01:00"))
    assert summer.opens_local == "Sun 02:00 Europe/Berlin"


def test_a_start_in_the_spring_gap_opens_at_the_pre_change_offset() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: it opens at 01:30 UTC, which the clock shows as 03:30.
    gap = state_at([window(6, "02:30", 60, "Europe/Berlin")], "2026-03-23T00:00")

    assert (gap.opens_at, gap.closes_at) == (utc("2026-03-29T01:30"), utc("2026-03-29T02:30"))
    assert gap.opens_local == "Sun 03:30 Europe/Berlin"


def test_a_start_that_occurs_twice_in_autumn_opens_at_the_first_occurrence() -> None:
    twice = [window(6, "02:30", 30, "Europe/Berlin")]

    before = state_at(twice, "2026-10-24T12:00")
    at_second_occurrence = state_at(twice, "2026-10-25T01:30")

    assert (before.opens_at, before.closes_at) == (utc("2026-10-25T00:30"), utc("2026-10-25T01:00"))
    assert not at_second_occurrence.open_now
    assert at_second_occurrence.opens_at == utc("2026-11-01T01:30")  # 02:30 CET


def test_the_length_is_elapsed_time_across_a_dst_change() -> None:
    # Sunday 01:00 CET for 4 h closes at 04:00 UTC, which is 06:00 on Berlin's summer clock.
    spring = [window(6, "01:00", 240, "Europe/Berlin")]

    inside = state_at(spring, "2026-03-29T03:00")

    assert inside.open_now and inside.closes_at == utc("2026-03-29T04:00")


def test_a_new_york_window_moves_an_hour_in_utc_when_summer_time_starts() -> None:
    saturday_late = [window(5, "23:00", 240, "America/New_York")]

    over_the_change = state_at(saturday_late, "2026-03-08T05:00")  # Sat 23:00 EST = Sun 04:00 UTC
    next_week = state_at(saturday_late, "2026-03-09T00:00")

    assert over_the_change.open_now and over_the_change.closes_at == utc("2026-03-08T08:00")
    assert next_week == WindowState(
        open_now=False,
        opens_at=utc("2026-03-15T03:00"),  # Sat 23:00 EDT
        closes_at=utc("2026-03-15T07:00"),
        opens_local="Sat 23:00 America/New_York",
    )


def test_the_nearest_of_several_windows_answers_whatever_their_order() -> None:
    monday_utc = window(0, "02:00", 60)
    thursday_shanghai = window(3, "02:00", 240, "Asia/Shanghai")

    for windows in ([monday_utc, thursday_shanghai], [thursday_shanghai, monday_utc]):
        assert state_at(windows, "2026-11-25T03:00").opens_at == utc("2026-11-25T18:00")
        assert state_at(windows, "2026-11-25T23:00").opens_at == utc("2026-11-30T02:00")


def test_overlapping_and_touching_windows_merge_into_one_span() -> None:
    overlapping = [window(2, "22:00", 180), window(3, "00:00", 120)]
    touching_across_zones = [window(2, "22:00", 120), window(3, "08:00", 60, "Asia/Shanghai")]

    assert state_at(overlapping, "2026-11-25T23:00").closes_at == utc("2026-11-26T02:00")
    assert state_at(touching_across_zones, "2026-11-25T23:00").closes_at == utc("2026-11-26T01:00")
    assert state_at(touching_across_zones, "2026-11-26T00:00").open_now
    closed = state_at(touching_across_zones, "2026-11-25T12:00")
    assert closed.describe() == "opens 2026-11-25 22:00 UTC, closes 2026-11-26 01:00 UTC"


def test_an_always_open_configuration_closes_fifteen_days_ahead() -> None:
    every_day = [window(day, "00:00", 1440) for day in range(7)]
    one_long_week = [window(0, "00:00", 10080)]

    for windows in (every_day, one_long_week):
        state = state_at(windows, "2026-11-25T03:00")
        assert state.open_now and state.closes_at == utc("2026-12-10T03:00")


def test_no_windows_is_none_and_a_naive_moment_is_refused() -> None:
    assert window_state([], utc("2026-11-25T03:00")) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        window_state([window(0, "00:00", 60)], datetime(2026, 11, 25, 3, 0))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"time_zone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"time_zone": "localtime"}, "time zone 'localtime' depends on the machine"),
        ({"weekday": 7}, "less than or equal to 6"),
        ({"duration_minutes": 0}, "greater than or equal to 1"),
        ({"duration_minutes": 10081}, "less than or equal to 10080"),
        ({"cluster_id": ""}, "at least 1 character"),
        ({"owner": "bob"}, "Extra inputs are not permitted"),
    ],
)
def test_a_window_refuses_bad_fields(fields: dict[str, object], message: str) -> None:
    good = {"cluster_id": CLUSTER, "weekday": 3, "start": "02:00", "duration_minutes": 240}
    with pytest.raises(ValidationError, match=message):
        MaintenanceWindow.model_validate({**good, **fields})


def test_a_window_is_frozen_and_describes_itself() -> None:
    thursday = window(3, "02:00", 240, "Asia/Shanghai")
    assert thursday.describe() == "Thu 02:00 Asia/Shanghai for 240 min"
    with pytest.raises(ValidationError, match="frozen"):
        thursday.duration_minutes = 60  # type: ignore[misc]


def test_the_answer_survives_the_temporal_data_converter() -> None:
    answer = WindowAnswer(
        cluster_id=CLUSTER,
        windows=[window(3, "02:00", 240, "Asia/Shanghai")],
        state=state_at([window(3, "02:00", 240, "Asia/Shanghai")], "2026-11-25T03:00"),
    )
    converter = pydantic_data_converter.payload_converter

    payloads: list[Payload] = converter.to_payloads([answer])
    [decoded] = converter.from_payloads(payloads, [WindowAnswer])

    assert decoded == answer
    assert decoded.state.opens_at.tzinfo is UTC


# ---- the store (real PostgreSQL) ------------------------------------------------------------------


async def test_windows_are_stored_replaced_on_the_same_start_and_removed(store: OperationStore) -> None:
    windows = MaintenanceWindowStore.of(store)
    await windows.set_window(window(5, "01:00", 60))
    await windows.set_window(window(3, "02:00", 240, "Asia/Shanghai"), note="weekly")
    await windows.set_window(window(3, "02:00", 180, "Asia/Shanghai"), note="shorter")
    await windows.set_window(window(3, "05:00", 30))
    await windows.set_window(window(0, "03:00", 30, cluster=OTHER_CLUSTER))

    assert await windows.windows_for(CLUSTER) == [
        window(3, "02:00", 180, "Asia/Shanghai"),
        window(3, "05:00", 30),
        window(5, "01:00", 60),
    ]
    assert await windows.all_windows() == [
        *await windows.windows_for(CLUSTER),
        window(0, "03:00", 30, cluster=OTHER_CLUSTER),
    ]
    assert await store.pool.fetchval(
        "SELECT note FROM maintenance_windows WHERE cluster_id = $1 AND start_time = '02:00'", CLUSTER
    ) == ("shorter")
    assert await windows.windows_for("ECS-CPU-A-0000") == []

    assert await windows.remove_windows(CLUSTER, weekday=3) == 2
    assert await windows.remove_windows(CLUSTER, weekday=3) == 0
    assert await windows.windows_for(CLUSTER) == [window(5, "01:00", 60)]
    assert await windows.remove_windows(CLUSTER) == 1
    assert await windows.windows_for(CLUSTER) == []
    assert await windows.windows_for(OTHER_CLUSTER) == [window(0, "03:00", 30, cluster=OTHER_CLUSTER)]


async def test_the_migration_is_recorded_and_its_constraints_hold(store: OperationStore) -> None:
    pool = store.pool
    assert (
        await pool.fetchval("SELECT name FROM schema_migrations WHERE version = 5") == "maintenance_windows"
    )
    assert load_migrations()[4].name == "maintenance_windows"

    insert = (
        "INSERT INTO maintenance_windows (cluster_id, weekday, start_time, duration_minutes, time_zone) "
        "VALUES ($1, $2, $3, $4, 'UTC')"
    )
    await pool.execute(insert, CLUSTER, 6, time(22), 240)
    created_at = await pool.fetchval("SELECT created_at FROM maintenance_windows")
    assert abs(created_at - datetime.now(UTC)) < timedelta(minutes=5)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(insert, CLUSTER, 6, time(22), 60)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(insert, CLUSTER, 7, time(22), 60)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(insert, CLUSTER, 0, time(22), 10081)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(insert, CLUSTER, 0, time(22), 0)


async def test_a_stored_row_this_machine_cannot_read_is_a_store_error_naming_it(
    store: OperationStore,
) -> None:
    await store.pool.execute(
        "INSERT INTO maintenance_windows (cluster_id, weekday, start_time, duration_minutes, time_zone) "
        "VALUES ($1, 1, '02:00', 60, 'Mars/Olympus')",
        CLUSTER,
    )

    with pytest.raises(StoreError, match=f"of {CLUSTER} is not valid here.*'Mars/Olympus'"):
        await MaintenanceWindowStore.of(store).windows_for(CLUSTER)


async def test_a_closed_pool_is_store_unavailable(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=1)
    await pool.close()

    with pytest.raises(StoreUnavailable):
        await MaintenanceWindowStore(pool).windows_for(CLUSTER)


async def test_dev_windows_open_every_cluster_all_the_time_and_seeding_again_changes_nothing(
    store: OperationStore,
) -> None:
    windows = MaintenanceWindowStore.of(store)
    await windows.set_window(window(3, "02:00", 240, "Asia/Shanghai", cluster=OTHER_CLUSTER))

    await seed_dev_windows(store, [CLUSTER, OTHER_CLUSTER])
    await seed_dev_windows(windows, [CLUSTER, OTHER_CLUSTER])

    every_day = [window(day, "00:00", 1440) for day in range(7)]
    assert await windows.windows_for(CLUSTER) == every_day
    assert len(await windows.windows_for(OTHER_CLUSTER)) == 8  # its own window is kept
    assert await store.pool.fetchval("SELECT count(*) FROM maintenance_windows") == 15
    state = state_at(await windows.windows_for(CLUSTER), "2026-11-25T03:00")
    assert state.open_now and state.closes_at == utc("2026-12-10T03:00")


# ---- the activity --------------------------------------------------------------------------------


async def test_the_activity_answers_the_windows_and_the_state_at_the_workflow_clock(
    store: OperationStore,
) -> None:
    windows = MaintenanceWindowStore.of(store)
    await windows.set_window(window(3, "02:00", 240, "Asia/Shanghai"))
    activities = MaintenanceActivities(windows)
    env = ActivityEnvironment()

    answer = await env.run(
        activities.window_state, WindowQuery(cluster_id=CLUSTER, at=utc("2026-11-25T03:00"))
    )
    inside = await env.run(
        activities.window_state, WindowQuery(cluster_id=CLUSTER, at=utc("2026-11-25T19:00"))
    )
    nowhere = await env.run(
        activities.window_state, WindowQuery(cluster_id="ECS-CPU-A-0000", at=utc("2026-11-25T03:00"))
    )

    assert answer == WindowAnswer(
        cluster_id=CLUSTER,
        windows=[window(3, "02:00", 240, "Asia/Shanghai")],
        state=WindowState(
            open_now=False,
            opens_at=utc("2026-11-25T18:00"),
            closes_at=utc("2026-11-25T22:00"),
            opens_local="Thu 02:00 Asia/Shanghai",
        ),
    )
    assert inside.state is not None and inside.state.open_now
    assert inside.state.closes_at == utc("2026-11-25T22:00")
    assert nowhere == WindowAnswer(cluster_id="ECS-CPU-A-0000", windows=[], state=None)


async def test_the_activity_turns_an_unreachable_store_into_a_retryable_store_unavailable(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, max_size=1)
    await pool.close()
    activities = MaintenanceActivities(MaintenanceWindowStore(pool))

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            activities.window_state, WindowQuery(cluster_id=CLUSTER, at=utc("2026-11-25T03:00"))
        )

    assert raised.value.type == errors.STORE_UNAVAILABLE and not raised.value.non_retryable
    assert "operation store unavailable" in raised.value.message


def test_the_query_refuses_a_naive_moment() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        WindowQuery(cluster_id=CLUSTER, at=datetime(2026, 11, 25, 3, 0))


# ---- the CLI -------------------------------------------------------------------------------------


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "store.maintenance",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


SET_THURSDAY = ("set", "--cluster", CLUSTER, "--weekday", "3", "--start", "02:00", "--minutes", "240")


async def test_the_cli_sets_lists_and_clears_windows(database_url: str, store: OperationStore) -> None:
    set_ = await run_cli(database_url, *SET_THURSDAY, "--tz", "Asia/Shanghai", "--note", "weekly")
    other = await run_cli(
        database_url,
        "set",
        "--cluster",
        OTHER_CLUSTER,
        "--weekday",
        "6",
        "--start",
        "22:00",
        "--minutes",
        "60",
    )
    listed = await run_cli(database_url, "list")
    listed_one = await run_cli(database_url, "list", "--cluster", CLUSTER)

    assert set_ == (0, f"{CLUSTER}\tThu 02:00 Asia/Shanghai for 240 min\n", "")
    assert other[0] == 0, other[2]
    assert listed == (
        0,
        f"{CLUSTER}\tThu 02:00 Asia/Shanghai for 240 min\n{OTHER_CLUSTER}\tSun 22:00 UTC for 60 min\n",
        "",
    )
    assert listed_one[1] == f"{CLUSTER}\tThu 02:00 Asia/Shanghai for 240 min\n"
    windows = MaintenanceWindowStore.of(store)
    assert await windows.windows_for(CLUSTER) == [window(3, "02:00", 240, "Asia/Shanghai")]

    cleared = await run_cli(database_url, "clear", "--cluster", CLUSTER)
    listed_after = await run_cli(database_url, "list", "--cluster", CLUSTER)

    assert cleared == (0, f"removed 1 window(s) of {CLUSTER}\n", "")
    assert listed_after == (0, f"no maintenance window for {CLUSTER}\n", "")
    assert await windows.windows_for(OTHER_CLUSTER) != []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((*SET_THURSDAY, "--tz", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (
            ("set", "--cluster", CLUSTER, "--weekday", "3", "--start", "25:00", "--minutes", "60"),
            "--start '25:00' is not a time of day",
        ),
        (
            ("set", "--cluster", CLUSTER, "--weekday", "9", "--start", "02:00", "--minutes", "60"),
            "weekday: Input should be less than or equal to 6",
        ),
        (
            ("set", "--cluster", CLUSTER, "--weekday", "3", "--start", "02:00", "--minutes", "0"),
            "duration_minutes: Input should be greater than or equal to 1",
        ),
        (("clear", "--cluster", CLUSTER, "--weekday", "7"), "invalid choice: 7"),
        (("set", "--cluster", CLUSTER), "the following arguments are required"),
    ],
)
async def test_the_cli_refuses_bad_input_with_exit_code_2_and_writes_nothing(
    database_url: str, store: OperationStore, args: tuple[str, ...], message: str
) -> None:
    code, stdout, stderr = await run_cli(database_url, *args)

    assert code == 2 and message in stderr, stderr
    assert stdout == ""
    assert await MaintenanceWindowStore.of(store).all_windows() == []
