"""Maintenance windows as stored configuration, and a CLI to edit them.

    python -m store.maintenance list [--cluster C]
    python -m store.maintenance set --cluster ECS-CPU-A-8976 --weekday 3 --start 02:00 --minutes 240 --tz Asia/Shanghai
    python -m store.maintenance clear --cluster ECS-CPU-A-8976 [--weekday 3]

Workflows read a cluster's windows when they need them, so a change applies to the next wait.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import time
from typing import Any

import asyncpg
from pydantic import ValidationError

from domain.maintenance import MaintenanceWindow
from domain.operations import describe_validation_error
from runtime.config import Settings
from store.db import create_pool, migrate, pooled_connection
from store.embedded import resolve_database_url
from store.errors import StoreError
from store.repository import OperationStore


class MaintenanceWindowStore:
    """Reads and writes ``maintenance_windows`` on the operation store's pool."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout: float = 10.0) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    @classmethod
    def of(cls, store: OperationStore) -> MaintenanceWindowStore:
        return cls(store.pool)

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        async with pooled_connection(self._pool, doing, acquire_timeout=self._acquire_timeout) as conn:
            yield conn

    async def windows_for(self, cluster_id: str) -> list[MaintenanceWindow]:
        async with self._connection(f"reading the maintenance windows of {cluster_id}") as conn:
            rows = await conn.fetch(
                "SELECT cluster_id, weekday, start_time, duration_minutes, time_zone FROM maintenance_windows "
                "WHERE cluster_id = $1 ORDER BY weekday, start_time",
                cluster_id,
            )
        return [_window(row) for row in rows]

    async def all_windows(self) -> list[MaintenanceWindow]:
        async with self._connection("reading the maintenance windows") as conn:
            rows = await conn.fetch(
                "SELECT cluster_id, weekday, start_time, duration_minutes, time_zone FROM maintenance_windows "
                "ORDER BY cluster_id, weekday, start_time"
            )
        return [_window(row) for row in rows]

    async def set_window(self, window: MaintenanceWindow, *, note: str = "", updated_by: str = "") -> None:
        """Adds the window, or replaces the one of that cluster opening at the same weekday and time."""
        async with self._connection(f"setting a maintenance window of {window.cluster_id}") as conn:
            await conn.execute(
                """
                INSERT INTO maintenance_windows
                    (cluster_id, weekday, start_time, duration_minutes, time_zone, note, updated_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (cluster_id, weekday, start_time) DO UPDATE
                SET duration_minutes = EXCLUDED.duration_minutes, time_zone = EXCLUDED.time_zone,
                    note = EXCLUDED.note, updated_by = EXCLUDED.updated_by
                """,
                window.cluster_id,
                window.weekday,
                window.start,
                window.duration_minutes,
                window.time_zone,
                note,
                updated_by,
            )

    async def remove_windows(self, cluster_id: str, weekday: int | None = None) -> int:
        async with self._connection(f"removing maintenance windows of {cluster_id}") as conn:
            status: str = await conn.execute(
                "DELETE FROM maintenance_windows WHERE cluster_id = $1 AND ($2::smallint IS NULL OR weekday = $2)",
                cluster_id,
                weekday,
            )
        return int(status.split()[-1])


def _window(row: Any) -> MaintenanceWindow:
    return MaintenanceWindow(
        cluster_id=row["cluster_id"],
        weekday=row["weekday"],
        start=row["start_time"],
        duration_minutes=row["duration_minutes"],
        time_zone=row["time_zone"],
    )


def _parse_start(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start {text!r} is not a time of day (HH:MM)") from None


async def _run(url: str, args: argparse.Namespace) -> int:
    pool = await create_pool(url, max_size=2)
    try:
        await migrate(pool)
        windows = MaintenanceWindowStore(pool)
        if args.command == "list":
            found = await (windows.windows_for(args.cluster) if args.cluster else windows.all_windows())
            for window in found:
                print(f"{window.cluster_id}\t{window.describe()}")
            if not found:
                print("no maintenance window")
        elif args.command == "set":
            window = MaintenanceWindow(
                cluster_id=args.cluster,
                weekday=args.weekday,
                start=_parse_start(args.start),
                duration_minutes=args.minutes,
                time_zone=args.tz,
            )
            await windows.set_window(window, note=args.note, updated_by=args.by)
            print(f"{window.cluster_id}\t{window.describe()}")
        else:
            removed = await windows.remove_windows(args.cluster, args.weekday)
            print(f"removed {removed} window(s) of {args.cluster}")
    finally:
        await pool.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.maintenance", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the windows (of one cluster)")
    listing.add_argument("--cluster")
    setting = commands.add_parser("set", help="add or replace a weekly window")
    setting.add_argument("--cluster", required=True)
    setting.add_argument("--weekday", type=int, required=True, help="0 = Monday ... 6 = Sunday")
    setting.add_argument("--start", required=True, help="local start time, HH:MM")
    setting.add_argument("--minutes", type=int, required=True)
    setting.add_argument("--tz", default="UTC", help="IANA time zone, e.g. Asia/Shanghai")
    setting.add_argument("--note", default="")
    setting.add_argument("--by", default="store.maintenance")
    clearing = commands.add_parser("clear", help="remove a cluster's windows (of one weekday)")
    clearing.add_argument("--cluster", required=True)
    clearing.add_argument("--weekday", type=int)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(resolve_database_url(Settings.from_env()), args))
    except ValidationError as error:
        print(f"store.maintenance: {describe_validation_error(error)}", file=sys.stderr)
    except ValueError as error:
        print(f"store.maintenance: {error}", file=sys.stderr)
    except StoreError as error:
        print(f"store.maintenance: {error}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
