"""The Houyi simulator over loopback: the protocol, and every rule of its hosts and VMs, as our client sees them.

Most tests use the small hand-written fleet (``tests.fixtures.simulator.small_fleet``) so that each case is
named; calls are raw ``go2hyapi`` POSTs decoded with ``houyi.wire``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from domain.model import Nc, NcBizStatus, NcDetail, PowerState, Vm, VmStatus
from houyi.port import (
    Ack,
    LiveMigrationProgress,
    LiveMigrationTask,
    MigrationState,
    NcStatusChange,
    PowerStatus,
    ProcessState,
    RiReservation,
    VmProcess,
    VmStatusChange,
)
from houyi.wire import PATH_PREFIX, Action, Code, Envelope, decode_envelope
from simulator.actions import HANDLERS
from simulator.server import RunningSimulator
from tests.fixtures.simulator import SimulatorClient, open_client, wait_for


@pytest_asyncio.fixture
async def houyi(small_simulator: RunningSimulator) -> AsyncIterator[SimulatorClient]:
    async with open_client(small_simulator) as client:
        yield client


def ok(envelope: Envelope) -> Any:
    assert envelope.code == Code.OK, f"{envelope.code} {envelope.msg}"
    assert envelope.msg == "successful" and envelope.request_id
    return envelope.data


def refused(envelope: Envelope, code: Code, *fragments: str) -> str:
    assert envelope.code == code, f"expected {code}, got {envelope.code} {envelope.msg}"
    for fragment in fragments:
        assert fragment in envelope.msg, f"{fragment!r} not in {envelope.msg!r}"
    return envelope.msg


async def migration_outcome(houyi: SimulatorClient, vm_name: str) -> LiveMigrationProgress:
    """The VM's latest live migration once it is no longer running."""
    outcome: list[LiveMigrationProgress] = []

    async def ended() -> bool:
        progress = LiveMigrationProgress.model_validate(
            ok(await houyi.call("get_live_migration_progress", vm_name=vm_name))
        )
        outcome[:] = [progress]
        return progress.state is not MigrationState.RUNNING

    await wait_for(ended, what=f"the migration of {vm_name} to end")
    return outcome[0]


async def processes(houyi: SimulatorClient, nc_id: str) -> dict[str, VmProcess]:
    listed = ok(await houyi.call("list_vm_processes", nc_id=nc_id))["processes"]
    return {process.vm_id: process for process in map(VmProcess.model_validate, listed)}


async def vm_record(houyi: SimulatorClient, vm_name: str) -> Vm:
    return Vm.model_validate(ok(await houyi.call("describe_vm", vm_name=vm_name))["vm"])


# ---- the protocol ---------------------------------------------------------------------------------------


def test_every_action_of_the_protocol_has_a_handler() -> None:
    assert set(HANDLERS) == set(Action)


async def test_every_answer_is_http_200_with_an_envelope(small_simulator: RunningSimulator) -> None:
    async with aiohttp.ClientSession() as session:
        for action, body in (
            ("describe_nc", "nc_ip=10.0.0.1"),
            ("no_such_action", ""),
            ("lock_nc", "nc_id=100-1"),
        ):
            async with session.post(f"{small_simulator.url}{PATH_PREFIX}{action}", data=body) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("application/xml")
                decode_envelope(await response.read())


async def test_an_unknown_action_is_an_invalid_parameter(houyi: SimulatorClient) -> None:
    refused(await houyi.call("reboot_everything"), Code.INVALID_PARAMETER, "unknown action reboot_everything")


async def test_a_mutation_without_client_token_is_refused_and_not_applied(houyi: SimulatorClient) -> None:
    refused(
        await houyi.call("lock_nc", nc_id="100-1"),
        Code.INVALID_PARAMETER,
        "client_token is required for lock_nc",
    )
    assert (await houyi.nc("10.0.0.1"))["biz_status"] == "free"


