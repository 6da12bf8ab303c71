"""Disk live migration's pre-checks (issue 5): each limit refused with its own error type, naming what is
wrong; a disk within every limit passes."""

from __future__ import annotations

from typing import Any

import pytest

from domain import errors
from domain.disk import StorageCluster, disk_migration_refusals
from domain.model import Disk, DiskCategory, DiskFormat

SOURCE = StorageCluster(name="river-qd-a1", zone_id="cn-qd-d01-a", oss_domain="oss-qd-1")
DESTINATION = StorageCluster(name="river-qd-a2", zone_id="cn-qd-d01-a", oss_domain="oss-qd-1")


def disk(**overrides: Any) -> Disk:
    fields: dict[str, Any] = {
        "disk_id": "d-8vb5n3q2",
        "zone_id": "cn-qd-d01-a",
        "category": DiskCategory.RIVER,
        "size_gib": 40,
        "storage_cluster": SOURCE.name,
        "oss_domain": SOURCE.oss_domain,
    }
    fields.update(overrides)
    return Disk(**fields)


def test_a_river_disk_within_every_limit_can_move() -> None:
    assert disk_migration_refusals(disk(), SOURCE, DESTINATION) == []
    assert disk_migration_refusals(disk(), SOURCE, DESTINATION, format=DiskFormat.RAW, size_gib=40) == []


@pytest.mark.parametrize(
    ("the_disk", "destination", "options", "error_type", "words"),
    [
        (
            disk(category=DiskCategory.LOCAL_SSD),
            DESTINATION,
            {},
            errors.DISK_NOT_RIVER,
            "is local_ssd: only river",
        ),
        (disk(shared=True), DESTINATION, {}, errors.DISK_SHARED, "is shared"),
        (disk(size_gib=4096), DESTINATION, {}, errors.DISK_TOO_LARGE, "4096 GiB: disks over 2048 GiB"),
        (
            disk(),
            DESTINATION,
            {"format": DiskFormat.QCOW2},
            errors.DISK_CHANGE_REFUSED,
            "cannot change it to qcow2",
        ),
        (disk(), DESTINATION, {"size_gib": 80}, errors.DISK_CHANGE_REFUSED, "cannot resize it to 80 GiB"),
        (disk(), SOURCE, {}, errors.DISK_SAME_CLUSTER, "already on storage cluster river-qd-a1"),
        (
            disk(),
            DESTINATION.model_copy(update={"zone_id": "cn-qd-d01-b"}),
            {},
            errors.DISK_CROSS_ZONE,
            "in zone cn-qd-d01-b: a disk moves live only within one zone",
        ),
        (
            disk(),
            DESTINATION.model_copy(update={"oss_domain": "oss-qd-2"}),
            {},
            errors.DISK_OSS_DOMAIN_MISMATCH,
            "different OSS domains",
        ),
        (
            disk(),
            DESTINATION.model_copy(update={"name": "river-qd-long-01"}),
            {},
            errors.STORAGE_CLUSTER_NAME_TOO_LONG,
            "'river-qd-long-01' is 16 bytes",
        ),
    ],
)
def test_each_limit_is_its_own_refusal(
    the_disk: Disk, destination: StorageCluster, options: dict[str, Any], error_type: str, words: str
) -> None:
    (refusal,) = disk_migration_refusals(the_disk, SOURCE, destination, **options)
    assert refusal.error_type == error_type
    assert words in refusal.message


def test_every_broken_limit_is_named_at_once() -> None:
    far = StorageCluster(name="river-sh-b1-xxxxx", zone_id="cn-sh-b", oss_domain="oss-sh")
    refusals = disk_migration_refusals(disk(shared=True, category=DiskCategory.LOCAL_HDD), SOURCE, far)
    assert [r.error_type for r in refusals] == [
        errors.DISK_NOT_RIVER,
        errors.DISK_SHARED,
        errors.DISK_CROSS_ZONE,
        errors.DISK_OSS_DOMAIN_MISMATCH,
        errors.STORAGE_CLUSTER_NAME_TOO_LONG,
    ]
