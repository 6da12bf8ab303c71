"""Evacuating a host (issue 4) on the time-skipping server with the real worker, simulator and PostgreSQL:
0x400003 deep offline, 0x40003000001001 without live migration, and whole-host migration.

The fleet is ``simulator.evacuation_fleet``: ``10.40.0.10`` carries the VMs, its cluster has room for them;
``10.41.0.10``'s cluster has none. The simulator runs 1,000 times faster than real time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from domain import errors
from domain.evacuation import MigrationMethod, VmMoveState
from domain.maintenance import MaintenanceWindow
from domain.model import NcBizStatus
from domain.operations import HostOutcomeKind, OpsState
from simulator.evacuation_fleet import (
    CLUSTER,
    FULL_SOURCE_IP,
    SOURCE_IP,
    SOURCE_NC_ID,
)
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore
from store.seed import seed_dev_windows
from tests.fixtures.evacuation import Fleet
from tests.helpers import eventually
from tests.lifecycle_helpers import (
    REQUESTER,
    Operations,
    approve,
    command,
    failure_of,
    status_of,
    wait_status,
)
from workflows.lifecycle import OperationStatus, StepStatus

DEEP_OFFLINE_STEPS = [
    "LockNc",
    "InitVmStatus",
    "OpsEvnLiveMigrate",
    "ReserveRIPoll",
    "OpsEvnNotify",
    "RecoverVmInTnb",
    "CheckBeforeReboot",
    "OpsEvnPublishEvent",
    "OpsEvnShutdownNc",
    "OnlyPowerOnSpecifiedNc",
    "OpsEvnPublishEvent",
    "ReleaseRIPoll",
    "OpsEvnFinishOps",
]

Evacuate = Callable[..., Awaitable[Any]]


def evacuation_input(nc_ip: str = SOURCE_IP, *, source: str = "alert", **settings: Any) -> dict[str, Any]:
    """A deep offline from an alert (no approval needed), flow control bypassed: tests run many per cluster."""
    return {
        "nc_ip": nc_ip,
        "requester": REQUESTER,
        "reason_category": "hardware",
        "reason": "DIMM errors climbing: drain and reboot",
        "ticket": "CHG-4001",
        "source": source,
        "settings": {"needLimit": 0, **settings},
    }


@pytest.fixture
async def mixed(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    store: OperationStore,
) -> Fleet:
    """12 VMs on the source: 7 can go live, 3 cannot (local disk, GPU, trunk NIC), 2 are stopped."""
    fleet = await make_fleet(12, ineligible=3, stopped=2)
    await seed_dev_windows(store, [CLUSTER])
    return fleet


def step_table(status: OperationStatus) -> list[tuple[str, str]]:
    return [(s.name, s.status.value) for s in status.steps]


# ---- 0x400003 ------------------------------------------------------------------------------------------


async def test_a_deep_offline_live_migrates_what_it_can_cold_migrates_the_rest_and_reboots_the_empty_host(
    mixed: Fleet, ops_on: Callable[[Fleet], Awaitable[Operations]], store: OperationStore
) -> None:
    ops = await ops_on(mixed)
    before_vms = mixed.vms_of(SOURCE_NC_ID)
    before_statuses = mixed.statuses()
    assert len(before_vms) == 12

    handle = await ops.start("NcDeepOffline", evacuation_input())
    result = await handle.result()

    assert result.state is OpsState.SUCCEEDED, result.message
    status = await status_of(handle)
    assert step_table(status) == [(name, "succeeded") for name in DEEP_OFFLINE_STEPS]
    # Every VM left the host and is where its record says, in the state it had: none lost.
    assert mixed.vms_of(SOURCE_NC_ID) == []
    assert mixed.statuses() == before_statuses
    by_id = {vm.vm_id: vm for vm in result.vms}
    assert sorted(by_id) == before_vms
    for vm in result.vms:
        assert vm.nc_id != SOURCE_NC_ID and vm.nc_id == mixed.running.fleet.vms[vm.vm_id].nc_id
    live = [vm for vm in result.vms if vm.method is MigrationMethod.LIVE]
    cold = [vm for vm in result.vms if vm.method is MigrationMethod.COLD]
    assert (len(live), len(cold)) == (7, 5)
    assert {vm.state for vm in live} == {VmMoveState.MIGRATED}
    assert {vm.state for vm in cold} == {VmMoveState.COLD_MIGRATED}
    assert {b for vm in cold for b in vm.blockers} == {
        "local_storage",
        "gpu_fpga_passthrough_sriov",
        "trunk_or_member_nic",
        "not running (stopped)",
    }
    # The host was powered off empty, powered on again, and stays locked out of service (nc_down).
    source = await mixed.admin.nc(SOURCE_IP)
    assert (source["biz_status"], source["power_state"]) == ("nc_down", "on")
    counters = source["counters"]
    assert counters["migrations_out"] == 7 and counters["cold_migrations_out"] == 5
    assert (counters["power_offs"], counters["power_ons"], counters["power_offs_with_vms"]) == (1, 1, 0)
    totals = mixed.totals()
    assert (totals["ri_reserved"], totals["ri_released"]) == (1, 1)
    assert mixed.running.fleet.active_reservations() == []
    assert (result.hosts[0].outcome, result.hosts[0].status_after) == (
        HostOutcomeKind.SUCCEEDED,
        NcBizStatus.NC_DOWN,
    )
    assert status.progress == "migrated 12/12"
    assert await store.lifecycle.lease(SOURCE_IP) is None


async def test_the_plan_shown_before_approval_lists_each_vm_how_it_leaves_and_why_not_live(
    mixed: Fleet, ops_on: Callable[[Fleet], Awaitable[Operations]]
) -> None:
    ops = await ops_on(mixed)
    handle = await ops.start("NcDeepOffline", evacuation_input(source="manual"))

    status = await ops.wait(handle, OpsState.PENDING_APPROVAL)
    plan = "\n".join(status.plan)
    assert (
        "12 VM(s): 7 live-migrated, 5 cold-migrated in the maintenance window; 5 free target host(s)" in plan
    )
    assert "spare capacity for" in plan and "estimated duration" in plan
    assert f"maintenance window of {CLUSTER}: open until" in plan
    cold = {vm.vm_id: vm.blockers for vm in status.vms if vm.method is MigrationMethod.COLD}
    assert sorted(cold.values()) == sorted(
        [
            ["local_storage"],
            ["gpu_fpga_passthrough_sriov"],
            ["trunk_or_member_nic"],
            ["not running (stopped)"],
            ["not running (stopped)"],
        ]
    )
    details = status.markdown()
    assert "| VM | size | before | method | state |" in details and "local_storage" in details
    assert await mixed.admin.touched(SOURCE_IP) == {}, "nothing moves before the approval"

    await approve(handle)
    result = await handle.result()
    assert result.state is OpsState.SUCCEEDED
    assert mixed.vms_of(SOURCE_NC_ID) == []


async def test_a_cluster_without_room_for_the_vms_is_refused_before_anything_moves(
    mixed: Fleet, ops_on: Callable[[Fleet], Awaitable[Operations]]
) -> None:
    ops = await ops_on(mixed)
    handle = await ops.start("NcDeepOffline", evacuation_input(FULL_SOURCE_IP))

    error = await failure_of(handle)
    assert error.type == errors.INSUFFICIENT_CAPACITY
    assert "cluster ECS-CPU-FULL-01 cannot take the VMs of 10.41.0.10" in error.message
    assert "16 vCPU / 64 GiB: spare 0, needed 6" in error.message
    assert await mixed.admin.touched(FULL_SOURCE_IP) == {}
    assert mixed.totals()["migrations_out"] == 0 and mixed.totals()["cold_migrations"] == 0


async def test_a_cluster_without_a_maintenance_window_is_refused_when_vms_must_move_cold(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(4, ineligible=1)
    ops = await ops_on(fleet)
    handle = await ops.start("NcDeepOffline", evacuation_input())

    error = await failure_of(handle)
    assert error.type == errors.NO_MAINTENANCE_WINDOW
    assert f"cluster {CLUSTER} has no maintenance window" in error.message
    assert await fleet.admin.touched(SOURCE_IP) == {}


async def test_cold_migrations_wait_on_a_durable_timer_until_the_maintenance_window_opens(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on_own_server: Callable[[Fleet], Awaitable[Operations]],
    own_time_skipping_env: WorkflowEnvironment,
    store: OperationStore,
) -> None:
    fleet = await make_fleet(4)
    opens = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    await windows.set_window(
        MaintenanceWindow(
            cluster_id=CLUSTER,
            weekday=opens.weekday(),
            start=opens.time(),
            duration_minutes=240,
            time_zone="UTC",
        )
    )
    ops = await ops_on_own_server(fleet)
    handle = await ops.start("NcDeepOfflineCold", evacuation_input())

    status = await wait_status(
        handle,
        "RecoverVmInTnb waiting for the window",
        lambda s: len(s.steps) > 4 and "waiting for the maintenance window" in s.steps[4].message,
    )
    assert [s.name for s in status.steps][:5] == [
        "LockNc",
        "InitVmStatus",
        "ReserveRIPoll",
        "OpsEvnNotify",
        "RecoverVmInTnb",
    ]
    assert fleet.totals()["cold_migrations"] == 0, "nothing moves cold outside the window"
    assert f"opens {opens:%Y-%m-%d %H:%M} UTC" in status.steps[4].message

    result = await handle.result()  # the test server skips the timer

    assert result.state is OpsState.SUCCEEDED
    final = await status_of(handle)
    recover = final.steps[4]
    assert recover.ended_at is not None and recover.ended_at >= opens
    assert fleet.totals()["cold_migrations"] == 4 and fleet.vms_of(SOURCE_NC_ID) == []
    audit = await store.list_audit(workflow_id=handle.id)
    waits = [a for a in audit if a.action == "wait_maintenance_window"]
    assert len(waits) == 1 and waits[0].params["opens_at"].startswith(opens.isoformat()[:16])


async def test_a_migration_that_times_out_is_tried_again_then_moved_cold(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
    store: OperationStore,
) -> None:
    fleet = await make_fleet(3, memory_choices=(4,))
    await seed_dev_windows(store, [CLUSTER])
    dirty = fleet.vms_of(SOURCE_NC_ID)[0]
    # Dirtying memory faster than the 80 MB/s copy: Houyi's migration never converges and times out.
    await fleet.admin.patch_vm(dirty, dirty_rate_mbps=200)
    ops = await ops_on(fleet)

    result = await (await ops.start("NcDeepOffline", evacuation_input())).result()

    assert result.state is OpsState.SUCCEEDED
    move = next(vm for vm in result.vms if vm.vm_id == dirty)
    assert (move.live_attempts, move.cold_attempts, move.state) == (2, 1, VmMoveState.COLD_MIGRATED)
    assert fleet.totals()["migrations_timed_out"] == 2 and fleet.totals()["migrations_out"] == 2
    assert fleet.vms_of(SOURCE_NC_ID) == []


async def test_distribute_lock_fail_is_retried_with_backoff_and_the_vms_still_go_live(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
    store: OperationStore,
) -> None:
    fleet = await make_fleet(4, memory_choices=(4,))
    await fleet.admin.inject(action="live_migrate_vm", code=429, message="distribute lock fail", count=3)
    ops = await ops_on(fleet)

    result = await (await ops.start("NcDeepOffline", evacuation_input())).result()

    assert result.state is OpsState.SUCCEEDED
    assert {vm.state for vm in result.vms} == {VmMoveState.MIGRATED}
    assert fleet.totals()["migrations_out"] == 4 and fleet.totals()["cold_migrations"] == 0
    calls = await store.list_houyi_calls(action="live_migrate_vm")
    assert sorted(c.code for c in calls).count(429) == 3


async def test_a_vm_back_on_the_host_stops_the_operation_before_the_power_off_until_an_operator_moves_it(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(3, memory_choices=(4,))
    await fleet.admin.inject(action="notify", kind="latency", latency_seconds=2.0, count=1)
    ops = await ops_on(fleet)
    handle = await ops.start("NcDeepOffline", evacuation_input())
    await wait_status(
        handle, "OpsEvnNotify running", lambda s: len(s.steps) > 4 and s.steps[4].status is StepStatus.RUNNING
    )
    back = sorted(vm.vm_id for vm in fleet.running.fleet.vms.values() if vm.vm_id.startswith("i-evac"))[0]
    elsewhere = fleet.running.fleet.vms[back].nc_id
    assert elsewhere != SOURCE_NC_ID
    await fleet.admin.patch_vm(back, nc_id=SOURCE_NC_ID)

    status = await ops.wait(handle, OpsState.STEP_FAILED)
    check = next(s for s in status.steps if s.name == "CheckBeforeReboot")
    assert check.status is StepStatus.WAITING and back in check.message
    assert "it is not powered off with VMs on it" in check.message
    counters = (await fleet.admin.nc(SOURCE_IP))["counters"]
    assert counters["power_offs"] == 0 and counters["power_offs_with_vms"] == 0

    await fleet.admin.patch_vm(back, nc_id=elsewhere)  # an operator moves it off again
    await command(handle, "retry_step", "CheckBeforeReboot")
    result = await handle.result()

    assert result.state is OpsState.SUCCEEDED
    counters = (await fleet.admin.nc(SOURCE_IP))["counters"]
    assert (counters["power_offs"], counters["power_offs_with_vms"]) == (1, 0)


async def test_a_stuck_migration_waits_for_an_operator_to_say_where_the_vm_runs(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
    store: OperationStore,
) -> None:
    fleet = await make_fleet(3, memory_choices=(4,))
    await seed_dev_windows(store, [CLUSTER])
    stuck = fleet.vms_of(SOURCE_NC_ID)[0]
    await fleet.admin.inject(action="live_migrate_vm", kind="stuck", vm_name=stuck, count=1)
    ops = await ops_on(fleet)
    handle = await ops.start("NcDeepOffline", evacuation_input())

    status = await wait_status(
        handle,
        "the operation waiting for a correction",
        lambda s: s.state is OpsState.STEP_FAILED and any(vm.state is VmMoveState.STUCK for vm in s.vms),
    )
    move = next(vm for vm in status.vms if vm.vm_id == stuck)
    assert "stuck in migrating" in move.message and "correct_migration" in move.message
    assert (await fleet.admin.vm(stuck))["vm"]["status"] == "migrating"

    await handle.signal(
        "correct_migration", {"operator": "bob", "vm_id": "i-nosuchvm1", "where": SOURCE_NC_ID}
    )
    await handle.signal("correct_migration", {"operator": "bob", "vm_id": stuck, "where": SOURCE_NC_ID})
    result = await handle.result()

    assert result.state is OpsState.SUCCEEDED
    move = next(vm for vm in result.vms if vm.vm_id == stuck)
    assert move.state is VmMoveState.COLD_MIGRATED and move.nc_id != SOURCE_NC_ID
    final = await status_of(handle)
    assert any("i-nosuchvm1 is not stuck" in m for m in final.refused_messages)
    audit = [a.action for a in await store.list_audit(workflow_id=handle.id)]
    assert "migration_stuck" in audit and "correct_migration" in audit
    assert fleet.vms_of(SOURCE_NC_ID) == []


async def test_cancelling_during_live_migration_cancels_the_migrations_in_flight_and_keeps_the_host_locked(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on_dev_server: Callable[[Fleet], Awaitable[Operations]],
    store: OperationStore,
) -> None:
    fleet = await make_fleet(6, memory_choices=(32,))
    ops = await ops_on_dev_server(fleet)
    # 32 GiB at 2 MB/s: each migration takes hours in the model, 16 s here: cancelled well before.
    handle = await ops.start("NcDeepOffline", evacuation_input(rate=2, parallel=2))
    await wait_status(handle, "two migrations in flight", lambda s: "2 migrating" in s.progress)

    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()

    record = await eventually(lambda: _final_record(store, handle.id), within=15)
    assert record.state is OpsState.CANCELLED
    assert record.result is not None
    vms = {vm["vm_id"]: vm for vm in record.result["vms"]}
    assert len(vms) == 6
    assert {(vm["nc_id"], vm["status"]) for vm in vms.values()} == {(SOURCE_NC_ID, "running")}
    assert sorted(vm["state"] for vm in vms.values()) == ["cancelled"] * 2 + ["pending"] * 4
    assert fleet.vms_of(SOURCE_NC_ID) == sorted(vms)
    migrations = [m for vm in vms for m in (await fleet.admin.vm(vm))["live_migrations"]]
    assert sorted(m["state"] for m in migrations) == ["cancelled", "cancelled"]
    source = await fleet.admin.nc(SOURCE_IP)
    assert source["biz_status"] == "mlock", "the host stays locked after a cancel"
    assert fleet.running.fleet.active_reservations() == []
    assert await store.lifecycle.lease(SOURCE_IP) is None


async def _final_record(store: OperationStore, workflow_id: str) -> Any:
    record = await store.get_operation(workflow_id)
    assert record is not None and record.state.final, record
    return record


async def test_a_200_vm_host_is_evacuated_in_one_history_far_below_temporal_limits(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
    store: OperationStore,
) -> None:
    fleet = await make_fleet(200, memory_choices=(4, 8), ineligible=8)
    await seed_dev_windows(store, [CLUSTER])
    ops = await ops_on(fleet)
    handle = await ops.start("NcDeepOffline", evacuation_input(parallel=8))

    result = await handle.result()

    assert result.state is OpsState.SUCCEEDED
    assert len(result.vms) == 200 and fleet.vms_of(SOURCE_NC_ID) == []
    assert (await status_of(handle)).progress == "migrated 200/200"
    history = await handle.fetch_history()
    size = len(history.to_json())
    print(f"200-VM deep offline: {len(history.events)} events, {size / 1e6:.2f} MB of history")
    # Temporal warns at 10,000 events / 10 MB and stops a run at 50,000 / 50 MB.
    assert len(history.events) < 2_500 and size < 3_000_000


# ---- whole-host migration ------------------------------------------------------------------------------


async def test_whole_host_migration_moves_every_vm_starting_the_stopped_ones_and_leaves_the_host_locked(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(6, ineligible=2, stopped=2, memory_choices=(4,))
    failing = fleet.vms_of(SOURCE_NC_ID)[0]  # local disk: moves cold
    # A process left on the source by an earlier migration of a VM that lives elsewhere.
    elsewhere = fleet.vms_of("41000-10")[0]
    await fleet.admin._request("POST", "/admin/residues", {"nc_id": SOURCE_NC_ID, "vm_id": elsewhere})
    await fleet.admin.inject(
        action="cold_migrate_vm", code=500, message="scheduler down", vm_name=failing, count=5
    )
    ops = await ops_on(fleet)
    handle = await ops.start("WholeHostMigration", {**evacuation_input(), "settings": {"parallel": 2}})

    status = await ops.wait(handle, OpsState.STEP_FAILED, within=30)
    migrate = next(s for s in status.steps if s.name == "MigrateVms")
    assert (
        migrate.status is StepStatus.WAITING and "1 of 4 VM(s) could not be cold-migrated" in migrate.message
    )
    assert fleet.vms_of(SOURCE_NC_ID) == [failing]

    await handle.signal("relaunch", {"operator": "bob", "comment": "scheduler back"})
    result = await handle.result()

    assert result.state is OpsState.SUCCEEDED
    assert fleet.vms_of(SOURCE_NC_ID) == []
    assert set(fleet.statuses().values()) == {"running"}, "stopped VMs are started on arrival"
    retried = next(vm for vm in result.vms if vm.vm_id == failing)
    assert (retried.cold_attempts, retried.state) == (2, VmMoveState.COLD_MIGRATED)
    assert (await fleet.admin.nc(SOURCE_IP))["biz_status"] == "mlock", "unlocking is a separate act"
    assert f"1 residue process(es) on the host, clean them with 0x10001000008002: {elsewhere} (paused)" in (
        result.hosts[0].message
    )
    assert fleet.totals()["residues_destroyed"] == 0, "residues are reported, not destroyed"


async def test_reserved_ri_capacity_is_released_when_the_operation_is_aborted(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
    store: OperationStore,
) -> None:
    fleet = await make_fleet(3, ineligible=1, memory_choices=(4,))
    await seed_dev_windows(store, [CLUSTER])
    cold = fleet.vms_of(SOURCE_NC_ID)[0]
    await fleet.admin.inject(action="cold_migrate_vm", code=500, message="scheduler down", vm_name=cold)
    ops = await ops_on(fleet)
    handle = await ops.start("NcDeepOffline", evacuation_input())

    status = await ops.wait(handle, OpsState.STEP_FAILED, within=30)
    assert next(s for s in status.steps if s.name == "RecoverVmInTnb").status is StepStatus.WAITING
    assert len(fleet.running.fleet.active_reservations()) == 1
    await command(handle, "abort", "RecoverVmInTnb", comment="scheduler broken, later")

    error = await failure_of(handle)
    assert error.type == errors.OPERATION_ABORTED
    assert fleet.running.fleet.active_reservations() == []
    assert (fleet.totals()["ri_reserved"], fleet.totals()["ri_released"]) == (1, 1)
    assert (await fleet.admin.nc(SOURCE_IP))["counters"]["power_offs"] == 0
    audit = [(a.action, a.params.get("what")) for a in await store.list_audit(workflow_id=handle.id)]
    assert ("clean_up", "release the reserved RI capacity") in audit


@pytest.mark.parametrize("workflow_type", ["NcDeepOffline", "WholeHostMigration"])
async def test_a_host_neither_free_nor_mlock_is_refused_naming_its_status(
    workflow_type: str,
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(2)
    await fleet.admin.patch_nc(SOURCE_IP, biz_status="nc_down")
    ops = await ops_on(fleet)
    raw = evacuation_input() if workflow_type == "NcDeepOffline" else {**evacuation_input(), "settings": {}}

    error = await failure_of(await ops.start(workflow_type, raw))

    assert error.type == errors.NC_WRONG_STATUS
    assert f"NC {SOURCE_IP} ({SOURCE_NC_ID}) is nc_down" in error.message
    assert await fleet.admin.touched(SOURCE_IP) == {}