async def test_a_missing_or_malformed_parameter_is_named(houyi: SimulatorClient) -> None:
    refused(await houyi.call("describe_nc"), Code.INVALID_PARAMETER, "nc_ip or nc_id is required")
    refused(await houyi.call("lock_nc", client_token="t"), Code.INVALID_PARAMETER, "nc_id is required")
    refused(
        await houyi.call("live_migrate_vm", vm_name="i-plain0000001", rate="fast", client_token="t2"),
        Code.INVALID_PARAMETER,
        "rate must be a whole number",
    )
    refused(
        await houyi.call(
            "live_migrate_vm", vm_name="i-plain0000001", no_check_image="maybe", client_token="t3"
        ),
        Code.INVALID_PARAMETER,
        "no_check_image must be true or false",
    )
    refused(
        await houyi.call("lock_nc", nc_id="100-1", status="nc_down", client_token="t4"),
        Code.INVALID_PARAMETER,
        "status must be mlock or rlock",
    )


async def test_unknown_hosts_vms_and_disks_are_not_found(houyi: SimulatorClient) -> None:
    refused(await houyi.call("describe_nc", nc_ip="10.9.9.9"), Code.NOT_FOUND, "nc 10.9.9.9 not found")
    refused(await houyi.call("describe_nc", nc_id="999-9"), Code.NOT_FOUND, "nc 999-9 not found")
    refused(
        await houyi.call("lock_nc", nc_id="999-9", client_token="t"), Code.NOT_FOUND, "nc 999-9 not found"
    )
    refused(
        await houyi.call("describe_vm", vm_name="i-nosuchvm0001"),
        Code.NOT_FOUND,
        "vm i-nosuchvm0001 not found",
    )
    refused(await houyi.call("describe_disk", disk_id="d-nope"), Code.NOT_FOUND, "disk d-nope not found")


# ---- reads ------------------------------------------------------------------------------------------------


async def test_describe_nc_by_ip_or_id_gives_the_host_and_the_vms_placed_on_it(
    houyi: SimulatorClient,
) -> None:
    by_ip = NcDetail.model_validate(ok(await houyi.call("describe_nc", nc_ip="10.0.0.1")))
    by_id = NcDetail.model_validate(ok(await houyi.call("describe_nc", nc_id="100-1")))
    assert by_ip == by_id
    assert by_ip.nc.region_id == "cn-qd-d01" and by_ip.nc.zone_id == "cn-qd-d01-a"
    assert len(by_ip.vms) == 10 and all(vm.nc_id == "100-1" for vm in by_ip.vms)
    assert by_ip.nc.vcpu_used == sum(vm.vcpu for vm in by_ip.vms)
    assert by_ip.nc.memory_gib_used == sum(vm.memory_gib for vm in by_ip.vms)
    # A released VM holds nothing: it is not listed and not counted.
    released_host = NcDetail.model_validate(ok(await houyi.call("describe_nc", nc_id="100-2")))
    assert released_host.vms == [] and released_host.nc.vcpu_used == 0


async def test_list_ncs_filters_by_region_and_cluster(houyi: SimulatorClient) -> None:
    everything = [Nc.model_validate(nc) for nc in ok(await houyi.call("list_ncs"))["ncs"]]
    assert len(everything) == 7
    cluster_b = ok(await houyi.call("list_ncs", cluster_id="ECS-CPU-B-1111"))["ncs"]
    assert [nc["nc_id"] for nc in cluster_b] == ["200-1"]
    assert ok(await houyi.call("list_ncs", region_id="cn-hz-d02"))["ncs"] == []


# ---- business status -------------------------------------------------------------------------------------


async def test_lock_goes_from_free_to_mlock_once(houyi: SimulatorClient) -> None:
    change = NcStatusChange.model_validate(
        ok(await houyi.call("lock_nc", nc_id="100-1", client_token="lock-1"))
    )
    assert (change.status_before, change.status_after) == (NcBizStatus.FREE, NcBizStatus.MLOCK)
    refused(
        await houyi.call("lock_nc", nc_id="100-1", client_token="lock-2"),
        Code.WRONG_STATE,
        "nc 100-1 is mlock, cannot lock (allowed from: free)",
    )
    host = await houyi.nc("10.0.0.1")
    assert host["biz_status"] == "mlock" and host["counters"]["lock_applied"] == 1


async def test_reserve_lock_gives_rlock(houyi: SimulatorClient) -> None:
    change = ok(await houyi.call("lock_nc", nc_id="100-2", status="rlock", client_token="r"))
    assert change["status_after"] == "rlock"


