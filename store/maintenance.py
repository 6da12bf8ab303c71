"""Maintenance windows as stored configuration (table ``maintenance_windows``), and a CLI to edit them.

    python -m store.maintenance list [--cluster C]
    python -m store.maintenance set --cluster ECS-CPU-A-8976 --weekday 3 --start 02:00 --minutes 240 \\
        --tz Asia/Shanghai [--note TEXT]
    python -m store.maintenance clear --cluster ECS-CPU-A-8976 [--weekday 3]

The database is ``DATABASE_URL``, or the embedded server under ``OPSFLOW_DATA_DIR`` when that is unset
(as for ``python -m store.seed``); the schema is brought up to date first. Bad input exits 2, a store
failure 1. Workflows read a cluster's windows each time they need them, so a change applies to the next
wait (domain/maintenance.py says how a window falls on the calendar).

The store lives on the operation store's pool: ``MaintenanceWindowStore(operation_store.pool)``, or
``MaintenanceWindowStore.of(operation_store)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import time
from typing import TYPE_CHECKING

import asyncpg
from pydantic import ValidationError

from domain.maintenance import MaintenanceWindow
from domain.operations import describe_validation_error
from runtime.config import Settings
from store.db import PoolStore, create_pool, migrate
from store.embedded import resolve_database_url
from store.errors import StoreError

if TYPE_CHECKING:
    pass

_COLUMNS = "id, cluster_id, weekday, start_time, duration_minutes, time_zone"


class MaintenanceWindowStore(PoolStore):
    """Reads and writes ``maintenance_windows`` through the asyncpg pool the ``OperationStore`` holds.

    Every method raises ``StoreUnavailable`` when the database cannot be reached (or no pooled connection
    frees up within ``acquire_timeout`` seconds), and ``StoreError`` for a stored row that is no longer a
    valid window (e.g. a time zone this machine does not know).
    """

    async def windows_for(self, cluster_id: str) -> list[MaintenanceWindow]:
        """The cluster's windows by weekday and start; [] when it has none."""
        async with self._connection(f"reading the maintenance windows of {cluster_id}") as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                f"SELECT {_COLUMNS} FROM maintenance_windows WHERE cluster_id = $1 "
                "ORDER BY weekday, start_time",
                cluster_id,
            )
        return [_window(row) for row in rows]

    async def all_windows(self) -> list[MaintenanceWindow]:
        """Every cluster's windows, by cluster, weekday and start."""
        async with self._connection("reading the maintenance windows") as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                f"SELECT {_COLUMNS} FROM maintenance_windows ORDER BY cluster_id, weekday, start_time"
            )
        return [_window(row) for row in rows]

    async def set_window(self, window: MaintenanceWindow, note: str = "", *, updated_by: str = "") -> None:
        """Adds the window, or replaces the cluster's window opening at the same weekday and start (its
        length, zone and note); safe to repeat."""
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
        """Removes the cluster's windows (only those of ``weekday`` when given); returns how many."""
        async with self._connection(f"removing maintenance windows of {cluster_id}") as conn:
            status: str = await conn.execute(
                "DELETE FROM maintenance_windows WHERE cluster_id = $1 AND ($2::smallint IS NULL OR weekday = $2)",
                cluster_id,
                weekday,
            )
        return int(status.split()[-1])  # "DELETE <n>"


def _window(row: asyncpg.Record) -> MaintenanceWindow:
    try:
        return MaintenanceWindow(
            cluster_id=row["cluster_id"],
            weekday=row["weekday"],
            start=row["start_time"],
            duration_minutes=row["duration_minutes"],
            time_zone=row["time_zone"],
        )
    except ValidationError as error:
        raise StoreError(
            f"maintenance window #{row['id']} of {row['cluster_id']} is not valid here: "
            f"{describe_validation_error(error)}"
        ) from error


# ---- the CLI ------------------------------------------------------------------------------------------


def _start(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start {text!r} is not a time of day (HH:MM)") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m store.maintenance",
        description="Lists, sets and clears clusters' maintenance windows.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every window, or one cluster's")
    listing.add_argument("--cluster")
    setting = commands.add_parser("set", help="add a weekly window, or replace the one with the same start")
    setting.add_argument("--cluster", required=True)
    setting.add_argument("--weekday", type=int, required=True, help="0 = Monday ... 6 = Sunday")
    setting.add_argument("--start", required=True, help="local wall-clock start, HH:MM")
    setting.add_argument("--minutes", type=int, required=True, help="length, 1 ... 10080")
    setting.add_argument("--tz", default="UTC", help="IANA time zone, e.g. Asia/Shanghai [UTC]")
    setting.add_argument("--note", default="")
    setting.add_argument("--by", default=os.environ.get("USER", ""), help="who changes it [$USER]")
    clearing = commands.add_parser("clear", help="remove a cluster's windows (only one weekday's)")
    clearing.add_argument("--cluster", required=True)
    clearing.add_argument("--weekday", type=int, choices=range(7), metavar="0..6")
    return parser


async def _run(url: str, args: argparse.Namespace, window: MaintenanceWindow | None) -> None:
    pool = await create_pool(url, max_size=2)
    try:
        await migrate(pool)
        windows = MaintenanceWindowStore(pool)
        if window is not None:
            await windows.set_window(window, note=args.note, updated_by=args.by)
            print(f"{window.cluster_id}\t{window.describe()}")
        elif args.command == "list":
            found = await (windows.windows_for(args.cluster) if args.cluster else windows.all_windows())
            for each in found:
                print(f"{each.cluster_id}\t{each.describe()}")
            if not found:
                print("no maintenance window" + (f" for {args.cluster}" if args.cluster else ""))
        else:
            removed = await windows.remove_windows(args.cluster, args.weekday)
            print(f"removed {removed} window(s) of {args.cluster}")
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # a usage error exits 2 with argparse's message
    try:
        # The input is checked before the database is touched.
        window = (
            MaintenanceWindow(
                cluster_id=args.cluster,
                weekday=args.weekday,
                start=_start(args.start),
                duration_minutes=args.minutes,
                time_zone=args.tz,
            )
            if args.command == "set"
            else None
        )
    except ValidationError as error:
        print(f"store.maintenance: {describe_validation_error(error)}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"store.maintenance: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(resolve_database_url(Settings.from_env()), args, window))
    except StoreError as error:
        print(f"store.maintenance: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
