"""Disk live migration and the storage tools disk recycle uses, on the simulator over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from domain.model import Disk
from houyi.port import (
    DeviceMigrateLogEntry,
    DiskMigrationProgress,
    DiskMigrationState,
    DiskMigrationTask,
    DiskSnapshot,
    MigrationLogEntry,
)
from houyi.wire import Code, Envelope
from simulator.server import RunningSimulator
from tests.fixtures.simulator import SimulatorClient, open_client, wait_for


@pytest_asyncio.fixture
async def houyi(small_simulator: RunningSimulator) -> AsyncIterator[SimulatorClient]:
    async with open_client(small_simulator) as client:
        yield client


def ok(envelope: Envelope) -> Any:
    assert envelope.code == Code.OK, f"{envelope.code} {envelope.msg}"
    return envelope.data


async def migration_log(houyi: SimulatorClient, task_id: str, **filters: Any) -> list[MigrationLogEntry]:
    answer = ok(await houyi.call("query_migration_log", task_id=task_id, **filters))
    return [MigrationLogEntry.model_validate(entry) for entry in answer["entries"]]


async def test_describe_disk_derives_zone_and_oss_domain(houyi: SimulatorClient) -> None:
    disk = Disk.model_validate(ok(await houyi.call("describe_disk", disk_id="d-river001"))["disk"])
    assert (disk.vm_id, disk.zone_id, disk.oss_domain, disk.storage_cluster) == (
        "i-plain0000001",
        "cn-qd-d01-a",
        "oss-1",
        "river-a1",
    )


@pytest.mark.parametrize(
    ("disk_id", "destination", "code", "reason"),
    [
        ("d-local001", "river-a2", Code.UNSUPPORTED, "only river disks can be live-migrated"),
        ("d-shared01", "river-a2", Code.UNSUPPORTED, "shared disks cannot be live-migrated"),
        ("d-huge0001", "river-a2", Code.UNSUPPORTED, "disks larger than 2048 GiB cannot be live-migrated"),
        ("d-river001", "river-b1", Code.UNSUPPORTED, "stays within one zone"),
        ("d-river001", "river-a3", Code.UNSUPPORTED, "different OSS domains"),
        (
            "d-river001",
            "river-a-archive-01",
            Code.UNSUPPORTED,
            "is 18 bytes: disk live migration needs names shorter than 15",
        ),
        ("d-river001", "river-a1", Code.UNSUPPORTED, "already on storage cluster river-a1"),
        ("d-river001", "river-zz", Code.NOT_FOUND, "storage cluster river-zz not found"),
    ],
)
async def test_each_disk_migration_limit_is_refused_with_its_reason(
    houyi: SimulatorClient, disk_id: str, destination: str, code: Code, reason: str
) -> None:
    answer = await houyi.call(
        "start_disk_live_migration",
        disk_id=disk_id,
        dst_storage_cluster=destination,
        client_token=f"{disk_id}-{destination}",
    )
    assert answer.code == code and reason in answer.msg, answer.msg


async def test_a_disk_migration_copies_then_logs_completion(houyi: SimulatorClient) -> None:
    snapshot = DiskSnapshot.model_validate(
        ok(await houyi.call("create_disk_snapshot", disk_id="d-river002", client_token="s"))
    )
    assert snapshot.snapshot_id == "s-000001"
    task = DiskMigrationTask.model_validate(
        ok(
            await houyi.call(
                "start_disk_live_migration",
                disk_id="d-river002",
                dst_storage_cluster="river-a2",
                client_token="m",
            )
        )
    )
    assert (task.src_storage_cluster, task.dst_storage_cluster) == ("river-a1", "river-a2")
    again = await houyi.call(
        "start_disk_live_migration", disk_id="d-river002", dst_storage_cluster="river-a2", client_token="m2"
    )
    assert again.code == Code.WRONG_STATE and "already migrating" in again.msg
    # While the copy runs the destination is not fully loaded.
    assert int(ok(await houyi.call("bsutil_rlm", dir="pangu://river-a2/river/d-river002"))["not_loaded"]) > 0

    async def complete() -> bool:
        progress = DiskMigrationProgress.model_validate(
            ok(await houyi.call("get_disk_migration_progress", task_id=task.task_id))
        )
        return progress.state is DiskMigrationState.COMPLETE and progress.progress_pct == 100

    await wait_for(complete, what="the disk copy to complete")
    assert (
        Disk.model_validate(
            ok(await houyi.call("describe_disk", disk_id="d-river002"))["disk"]
        ).storage_cluster
        == "river-a2"
    )
    device_log = [
        DeviceMigrateLogEntry.model_validate(e)
        for e in ok(await houyi.call("query_device_migrate_log", status="complete"))["entries"]
    ]
    assert task.task_id in {e.task_id for e in device_log}
    [row] = await migration_log(houyi, task.task_id, status=2, src_recycled=0)
    assert (row.src_pangu_path, row.dst_pangu_path) == (
        "pangu://river-a1/river/d-river002",
        "pangu://river-a2/river/d-river002",
    )
    assert row.finished_at > datetime.now(UTC) - timedelta(minutes=1)
    # Finished just now, so not "before yesterday": recycle must leave it alone for a day.
    assert (
        await migration_log(
            houyi, task.task_id, finished_before=(datetime.now(UTC) - timedelta(days=1)).isoformat()
        )
        == []
    )
    assert int(ok(await houyi.call("bsutil_rlm", dir=row.dst_pangu_path))["not_loaded"]) == 0
    assert (await houyi.get("/admin/disks/d-river002"))["migrations"][0]["had_snapshot"] is True


async def test_a_migration_without_a_snapshot_is_allowed_but_counted(houyi: SimulatorClient) -> None:
    ok(
        await houyi.call(
            "start_disk_live_migration",
            disk_id="d-river001",
            dst_storage_cluster="river-a2",
            client_token="m",
        )
    )
    assert (await houyi.counters())["fleet"]["disk_migrations_without_snapshot"] == 1


async def test_recycle_walks_the_logs_counts_and_deletes(houyi: SimulatorClient) -> None:
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    complete = ok(await houyi.call("query_device_migrate_log", status="complete"))["entries"]
    assert [e["task_id"] for e in complete] == ["dmt-900001", "dmt-900002"]
    [first] = await migration_log(houyi, "dmt-900001", status=2, src_recycled=0, finished_before=yesterday)
    [second] = await migration_log(houyi, "dmt-900002", status=2, src_recycled=0, finished_before=yesterday)
    assert int(ok(await houyi.call("bsutil_rlm", dir=first.dst_pangu_path))["not_loaded"]) == 0
    assert (
        int(ok(await houyi.call("bsutil_rlm", dir=second.dst_pangu_path))["not_loaded"]) == 3
    )  # skip this one

    ok(await houyi.call("bsutil_delete_image", dir=first.src_pangu_path, client_token="del"))
    ok(await houyi.call("river_admin_migrate_recycle", task_id="dmt-900001", client_token="rec"))
    assert await migration_log(houyi, "dmt-900001", status=2, src_recycled=0, finished_before=yesterday) == []
    assert [row.src_recycled for row in await migration_log(houyi, "dmt-900001")] == [1]

    again = await houyi.call("river_admin_migrate_recycle", task_id="dmt-900001", client_token="rec-2")
    assert again.code == Code.WRONG_STATE and "already recycled" in again.msg
    gone = await houyi.call("bsutil_delete_image", dir=first.src_pangu_path, client_token="del-2")
    assert gone.code == Code.NOT_FOUND and "no image at" in gone.msg
    fleet = (await houyi.counters())["fleet"]
    assert (fleet["images_deleted"], fleet["live_images_deleted"], fleet["recycles"]) == (1, 0, 1)


async def test_deleting_a_disks_live_image_is_obeyed_but_counted(houyi: SimulatorClient) -> None:
    ok(await houyi.call("bsutil_delete_image", dir="pangu://river-a2/river/d-done0001", client_token="oops"))
    assert (await houyi.counters())["fleet"]["live_images_deleted"] == 1


async def test_storage_tool_parameters_are_checked(houyi: SimulatorClient) -> None:
    bad_time = await houyi.call("query_migration_log", task_id="dmt-900001", finished_before="yesterday")
    assert bad_time.code == Code.INVALID_PARAMETER and "finished_before" in bad_time.msg
    unknown = await houyi.call("river_admin_migrate_recycle", task_id="dmt-404", client_token="r")
    assert unknown.code == Code.NOT_FOUND
    assert ok(await houyi.call("query_migration_log", task_id="dmt-404"))["entries"] == []