async def test_unlock_needs_a_locked_host(houyi: SimulatorClient) -> None:
    refused(
        await houyi.call("unlock_nc", nc_id="100-1", client_token="u1"),
        Code.WRONG_STATE,
        "nc 100-1 is free, cannot unlock (allowed from: mlock, no_heartbeat, rlock)",
    )
    change = ok(await houyi.call("unlock_nc", nc_id="100-4", client_token="u2"))
    assert (change["status_before"], change["status_after"]) == ("mlock", "free")
    assert (await houyi.nc("100-4"))["counters"]["unlock_applied"] == 1


async def test_set_nc_status_follows_the_operator_transitions(houyi: SimulatorClient) -> None:
    down = ok(await houyi.call("set_nc_status", nc_id="100-1", status="nc_down", client_token="s1"))
    assert down["status_after"] == "nc_down"
    refused(
        await houyi.call("lock_nc", nc_id="100-1", client_token="s2"),
        Code.WRONG_STATE,
        "is nc_down, cannot lock",
    )
    back = ok(await houyi.call("set_nc_status", nc_id="100-1", status="free", client_token="s3"))
    assert (back["status_before"], back["status_after"]) == ("nc_down", "free")
    refused(
        await houyi.call("set_nc_status", nc_id="100-1", status="free", client_token="s4"),
        Code.WRONG_STATE,
        "is free, cannot bring online",
    )
    refused(
        await houyi.call("set_nc_status", nc_id="100-1", status="offline", client_token="s5"),
        Code.INVALID_PARAMETER,
        "offline cannot be set",
    )
    assert (await houyi.nc("100-1"))["counters"]["status_changes"] == 2


# ---- OOB power -------------------------------------------------------------------------------------------


async def power(houyi: SimulatorClient, nc_id: str) -> PowerState:
    return PowerStatus.model_validate(ok(await houyi.call("get_oob_power_status", nc_id=nc_id))).power_state


async def wait_power(houyi: SimulatorClient, nc_id: str, state: PowerState) -> None:
    async def reached() -> bool:
        return await power(houyi, nc_id) is state

    await wait_for(reached, what=f"nc {nc_id} power {state.value}")


async def test_power_off_is_pending_then_settles_and_leaves_the_host_down(houyi: SimulatorClient) -> None:
    answer = PowerStatus.model_validate(
        ok(await houyi.call("oob_power_off", nc_id="100-2", client_token="off"))
    )
    assert answer.power_state is PowerState.PENDING_OFF
    assert await power(houyi, "100-2") is PowerState.PENDING_OFF
    refused(
        await houyi.call("oob_power_on", nc_id="100-2", client_token="on-too-early"),
        Code.WRONG_STATE,
        "power status pending, retry after 60 seconds",
    )
    await wait_power(houyi, "100-2", PowerState.OFF)
    host = await houyi.nc("100-2")
    assert host["biz_status"] == "nc_down" and host["counters"]["power_offs"] == 1
    assert host["counters"]["power_offs_with_vms"] == 0
    # Powering it off killed the residues that were left on it.
    assert host["residues"] == []

    assert (
        ok(await houyi.call("oob_power_on", nc_id="100-2", client_token="on"))["power_state"] == "pending_on"
    )
    await wait_power(houyi, "100-2", PowerState.ON)
    assert (await houyi.nc("100-2"))["biz_status"] == "nc_down"


async def test_power_cycle_passes_both_pending_states_and_counts_vms_it_killed(
    houyi: SimulatorClient,
) -> None:
    seen: list[PowerState] = [
        PowerState(ok(await houyi.call("oob_power_cycle", nc_id="100-1", client_token="c"))["power_state"])
    ]

    async def back_on() -> bool:
        state = await power(houyi, "100-1")
        if state is not seen[-1]:
            seen.append(state)
        return state is PowerState.ON

    await wait_for(back_on, interval=0.005, what="the power cycle to finish")
    assert seen == [PowerState.PENDING_OFF, PowerState.PENDING_ON, PowerState.ON]
    host = await houyi.nc("100-1")
    assert host["biz_status"] == "nc_down"
    assert host["counters"]["power_cycles"] == 1 and host["counters"]["power_offs_with_vms"] == 1


