"""Records the workflow histories that tests/test_replay.py replays.

    .venv/bin/python -m tests.histories.record

Runs each workflow path once on the time-skipping server against the simulator (demo fleet) and an
embedded PostgreSQL, and writes ``<name>.json`` beside this file. Re-record only on purpose: a history
recorded by an older version of a workflow is what proves the new version still replays it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from domain.maintenance import MaintenanceWindow
from domain.model import NcBizStatus
from domain.operations import OpsState
from houyi.http_client import HttpHouyiClient
from runtime import search_attributes
from simulator.disk_fleet import DESTINATION, SHARED_DISK, RecycleTaskSpec, build_disk_fleet, river_disk
from simulator.evacuation_fleet import CLUSTER, SOURCE_IP, SOURCE_NC_ID, build_evacuation_fleet
from simulator.server import start_simulator
from store.db import url_with_database
from store.embedded import start_embedded_postgres
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from tests.fixtures.pg import TEST_DATA_DIR
from tests.fixtures.temporal import installed_binary
from tests.helpers import SimulatorAdmin
from worker import build_worker
from workflows.evacuation import CorrectMigrationSignal
from workflows.lifecycle import ApprovalInput, OperationStatus, StepCommandInput

HERE = Path(__file__).parent


def lock_input(nc_ip: str, **overrides: Any) -> dict[str, Any]:
    return {
        "nc_ip": nc_ip,
        "requester": "alice",
        "reason_category": "hardware",
        "ticket": "CHG-1",
        **overrides,
    }


@asynccontextmanager
async def recording_setup(
    *, dev_server: bool = False
) -> AsyncIterator[tuple[WorkflowEnvironment, OperationStore, str]]:
    """The time-skipping server with our search attributes, a fresh database with the dev approvers, and a
    task queue: what every group of recordings runs on. ``dev_server``: the dev server instead, whose
    heartbeat timeouts run on the real clock (a cancel reaches a running activity through them)."""
    if dev_server:
        env = await WorkflowEnvironment.start_local(
            data_converter=pydantic_data_converter,
            dev_server_existing_path=installed_binary("temporal"),
            search_attributes=list(search_attributes.ALL),
            dev_server_log_level="error",
        )
    else:
        env = await WorkflowEnvironment.start_time_skipping(
            data_converter=pydantic_data_converter,
            test_server_existing_path=installed_binary("temporal-test-server"),
        )
        await search_attributes.register(env.client)
    server_url = start_embedded_postgres(TEST_DATA_DIR)
    database = f"record_{uuid.uuid4().hex}"
    store = await OperationStore.connect(server_url)
    await store.pool.execute(f'CREATE DATABASE "{database}"')
    await store.close()
    store = await OperationStore.connect(url_with_database(server_url, database))
    await seed_dev_approvers(store)
    try:
        yield env, store, f"record-{uuid.uuid4()}"
    finally:
        await store.close()
        await env.shutdown()


async def record(
    client: Client,
    task_queue: str,
    name: str,
    raw: Any,
    *,
    workflow_type: str = "NcLock",
    signals: list[tuple[OpsState, str, BaseModel]] | None = None,
) -> None:
    """Runs one workflow to its end, sending each signal once the workflow reaches the given state."""
    workflow_id = f"record-{name}-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(workflow_type, raw, id=workflow_id, task_queue=task_queue)
    for state, signal, payload in signals or []:
        for _ in range(600):  # the time-skipping server answers at once; 30 s is plenty
            current = (await handle.query("status", result_type=OperationStatus)).state
            if current is state:
                break
            if current.final:
                raise RuntimeError(f"{name} ended {current.value} before reaching {state.value}")
            await asyncio.sleep(0.05)
        await handle.signal(signal, payload)
    try:
        await handle.result()
    except WorkflowFailureError:
        pass
    history = await write_history(handle, name)
    print(f"recorded {name} ({len(history.events)} events)")


async def write_history(handle: WorkflowHandle[Any, Any], name: str) -> WorkflowHistory:
    history = await handle.fetch_history()
    (HERE / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    return history


async def main() -> None:
    async with recording_setup() as (env, store, task_queue):
        simulator = await start_simulator(speed=1000)
        admin = SimulatorAdmin(simulator.url)
        try:
            async with HttpHouyiClient(simulator.url, recorder=store) as houyi:
                async with build_worker(
                    env.client, task_queue, houyi=houyi, store=store, power_poll_seconds=0.05
                ):
                    free = await admin.first_nc("free")
                    locked = await admin.first_nc("mlock")
                    await record(env.client, task_queue, "nc_lock_succeeded", lock_input(free["nc_ip"]))
                    await record(
                        env.client, task_queue, "nc_lock_refused_wrong_status", lock_input(locked["nc_ip"])
                    )
                    await record(
                        env.client, task_queue, "nc_lock_refused_invalid_input", lock_input("10.1.2.999")
                    )
                    other = await admin.first_nc("free", exclude={free["nc_ip"]})
                    await admin.inject(
                        action="lock_nc", code=409, message="nc is mlock, cannot lock", count=1
                    )
                    await record(
                        env.client, task_queue, "nc_lock_failed_lock_race", lock_input(other["nc_ip"])
                    )

                    approve = (
                        OpsState.PENDING_APPROVAL,
                        "approve",
                        ApprovalInput(approver="approver1", comment="ok"),
                    )
                    reject = (
                        OpsState.PENDING_APPROVAL,
                        "reject",
                        ApprovalInput(approver="approver2", comment="no"),
                    )
                    reboot = {"reason_category": "hang", "settings": {"needDumpCn": 1}}
                    first = await admin.first_nc("free", exclude={free["nc_ip"], other["nc_ip"]})
                    await record(
                        env.client, task_queue, "nc_forced_reboot_succeeded", lock_input(first["nc_ip"], **reboot),
                        workflow_type="NcForcedReboot", signals=[approve],
                    )  # fmt: skip
                    second = await admin.first_nc(
                        "free", exclude={free["nc_ip"], other["nc_ip"], first["nc_ip"]}
                    )
                    await record(
                        env.client, task_queue, "nc_forced_reboot_abandoned", lock_input(second["nc_ip"], **reboot),
                        workflow_type="NcForcedReboot",
                    )  # fmt: skip
                    third = [
                        nc
                        for nc in await admin.ncs()
                        if nc["biz_status"] == "free" and nc["region_id"] != first["region_id"]
                    ][0]
                    await record(
                        env.client, task_queue, "nc_forced_reboot_rejected", lock_input(third["nc_ip"], **reboot),
                        workflow_type="NcForcedReboot", signals=[reject],
                    )  # fmt: skip
                    down = [nc["nc_ip"] for nc in await admin.ncs() if nc["biz_status"] == "nc_down"][:2]
                    await admin.inject(
                        action="set_nc_status", code=500, message="control plane busy", count=5
                    )
                    retry = (OpsState.STEP_FAILED, "retry_step", StepCommandInput(operator="admin"))
                    await record(
                        env.client, task_queue, "nc_re_online_step_retried",
                        {"nc_ips": down, "requester": "alice", "reason_category": "hang", "settings": {"parallel": 1}},
                        workflow_type="NcReOnline", signals=[approve, retry],
                    )  # fmt: skip
        finally:
            await simulator.stop()


async def main_evacuations(only: list[str]) -> None:
    """The evacuation workflows, on ``simulator.evacuation_fleet`` (one fleet per recording)."""
    async with recording_setup() as (env, store, task_queue):
        await _record_evacuations(env, store, task_queue, only)


async def _record_evacuations(
    env: WorkflowEnvironment, store: OperationStore, task_queue: str, only: list[str]
) -> None:
    approve = (OpsState.PENDING_APPROVAL, "approve", ApprovalInput(approver="approver1", comment="ok"))
    fleet_dir = Path(tempfile.mkdtemp())

    def deep_offline(**settings: Any) -> dict[str, Any]:
        return {
            "nc_ip": SOURCE_IP,
            "requester": "alice",
            "reason_category": "hardware",
            "reason": "DIMM errors",
            "settings": settings,
        }

    async def on_fleet(name: str, vm_count: int, **options: Any) -> Any:
        path = fleet_dir / f"{name}.json"
        path.write_text(json.dumps(build_evacuation_fleet(vm_count, **options)))
        return await start_simulator(path, speed=1000)

    for name, vm_count, options, workflow_type, raw, signals, setup in (
        ("nc_deep_offline_succeeded", 6, {"ineligible": 2}, "NcDeepOffline", deep_offline(), [approve], "dirty"),
        # With patch-checks-at-start: every patch marker in the first workflow task.
        ("nc_deep_offline_succeeded_patch_checks_at_start", 6, {"ineligible": 2}, "NcDeepOffline", deep_offline(),
         [approve], "dirty"),
        ("nc_deep_offline_cold_waited_for_window", 3, {}, "NcDeepOfflineCold", deep_offline(), [approve], "window"),
        ("nc_deep_offline_stuck_corrected", 2, {}, "NcDeepOffline", deep_offline(needLimit=0), [approve], "stuck"),
        ("whole_host_migration_relaunched", 4, {"stopped": 1, "ineligible": 1}, "WholeHostMigration",
         {**deep_offline(), "settings": {"parallel": 2}}, [approve], "relaunch"),
        ("vm_residue_cleanup_destroyed", 2, {}, "VmResidueCleanup",
         {**deep_offline(), "settings": {"preLock": 0}}, [approve], "residue"),
        ("wild_vm_cleanup_swept", 2, {}, "WildVmCleanup",
         {"cluster_id": CLUSTER, "requester": "alice", "reason_category": "internal_reboot",
          "settings": {"parallel": 2}}, [approve], "residue"),
    ):  # fmt: skip
        if only and name not in only:
            continue
        simulator = await on_fleet(name, vm_count, memory_choices=(4,), **options)
        admin = SimulatorAdmin(simulator.url)
        windows = MaintenanceWindowStore.of(store)
        await windows.remove_windows(CLUSTER)
        first_vm = sorted(vm for vm in simulator.fleet.vms if vm.startswith("i-evac"))[0]
        last_vm = sorted(vm for vm in simulator.fleet.vms if vm.startswith("i-evac"))[-1]
        extra: list[tuple[OpsState, str, BaseModel]] = list(signals)
        if setup == "window":
            opens = datetime.now(UTC) + timedelta(days=1)
            await windows.set_window(
                MaintenanceWindow(cluster_id=CLUSTER, weekday=opens.weekday(), start=opens.time().replace(microsecond=0), duration_minutes=120)
            )  # fmt: skip
        else:
            await seed_dev_windows(store, [CLUSTER])
        if setup == "dirty":
            await admin.patch_vm(last_vm, dirty_rate_mbps=200)
        if setup == "stuck":
            await admin.inject(action="live_migrate_vm", kind="stuck", vm_name=first_vm, count=1)
            extra.append((OpsState.STEP_FAILED, "correct_migration",
                          CorrectMigrationSignal(operator="admin", vm_id=first_vm, where=SOURCE_NC_ID)))  # fmt: skip
        if setup == "residue":
            elsewhere = sorted(vm for vm in simulator.fleet.vms if vm.startswith("i-full"))[0]
            await admin._request("POST", "/admin/residues", {"nc_id": SOURCE_NC_ID, "vm_id": elsewhere})
        if setup == "relaunch":
            await admin.inject(
                action="cold_migrate_vm", code=500, message="scheduler down", vm_name=first_vm, count=5
            )
            extra.append((OpsState.STEP_FAILED, "relaunch", StepCommandInput(operator="admin")))
        try:
            async with HttpHouyiClient(simulator.url, recorder=store) as houyi:
                async with build_worker(
                    env.client, task_queue, houyi=houyi, store=store, power_poll_seconds=0.05,
                    migration_poll_seconds=0.02, time_scale=0.001,
                ):  # fmt: skip
                    await record(
                        env.client, task_queue, name, raw, workflow_type=workflow_type, signals=extra
                    )
        finally:
            await simulator.stop()


async def main_disks(only: list[str]) -> None:
    """Disk live migration and disk recycle (issue 5), on ``simulator.disk_fleet``."""
    async with recording_setup() as (env, store, task_queue):
        await _record_disks(env, store, task_queue, only)


async def _record_disks(
    env: WorkflowEnvironment, store: OperationStore, task_queue: str, only: list[str]
) -> None:
    approve: tuple[OpsState, str, BaseModel] = (
        OpsState.PENDING_APPROVAL,
        "approve",
        ApprovalInput(approver="approver1", comment="ok"),
    )
    path = Path(tempfile.mkdtemp()) / "disks.json"
    tasks = [RecycleTaskSpec(finished_hours_ago=48), RecycleTaskSpec(finished_hours_ago=48, dst_not_loaded=2)]
    path.write_text(json.dumps(build_disk_fleet(recycle_tasks=tasks)))
    simulator = await start_simulator(path, speed=1000)
    migrate = {
        "disk_id": river_disk(1),
        "dst_storage_cluster": DESTINATION,
        "requester": "alice",
        "reason": "rebalance",
    }
    try:
        async with HttpHouyiClient(simulator.url, recorder=store) as houyi:
            async with build_worker(
                env.client, task_queue, houyi=houyi, store=store, disk_poll_seconds=0.02, disk_slot_retry_seconds=0.1
            ):  # fmt: skip
                simulator.fleet.patch_nc("10.50.0.1", biz_status=NcBizStatus.MLOCK)
                unlock = {"nc_ip": "10.50.0.1", "requester": "alice", "reason_category": "hardware"}
                for name, workflow_type, raw, signals in (
                    ("nc_unlock_succeeded", "NcUnlock", unlock, []),
                    ("disk_live_migration_succeeded", "DiskLiveMigration", migrate, [approve]),
                    ("disk_live_migration_refused_shared", "DiskLiveMigration",
                     {**migrate, "disk_id": SHARED_DISK}, []),
                    ("disk_recycle_recycled_and_skipped", "DiskRecycle", {}, []),
                ):  # fmt: skip
                    if not only or name in only:
                        await record(
                            env.client, task_queue, name, raw, workflow_type=workflow_type, signals=signals
                        )
    finally:
        await simulator.stop()


async def main_production(only: list[str]) -> None:
    """Issue 7: a reboot whose power cycle fails and is retried, on code with the OpsStep patch (its marker
    and the OpsStep upserts are in this history)."""
    async with recording_setup() as (env, store, task_queue):
        simulator = await start_simulator(speed=1000)
        admin = SimulatorAdmin(simulator.url)
        try:
            async with (
                HttpHouyiClient(simulator.url, recorder=store) as houyi,
                build_worker(env.client, task_queue, houyi=houyi, store=store, power_poll_seconds=0.05),
            ):
                # Recorded as the workflow code stood then: re-record only one named on the command line.
                #   nc_forced_reboot_step_retried_with_ops_step: with the OpsStep patch
                #   nc_forced_reboot_step_retried_upserts_changed_only: also with upsert-only-changes
                #   nc_forced_reboot_step_retried_local_store_writes: also with local-store-writes
                #   nc_forced_reboot_step_retried_ops_step_at_stops: also with ops-step-where-it-stops and
                #     running-again-after-operator
                #   nc_forced_reboot_step_retried_patch_checks_at_start: also with patch-checks-at-start
                for name in (
                    "nc_forced_reboot_step_retried_with_ops_step",
                    "nc_forced_reboot_step_retried_upserts_changed_only",
                    "nc_forced_reboot_step_retried_local_store_writes",
                    "nc_forced_reboot_step_retried_ops_step_at_stops",
                    "nc_forced_reboot_step_retried_patch_checks_at_start",
                ):
                    if only and name not in only:
                        continue
                    host = await admin.first_nc("free")
                    # One more failure than the activity's 5 attempts would be two operator rounds; 5 is one.
                    await admin.inject(action="oob_power_cycle", code=500, message="bmc down", count=5)
                    await record(
                        env.client, task_queue, name,
                        lock_input(host["nc_ip"], reason_category="hang", settings={"needDumpCn": 0}),
                        workflow_type="NcForcedReboot",
                        signals=[
                            (OpsState.PENDING_APPROVAL, "approve", ApprovalInput(approver="approver1", comment="ok")),
                            (OpsState.STEP_FAILED, "retry_step", StepCommandInput(operator="admin")),
                        ],
                    )  # fmt: skip
                # With "batched-host-planning": four hosts read and leased side by side, admitted by one
                # activity; one status change fails 5 times and is retried.
                name = "nc_re_online_batched_planning"
                if not only or name in only:
                    down = [nc["nc_ip"] for nc in await admin.ncs() if nc["biz_status"] == "nc_down"][:2]
                    for _ in range(4 - len(down)):
                        host = await admin.first_nc("free", exclude=set(down))
                        await admin.patch_nc(host["nc_ip"], biz_status="nc_down")
                        down.append(host["nc_ip"])
                    broken = next(nc["nc_id"] for nc in await admin.ncs() if nc["nc_ip"] == down[1])
                    await admin.inject(
                        action="set_nc_status", code=500, message="control plane busy", count=5, nc_id=broken
                    )
                    await record(
                        env.client, task_queue, name,
                        {"nc_ips": down, "requester": "alice", "reason_category": "hang", "settings": {"parallel": 2}},
                        workflow_type="NcReOnline",
                        signals=[
                            (OpsState.PENDING_APPROVAL, "approve", ApprovalInput(approver="approver1", comment="ok")),
                            (OpsState.STEP_FAILED, "retry_step", StepCommandInput(operator="admin")),
                        ],
                    )  # fmt: skip
        finally:
            await simulator.stop()


async def main_cancellations(only: list[str]) -> None:
    """A deep offline cancelled while two live migrations run (on the dev server: the cancel reaches the
    activities through their heartbeats). Recorded as the workflow code stood then:
      nc_deep_offline_cancelled_in_live_migration_before_lanes_patch: before "lanes-end-together"
      nc_deep_offline_cancelled_in_live_migration: with it (the step waits for every lane)"""
    async with recording_setup(dev_server=True) as (env, store, task_queue):
        for name in (
            "nc_deep_offline_cancelled_in_live_migration_before_lanes_patch",
            "nc_deep_offline_cancelled_in_live_migration",
        ):
            if only and name not in only:
                continue
            path = Path(tempfile.mkdtemp()) / f"{name}.json"
            path.write_text(json.dumps(build_evacuation_fleet(6, memory_choices=(32,))))
            # 32 GiB at 2 MB/s: hours in the model, 16 s at speed 1000; the cancel comes well before.
            simulator = await start_simulator(path, speed=1000)
            await seed_dev_windows(store, [CLUSTER])
            try:
                async with (
                    HttpHouyiClient(simulator.url, recorder=store) as houyi,
                    build_worker(
                        env.client, task_queue, houyi=houyi, store=store, migration_poll_seconds=0.2
                    ),
                ):
                    handle = await env.client.start_workflow(
                        "NcDeepOffline",
                        {"nc_ip": SOURCE_IP, "requester": "alice", "reason_category": "hardware",
                         "reason": "DIMM errors", "source": "alert",
                         "settings": {"needLimit": 0, "rate": 2, "parallel": 2}},
                        id=f"record-{name}-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                    )  # fmt: skip
                    for _ in range(600):
                        status = await handle.query("status", result_type=OperationStatus)
                        if "2 migrating" in status.progress:
                            break
                        await asyncio.sleep(0.05)
                    else:
                        raise RuntimeError(f"{name}: two migrations never ran together")
                    await handle.cancel()
                    try:
                        await handle.result()
                    except WorkflowFailureError:
                        pass
                    history = await write_history(handle, name)
                    final = await handle.query("status", result_type=OperationStatus)
                    states = sorted(vm.state.value for vm in final.vms)
                    print(f"recorded {name} ({len(history.events)} events; vms {states})")
            finally:
                await simulator.stop()


if __name__ == "__main__":
    # ``evacuations [NAME ...]``: the evacuation workflows' histories (issue 4 on), or only those named.
    # ``disks [NAME ...]``: disk live migration and recycle (issue 5), and NcUnlock.
    if sys.argv[1:2] == ["evacuations"]:
        asyncio.run(main_evacuations(sys.argv[2:]))
    elif sys.argv[1:2] == ["disks"]:
        asyncio.run(main_disks(sys.argv[2:]))
    elif sys.argv[1:2] == ["production"]:
        # ``production [NAME ...]``: issue 7's (the OpsStep patches) and issue 8's.
        asyncio.run(main_production(sys.argv[2:]))
    elif sys.argv[1:2] == ["cancellations"]:
        # ``cancellations [NAME ...]``: a deep offline cancelled during its live migrations.
        asyncio.run(main_cancellations(sys.argv[2:]))
    else:
        asyncio.run(main())
