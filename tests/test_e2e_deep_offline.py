"""0x400003 end to end on the dev server, with the worker as its own process: a demo host whose VMs mix
live-eligible and ineligible ones is drained and rebooted, and a worker killed by SIGKILL at a step is
restarted without any step's effect applied twice (simulator counters)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from deploy.devstack import NC_DEEP_OFFLINE_EXAMPLE_INPUT, deep_offline_example_host
from domain.evacuation import MigrationMethod, VmMoveState
from domain.operations import OperationResult, OpsState
from simulator.server import RunningSimulator
from store.repository import OperationStore
from tests.fixtures.stack import Stack
from tests.helpers import SimulatorAdmin, eventually
from workflows.lifecycle import ApprovalInput, OperationStatus

pytestmark = pytest.mark.e2e


def placements(simulator: RunningSimulator) -> dict[str, tuple[str, str]]:
    return {vm.vm_id: (vm.nc_id, vm.status.value) for vm in simulator.fleet.vms.values()}


@pytest.mark.parametrize("kill_during", [None, "live_migrate_vm", "cold_migrate_vm", "oob_power_off"])
async def test_a_demo_host_is_drained_and_rebooted_and_a_killed_worker_applies_nothing_twice(
    kill_during: str | None,
    stack: Stack,
    simulator: RunningSimulator,
    admin: SimulatorAdmin,
    store_view: OperationStore,
) -> None:
    nc_ip = deep_offline_example_host()
    source = await admin.nc(nc_ip)
    nc_id = source["nc"]["nc_id"]
    before = placements(simulator)
    on_host = sorted(vm for vm, (where, _) in before.items() if where == nc_id)
    assert len(on_host) >= 4
    if kill_during:
        # Hold that call in flight long enough to kill the worker while it waits on Houyi.
        await admin.inject(action=kill_during, kind="latency", latency_seconds=3, count=1)
    client = await Client.connect(stack.address, data_converter=pydantic_data_converter)
    handle = await client.start_workflow(
        "NcDeepOffline",
        {"nc_ip": nc_ip, **NC_DEEP_OFFLINE_EXAMPLE_INPUT},
        id=f"0x400003-{uuid.uuid4()}",
        task_queue=stack.task_queue,
        result_type=OperationResult,
    )

    async def pending() -> OperationStatus:
        status = await handle.query("status", result_type=OperationStatus)
        assert status.state is OpsState.PENDING_APPROVAL, status.state
        return status

    status = await eventually(pending, within=30)
    cold_planned = [vm for vm in status.vms if vm.method is MigrationMethod.COLD]
    assert cold_planned and all(vm.blockers for vm in cold_planned), (
        "the plan names why each cold VM cannot go live"
    )
    await handle.signal("approve", ApprovalInput(approver="approver1", comment="go"))
    if kill_during:

        async def in_flight() -> None:
            inflight: dict[str, Any] = (await admin.counters()).get("inflight", {})
            assert inflight.get(kill_during, 0) >= 1, inflight

        await eventually(in_flight, within=60)
        assert stack.worker is not None
        stack.worker.kill()
        await stack.start_worker()

    result = await asyncio.wait_for(handle.result(), timeout=180)

    assert result.state is OpsState.SUCCEEDED, result.message
    after = placements(simulator)
    # None lost: the same VMs, each in the state it had, none left on the host.
    assert sorted(after) == sorted(before)
    assert {vm: status for vm, (_, status) in after.items()} == {
        vm: status for vm, (_, status) in before.items()
    }
    assert [vm for vm, (where, _) in after.items() if where == nc_id] == []
    live = [vm for vm in result.vms if vm.state is VmMoveState.MIGRATED]
    cold = [vm for vm in result.vms if vm.state is VmMoveState.COLD_MIGRATED]
    assert len(live) + len(cold) == len(on_host) and live and cold
    host = await admin.nc(nc_ip)
    counters = host["counters"]
    # Each effect once, killed worker or not.
    assert counters["lock_applied"] == 1
    assert counters["migrations_out"] == len(live)
    assert counters["cold_migrations_out"] == len(cold)
    assert (counters["power_offs"], counters["power_ons"], counters["power_offs_with_vms"]) == (1, 1, 0)
    totals = simulator.fleet.totals()
    assert (totals["ri_reserved"], totals["ri_released"], totals["events_published"]) == (1, 1, 2)
    assert simulator.fleet.active_reservations() == []
    assert (host["biz_status"], host["power_state"]) == ("nc_down", "on")
    operation = await store_view.get_operation(handle.id)
    assert operation is not None and operation.state is OpsState.SUCCEEDED