async def test_a_powered_off_host_cannot_be_power_cycled_or_listed(houyi: SimulatorClient) -> None:
    ok(await houyi.call("oob_power_off", nc_id="100-2", client_token="off"))
    refused(await houyi.call("list_vm_processes", nc_id="100-2"), Code.WRONG_STATE, "not powered on")
    await wait_power(houyi, "100-2", PowerState.OFF)
    refused(
        await houyi.call("oob_power_cycle", nc_id="100-2", client_token="cycle"),
        Code.WRONG_STATE,
        "powered off",
    )
    refused(
        await houyi.call("set_nc_status", nc_id="100-2", status="free", client_token="online"),
        Code.WRONG_STATE,
        "not powered on",
    )


# ---- live migration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vm_name", "reason"),
    [
        ("i-gpu000000001", "gpu_fpga_passthrough_sriov"),
        ("i-local0000001", "local_storage"),
        ("i-trunk0000001", "trunk_or_member_nic"),
        ("i-oldv33000001", "created_before_v3.3_not_restarted"),
    ],
)
async def test_a_vm_with_a_blocker_cannot_be_live_migrated(
    houyi: SimulatorClient, vm_name: str, reason: str
) -> None:
    refused(
        await houyi.call("live_migrate_vm", vm_name=vm_name, client_token=f"m-{vm_name}"),
        Code.UNSUPPORTED,
        f"vm {vm_name} cannot be live-migrated: {reason}",
    )
    assert (await vm_record(houyi, vm_name)).status is VmStatus.RUNNING


async def test_an_unsupported_image_is_refused_unless_forced(houyi: SimulatorClient) -> None:
    refused(
        await houyi.call("live_migrate_vm", vm_name="i-badimage0001", client_token="m1"),
        Code.UNSUPPORTED,
        "image not supported",
    )
    ok(
        await houyi.call(
            "live_migrate_vm", vm_name="i-badimage0001", no_check_image=True, rate=1000, client_token="m2"
        )
    )


async def test_high_load_on_the_source_is_throttled_unless_bypassed(houyi: SimulatorClient) -> None:
    status, _ = await houyi.admin("PATCH", "/admin/ncs/100-1", json={"load_high": True})
    assert status == 200
    refused(
        await houyi.call("live_migrate_vm", vm_name="i-plain0000001", client_token="m1"),
        Code.THROTTLED,
        "load too high",
    )
    ok(
        await houyi.call(
            "live_migrate_vm", vm_name="i-plain0000001", no_check_load=True, rate=1000, client_token="m2"
        )
    )


async def test_downtime_must_be_between_200_and_2000_ms(houyi: SimulatorClient) -> None:
    for downtime in (199, 2001):
        refused(
            await houyi.call(
                "live_migrate_vm", vm_name="i-plain0000001", downtime=downtime, client_token=f"d{downtime}"
            ),
            Code.INVALID_PARAMETER,
            "downtime",
        )


async def test_only_a_running_vm_can_be_live_migrated(houyi: SimulatorClient) -> None:
    refused(
        await houyi.call("live_migrate_vm", vm_name="i-stopped00001", client_token="m"),
        Code.WRONG_STATE,
        "vm i-stopped00001 is stopped, cannot be live-migrated (must be running)",
    )


@pytest.mark.parametrize(
    ("target", "code", "reason"),
    [
        ("100-3", Code.UNSUPPORTED, "software_version_mismatch"),
        ("100-5", Code.UNSUPPORTED, "cpu_model_mismatch"),
        ("200-1", Code.UNSUPPORTED, "live migration stays within a cluster"),
        ("100-4", Code.WRONG_STATE, "nc 100-4 is mlock, cannot receive vms"),
        ("100-1", Code.UNSUPPORTED, "the target must be another nc"),
        ("999-1", Code.NOT_FOUND, "nc 999-1 not found"),
    ],
)
async def test_a_given_target_must_be_able_to_host_the_vm(
    houyi: SimulatorClient, target: str, code: Code, reason: str
) -> None:
    refused(
        await houyi.call(
            "live_migrate_vm", vm_name="i-plain0000001", nc_id=target, client_token=f"m-{target}"
        ),
        code,
        reason,
    )


