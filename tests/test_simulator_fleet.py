"""The simulator's fleet: the demo fleet's mix, the fleet file's checks, time and randomness, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from domain.model import ClusterKind, DiskCategory, NcBizStatus, PowerState, VmStatus, live_migration_blockers
from houyi.port import MigrationState
from houyi.wire import Code
from simulator.fleet import DEMO_FLEET_PATH, Fleet, FleetFile
from simulator.generate_fleet import build_demo_fleet, render
from simulator.server import RunningSimulator
from tests.fixtures.simulator import SimulatorFactory, open_client, small_fleet

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def small(clock: FakeClock | None = None, **options: Any) -> Fleet:
    return Fleet(FleetFile.model_validate(small_fleet()), clock=clock or FakeClock(), **options)


# ---- the demo fleet ------------------------------------------------------------------------------------------


def test_the_demo_fleet_has_the_size_and_mix_the_demos_need() -> None:
    fleet = Fleet.load()
    assert {"cn-qd-d01", "cn-hz-d02"} <= set(fleet.regions)
    kinds = Counter(cluster.kind for cluster in fleet.clusters.values())
    assert kinds[ClusterKind.CPU] >= 2 and kinds[ClusterKind.MOC] >= 2
    assert len(fleet.ncs) >= 40 and len(fleet.vms) >= 300

    vms = list(fleet.vms.values())

    def share(count: int) -> float:
        return count / len(vms)

    assert 0.06 <= share(sum(vm.has_local_disk for vm in vms)) <= 0.10
    assert 0.03 <= share(sum(bool(vm.devices) for vm in vms)) <= 0.05
    assert 0.02 <= share(sum(vm.has_trunk_nic for vm in vms)) <= 0.04
    assert 0.02 <= share(sum(vm.created_before_v33 and not vm.restarted_since_v33 for vm in vms)) <= 0.04
    assert sum(not vm.image_supported for vm in vms) >= 3
    assert sum(vm.dirty_rate_mbps >= 80 for vm in vms) >= 3
    statuses = Counter(vm.status for vm in vms)
    assert statuses[VmStatus.RUNNING] > 0.8 * len(vms) and statuses[VmStatus.STOPPED] > 0
    assert all(12 <= len(vm.vm_id) - 2 <= 20 for vm in vms)

    host_statuses = Counter(nc.biz_status for nc in fleet.ncs.values())
    assert host_statuses[NcBizStatus.MLOCK] >= 2 and host_statuses[NcBizStatus.NC_DOWN] >= 2
    assert host_statuses[NcBizStatus.OFFLINE] >= 1 and host_statuses[NcBizStatus.NO_HEARTBEAT] >= 1
    for cluster_id in fleet.clusters:
        hosts = [nc for nc in fleet.ncs.values() if nc.cluster_id == cluster_id]
        assert len({nc.cpu_model for nc in hosts}) > 1 and len({nc.software_version for nc in hosts}) > 1
    # Every host carries exactly the VMs it reports.
    for nc_id in fleet.ncs:
        detail = fleet.describe_nc(nc_id=nc_id)
        assert detail.nc.vcpu_used == sum(vm.vcpu for vm in detail.vms) <= detail.nc.vcpu_total
        assert (
            detail.nc.memory_gib_used == sum(vm.memory_gib for vm in detail.vms) <= detail.nc.memory_gib_total
        )

    disks = list(fleet.disks.values())
    categories = Counter(disk.category for disk in disks)
    assert categories[DiskCategory.RIVER] > 0.8 * len(disks) and categories[DiskCategory.LOCAL_SSD] > 0
    assert sum(disk.shared for disk in disks) >= 2 and sum(disk.size_gib > 2048 for disk in disks) >= 2
    assert sum(len(fleet.admin_nc_detail(nc_id)["residues"]) for nc_id in fleet.ncs) >= 3
    recyclable = fleet.query_device_migrate_log("complete")
    assert len(recyclable) >= 3
    assert any(fleet.query_migration_log(entry.task_id, status=2, src_recycled=0) for entry in recyclable)


def test_the_committed_demo_fleet_is_what_the_generator_writes() -> None:
    assert DEMO_FLEET_PATH.read_text(encoding="utf-8") == render(build_demo_fleet())


async def test_the_simulator_fixture_serves_the_demo_fleet(simulator: RunningSimulator) -> None:
    async with open_client(simulator) as houyi:
        ncs = await houyi.get("/admin/ncs")
        assert len(ncs) == len(simulator.fleet.ncs) >= 40
        free = next(nc for nc in ncs if nc["biz_status"] == "free")
        answer = await houyi.call("lock_nc", nc_id=free["nc_id"], client_token="fixture-lock")
        assert answer.code == Code.OK
    # The next test gets a fresh fleet: the fixture resets it (see the test below, which runs after).


async def test_the_simulator_fixture_is_reset_between_tests(simulator: RunningSimulator) -> None:
    counters = simulator.state.counters_json()
    assert counters["calls"] == {} and counters["fleet"]["lock_applied"] == 0


# ---- the fleet file ------------------------------------------------------------------------------------------


def test_a_fleet_file_with_dangling_references_is_refused_naming_them() -> None:
    fleet = small_fleet()
    fleet["vms"][0]["nc_id"] = "404-1"
    fleet["disks"][0]["storage_cluster"] = "river-zz"
    fleet["residues"].append({"nc_id": "100-1", "vm_id": "i-gpu000000001"})
    with pytest.raises(ValidationError) as caught:
        FleetFile.model_validate(fleet)
    message = str(caught.value)
    assert "vm i-plain0000001: unknown nc 404-1" in message
    assert "disk d-river001: unknown storage cluster river-zz" in message
    assert "that is the vm's own nc, not a residue" in message


def test_a_fleet_file_rejects_unknown_keys_bad_ids_and_overcommitted_hosts() -> None:
    typo = small_fleet()
    typo["ncs"][0]["biz_stauts"] = "free"
    bad_id = small_fleet()
    bad_id["vms"][0]["vm_id"] = "I-UPPER"
    overcommitted = small_fleet()
    overcommitted["vms"][0]["vcpu"] = 500
    for fleet, problem in (
        (typo, "biz_stauts"),
        (bad_id, "not an instance id"),
        (overcommitted, "more than its"),
    ):
        with pytest.raises(ValidationError, match=problem):
            FleetFile.model_validate(fleet)


# ---- time ----------------------------------------------------------------------------------------------------


def test_power_changes_settle_after_the_simulated_delay_divided_by_speed() -> None:
    clock = FakeClock()
    fleet = small(clock, speed=10)  # 100 simulated seconds = 10 real seconds
    assert fleet.oob_power_off("100-2").power_state is PowerState.PENDING_OFF
    clock.advance(9.9)
    assert fleet.get_oob_power_status("100-2").power_state is PowerState.PENDING_OFF
    clock.advance(0.1)
    assert fleet.get_oob_power_status("100-2").power_state is PowerState.OFF


def test_live_migration_progress_follows_the_clock() -> None:
    clock = FakeClock()
    fleet = small(clock)
    # 16 GiB at 128 MB/s: 128 simulated seconds.
    task = fleet.live_migrate_vm("i-plain0000001", rate=128)
    clock.advance(64)
    half = fleet.get_live_migration_progress("i-plain0000001")
    assert (half.state, half.progress_pct) == (MigrationState.RUNNING, 50)
    assert fleet.describe_vm("i-plain0000001").status is VmStatus.MIGRATING
    clock.advance(64)
    done = fleet.get_live_migration_progress("i-plain0000001")
    assert (done.state, done.progress_pct) == (MigrationState.SUCCEEDED, 100)
    assert fleet.describe_vm("i-plain0000001").nc_id == task.target_nc_id


def test_a_non_converging_migration_gives_up_after_three_times_its_duration() -> None:
    clock = FakeClock()
    fleet = small(clock)
    fleet.live_migrate_vm("i-dirty0000001", rate=128)  # 4 GiB at 128 MB/s: 32 s, dirtied at 200 MB/s
    clock.advance(95)
    assert fleet.get_live_migration_progress("i-dirty0000001").state is MigrationState.RUNNING
    clock.advance(1)
    assert fleet.get_live_migration_progress("i-dirty0000001").state is MigrationState.TIMED_OUT
    vm = fleet.describe_vm("i-dirty0000001")
    assert (vm.nc_id, vm.status) == ("100-1", VmStatus.RUNNING)


def test_capacity_held_for_a_running_migration_is_not_given_twice() -> None:
    fleet = small()
    # 100-2 (64 vCPU) is the best fit for the 48-vCPU VM; while that migration runs it has 16 vCPU left.
    assert fleet.live_migrate_vm("i-huge00000001", rate=1).target_nc_id == "100-2"
    assert fleet.live_migrate_vm("i-plain0000001", rate=1).target_nc_id == "100-6"


# ---- randomness ----------------------------------------------------------------------------------------------


def _cold_migration_targets(seed: int) -> list[str]:
    fleet = Fleet.load(seed=seed, clock=FakeClock())
    movable = sorted(
        vm.vm_id
        for vm in fleet.vms.values()
        if vm.status is VmStatus.STOPPED and fleet.ncs[vm.nc_id].biz_status.schedulable
    )[:10]
    return [fleet.cold_migrate_vm(vm_id).nc_id for vm_id in movable]


def test_the_same_seed_makes_the_same_random_choices() -> None:
    assert _cold_migration_targets(7) == _cold_migration_targets(7)
    assert _cold_migration_targets(7) != _cold_migration_targets(8)


def test_residues_are_drawn_from_the_seed() -> None:
    def residues(seed: int) -> list[str]:
        clock = FakeClock()
        fleet = small(clock, seed=seed, residue_rate=0.5)
        for vm_id in ("i-plain0000001", "i-plain0000002", "i-badimage0001"):
            fleet.live_migrate_vm(vm_id, rate=1000, no_check_image=True)
        clock.advance(100)
        return [p.vm_id for p in fleet.list_vm_processes("100-1") if p.state.value == "paused"]

    assert residues(3) == residues(3)
    assert {tuple(residues(seed)) for seed in range(8)} != {()}


async def test_two_simulators_with_the_same_seed_schedule_alike(simulator_factory: SimulatorFactory) -> None:
    async def choices(running: RunningSimulator) -> list[str]:
        fleet = running.fleet
        candidates = [
            vm.vm_id
            for vm in fleet.vms.values()
            if vm.status is VmStatus.RUNNING
            and fleet.ncs[vm.nc_id].biz_status.schedulable
            and not live_migration_blockers(vm, fleet.ncs[vm.nc_id])
            and vm.image_supported
        ][:6]
        targets = []
        async with open_client(running) as houyi:
            for vm_id in candidates:
                answer = await houyi.call("cold_migrate_vm", vm_name=vm_id, client_token=f"cold-{vm_id}")
                assert answer.code == Code.OK, answer.msg
                targets.append(answer.data["nc_id"])
        return targets

    first = await simulator_factory(seed=11)
    second = await simulator_factory(seed=11)
    assert await choices(first) == await choices(second)


# ---- the command line ----------------------------------------------------------------------------------------


async def test_the_cli_serves_until_sigterm(tmp_path: Path, unused_tcp_port: int) -> None:
    fleet_path = tmp_path / "fleet.json"
    fleet_path.write_text(json.dumps(small_fleet()), encoding="utf-8")
    env = {**os.environ, "HOUYI_SIM_PORT": str(unused_tcp_port), "HOUYI_SIM_SPEED": "25"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator",
        "--fleet",
        str(fleet_path),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert (
            f"houyi simulator listening on http://127.0.0.1:{unused_tcp_port} "
            "(fleet small: 1 regions, 2 clusters, 7 NCs, 13 VMs, speed 25)"
        ) in line
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{unused_tcp_port}/healthz") as response:
                assert (await response.json())["speed"] == 25
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
