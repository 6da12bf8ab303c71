"""0x10001000008002 VM residue cleanup (issue 5) on the time-skipping server with the real worker, simulator
and PostgreSQL: only residues are destroyed, re-read right before each destroy; the authoritative copy
never is, whatever the input says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from domain import errors
from domain.operations import OpsState
from domain.residue import ProcessOutcome, Verdict
from simulator.evacuation_fleet import CLUSTER, SOURCE_IP, SOURCE_NC_ID
from store.maintenance import MaintenanceWindowStore
from tests.fixtures.evacuation import Fleet
from tests.lifecycle_helpers import REQUESTER, Operations, approve, failure_of

FULL_HOST = "41000-10"  # the other cluster's host: its VMs live there


def cleanup_input(*, source: str = "alert", **settings: Any) -> dict[str, Any]:
    return {
        "nc_ip": SOURCE_IP,
        "requester": REQUESTER,
        "reason_category": "internal_reboot",
        "reason": "processes left after migrations",
        "source": source,
        "settings": {"preLock": 1, **settings},
    }


async def plant(fleet: Fleet, vm_id: str, **residue: Any) -> None:
    await fleet.admin._request("POST", "/admin/residues", {"nc_id": SOURCE_NC_ID, "vm_id": vm_id, **residue})


async def test_only_quiet_residues_are_destroyed_and_the_authoritative_vms_never(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(3)
    quiet, busy, released = fleet.vms_of(FULL_HOST)[:3]
    await plant(fleet, quiet)
    await plant(fleet, busy, state="running", guest_active=True)
    await fleet.admin.patch_vm(released, status="released")
    await plant(fleet, released, state="paused", guest_active=True)
    ops = await ops_on(fleet)

    result = await (await ops.start("VmResidueCleanup", cleanup_input(foreCleanWildVm=True))).result()

    assert result.state is OpsState.SUCCEEDED
    by_vm = {p.vm_id: p for p in result.processes}
    assert {vm for vm, p in by_vm.items() if p.outcome is ProcessOutcome.DESTROYED} == {quiet, released}
    assert by_vm[busy].outcome is ProcessOutcome.SKIPPED and "guest activity=True" in by_vm[busy].message
    assert by_vm[released].verdict is Verdict.RESIDUE_RELEASED
    for vm in fleet.vms_of(SOURCE_NC_ID):
        assert by_vm[vm].verdict is Verdict.AUTHORITATIVE and by_vm[vm].outcome is ProcessOutcome.SKIPPED
    counters = (await fleet.admin.nc(SOURCE_IP))["counters"]
    assert (counters["residues_destroyed"], counters["authoritative_destroyed"]) == (2, 0)
    assert "2 destroyed, 4 kept, 0 failed" == result.hosts[0].message


async def test_without_force_a_released_vm_with_guest_activity_is_kept(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(1)
    released = fleet.vms_of(FULL_HOST)[0]
    await fleet.admin.patch_vm(released, status="released")
    await plant(fleet, released, state="paused", guest_active=True)
    ops = await ops_on(fleet)

    result = await (await ops.start("VmResidueCleanup", cleanup_input())).result()

    (kept,) = [p for p in result.processes if p.vm_id == released]
    assert kept.outcome is ProcessOutcome.SKIPPED and not kept.destroy
    assert (await fleet.admin.nc(SOURCE_IP))["counters"]["residues_destroyed"] == 0


async def test_a_record_that_moves_here_between_plan_and_destroy_is_not_destroyed(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(1)
    residue = fleet.vms_of(FULL_HOST)[0]
    await plant(fleet, residue)
    ops = await ops_on(fleet)
    handle = await ops.start("VmResidueCleanup", cleanup_input(source="manual"))
    status = await ops.wait(handle, OpsState.PENDING_APPROVAL)
    assert any(line.startswith(f"destroy {residue}") for line in status.plan)

    # A migration finishes meanwhile: the control plane now places the VM on this host, running.
    await fleet.admin.patch_vm(residue, nc_id=SOURCE_NC_ID)
    await approve(handle)
    result = await handle.result()

    (moved,) = [p for p in result.processes if p.vm_id == residue]
    assert moved.outcome is ProcessOutcome.SKIPPED and moved.verdict is Verdict.AUTHORITATIVE
    assert moved.message.startswith("re-read before destroying: authoritative")
    counters = (await fleet.admin.nc(SOURCE_IP))["counters"]
    assert (counters["residues_destroyed"], counters["authoritative_destroyed"]) == (0, 0)


async def test_naming_a_vm_without_a_process_on_the_host_is_refused(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(1)
    elsewhere = fleet.vms_of(FULL_HOST)[0]
    ops = await ops_on(fleet)

    error = await failure_of(await ops.start("VmResidueCleanup", cleanup_input(vm=elsewhere)))

    assert error.type == errors.INVALID_SETTINGS
    assert f"no process of vm {elsewhere} on NC {SOURCE_IP}" in error.message
    assert await fleet.admin.touched(SOURCE_IP) == {}


async def test_after_a_whole_host_migration_left_residues_the_cleanup_removes_exactly_them(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(5, memory_choices=(4,), residue_rate=1.0)
    moved = fleet.vms_of(SOURCE_NC_ID)
    ops = await ops_on(fleet)
    migration = await ops.start("WholeHostMigration", {**cleanup_input(), "settings": {"parallel": 2}})
    migrated = await migration.result()
    assert f"{len(moved)} residue process(es) on the host" in migrated.hosts[0].message
    assert fleet.vms_of(SOURCE_NC_ID) == []

    result = await (await ops.start("VmResidueCleanup", cleanup_input())).result()

    assert result.state is OpsState.SUCCEEDED
    assert sorted(p.vm_id for p in result.processes if p.outcome is ProcessOutcome.DESTROYED) == moved
    assert {p.verdict for p in result.processes} == {Verdict.RESIDUE_ELSEWHERE}
    counters = (await fleet.admin.nc(SOURCE_IP))["counters"]
    assert (counters["residues_destroyed"], counters["authoritative_destroyed"]) == (len(moved), 0)
    assert (await fleet.admin.nc(SOURCE_IP))["residues"] == []
    assert {vm: status for vm, status in fleet.statuses().items() if vm in moved} == dict.fromkeys(
        moved, "running"
    )


# ---- 0x3000000000802 -------------------------------------------------------------------------------------


def sweep_input(**scope: Any) -> dict[str, Any]:
    return {
        "requester": REQUESTER,
        "reason_category": "internal_reboot",
        "reason": "weekly wild VM sweep",
        "source": "alert",
        **scope,
        "settings": {"parallel": 2},
    }


async def test_a_cluster_sweep_cleans_each_host_with_residues_and_only_those_hosts(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(2)
    first, second, busy = fleet.vms_of(FULL_HOST)[:3]
    await plant(fleet, first)
    await fleet.admin._request("POST", "/admin/residues", {"nc_id": "40000-11", "vm_id": second})
    await fleet.admin._request(
        "POST",
        "/admin/residues",
        {"nc_id": "40000-11", "vm_id": busy, "state": "running", "guest_active": True},
    )
    ops = await ops_on(fleet)

    result = await (await ops.start("WildVmCleanup", sweep_input(cluster_id=CLUSTER))).result()

    assert result.state is OpsState.SUCCEEDED
    assert sorted(h.nc_ip for h in result.hosts) == [SOURCE_IP, "10.40.0.11"]
    destroyed = {(p.nc_id, p.vm_id) for p in result.processes if p.outcome is ProcessOutcome.DESTROYED}
    assert destroyed == {(SOURCE_NC_ID, first), ("40000-11", second)}
    kept = next(p for p in result.processes if p.vm_id == busy)
    assert kept.outcome is ProcessOutcome.SKIPPED
    assert fleet.totals()["authoritative_destroyed"] == 0 and fleet.totals()["residues_destroyed"] == 2
    assert [h.message for h in sorted(result.hosts, key=lambda h: h.nc_ip)] == [
        "1 destroyed, 2 kept, 0 failed",
        "1 destroyed, 1 kept, 0 failed",
    ]


async def test_a_sweep_needs_exactly_one_scope(
    make_fleet: Callable[..., Awaitable[Fleet]],
    windows: MaintenanceWindowStore,
    ops_on: Callable[[Fleet], Awaitable[Operations]],
) -> None:
    fleet = await make_fleet(1)
    ops = await ops_on(fleet)

    both = await failure_of(
        await ops.start("WildVmCleanup", sweep_input(cluster_id=CLUSTER, nc_ips=[SOURCE_IP]))
    )
    neither = await failure_of(await ops.start("WildVmCleanup", sweep_input()))

    assert both.type == neither.type == errors.INVALID_INPUT
    assert "give either cluster_id or nc_ips, not both and not neither" in both.message