async def test_a_given_target_needs_room(houyi: SimulatorClient) -> None:
    refused(
        await houyi.call("live_migrate_vm", vm_name="i-huge00000001", nc_id="100-6", client_token="m"),
        Code.WRONG_STATE,
        "nc 100-6 has no room for vm i-huge00000001: needs 48 vCPU / 200 GiB, free 32 vCPU / 128 GiB",
    )


async def test_a_live_migration_moves_the_vm_and_its_capacity(houyi: SimulatorClient) -> None:
    task = LiveMigrationTask.model_validate(
        ok(await houyi.call("live_migrate_vm", vm_name="i-plain0000001", rate=80, client_token="m"))
    )
    # No target given: the scheduler picks the free host of the same CPU and software with the most room.
    assert (task.source_nc_id, task.target_nc_id) == ("100-1", "100-2")
    assert (await vm_record(houyi, "i-plain0000001")).status is VmStatus.MIGRATING
    running = LiveMigrationProgress.model_validate(
        ok(await houyi.call("get_live_migration_progress", vm_name="i-plain0000001"))
    )
    assert running.state is MigrationState.RUNNING and 0 <= running.progress_pct < 100

    done = await migration_outcome(houyi, "i-plain0000001")
    assert (done.state, done.progress_pct, done.migration_id) == (
        MigrationState.SUCCEEDED,
        100,
        task.migration_id,
    )
    vm = await vm_record(houyi, "i-plain0000001")
    assert (vm.nc_id, vm.status) == ("100-2", VmStatus.RUNNING)
    target = NcDetail.model_validate(ok(await houyi.call("describe_nc", nc_id="100-2")))
    assert [v.vm_id for v in target.vms] == ["i-plain0000001"]
    assert (target.nc.vcpu_used, target.nc.memory_gib_used) == (4, 16)
    assert (await houyi.nc("100-1"))["counters"]["migrations_out"] == 1
    assert (await houyi.nc("100-2"))["counters"]["migrations_in"] == 1


async def test_the_scheduler_reports_no_capacity(houyi: SimulatorClient) -> None:
    # Only 100-2 and 100-6 match 100-1's CPU and software; with both locked nothing can take the VM.
    for nc_id in ("100-2", "100-6"):
        ok(await houyi.call("lock_nc", nc_id=nc_id, client_token=f"lock-{nc_id}"))
    refused(
        await houyi.call("live_migrate_vm", vm_name="i-plain0000001", client_token="m"),
        Code.WRONG_STATE,
        "no capacity",
    )


async def test_a_vm_dirtying_memory_faster_than_the_rate_times_out_and_stays(houyi: SimulatorClient) -> None:
    ok(await houyi.call("live_migrate_vm", vm_name="i-dirty0000001", rate=100, client_token="m"))
    done = await migration_outcome(houyi, "i-dirty0000001")
    assert done.state is MigrationState.TIMED_OUT and "dirties memory" in done.message
    vm = await vm_record(houyi, "i-dirty0000001")
    assert (vm.nc_id, vm.status) == ("100-1", VmStatus.RUNNING)
    assert (await houyi.nc("100-1"))["counters"]["migrations_timed_out"] == 1


async def test_a_running_migration_can_be_cancelled_and_the_vm_stays(houyi: SimulatorClient) -> None:
    ok(await houyi.call("live_migrate_vm", vm_name="i-huge00000001", rate=1, client_token="m"))
    refused(
        await houyi.call(
            "cancel_live_migrate_vm", region_id="cn-hz-d02", vm_name="i-huge00000001", client_token="c0"
        ),
        Code.NOT_FOUND,
        "not found in region cn-hz-d02",
    )
    assert Ack.model_validate(
        ok(
            await houyi.call(
                "cancel_live_migrate_vm", region_id="cn-qd-d01", vm_name="i-huge00000001", client_token="c1"
            )
        )
    ).done
    progress = ok(await houyi.call("get_live_migration_progress", vm_name="i-huge00000001"))
    assert progress["state"] == "cancelled"
    vm = await vm_record(houyi, "i-huge00000001")
    assert (vm.nc_id, vm.status) == ("100-1", VmStatus.RUNNING)
    refused(
        await houyi.call(
            "cancel_live_migrate_vm", region_id="cn-qd-d01", vm_name="i-huge00000001", client_token="c2"
        ),
        Code.WRONG_STATE,
        "no running live migration",
    )


