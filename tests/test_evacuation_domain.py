"""The evacuation plan: who leaves how, spare capacity, placement, estimates and progress (pure domain)."""

from __future__ import annotations

from typing import Any

import pytest

from domain.evacuation import (
    COLD_MIGRATION_ESTIMATE_SECONDS,
    POWER_CYCLE_ESTIMATE_SECONDS,
    MigrationMethod,
    VmMoveState,
    live_migration_seconds,
    lpt_makespan,
    makespan_lower_bound,
    moves_from_plan,
    plan_evacuation,
    progress_line,
    spare_capacity,
)
from domain.model import DeviceKind, Nc, NcBizStatus, PowerState, Vm, VmStatus

CPU = "Intel(R) Xeon(R) Platinum 8269CY"
OTHER_CPU = "Intel(R) Xeon(R) Platinum 8163"


def nc(index: int, **overrides: Any) -> Nc:
    fields: dict[str, Any] = {
        "nc_id": f"100-{index}",
        "nc_ip": f"10.0.0.{index}",
        "hostname": f"h{index}",
        "sn": f"sn{index}",
        "region_id": "r",
        "zone_id": "z",
        "cluster_id": "C1",
        "biz_status": NcBizStatus.FREE,
        "cpu_model": CPU,
        "software_version": "v3.5",
        "vcpu_total": 32,
        "memory_gib_total": 128,
    }
    fields.update(overrides)
    return Nc(**fields)


def vm(name: str, vcpu: int = 4, memory_gib: int = 16, **overrides: Any) -> Vm:
    fields: dict[str, Any] = {
        "vm_id": f"i-{name:0>8}",
        "nc_id": "100-1",
        "region_id": "r",
        "status": VmStatus.RUNNING,
        "instance_type": "ecs.g6.xlarge",
        "vcpu": vcpu,
        "memory_gib": memory_gib,
    }
    fields.update(overrides)
    return Vm(**fields)


SOURCE = nc(1, biz_status=NcBizStatus.MLOCK)


def test_each_vm_is_planned_live_or_cold_with_the_reasons_it_cannot_go_live() -> None:
    vms = [
        vm("a"),
        vm("b", has_local_disk=True),
        vm("c", devices=[DeviceKind.GPU]),
        vm("d", has_trunk_nic=True),
        vm("e", created_before_v33=True, restarted_since_v33=False),
        vm("f", status=VmStatus.STOPPED),
    ]
    plan = plan_evacuation(SOURCE, vms, [SOURCE, nc(2), nc(3)], live=True, rate=80, parallel=4)

    by_id = {p.vm_id: p for p in plan.vms}
    assert by_id["i-0000000a"].method is MigrationMethod.LIVE and by_id["i-0000000a"].blockers == []
    assert by_id["i-0000000b"].blockers == ["local_storage"]
    assert by_id["i-0000000c"].blockers == ["gpu_fpga_passthrough_sriov"]
    assert by_id["i-0000000d"].blockers == ["trunk_or_member_nic"]
    assert by_id["i-0000000e"].blockers == ["created_before_v3.3_not_restarted"]
    assert by_id["i-0000000f"].blockers == ["not running (stopped)"]
    assert [p.vm_id for p in plan.cold] == [f"i-0000000{x}" for x in "bcdef"]
    assert plan.target_hosts == 2 and plan.unplaceable == []


def test_a_cpu_or_software_mismatch_blocks_only_when_every_candidate_target_differs() -> None:
    vms = [vm("a")]
    one_matching = plan_evacuation(
        SOURCE, vms, [SOURCE, nc(2, cpu_model=OTHER_CPU), nc(3)], live=True, rate=80, parallel=1
    )
    none_matching = plan_evacuation(
        SOURCE,
        vms,
        [SOURCE, nc(2, cpu_model=OTHER_CPU), nc(3, cpu_model=OTHER_CPU, software_version="v3.1")],
        live=True,
        rate=80,
        parallel=1,
    )
    crossed = plan_evacuation(
        SOURCE,
        vms,
        [SOURCE, nc(2, cpu_model=OTHER_CPU), nc(3, software_version="v3.1")],
        live=True,
        rate=80,
        parallel=1,
    )

    assert one_matching.vms[0].method is MigrationMethod.LIVE
    assert none_matching.vms[0].blockers == ["cpu_model_mismatch"]
    assert crossed.vms[0].blockers == ["no target with the same cpu model and software version"]


