"""Evacuating a host (issue 4) on the time-skipping server with the real worker, simulator and PostgreSQL:
0x400003 deep offline, 0x40003000001001 without live migration, and whole-host migration.

The fleet is ``simulator.evacuation_fleet``: ``10.40.0.10`` carries the VMs, its cluster has room for them;
``10.41.0.10``'s cluster has none. The simulator runs 1,000 times faster than real time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from domain.evacuation import MigrationMethod, VmMoveState
from domain.model import NcBizStatus
from domain.operations import HostOutcomeKind, OperationResult, OpsState
from simulator.evacuation_fleet import (
    CLUSTER,
    SOURCE_IP,
    SOURCE_NC_ID,
    build_evacuation_fleet,
)
from simulator.server import RunningSimulator
from store.maintenance import MaintenanceWindowStore
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from tests.fixtures.simulator import SimulatorFactory, write_fleet
from tests.helpers import SimulatorAdmin
from tests.lifecycle_helpers import (
    REQUESTER,
    Operations,
    running_worker,
    status_of,
)
from workflows.lifecycle import OperationStatus

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
    return {
        "nc_ip": nc_ip,
        "requester": REQUESTER,
        "reason_category": "hardware",
        "reason": "DIMM errors climbing: drain and reboot",
        "ticket": "CHG-4001",
        "source": source,
        "settings": {"needLimit": 0, **settings},
    }


class Fleet:
    """The running simulator of one evacuation fleet, and the test's view of it."""

    def __init__(self, running: RunningSimulator, spec: dict[str, Any]) -> None:
        self.running = running
        self.spec = spec
        self.admin = SimulatorAdmin(running.url)

    def vms_of(self, nc_id: str) -> list[str]:
        return sorted(vm.vm_id for vm in self.running.fleet.vms.values() if vm.nc_id == nc_id)

    def statuses(self) -> dict[str, str]:
        return {vm.vm_id: vm.status.value for vm in self.running.fleet.vms.values()}

    def totals(self) -> dict[str, int]:
        return self.running.fleet.totals()


@pytest.fixture
async def make_fleet(simulator_factory: SimulatorFactory, tmp_path: Path) -> Callable[..., Awaitable[Fleet]]:
    async def make(vm_count: int = 12, **options: Any) -> Fleet:
        spec = build_evacuation_fleet(vm_count, **options)
        running = await simulator_factory(write_fleet(tmp_path / f"evac-{uuid.uuid4()}.json", spec))
        return Fleet(running, spec)

    return make


@pytest.fixture
async def windows(store: OperationStore) -> MaintenanceWindowStore:
    await seed_dev_approvers(store)
    return MaintenanceWindowStore.of(store)


class Evacuations:
    def __init__(
        self, env: WorkflowEnvironment, store: OperationStore, task_queue: str, fleet: Fleet
    ) -> None:
        self.env = env
        self.store = store
        self.task_queue = task_queue
        self.fleet = fleet


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


@pytest.fixture
async def ops_on(
    time_skipping_env: WorkflowEnvironment, store: OperationStore, task_queue: str
) -> AsyncIterator[Callable[[Fleet], Awaitable[Operations]]]:
    """Operations against a fleet: starts the worker on that fleet's simulator."""
    stack: list[Any] = []

    async def start(fleet: Fleet) -> Operations:
        context = running_worker(time_skipping_env.client, task_queue, fleet.running.url, store)
        await context.__aenter__()
        stack.append(context)
        ops = Operations(time_skipping_env.client, task_queue, store)
        stack.append(ops)
        return ops

    yield start
    for item in reversed(stack):
        if isinstance(item, Operations):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


def step_table(status: OperationStatus | OperationResult | Any) -> list[tuple[str, str]]:
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