async def test_a_finished_migration_cannot_be_cancelled(houyi: SimulatorClient) -> None:
    ok(await houyi.call("live_migrate_vm", vm_name="i-plain0000001", rate=1000, client_token="m"))
    await migration_outcome(houyi, "i-plain0000001")
    refused(
        await houyi.call(
            "cancel_live_migrate_vm", region_id="cn-qd-d01", vm_name="i-plain0000001", client_token="c"
        ),
        Code.WRONG_STATE,
        "no running live migration",
    )


async def test_a_stuck_migration_refuses_cancel_until_changed_by_hand(houyi: SimulatorClient) -> None:
    await houyi.inject(action="live_migrate_vm", kind="stuck", count=1)
    task = ok(await houyi.call("live_migrate_vm", vm_name="i-plain0000001", rate=1000, client_token="m"))
    refused(
        await houyi.call(
            "cancel_live_migrate_vm", region_id="cn-qd-d01", vm_name="i-plain0000001", client_token="c"
        ),
        Code.WRONG_STATE,
        "migration cannot be cancelled",
    )
    progress = ok(await houyi.call("get_live_migration_progress", vm_name="i-plain0000001"))
    assert progress["state"] == "running"
    refused(
        await houyi.call(
            "manually_change_migration_status",
            vm_name="i-plain0000001",
            region_id="cn-qd-d01",
            where="100-6",
            client_token="w0",
        ),
        Code.UNSUPPORTED,
        "where must be one of them",
    )
    change = VmStatusChange.model_validate(
        ok(
            await houyi.call(
                "manually_change_migration_status",
                vm_name="i-plain0000001",
                region_id="cn-qd-d01",
                where=task["target_nc_id"],
                client_token="w1",
            )
        )
    )
    assert (change.nc_id, change.status) == (task["target_nc_id"], VmStatus.RUNNING)
    assert (await vm_record(houyi, "i-plain0000001")).nc_id == task["target_nc_id"]
    refused(
        await houyi.call(
            "manually_change_migration_status",
            vm_name="i-plain0000001",
            region_id="cn-qd-d01",
            where=task["target_nc_id"],
            client_token="w2",
        ),
        Code.WRONG_STATE,
        "not migrating",
    )


async def test_a_migration_can_leave_a_residue_on_the_source(
    simulator_factory: Any, small_fleet_path: Any
) -> None:
    running = await simulator_factory(small_fleet_path, residue_rate=1.0)
    async with open_client(running) as houyi:
        ok(await houyi.call("live_migrate_vm", vm_name="i-plain0000001", rate=1000, client_token="m"))
        await migration_outcome(houyi, "i-plain0000001")
        residue = (await processes(houyi, "100-1"))["i-plain0000001"]
        assert residue.state is ProcessState.PAUSED and not residue.guest_active
        assert (await vm_record(houyi, "i-plain0000001")).nc_id == "100-2"


# ---- cold migration, start, stop -----------------------------------------------------------------------------


async def test_cold_migration_moves_a_stopped_vm_and_applies_after(houyi: SimulatorClient) -> None:
    change = VmStatusChange.model_validate(
        ok(
            await houyi.call(
                "cold_migrate_vm",
                vm_name="i-stopped00001",
                nc_id="100-5",
                after="start",
                boot_mode="repair",
                reason="host repair",
                client_token="cm",
            )
        )
    )
    # Cold migration does not care about CPU models.
    assert (change.nc_id, change.status) == ("100-5", VmStatus.RUNNING)
    assert (await houyi.nc("100-5"))["counters"]["cold_migrations_in"] == 1


async def test_cold_migration_without_target_picks_a_free_host_and_keeps_the_state(
    houyi: SimulatorClient,
) -> None:
    change = ok(await houyi.call("cold_migrate_vm", vm_name="i-gpu000000001", client_token="cm"))
    assert change["nc_id"] in {"100-2", "100-3", "100-5", "100-6"} and change["status"] == "running"


