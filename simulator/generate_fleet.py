"""Generate the demo fleet: ``python -m simulator.generate_fleet --out simulator/fleets/demo.json``.

Deterministic (one seeded RNG), so regenerating gives the same file. The mix is meant to make every refusal
demonstrable: hosts that are not free, CPU-model and software-version mismatches, VMs that cannot be
live-migrated (local disk, GPU/FPGA/SR-IOV, trunk NIC, pre-v3.3 not restarted, unsupported image, high memory
dirty rate), disks each disk-migration limit refuses, residue processes, and finished disk migrations for
recycle to work on. See ``simulator.fleet`` for the file format.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.fleet import FleetFile, pangu_path

DEFAULT_SEED = 20240607
NCS_PER_CLUSTER = 20
HOSTS_PER_RACK = 4

_ALNUM = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class _ClusterPlan:
    cluster_id: str
    region_id: str
    zone_id: str
    kind: str
    tenancy: str
    ip_prefix: str
    cpu_model: str
    odd_cpu_model: str
    vcpu_total: int
    memory_gib_total: int
    instance_types: tuple[tuple[str, int, int], ...]
    # Host index -> business status for hosts that are not free.
    statuses: tuple[tuple[int, str], ...]
    load_high: tuple[int, ...]


_CPU_TYPES = (
    ("ecs.g6.large", 2, 8),
    ("ecs.g6.xlarge", 4, 16),
    ("ecs.g6.2xlarge", 8, 32),
    ("ecs.c6.2xlarge", 8, 16),
    ("ecs.r6.xlarge", 4, 32),
    ("ecs.g6.4xlarge", 16, 64),
)
_MOC_TYPES = (
    ("ecs.g7.large", 2, 8),
    ("ecs.g7.xlarge", 4, 16),
    ("ecs.g7.2xlarge", 8, 32),
    ("ecs.c7.4xlarge", 16, 32),
    ("ecs.r7.2xlarge", 8, 64),
)
_DEVICE_TYPES = (
    ("ecs.gn6i-c8g1.2xlarge", 8, 32, "gpu"),
    ("ecs.f3-c16f1.4xlarge", 16, 64, "fpga"),
    ("ecs.g6.2xlarge", 8, 32, "sriov"),
    ("ecs.ebmgn6i.4xlarge", 16, 64, "passthrough"),
)

_CLUSTERS = (
    _ClusterPlan(
        "ECS-CPU-A-8976",
        "cn-qd-d01",
        "cn-qd-d01-a",
        "CPU",
        "shared",
        "10.12.16",
        "Intel(R) Xeon(R) Platinum 8269CY",
        "Intel(R) Xeon(R) Platinum 8163",
        104,
        384,
        _CPU_TYPES,
        ((2, "mlock"), (6, "nc_down")),
        (4,),
    ),
    _ClusterPlan(
        "ECS-MOC-A-0012",
        "cn-qd-d01",
        "cn-qd-d01-b",
        "MOC",
        "exclusive",
        "10.12.48",
        "Intel(R) Xeon(R) Platinum 8369B",
        "AMD EPYC 7T83",
        128,
        512,
        _MOC_TYPES,
        ((1, "mlock"), (9, "offline")),
        (),
    ),
    _ClusterPlan(
        "ECS-CPU-B-5531",
        "cn-hz-d02",
        "cn-hz-d02-a",
        "CPU",
        "shared",
        "10.34.16",
        "Intel(R) Xeon(R) Platinum 8269CY",
        "Intel(R) Xeon(R) Platinum 8163",
        104,
        384,
        _CPU_TYPES,
        ((3, "nc_down"), (10, "no_heartbeat")),
        (1,),
    ),
    _ClusterPlan(
        "ECS-MOC-B-0047",
        "cn-hz-d02",
        "cn-hz-d02-a",
        "MOC",
        "exclusive",
        "10.34.48",
        "Intel(R) Xeon(R) Platinum 8369B",
        "AMD EPYC 7T83",
        128,
        512,
        _MOC_TYPES,
        ((5, "rlock"),),
        (),
    ),
)

SOFTWARE_VERSION = "houyi-3.3.8"
OLD_SOFTWARE_VERSION = "houyi-3.3.6"

# zone -> storage clusters (name, OSS domain). The odd ones out demonstrate the disk-migration limits: a
# different OSS domain, a name of 15 bytes or more, and local disks (no storage cluster proper).
_STORAGE = {
    "cn-qd-d01-a": (
        ("river-qd-a1", "oss-qd-01"),
        ("river-qd-a2", "oss-qd-01"),
        ("river-qd-a3", "oss-qd-02"),
        ("river-qd-a-archive", "oss-qd-01"),
        ("local-qd-a", "local"),
    ),
    "cn-qd-d01-b": (("river-qd-b1", "oss-qd-01"), ("river-qd-b2", "oss-qd-01"), ("local-qd-b", "local")),
    "cn-hz-d02-a": (
        ("river-hz-a1", "oss-hz-01"),
        ("river-hz-a2", "oss-hz-01"),
        ("river-hz-a3", "oss-hz-02"),
        ("local-hz-a", "local"),
    ),
}
_IMAGES = ("img-centos-7.9", "img-ubuntu-22.04", "img-alinux-3", "img-windows-2019", "img-debian-12")
_UNSUPPORTED_IMAGES = ("img-custom-freebsd-13", "img-legacy-suse-11")


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.taken: set[str] = set()

    def unique(self, make: Any) -> str:
        while True:
            value = make()
            if value not in self.taken:
                self.taken.add(value)
                return str(value)

    def alnum(self, length: int) -> str:
        return "".join(self.rng.choice(_ALNUM) for _ in range(length))

    def vm_id(self) -> str:
        return self.unique(lambda: "i-" + self.rng.choice("m8b2") + self.alnum(self.rng.randint(12, 16)))

    def disk_id(self) -> str:
        return self.unique(lambda: "d-" + self.alnum(14))

    def sample(self, population: list[int], share: float) -> set[int]:
        return set(self.rng.sample(population, round(len(population) * share)))

    # ---- hosts --------------------------------------------------------------------------------------------

    def ncs(self) -> list[dict[str, Any]]:
        ncs = []
        for cluster_no, plan in enumerate(_CLUSTERS):
            statuses = dict(plan.statuses)
            # Two hosts per cluster with another CPU model, two with older software, so mismatches exist.
            odd_cpu = {7, 11}
            old_software = {8, 10} if cluster_no % 2 == 0 else {0, 8}
            rack_base = 0
            for index in range(NCS_PER_CLUSTER):
                rack, slot = divmod(index, HOSTS_PER_RACK)
                if slot == 0:
                    rack_base = int(self.unique(lambda: str(self.rng.randint(10000, 99999))))
                prefix, third = plan.ip_prefix.rsplit(".", 1)
                status = statuses.get(index, "free")
                ncs.append(
                    {
                        "nc_id": f"{rack_base}-{slot + 1}",
                        "nc_ip": f"{prefix}.{int(third) + rack}.{11 + slot}",
                        "hostname": f"{plan.zone_id}-{plan.cluster_id.lower()}-r{rack + 1:02d}-{slot + 1:02d}",
                        "sn": "21"
                        + "".join(self.rng.choice(string.ascii_uppercase + string.digits) for _ in range(10)),
                        "cluster_id": plan.cluster_id,
                        "biz_status": status,
                        "power_state": "off" if status == "offline" else "on",
                        "cpu_model": plan.odd_cpu_model if index in odd_cpu else plan.cpu_model,
                        "software_version": OLD_SOFTWARE_VERSION
                        if index in old_software
                        else SOFTWARE_VERSION,
                        "vcpu_total": plan.vcpu_total,
                        "memory_gib_total": plan.memory_gib_total,
                        "has_storage_node": plan.kind == "MOC" and index % 3 == 0,
                        "load_high": index in plan.load_high,
                    }
                )
        return ncs

    # ---- VMs ----------------------------------------------------------------------------------------------

    def vms(self, ncs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        plans = {plan.cluster_id: plan for plan in _CLUSTERS}
        vms: list[dict[str, Any]] = []
        for nc in ncs:
            if nc["biz_status"] == "offline":
                continue
            plan = plans[nc["cluster_id"]]
            free_vcpu, free_memory = nc["vcpu_total"] * 0.7, nc["memory_gib_total"] * 0.7
            for _ in range(self.rng.randint(5, 9)):
                instance_type, vcpu, memory = self.rng.choice(plan.instance_types)
                if vcpu > free_vcpu or memory > free_memory:
                    break
                free_vcpu -= vcpu
                free_memory -= memory
                vms.append(
                    {
                        "vm_id": self.vm_id(),
                        "nc_id": nc["nc_id"],
                        "status": "running",
                        "instance_type": instance_type,
                        "vcpu": vcpu,
                        "memory_gib": memory,
                        "image_id": self.rng.choice(_IMAGES),
                        "dirty_rate_mbps": self.rng.randint(5, 45),
                    }
                )
        indexes = list(range(len(vms)))
        for i in self.sample(indexes, 0.08):
            vms[i]["has_local_disk"] = True
        for i in self.sample(indexes, 0.04):
            instance_type, vcpu, memory, device = self.rng.choice(_DEVICE_TYPES)
            # Keep the host's accounting: the device type replaces the VM's size only if it is not bigger.
            if vcpu <= vms[i]["vcpu"] and memory <= vms[i]["memory_gib"]:
                vms[i].update(instance_type=instance_type, vcpu=vcpu, memory_gib=memory)
            vms[i]["devices"] = [device]
        for i in self.sample(indexes, 0.03):
            vms[i]["has_trunk_nic"] = True
        for i in self.sample(indexes, 0.03):
            vms[i].update(created_before_v33=True, restarted_since_v33=False)
        for i in self.sample(indexes, 0.03):
            vms[i].update(created_before_v33=True, restarted_since_v33=True)
        for i in self.sample(indexes, 0.015):
            vms[i].update(image_id=self.rng.choice(_UNSUPPORTED_IMAGES), image_supported=False)
        for i in self.sample(indexes, 0.02):
            vms[i]["dirty_rate_mbps"] = self.rng.choice((90, 120, 250, 400))
        for i in self.sample(indexes, 0.08):
            vms[i]["status"] = "stopped"
        pending = self.sample(indexes, 0.01)
        for i in pending:
            vms[i]["status"] = "pending"
        return vms

    # ---- disks --------------------------------------------------------------------------------------------

    def disks(self, ncs: list[dict[str, Any]], vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        zone_of_nc = {nc["nc_id"]: _zone_of(nc["cluster_id"]) for nc in ncs}
        disks: list[dict[str, Any]] = []
        for vm in vms:
            zone = zone_of_nc[vm["nc_id"]]
            river = [name for name, domain in _STORAGE[zone] if domain != "local" and "archive" not in name]
            # Most disks sit on the zone's first two clusters (same OSS domain), so migrations between them work.
            home = self.rng.choices(river, weights=[5, 4, 1][: len(river)])[0]
            local = next(name for name, domain in _STORAGE[zone] if domain == "local")
            disks.append(self._disk(vm["vm_id"], "river", self.rng.choice((40, 60, 100)), home))
            if self.rng.random() < 0.6:
                disks.append(self._disk(vm["vm_id"], "river", self.rng.choice((100, 200, 500, 1024)), home))
            if vm.get("has_local_disk"):
                disks.append(self._disk(vm["vm_id"], "local_ssd", self.rng.choice((894, 1788)), local))
        data_disks = [i for i, d in enumerate(disks) if d["category"] == "river" and d["size_gib"] >= 100]
        for i in self.rng.sample(data_disks, 4):
            disks[i]["shared"] = True
        for i in self.rng.sample([i for i in data_disks if not disks[i].get("shared")], 4):
            disks[i]["size_gib"] = self.rng.choice((4096, 8192))
        for i in self.rng.sample([i for i in data_disks if not disks[i].get("shared")], 3):
            disks[i]["format"] = "qcow2"
        return disks

    def _disk(self, vm_id: str, category: str, size_gib: int, storage_cluster: str) -> dict[str, Any]:
        return {
            "disk_id": self.disk_id(),
            "vm_id": vm_id,
            "category": category,
            "size_gib": size_gib,
            "storage_cluster": storage_cluster,
        }

    # ---- residues and storage history ---------------------------------------------------------------------

    def residues(self, ncs: list[dict[str, Any]], vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Processes left behind by past live migrations: on another host of the VM's cluster."""
        cluster_of = {nc["nc_id"]: nc["cluster_id"] for nc in ncs}
        running = [vm for vm in vms if vm["status"] == "running"]
        residues = []
        for vm, state in zip(
            self.rng.sample(running, 4), ("paused", "paused", "running", "paused"), strict=True
        ):
            others = [
                nc["nc_id"]
                for nc in ncs
                if nc["cluster_id"] == cluster_of[vm["nc_id"]]
                and nc["nc_id"] != vm["nc_id"]
                and nc["power_state"] == "on"
            ]
            residues.append(
                {
                    "nc_id": self.rng.choice(others),
                    "vm_id": vm["vm_id"],
                    "state": state,
                    "guest_active": False,
                }
            )
        # A released VM whose process survived on its last host (foreCleanWildVm cleans it without checks).
        released = self.rng.choice(
            [vm for vm in running if not any(r["vm_id"] == vm["vm_id"] for r in residues)]
        )
        released["status"] = "released"
        residues.append(
            {
                "nc_id": released["nc_id"],
                "vm_id": released["vm_id"],
                "state": "running",
                "guest_active": False,
            }
        )
        return residues

    def disk_migrations(self, disks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Finished migrations river-*-a1 -> river-*-a2 (for recycle): one recycled, one not fully loaded."""
        history: list[dict[str, Any]] = []
        movable = [
            d
            for d in disks
            if d["storage_cluster"] in ("river-qd-a2", "river-hz-a2")
            and not d.get("shared")
            and d["size_gib"] <= 2048
        ]
        chosen = self.rng.sample(movable, 4)
        for number, disk in enumerate(chosen, start=1):
            history.append(
                {
                    "task_id": f"dmt-9{number:05d}",
                    "disk_id": disk["disk_id"],
                    "src_storage_cluster": disk["storage_cluster"].replace("a2", "a1"),
                    "dst_storage_cluster": disk["storage_cluster"],
                    "src_recycled": 1 if number == 4 else 0,
                    "finished_at": f"2025-01-{10 + number:02d}T03:{10 * number:02d}:00Z",
                }
            )
        not_loaded = {pangu_path(chosen[2]["storage_cluster"], chosen[2]["disk_id"]): 3}
        return history, not_loaded


def _zone_of(cluster_id: str) -> str:
    return next(plan.zone_id for plan in _CLUSTERS if plan.cluster_id == cluster_id)


def build_demo_fleet(seed: int = DEFAULT_SEED) -> dict[str, Any]:
    generator = _Generator(seed)
    ncs = generator.ncs()
    vms = generator.vms(ncs)
    disks = generator.disks(ncs, vms)
    residues = generator.residues(ncs, vms)
    history, not_loaded = generator.disk_migrations(disks)
    fleet = {
        "name": "demo",
        "settings": {"residue_rate": 0.05, "power_settle_seconds": 120, "disk_copy_mib_per_second": 500},
        "regions": [
            {"region_id": "cn-qd-d01", "zones": ["cn-qd-d01-a", "cn-qd-d01-b"]},
            {"region_id": "cn-hz-d02", "zones": ["cn-hz-d02-a"]},
        ],
        "clusters": [
            {
                "cluster_id": plan.cluster_id,
                "region_id": plan.region_id,
                "zone_id": plan.zone_id,
                "kind": plan.kind,
                "tenancy": plan.tenancy,
            }
            for plan in _CLUSTERS
        ],
        "storage_clusters": [
            {"name": name, "zone_id": zone, "oss_domain": domain}
            for zone, clusters in _STORAGE.items()
            for name, domain in clusters
        ],
        "ncs": ncs,
        "vms": vms,
        "disks": disks,
        "residues": residues,
        "disk_migrations": history,
        "bsutil_not_loaded": not_loaded,
    }
    FleetFile.model_validate(fleet)  # the generator's own check: never write a fleet the simulator refuses
    return fleet


def render(fleet: dict[str, Any]) -> str:
    """JSON with one record per line: small diffs, still readable."""
    lines = ["{"]
    keys = list(fleet)
    for position, key in enumerate(keys):
        value = fleet[key]
        comma = "," if position < len(keys) - 1 else ""
        if isinstance(value, list):
            lines.append(f"  {json.dumps(key)}: [")
            lines += [
                f"    {json.dumps(item)}{',' if i < len(value) - 1 else ''}" for i, item in enumerate(value)
            ]
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.generate_fleet", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the fleet JSON")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(build_demo_fleet(args.seed)), encoding="utf-8")


if __name__ == "__main__":
    main()
