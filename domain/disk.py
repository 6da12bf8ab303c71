"""Disk live migration's limits (DOMAIN.md, "Disk live migration and recycle"), checked before anything is
done: each refusal has its own error type and names what is wrong. Pure."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from domain import errors
from domain.model import Disk, DiskCategory, DiskFormat

# Larger disks are not live-migrated (the product's "large disk").
LARGE_DISK_GIB = 2048
# Storage cluster names must be shorter than this many bytes.
STORAGE_CLUSTER_NAME_LIMIT_BYTES = 15


class StorageCluster(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    zone_id: str
    oss_domain: str


class Refusal(BaseModel):
    error_type: str
    message: str


def disk_migration_refusals(
    disk: Disk,
    source: StorageCluster,
    destination: StorageCluster,
    *,
    format: DiskFormat | None = None,
    size_gib: int | None = None,
) -> list[Refusal]:
    """Every reason the disk cannot be live-migrated to ``destination`` (empty: it can).

    ``format`` / ``size_gib``: what the caller asks the copy to be; a migration never changes either.
    """
    refusals: list[Refusal] = []

    def refuse(error_type: str, message: str) -> None:
        refusals.append(Refusal(error_type=error_type, message=message))

    if disk.category is not DiskCategory.RIVER:
        refuse(
            errors.DISK_NOT_RIVER, f"disk {disk.disk_id} is {disk.category.value}: only river disks move live"
        )
    if disk.shared:
        refuse(errors.DISK_SHARED, f"disk {disk.disk_id} is shared: shared disks cannot be live-migrated")
    if disk.size_gib > LARGE_DISK_GIB:
        refuse(
            errors.DISK_TOO_LARGE,
            f"disk {disk.disk_id} is {disk.size_gib} GiB: disks over {LARGE_DISK_GIB} GiB cannot be live-migrated",
        )
    if format is not None and format is not disk.format:
        refuse(
            errors.DISK_CHANGE_REFUSED,
            f"disk {disk.disk_id} is {disk.format.value}: a live migration cannot change it to {format.value}",
        )
    if size_gib is not None and size_gib != disk.size_gib:
        refuse(
            errors.DISK_CHANGE_REFUSED,
            f"disk {disk.disk_id} is {disk.size_gib} GiB: a live migration cannot resize it to {size_gib} GiB",
        )
    if destination.name == source.name:
        refuse(errors.DISK_SAME_CLUSTER, f"disk {disk.disk_id} is already on storage cluster {source.name}")
    if destination.zone_id != source.zone_id:
        refuse(
            errors.DISK_CROSS_ZONE,
            f"disk {disk.disk_id} is in zone {source.zone_id}, storage cluster {destination.name} in zone "
            f"{destination.zone_id}: a disk moves live only within one zone",
        )
    if destination.oss_domain != source.oss_domain:
        refuse(
            errors.DISK_OSS_DOMAIN_MISMATCH,
            f"storage clusters {source.name} ({source.oss_domain}) and {destination.name} "
            f"({destination.oss_domain}) are in different OSS domains",
        )
    for cluster in (source, destination):
        size = len(cluster.name.encode("utf-8"))
        if size >= STORAGE_CLUSTER_NAME_LIMIT_BYTES:
            refuse(
                errors.STORAGE_CLUSTER_NAME_TOO_LONG,
                f"storage cluster name {cluster.name!r} is {size} bytes: it must be shorter than "
                f"{STORAGE_CLUSTER_NAME_LIMIT_BYTES}",
            )
    return refusals


def refusal_summary(refusals: list[Refusal]) -> Refusal:
    """One refusal standing for all: the first one's type, every message."""
    return Refusal(error_type=refusals[0].error_type, message="; ".join(r.message for r in refusals))


# ---- disk live migration: what it did --------------------------------------------------------------


class DiskMigrationPhase(StrEnum):
    PLANNED = "planned"
    WAITING_FOR_SLOT = "waiting for a slot"
    SNAPSHOTTED = "snapshotted"
    COPYING = "copying"
    COMPLETE = "complete"
    FAILED = "failed"


class DiskMigrationReport(BaseModel):
    disk_id: str
    size_gib: int
    src_storage_cluster: str
    dst_storage_cluster: str
    phase: DiskMigrationPhase = DiskMigrationPhase.PLANNED
    snapshot_id: str | None = None
    task_id: str | None = None
    progress_pct: int = Field(default=0, ge=0, le=100)
    cancel_refused: bool = Field(
        default=False, description="a cancel arrived after the copy started: refused, the copy went on"
    )

    def line(self) -> str:
        parts = [
            f"disk {self.disk_id} ({self.size_gib} GiB) {self.src_storage_cluster} -> {self.dst_storage_cluster}:",
            self.phase.value,
        ]
        if self.phase is DiskMigrationPhase.COPYING:
            parts.append(f"{self.progress_pct}%")
        if self.snapshot_id:
            parts.append(f"snapshot {self.snapshot_id}")
        if self.task_id:
            parts.append(f"task {self.task_id}")
        if self.cancel_refused:
            parts.append("(cancel refused: no rollback once the copy runs)")
        return " ".join(parts)


# ---- source recycle ----------------------------------------------------------------------------------


class RecycleOutcome(StrEnum):
    RECYCLED = "recycled"
    SKIPPED = "skipped"
    FAILED = "failed"
    WOULD_RECYCLE = "would recycle"  # dry run


class RecycleCandidate(BaseModel):
    """A finished migration task whose source may be recycled (DOMAIN.md recycle steps 1 and 2)."""

    task_id: str
    disk_id: str
    src_pangu_path: str
    dst_pangu_path: str
    finished_at: datetime


class RecycleTaskReport(BaseModel):
    task_id: str
    disk_id: str = ""
    outcome: RecycleOutcome
    reason: str = ""
    not_loaded: int | None = Field(default=None, description="the destination's not-loaded count seen")


class RecycleReport(BaseModel):
    dry_run: bool
    finished_before: datetime
    tasks: list[RecycleTaskReport] = Field(default_factory=list)

    def count(self, outcome: RecycleOutcome) -> int:
        return sum(1 for task in self.tasks if task.outcome is outcome)

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(o)} {o.value}" for o in RecycleOutcome if self.count(o))
        return (
            f"{len(self.tasks)} finished task(s) older than {self.finished_before:%Y-%m-%d %H:%M} UTC: "
            + (counts or "nothing to do")
        )

    def markdown(self) -> str:
        lines = [f"## Disk source recycle{' (dry run)' if self.dry_run else ''}", "", self.summary(), ""]
        if self.tasks:
            lines += ["| task | disk | outcome | reason |", "|---|---|---|---|"]
            lines += [f"| {t.task_id} | {t.disk_id} | {t.outcome.value} | {t.reason} |" for t in self.tasks]
        return "\n".join(lines)