async def test_cold_migration_refuses_a_migrating_vm(houyi: SimulatorClient) -> None:
    ok(await houyi.call("live_migrate_vm", vm_name="i-huge00000001", rate=1, client_token="m"))
    refused(
        await houyi.call("cold_migrate_vm", vm_name="i-huge00000001", client_token="cm"),
        Code.WRONG_STATE,
        "is migrating, cannot be cold-migrated",
    )


async def test_start_and_stop_follow_the_vm_status(houyi: SimulatorClient) -> None:
    refused(
        await houyi.call("start_vm", vm_name="i-plain0000001", client_token="s0"),
        Code.WRONG_STATE,
        "cannot start",
    )
    assert ok(await houyi.call("stop_vm", vm_name="i-plain0000001", client_token="s1"))["status"] == "stopped"
    refused(
        await houyi.call("stop_vm", vm_name="i-plain0000001", client_token="s2"),
        Code.WRONG_STATE,
        "cannot stop",
    )
    started = ok(await houyi.call("start_vm", vm_name="i-plain0000001", client_token="s3"))
    assert (started["nc_id"], started["status"]) == ("100-1", "running")


async def test_a_vm_started_on_a_locked_host_is_placed_elsewhere(houyi: SimulatorClient) -> None:
    started = ok(await houyi.call("start_vm", vm_name="i-onmlock00001", client_token="s"))
    assert started["status"] == "running" and started["nc_id"] != "100-4"


# ---- VM processes ----------------------------------------------------------------------------------------


async def test_processes_are_the_vms_that_run_there_plus_residues(houyi: SimulatorClient) -> None:
    source = await processes(houyi, "100-1")
    assert "i-stopped00001" not in source and len(source) == 9
    assert all(p.state is ProcessState.RUNNING and p.guest_active for p in source.values())
    residues = await processes(houyi, "100-2")
    assert residues.keys() == {"i-plain0000002", "i-released0001"}
    assert (
        residues["i-plain0000002"].state is ProcessState.PAUSED
        and not residues["i-plain0000002"].guest_active
    )


async def test_destroying_a_residue_is_counted_as_such(houyi: SimulatorClient) -> None:
    ok(await houyi.call("destroy_vm_process", nc_id="100-2", vm_name="i-plain0000002", client_token="d"))
    host = await houyi.nc("100-2")
    assert host["counters"]["residues_destroyed"] == 1 and host["counters"]["authoritative_destroyed"] == 0
    assert [r["vm_id"] for r in host["residues"]] == ["i-released0001"]
    # The authoritative copy on 100-1 was not touched.
    assert (await vm_record(houyi, "i-plain0000002")).status is VmStatus.RUNNING
    refused(
        await houyi.call("destroy_vm_process", nc_id="100-2", vm_name="i-plain0000002", client_token="d2"),
        Code.NOT_FOUND,
        "no process of vm i-plain0000002 on nc 100-2",
    )


async def test_destroying_the_authoritative_copy_is_obeyed_but_counted(houyi: SimulatorClient) -> None:
    ok(await houyi.call("destroy_vm_process", nc_id="100-1", vm_name="i-plain0000001", client_token="d"))
    assert (await houyi.nc("100-1"))["counters"]["authoritative_destroyed"] == 1
    assert (await vm_record(houyi, "i-plain0000001")).status is VmStatus.STOPPED
    assert (await houyi.counters())["fleet"]["authoritative_destroyed"] == 1


# ---- capacity, events, dumps -----------------------------------------------------------------------------------


async def test_ri_reservations_have_deterministic_ids_and_release_once(houyi: SimulatorClient) -> None:
    first = RiReservation.model_validate(
        ok(
            await houyi.call(
                "reserve_ri_capacity", cluster_id="ECS-CPU-A-8976", vcpu=8, memory_gib=32, client_token="r1"
            )
        )
    )
    second = ok(
        await houyi.call(
            "reserve_ri_capacity", cluster_id="ECS-CPU-A-8976", vcpu=8, memory_gib=32, client_token="r2"
        )
    )
    assert (first.reservation_id, second["reservation_id"]) == ("ri-000001", "ri-000002")
    refused(
        await houyi.call(
            "reserve_ri_capacity", cluster_id="ECS-CPU-A-8976", vcpu=10_000, memory_gib=1, client_token="r3"
        ),
        Code.WRONG_STATE,
        "insufficient capacity",
    )
    refused(
        await houyi.call(
            "reserve_ri_capacity", cluster_id="ECS-NOPE", vcpu=1, memory_gib=1, client_token="r4"
        ),
        Code.NOT_FOUND,
        "cluster ECS-NOPE not found",
    )
    assert Ack.model_validate(
        ok(await houyi.call("release_ri_capacity", reservation_id="ri-000001", client_token="x1"))
    ).done
    refused(
        await houyi.call("release_ri_capacity", reservation_id="ri-000001", client_token="x2"),
        Code.WRONG_STATE,
        "already released",
    )


