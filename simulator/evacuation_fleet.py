"""Fleets for evacuation tests and benchmarks: one host carrying N VMs and a cluster with room for them.

    python -m simulator.evacuation_fleet --vms 200 --out /tmp/evac-200.json

``ECS-CPU-EVAC-01``: the source ``10.40.0.10`` (``40000-10``, free) carries ``vm_count`` VMs whose memory is
drawn from ``memory_choices`` (so live-migration times vary); ``ineligible`` of them cannot be live-migrated
(local disk, GPU, trunk NIC, pre-3.3 not restarted, in turn), ``stopped`` are stopped, the rest run and can
go live. Enough free hosts of the same CPU and software take them all with room to spare, and one host of
another CPU model must never receive a live migration. ``ECS-CPU-FULL-01`` (with ``with_full_cluster``):
``10.41.0.10`` carries 6 VMs that its cluster has no room for. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path
from typing import Any

from simulator.fleet import FleetFile

REGION = "cn-evac-d01"
ZONE = "cn-evac-d01-a"
CLUSTER = "ECS-CPU-EVAC-01"
FULL_CLUSTER = "ECS-CPU-FULL-01"
SOURCE_IP = "10.40.0.10"
SOURCE_NC_ID = "40000-10"
FULL_SOURCE_IP = "10.41.0.10"
CPU_MODEL = "Intel(R) Xeon(R) Platinum 8269CY"
OTHER_CPU_MODEL = "Intel(R) Xeon(R) Platinum 8163"
SOFTWARE = "houyi-3.5.2"
HOST_VCPU = 104
HOST_MEMORY_GIB = 768
_BLOCKERS: tuple[dict[str, Any], ...] = (
    {"has_local_disk": True},
    {"devices": ["gpu"]},
    {"has_trunk_nic": True},
    {"created_before_v33": True, "restarted_since_v33": False},
)


def _nc(index: int, cluster: str, prefix: str, **overrides: Any) -> dict[str, Any]:
    return {
        "nc_id": f"{prefix}-{index}",
        "nc_ip": f"10.{40 if cluster == CLUSTER else 41}.0.{index}",
        "hostname": f"evac-{prefix}-{index}",
        "sn": f"SN{prefix}{index:04d}",
        "cluster_id": cluster,
        "cpu_model": CPU_MODEL,
        "software_version": SOFTWARE,
        "vcpu_total": HOST_VCPU,
        "memory_gib_total": HOST_MEMORY_GIB,
        **overrides,
    }


def build_evacuation_fleet(
    vm_count: int,
    *,
    seed: int = 1,
    ineligible: int = 0,
    stopped: int = 0,
    target_hosts: int | None = None,
    memory_choices: tuple[int, ...] = (4, 8, 16, 32, 64),
    dirty_rate_mbps: int = 20,
    with_full_cluster: bool = True,
) -> dict[str, Any]:
    if ineligible + stopped > vm_count:
        raise ValueError(f"{ineligible} ineligible + {stopped} stopped VMs exceed {vm_count}")
    rng = random.Random(seed)
    vms: list[dict[str, Any]] = []
    for index in range(vm_count):
        memory = rng.choice(memory_choices)
        vm: dict[str, Any] = {
            "vm_id": f"i-evac{seed:02d}{index:05d}",
            "nc_id": SOURCE_NC_ID,
            "instance_type": f"ecs.evac.m{memory}",
            "vcpu": max(1, min(16, memory // 4)),
            "memory_gib": memory,
            "dirty_rate_mbps": dirty_rate_mbps,
        }
        if index < ineligible:
            vm.update(_BLOCKERS[index % len(_BLOCKERS)])
        elif index < ineligible + stopped:
            vm["status"] = "stopped"
        vms.append(vm)
    need_vcpu = sum(vm["vcpu"] for vm in vms)
    need_memory = sum(vm["memory_gib"] for vm in vms)
    # Half-full targets at most, plus one: placement never runs tight. At least four, so that draining the
    # source leaves the default capacity guard (80 % of the cluster schedulable) satisfied.
    hosts = target_hosts or max(
        4, math.ceil(2 * max(need_vcpu / HOST_VCPU, need_memory / HOST_MEMORY_GIB)) + 1
    )
    # The source is as large as its VMs need (a 200-VM host of this mix is big; the model does not mind).
    ncs = [
        _nc(
            10,
            CLUSTER,
            "40000",
            vcpu_total=max(HOST_VCPU, need_vcpu),
            memory_gib_total=max(HOST_MEMORY_GIB, need_memory),
        )
    ]
    ncs += [_nc(11 + i, CLUSTER, "40000") for i in range(hosts)]
    ncs.append(_nc(9, CLUSTER, "40000", cpu_model=OTHER_CPU_MODEL))
    clusters = [{"cluster_id": CLUSTER, "region_id": REGION, "zone_id": ZONE, "kind": "CPU"}]
    if with_full_cluster:
        clusters.append({"cluster_id": FULL_CLUSTER, "region_id": REGION, "zone_id": ZONE, "kind": "CPU"})
        ncs.append(_nc(10, FULL_CLUSTER, "41000"))
        ncs.append(_nc(11, FULL_CLUSTER, "41000", vcpu_total=8, memory_gib_total=32))
        ncs.append(_nc(12, FULL_CLUSTER, "41000", biz_status="mlock"))
        vms += [
            {
                "vm_id": f"i-full{seed:02d}{index:05d}",
                "nc_id": "41000-10",
                "instance_type": "ecs.evac.m64",
                "vcpu": 16,
                "memory_gib": 64,
            }
            for index in range(6)
        ]
    fleet = {
        "name": f"evacuation-{vm_count}",
        "settings": {"power_settle_seconds": 60},
        "regions": [{"region_id": REGION, "zones": [ZONE]}],
        "clusters": clusters,
        "storage_clusters": [],
        "ncs": ncs,
        "vms": vms,
        "disks": [],
    }
    FleetFile.model_validate(fleet)
    return fleet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.evacuation_fleet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--vms", type=int, required=True)
    parser.add_argument("--ineligible", type=int, default=0)
    parser.add_argument("--stopped", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fleet = build_evacuation_fleet(args.vms, seed=args.seed, ineligible=args.ineligible, stopped=args.stopped)
    args.out.write_text(json.dumps(fleet, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(fleet['ncs'])} NCs, {len(fleet['vms'])} VMs")


if __name__ == "__main__":
    main()
