"""Fleets for disk live migration and disk recycle tests: storage clusters, disks, finished migrations.

Zone ``cn-dsk-d01-a`` has ``river-dk-a1``, ``river-dk-a2``, ``river-dk-a3`` (OSS domain ``oss-dk-01``),
``river-dk-ax`` (``oss-dk-02``) and ``river-dk-archive-01`` (a name of 19 bytes); zone ``cn-dsk-d01-b`` has
``river-dk-b1``. Disks on ``river-dk-a1``: ``d-river-NN`` (river, 40 GiB) for migrations, and one disk for
each pre-check refusal: ``d-local-01`` (local SSD), ``d-shared-01`` (shared), ``d-large-01`` (4 TiB).
``recycle_tasks`` adds finished migrations (``RecycleTaskSpec``) for disk recycle: each its own disk, now
living on the destination, with its source image kept.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from simulator.fleet import FleetFile, pangu_path

REGION = "cn-dsk-d01"
ZONE = "cn-dsk-d01-a"
OTHER_ZONE = "cn-dsk-d01-b"
CLUSTER = "ECS-CPU-DSK-01"
SOURCE = "river-dk-a1"
DESTINATION = "river-dk-a2"
THIRD = "river-dk-a3"
OTHER_OSS = "river-dk-ax"
LONG_NAME = "river-dk-archive-01"
OTHER_ZONE_CLUSTER = "river-dk-b1"
LOCAL_DISK = "d-local-01"
SHARED_DISK = "d-shared-01"
LARGE_DISK = "d-large-01"


class RecycleTaskSpec(BaseModel):
    """A finished disk migration as the recycle finds it."""

    finished_hours_ago: float = Field(ge=0)
    src_recycled: bool = False
    dst_not_loaded: int = Field(default=0, ge=0)


def river_disk(index: int) -> str:
    return f"d-river-{index:02d}"


def recycle_disk(index: int) -> str:
    return f"d-recycle-{index:03d}"


def recycle_task(index: int) -> str:
    return f"dmt-7{index:05d}"


def build_disk_fleet(
    river_disks: int = 4,
    *,
    recycle_tasks: list[RecycleTaskSpec] | None = None,
    now: datetime | None = None,
    copy_mib_per_second: float = 500.0,
    disk_gib: int = 40,
) -> dict[str, Any]:
    now = now or datetime.now().astimezone()
    storage = [
        {"name": SOURCE, "zone_id": ZONE, "oss_domain": "oss-dk-01"},
        {"name": DESTINATION, "zone_id": ZONE, "oss_domain": "oss-dk-01"},
        {"name": THIRD, "zone_id": ZONE, "oss_domain": "oss-dk-01"},
        {"name": OTHER_OSS, "zone_id": ZONE, "oss_domain": "oss-dk-02"},
        {"name": LONG_NAME, "zone_id": ZONE, "oss_domain": "oss-dk-01"},
        {"name": OTHER_ZONE_CLUSTER, "zone_id": OTHER_ZONE, "oss_domain": "oss-dk-01"},
    ]
    disks: list[dict[str, Any]] = [
        {"disk_id": river_disk(i), "category": "river", "size_gib": disk_gib, "storage_cluster": SOURCE}
        for i in range(1, river_disks + 1)
    ]
    disks += [
        {"disk_id": LOCAL_DISK, "category": "local_ssd", "size_gib": 100, "storage_cluster": SOURCE},
        {
            "disk_id": SHARED_DISK,
            "category": "river",
            "size_gib": 40,
            "shared": True,
            "storage_cluster": SOURCE,
        },
        {"disk_id": LARGE_DISK, "category": "river", "size_gib": 4096, "storage_cluster": SOURCE},
    ]
    migrations: list[dict[str, Any]] = []
    not_loaded: dict[str, int] = {}
    for index, task in enumerate(recycle_tasks or [], start=1):
        disk_id = recycle_disk(index)
        disks.append(
            {"disk_id": disk_id, "category": "river", "size_gib": 20, "storage_cluster": DESTINATION}
        )
        migrations.append(
            {
                "task_id": recycle_task(index),
                "disk_id": disk_id,
                "src_storage_cluster": SOURCE,
                "dst_storage_cluster": DESTINATION,
                "src_recycled": int(task.src_recycled),
                "finished_at": (now - timedelta(hours=task.finished_hours_ago)).isoformat(),
            }
        )
        if task.dst_not_loaded:
            not_loaded[pangu_path(DESTINATION, disk_id)] = task.dst_not_loaded
    fleet = {
        "name": "disks",
        "settings": {"disk_copy_mib_per_second": copy_mib_per_second},
        "regions": [{"region_id": REGION, "zones": [ZONE, OTHER_ZONE]}],
        "clusters": [{"cluster_id": CLUSTER, "region_id": REGION, "zone_id": ZONE, "kind": "CPU"}],
        "storage_clusters": storage,
        "ncs": [
            {
                "nc_id": "50000-1",
                "nc_ip": "10.50.0.1",
                "hostname": "dsk-50000-1",
                "sn": "SN500001",
                "cluster_id": CLUSTER,
                "cpu_model": "Intel(R) Xeon(R) Platinum 8269CY",
                "software_version": "houyi-3.5.2",
                "vcpu_total": 104,
                "memory_gib_total": 768,
            }
        ],
        "disks": disks,
        "disk_migrations": migrations,
        "bsutil_not_loaded": not_loaded,
    }
    FleetFile.model_validate(fleet)
    return fleet
