"""Brings a database's schema up to date and, for the dev stack, gives it approvers to try approvals with.

    python -m store.seed [--dev-approvers]

The database is ``DATABASE_URL``, or the embedded server under ``OPSFLOW_DATA_DIR`` when that is unset.
The recommended flow control and approval rows come with the migrations; the approvers do not, because
a production database names its own people.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import time

from domain.maintenance import MaintenanceWindow
from runtime.config import Settings
from store.db import create_pool, load_migrations, migrate
from store.embedded import resolve_database_url
from store.errors import StoreError
from store.lifecycle import LifecycleStore
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore

# The group every seeded approval policy names (migration 0003), and the dev stack's members of it.
DEV_APPROVER_GROUP = "ops-admins"
DEV_APPROVERS = ("admin", "approver1", "approver2")


async def seed_dev_approvers(store: OperationStore | LifecycleStore) -> None:
    """Makes ``ops-admins`` exactly ``admin``, ``approver1`` and ``approver2``; safe to repeat."""
    lifecycle = store.lifecycle if isinstance(store, OperationStore) else store
    await lifecycle.set_approver_group(DEV_APPROVER_GROUP, DEV_APPROVERS, updated_by="store.seed")


async def seed_dev_windows(
    store: OperationStore | MaintenanceWindowStore, cluster_ids: Sequence[str]
) -> None:
    """Gives each cluster an always-open maintenance window (every day from 00:00 UTC for 1440 minutes),
    so the dev stack's cold migrations run at once; safe to repeat (a window with the same start is
    replaced, others are left). For the dev stack's demo only: a production database sets real windows
    (python -m store.maintenance set ...)."""
    windows = MaintenanceWindowStore.of(store) if isinstance(store, OperationStore) else store
    for cluster_id in cluster_ids:
        for weekday in range(7):
            await windows.set_window(
                MaintenanceWindow(
                    cluster_id=cluster_id,
                    weekday=weekday,
                    start=time(0),
                    duration_minutes=24 * 60,
                    time_zone="UTC",
                ),
                note="dev stack: always open",
            )


async def _seed(url: str, *, dev_approvers: bool) -> None:
    pool = await create_pool(url, max_size=2)
    try:
        applied = await migrate(pool)
        latest = max(migration.version for migration in load_migrations())
        if applied:
            print(f"applied migrations {', '.join(str(v) for v in applied)}; schema at version {latest}")
        else:
            print(f"schema already at version {latest}; no migration applied")
        if dev_approvers:
            await seed_dev_approvers(OperationStore(pool))
            print(f"approver group {DEV_APPROVER_GROUP} = {', '.join(DEV_APPROVERS)}")
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m store.seed",
        description="Brings the schema up to date; optionally seeds dev approvers.",
    )
    parser.add_argument(
        "--dev-approvers",
        action="store_true",
        help=f"make approver group {DEV_APPROVER_GROUP} = {', '.join(DEV_APPROVERS)} (dev stack only)",
    )
    args = parser.parse_args(argv)
    try:
        url = resolve_database_url(Settings.from_env())
        asyncio.run(_seed(url, dev_approvers=args.dev_approvers))
    except StoreError as error:
        print(f"store.seed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