def test_only_free_powered_on_hosts_of_the_cluster_are_targets() -> None:
    cluster = [
        SOURCE,
        nc(2),
        nc(3, biz_status=NcBizStatus.MLOCK),
        nc(4, power_state=PowerState.OFF),
        nc(5, cluster_id="C2"),
        nc(6, biz_status=NcBizStatus.NC_DOWN),
    ]
    plan = plan_evacuation(SOURCE, [vm("a")], cluster, live=True, rate=80, parallel=1)
    assert plan.target_hosts == 1


def test_spare_capacity_is_the_domain_formula_over_free_hosts() -> None:
    # 32 vCPU / 128 GiB host with 10 vCPU / 100 GiB used: min(22 // 4, 28 // 16) = 1; an empty one: min(8, 8) = 8.
    hosts = [nc(2, vcpu_used=10, memory_gib_used=100), nc(3)]
    assert spare_capacity(4, 16, hosts) == 1 + 8
    assert spare_capacity(64, 8, hosts) == 0


def test_a_cluster_that_cannot_take_the_vms_leaves_them_unplaceable() -> None:
    vms = [vm(str(i), vcpu=16, memory_gib=64) for i in range(5)]
    plan = plan_evacuation(SOURCE, vms, [SOURCE, nc(2), nc(3)], live=True, rate=80, parallel=2)
    # Two 32 vCPU / 128 GiB hosts hold four 16 / 64 VMs.
    assert len(plan.unplaceable) == 1
    sizes = {(c.vcpu, c.memory_gib): (c.spare, c.vm_count) for c in plan.capacity}
    assert sizes == {(16, 64): (4, 5)}
    assert "no room in the cluster for" in "\n".join(plan.lines())


def test_live_vms_are_placed_only_on_hosts_of_the_same_cpu_and_software() -> None:
    vms = [vm("a", vcpu=16, memory_gib=64), vm("b", vcpu=16, memory_gib=64, has_local_disk=True)]
    small_match = nc(2, vcpu_total=16, memory_gib_total=64)
    other = nc(3, cpu_model=OTHER_CPU, vcpu_total=16, memory_gib_total=64)
    plan = plan_evacuation(SOURCE, vms, [SOURCE, small_match, other], live=True, rate=80, parallel=1)
    assert plan.unplaceable == []  # live a -> 100-2, cold b -> 100-3


def test_the_estimate_is_the_longest_first_schedule_plus_cold_moves_plus_the_reboot() -> None:
    vms = [
        vm("a", memory_gib=8),
        vm("b", memory_gib=16),
        vm("c", memory_gib=32),
        vm("d", has_local_disk=True),
    ]
    plan = plan_evacuation(SOURCE, vms, [SOURCE, nc(2), nc(3)], live=True, rate=80, parallel=2)
    live = lpt_makespan([live_migration_seconds(m, 80) for m in (8, 16, 32)], 2)
    assert plan.estimated_seconds == pytest.approx(
        live + COLD_MIGRATION_ESTIMATE_SECONDS + POWER_CYCLE_ESTIMATE_SECONDS
    )
    assert live_migration_seconds(32, 80) == pytest.approx(5 + 32 * 1024 / 80)


def test_without_live_migration_every_vm_is_cold() -> None:
    plan = plan_evacuation(SOURCE, [vm("a"), vm("b")], [SOURCE, nc(2)], live=False, rate=80, parallel=4)
    assert [p.method for p in plan.vms] == [MigrationMethod.COLD, MigrationMethod.COLD]


def test_longest_first_comes_close_to_the_lower_bound() -> None:
    durations = [7.0, 5.0, 4.0, 4.0, 3.0, 3.0, 2.0, 2.0]
    assert makespan_lower_bound(durations, 3) == 10.0
    assert lpt_makespan(durations, 3) == 10.0
    # Graham's bad case for longest-first on two slots: 7 against an optimum (and bound) of 6.
    assert lpt_makespan([3.0, 3.0, 2.0, 2.0, 2.0], 2) == 7.0
    assert makespan_lower_bound([3.0, 3.0, 2.0, 2.0, 2.0], 2) == 6.0
    assert lpt_makespan(durations, 1) == sum(durations)
    assert makespan_lower_bound([], 4) == 0.0


def test_progress_counts_what_has_left_and_what_needs_a_look() -> None:
    plan = plan_evacuation(
        SOURCE, [vm(str(i)) for i in range(5)], [SOURCE, nc(2), nc(3)], live=True, rate=80, parallel=2
    )
    moves = moves_from_plan(plan, SOURCE.nc_id)
    moves[0].state = VmMoveState.MIGRATED
    moves[1].state = VmMoveState.COLD_MIGRATED
    moves[2].state = VmMoveState.MIGRATING
    moves[3].state = VmMoveState.STUCK
    assert progress_line(moves) == "migrated 2/5, 1 migrating, 1 stuck"
