"""Disk live migration's limits (DOMAIN.md, "Disk live migration and recycle"), checked before anything is
done: each refusal has its own error type and names what is wrong. Pure."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

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