async def test_events_and_notifications_are_kept(houyi: SimulatorClient) -> None:
    ok(
        await houyi.call(
            "publish_event", nc_id="100-1", event="NcDown", detail="reboot", caller="wf-9", client_token="e"
        )
    )
    ok(
        await houyi.call(
            "notify", target="oncall", message="host 10.0.0.1 rebooted", caller="wf-9", client_token="n"
        )
    )
    refused(await houyi.call("publish_event", nc_id="999-1", event="x", client_token="e2"), Code.NOT_FOUND)
    events = (await houyi.get("/admin/events"))["events"]
    assert [(e["kind"], e["caller"]) for e in events] == [("event", "wf-9"), ("notification", "wf-9")]
    assert events[0]["event"] == "NcDown" and events[1]["target"] == "oncall"


async def test_dump_cn_memory_gives_a_dump_id(houyi: SimulatorClient) -> None:
    assert ok(await houyi.call("dump_cn_memory", nc_id="100-1", client_token="dump")) == {
        "nc_id": "100-1",
        "dump_id": "dump-000001",
    }


# ---- admin ---------------------------------------------------------------------------------------------------


async def test_admin_lists_every_host_and_details_one(houyi: SimulatorClient) -> None:
    ncs = await houyi.get("/admin/ncs")
    assert len(ncs) == 7
    assert set(ncs[0]) == {
        "nc_id",
        "nc_ip",
        "region_id",
        "zone_id",
        "cluster_id",
        "biz_status",
        "power_state",
    }
    host = await houyi.nc("10.0.0.2")
    assert host["nc"]["nc_id"] == "100-2" and host["power_state"] == "on"
    assert {r["vm_id"] for r in host["residues"]} == {"i-plain0000002", "i-released0001"}
    assert set(host["counters"]) >= {
        "lock_applied",
        "unlock_applied",
        "status_changes",
        "power_offs",
        "power_ons",
        "power_cycles",
        "power_offs_with_vms",
        "migrations_in",
        "migrations_out",
        "residues_destroyed",
        "authoritative_destroyed",
    }
    assert (await houyi.admin("GET", "/admin/ncs/10.9.9.9"))[0] == 404
    assert (await houyi.admin("GET", "/admin/vms/i-nosuchvm0001"))[0] == 404
    assert (await houyi.get("/admin/vms/i-plain0000001"))["vm"]["nc_id"] == "100-1"
    assert (await houyi.get("/admin/disks/d-river001"))["disk"]["storage_cluster"] == "river-a1"
    assert (await houyi.get("/healthz"))["status"] == "ok"


async def test_admin_can_plant_a_residue_but_not_on_the_vms_own_host(houyi: SimulatorClient) -> None:
    status, _ = await houyi.admin(
        "POST", "/admin/residues", json={"nc_id": "100-6", "vm_id": "i-plain0000001"}
    )
    assert status == 201
    assert "i-plain0000001" in [r["vm_id"] for r in (await houyi.nc("100-6"))["residues"]]
    status, body = await houyi.admin(
        "POST", "/admin/residues", json={"nc_id": "100-1", "vm_id": "i-plain0000001"}
    )
    assert status == 409 and "not a residue" in body["error"]


async def test_admin_call_log_keeps_caller_and_token(houyi: SimulatorClient) -> None:
    ok(await houyi.call("lock_nc", nc_id="100-1", caller="wf-log", client_token="wf-log/LockNc"))
    calls = (await houyi.get("/admin/calls?action=lock_nc"))["calls"]
    assert [(c["caller"], c["client_token"], c["code"], c["params"]) for c in calls] == [
        ("wf-log", "wf-log/LockNc", 200, {"nc_id": "100-1"})
    ]
