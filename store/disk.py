"""Disk live migration leases and copy slots, per-storage-cluster limits, and the disk recycle record.

A disk is held by one operation at a time (``disk_leases``, taken at plan, released at the end); a held
disk starts copying only when a slot is free on both its storage clusters (``disk_migration_limits``,
``'*'`` for the default). Slot claims are serialised by a transaction-scoped advisory lock, so two workers
claiming at once never both get the last slot.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
from pydantic import BaseModel

from store.db import PoolStore

if TYPE_CHECKING:
    pass

DEFAULT_LIMIT_KEY = "*"
_SLOT_LOCK = 0x6469736B  # "disk": pg_advisory_xact_lock key of slot claims


class DiskHolder(BaseModel):
    disk_id: str
    workflow_id: str
    acquired_at: datetime


class SlotClaim(BaseModel):
    granted: bool
    # When not granted: the storage cluster that is full, its limit, and the workflows copying there.
    full_cluster: str | None = None
    limit: int = 0
    running: list[str] = []


class RecycleRecord(BaseModel):
    task_id: str
    disk_id: str
    outcome: str
    reason: str
    not_loaded: int | None
    workflow_id: str


class DiskStore(PoolStore):
    # ---- leases and slots ------------------------------------------------------------------------------

    async def acquire_disk(
        self, *, disk_id: str, workflow_id: str, src_storage_cluster: str, dst_storage_cluster: str
    ) -> DiskHolder | None:
        """Holds the disk for ``workflow_id`` (again, if it already does): None; else who holds it."""
        async with self._connection(f"acquiring disk {disk_id} for {workflow_id}") as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO disk_leases (disk_id, workflow_id, src_storage_cluster, dst_storage_cluster)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (disk_id) DO UPDATE SET disk_id = EXCLUDED.disk_id
                RETURNING disk_id, workflow_id, acquired_at
                """,
                disk_id,
                workflow_id,
                src_storage_cluster,
                dst_storage_cluster,
            )
        assert row is not None
        return None if row["workflow_id"] == workflow_id else DiskHolder(**dict(row))

    async def claim_copy_slot(self, *, disk_id: str, workflow_id: str) -> SlotClaim:
        """Marks the held disk as copying when both its storage clusters are under their limit."""
        async with self._connection(f"claiming a copy slot for disk {disk_id}") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SLOT_LOCK)
            lease = await conn.fetchrow(
                "SELECT src_storage_cluster, dst_storage_cluster, copying FROM disk_leases "
                "WHERE disk_id = $1 AND workflow_id = $2",
                disk_id,
                workflow_id,
            )
            if lease is None:
                raise LookupError(f"disk {disk_id} is not held by workflow {workflow_id}")
            if lease["copying"]:
                return SlotClaim(granted=True)
            for cluster in (lease["src_storage_cluster"], lease["dst_storage_cluster"]):
                limit = await _limit(conn, cluster)
                running = [
                    r["workflow_id"]
                    for r in await conn.fetch(
                        "SELECT workflow_id FROM disk_leases WHERE copying "
                        "AND (src_storage_cluster = $1 OR dst_storage_cluster = $1) ORDER BY copying_since",
                        cluster,
                    )
                ]
                if len(running) >= limit:
                    return SlotClaim(granted=False, full_cluster=cluster, limit=limit, running=running)
            await conn.execute(
                "UPDATE disk_leases SET copying = true, copying_since = now() WHERE disk_id = $1", disk_id
            )
        return SlotClaim(granted=True)

    async def release_disk(self, *, disk_id: str, workflow_id: str) -> bool:
        async with self._connection(f"releasing disk {disk_id}") as conn:
            status: str = await conn.execute(
                "DELETE FROM disk_leases WHERE disk_id = $1 AND workflow_id = $2", disk_id, workflow_id
            )
        return status.endswith(" 1")

    async def copying(self, storage_cluster: str | None = None) -> list[str]:
        """Disks whose copy runs (on ``storage_cluster``, either end)."""
        async with self._connection("reading the disk copies running") as conn:
            rows = await conn.fetch(
                "SELECT disk_id FROM disk_leases WHERE copying AND ($1::text IS NULL "
                "OR src_storage_cluster = $1 OR dst_storage_cluster = $1) ORDER BY disk_id",
                storage_cluster,
            )
        return [r["disk_id"] for r in rows]

    async def set_limit(self, storage_cluster: str, max_running: int, *, updated_by: str = "") -> None:
        """At most ``max_running`` copies at once touching ``storage_cluster`` (``'*'``: the default)."""
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        async with self._connection(f"setting the disk migration limit of {storage_cluster}") as conn:
            await conn.execute(
                """
                INSERT INTO disk_migration_limits (storage_cluster, max_running, updated_by) VALUES ($1, $2, $3)
                ON CONFLICT (storage_cluster) DO UPDATE
                SET max_running = EXCLUDED.max_running, updated_by = EXCLUDED.updated_by, updated_at = now()
                """,
                storage_cluster,
                max_running,
                updated_by,
            )

    async def limit_for(self, storage_cluster: str) -> int:
        async with self._connection(f"reading the disk migration limit of {storage_cluster}") as conn:
            return await _limit(conn, storage_cluster)

    # ---- recycle -------------------------------------------------------------------------------------

    async def recycle_record(self, task_id: str) -> RecycleRecord | None:
        async with self._connection(f"reading the recycle record of {task_id}") as conn:
            row = await conn.fetchrow(
                "SELECT task_id, disk_id, outcome, reason, not_loaded, workflow_id FROM disk_recycles "
                "WHERE task_id = $1",
                task_id,
            )
        return None if row is None else RecycleRecord(**dict(row))

    async def record_recycle(self, record: RecycleRecord) -> None:
        """The task's latest outcome; a recycled task stays recycled."""
        async with self._connection(f"recording the recycle of {record.task_id}") as conn:
            await conn.execute(
                """
                INSERT INTO disk_recycles (task_id, disk_id, outcome, reason, not_loaded, workflow_id)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (task_id) DO UPDATE
                SET outcome = EXCLUDED.outcome, reason = EXCLUDED.reason, not_loaded = EXCLUDED.not_loaded,
                    workflow_id = EXCLUDED.workflow_id, at = now()
                WHERE disk_recycles.outcome <> 'recycled'
                """,
                record.task_id,
                record.disk_id,
                record.outcome,
                record.reason,
                record.not_loaded,
                record.workflow_id,
            )

    async def recycle_records(self) -> list[RecycleRecord]:
        async with self._connection("reading the recycle records") as conn:
            rows = await conn.fetch(
                "SELECT task_id, disk_id, outcome, reason, not_loaded, workflow_id FROM disk_recycles "
                "ORDER BY task_id"
            )
        return [RecycleRecord(**dict(r)) for r in rows]


async def _limit(conn: asyncpg.Connection, storage_cluster: str) -> int:
    value = await conn.fetchval(
        "SELECT max_running FROM disk_migration_limits WHERE storage_cluster IN ($1, $2) "
        "ORDER BY storage_cluster = $2 LIMIT 1",
        storage_cluster,
        DEFAULT_LIMIT_KEY,
    )
    return int(value) if value is not None else 2
