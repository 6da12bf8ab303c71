"""Growth: how wall time and history size grow with the size of one operation.

    .venv/bin/python -m bench.growth            # writes bench/results/growth.md and growth.json

Everything on this machine: the Temporal dev server, PostgreSQL (the embedded server, or ``DATABASE_URL``),
the Houyi simulator as its own process at zero latency (speed ``SPEED``: migrations and power changes take
microseconds, so what grows is the engine's work, not Houyi's) and one worker in this process.

* One ``NcDeepOffline`` (0x400003), ``parallel`` 8, on a host of 8, 16, 32, 64, 128 and 200 VMs
  (``simulator/evacuation_fleet.py``: every VM running and eligible for live migration).
* One ``NcReOnline`` (0x400011), ``parallel`` 8, of 1, 10, 25, 50 and 100 hosts, each ``nc_down`` and
  powered on (as a reboot leaves them).

Nothing holds them: no approval for manual reports of either opscode, flow control off for 0x400003,
storm breaker and capacity guard off. Each point runs ``REPEATS`` times (fresh simulator each time); wall
time (start to result) is the median, the history (events, bytes of its JSON) is that of the first run.

The growth is the least-squares slope of log(y) against log(size) over all points: the exponent k in
y ~ size^k. **Linear or better: k <= 1.1** (a tenth above 1 for the noise of a shared machine). The fixed
cost of an operation (plan, lease, lock, power...) weighs most at the small sizes and pulls the slope over
all points below the marginal one, so the slope over the upper half of the sizes (the marginal growth) is
printed and judged too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.harness import dev_server, fresh_database
from bench.overhead import Row, code_version, row, write_results_json
from deploy.processes import free_port, houyi_simulator
from domain.operations import OperationResult, OpsState
from domain.opscodes import OpsCode
from houyi.http_client import HttpHouyiClient
from runtime.logging import configure_logging
from simulator.evacuation_fleet import SOURCE_IP, build_evacuation_fleet
from simulator.fleet import FleetFile
from store.lifecycle import CapacityGuard, FlowControlRule, StormBreaker
from store.repository import OperationStore
from store.seed import seed_dev_approvers
from worker import build_worker

SPEED = 1_000_000.0  # the simulator at zero latency
POLL_SECONDS = 0.005
PARALLEL = 8
VM_SIZES = (8, 16, 32, 64, 128, 200)
HOST_SIZES = (1, 10, 25, 50, 100)
REPEATS = int(os.environ.get("BENCH_GROWTH_REPEATS", "3"))
TARGET = 1.1
RESULTS = Path(__file__).parent / "results" / "growth.md"
COMMAND = ".venv/bin/python -m bench.growth"
REGION = "cn-grw-d01"
ZONE = "cn-grw-d01-a"
DOWN_CLUSTER = "ECS-CPU-GRW-01"
FIRST_ACTIONS = ("LockNc", "SetNcStatus")  # the first activity that changes a host, deep offline / re-online


@dataclass
class Point:
    size: int
    walls: list[float]
    events: int
    history_bytes: int
    activities: int
    before_first_action: float  # seconds, first run
    timers: float  # seconds waited on durable timers, first run

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)


def down_fleet(count: int) -> tuple[dict[str, Any], list[str]]:
    """``count`` empty hosts in one cluster, each ``nc_down`` and powered on (as a reboot leaves them)."""
    ips = [f"10.62.{i // 200}.{i % 200 + 10}" for i in range(count)]
    fleet = {
        "name": f"growth-down-{count}",
        "settings": {"power_settle_seconds": 60},
        "regions": [{"region_id": REGION, "zones": [ZONE]}],
        "clusters": [{"cluster_id": DOWN_CLUSTER, "region_id": REGION, "zone_id": ZONE, "kind": "CPU"}],
        "storage_clusters": [],
        "ncs": [
            {
                "nc_id": f"62000-{i + 1}",
                "nc_ip": ip,
                "hostname": f"growth-{i}",
                "sn": f"SNGRW{i:05d}",
                "cluster_id": DOWN_CLUSTER,
                "biz_status": "nc_down",
                "power_state": "on",
                "cpu_model": "Intel(R) Xeon(R) Platinum 8269CY",
                "software_version": "houyi-3.5.2",
                "vcpu_total": 104,
                "memory_gib_total": 768,
            }
            for i, ip in enumerate(ips)
        ],
        "vms": [],
        "disks": [],
    }
    FleetFile.model_validate(fleet)
    return fleet, ips


def deep_offline(vms: int) -> tuple[dict[str, Any], str, dict[str, Any]]:
    fleet = build_evacuation_fleet(vms, seed=vms, with_full_cluster=False)
    request = {
        "nc_ip": SOURCE_IP,
        "requester": "alice",
        "reason_category": "hardware",
        "reason": "bench.growth",
        "ticket": "CHG-6200",
        "settings": {"parallel": PARALLEL},
    }
    return fleet, "NcDeepOffline", request


def re_online(hosts: int) -> tuple[dict[str, Any], str, dict[str, Any]]:
    fleet, ips = down_fleet(hosts)
    request = {
        "nc_ips": ips,
        "requester": "alice",
        "reason_category": "hang",
        "reason": "bench.growth",
        "ticket": "CHG-6201",
        "settings": {"parallel": PARALLEL, "NcReOnline": 0},
    }
    return fleet, "NcReOnline", request


async def run_once(
    client: Client,
    store: OperationStore,
    workdir: Path,
    fleet: dict[str, Any],
    workflow_type: str,
    request: Any,
) -> tuple[float, int, int, int, float, float]:
    """One operation on a fresh simulator: wall seconds, history events, history JSON bytes, activities,
    seconds before its first action on a host, seconds waited on timers."""
    tag = uuid.uuid4().hex[:8]
    fleet_path = workdir / f"fleet-{tag}.json"
    fleet_path.write_text(json.dumps(fleet))
    port = free_port()
    simulator = houyi_simulator(port, SPEED, fleet_path, log_dir=workdir / f"logs-{tag}").start()
    task_queue = f"growth-{tag}"
    try:
        await simulator.wait_ready(timeout=60)
        async with HttpHouyiClient(f"http://127.0.0.1:{port}", recorder=store) as houyi:
            async with build_worker(
                client,
                task_queue,
                houyi=houyi,
                store=store,
                power_poll_seconds=POLL_SECONDS,
                migration_poll_seconds=POLL_SECONDS,
                time_scale=1 / SPEED,
            ):
                began = time.monotonic()
                handle = await client.start_workflow(
                    workflow_type,
                    request,
                    id=f"growth-{workflow_type}-{tag}",
                    task_queue=task_queue,
                    result_type=OperationResult,
                )
                result = await asyncio.wait_for(handle.result(), 300)
                wall = time.monotonic() - began
    finally:
        simulator.terminate()
    if result.state is not OpsState.SUCCEEDED:
        raise SystemExit(f"{workflow_type} {handle.id}: {result.state.value}: {result.message}")
    history = await handle.fetch_history()
    events = list(history.events)
    scheduled = [e for e in events if e.HasField("activity_task_scheduled_event_attributes")]
    # Before the first change to a host: validation, plan (a Houyi read per host), lease, admission, approval.
    first_action = next(
        e for e in scheduled if e.activity_task_scheduled_event_attributes.activity_type.name in FIRST_ACTIONS
    )
    before = (first_action.event_time.ToMicroseconds() - events[0].event_time.ToMicroseconds()) / 1e6
    # Durable timers (e.g. the re-online's wait after reboot, 0 s here): the dev server fires them ~1 s late.
    started = {
        e.event_id: e.event_time.ToMicroseconds()
        for e in events
        if e.HasField("timer_started_event_attributes")
    }
    timers = sum(
        e.event_time.ToMicroseconds() - started[e.timer_fired_event_attributes.started_event_id]
        for e in events
        if e.HasField("timer_fired_event_attributes")
    )
    return wall, len(events), len(history.to_json().encode()), len(scheduled), before, timers / 1e6


async def series(
    client: Client,
    store: OperationStore,
    workdir: Path,
    label: str,
    sizes: Sequence[int],
    build: Callable[[int], tuple[dict[str, Any], str, dict[str, Any]]],
) -> list[Point]:
    points = []
    for size in sizes:
        fleet, workflow_type, request = build(size)
        walls, first = [], None
        for _ in range(REPEATS):
            wall, events, size_bytes, activities, before, timers = await run_once(
                client, store, workdir, fleet, workflow_type, request
            )
            walls.append(wall)
            first = first or (events, size_bytes, activities, before, timers)
        assert first is not None
        point = Point(size, walls, *first)
        points.append(point)
        print(
            f"  {label} {size:>4}: wall {point.wall:6.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}), "
            f"{point.events} events, {point.history_bytes / 1024:.0f} KB, {point.activities} activities, "
            f"{point.before_first_action:.2f} s before the first action",
            flush=True,
        )
    return points


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


@dataclass
class Fit:
    what: str
    unit: str  # VMs or hosts
    points: list[Point]

    def exponents(self, tail: bool = False) -> dict[str, float]:
        chosen = self.points[len(self.points) // 2 :] if tail else self.points
        xs = [p.size for p in chosen]
        return {
            "wall time": slope(xs, [p.wall for p in chosen]),
            "history events": slope(xs, [p.events for p in chosen]),
            "history bytes": slope(xs, [p.history_bytes for p in chosen]),
        }

    def tail_range(self) -> str:
        chosen = self.points[len(self.points) // 2 :]
        return f"{chosen[0].size}-{chosen[-1].size} {self.unit}"


async def main(workdir: Path) -> None:
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    # The worker logs as deployed (JSON lines, INFO), to a file rather than this terminal.
    configure_logging("INFO")
    log_file = (workdir / "worker.log").open("w")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log_file)
    print(
        f"growth: fast simulator (speed {SPEED:,.0f}), parallel {PARALLEL}, load {load_before:.2f}",
        flush=True,
    )
    env = await dev_server()
    database = await fresh_database("bench_growth")
    store = await OperationStore.connect(database.url)
    try:
        await seed_dev_approvers(store)
        lifecycle = store.lifecycle
        for opscode in (OpsCode.NC_DEEP_OFFLINE, OpsCode.NC_RE_ONLINE):
            await lifecycle.set_approval_policy(
                opscode, manual_report_needs_approval=False, updated_by="bench"
            )
        await lifecycle.set_flow_control_rule(
            FlowControlRule(opscode=OpsCode.NC_DEEP_OFFLINE, enabled=False), updated_by="bench"
        )
        await lifecycle.set_storm_breaker(StormBreaker(cluster_id="*", enabled=False), updated_by="bench")
        await lifecycle.set_capacity_guard(CapacityGuard(cluster_id="*", enabled=False), updated_by="bench")
        fits = [
            Fit(
                "NcDeepOffline (0x400003), VMs per host",
                "VMs",
                await series(env.client, store, workdir, "deep offline, VMs", VM_SIZES, deep_offline),
            ),
            Fit(
                "NcReOnline (0x400011), hosts per re-online",
                "hosts",
                await series(env.client, store, workdir, "re-online, hosts", HOST_SIZES, re_online),
            ),
        ]
    finally:
        await store.close()
        await env.shutdown()
        await database.drop()
    seconds = time.monotonic() - began
    lines, rows = report(fits, seconds, load_before)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    write_results_json("growth", seconds, rows, load_before)
    print("\n".join(lines))


def report(fits: list[Fit], seconds: float, load_before: float) -> tuple[list[str], list[Row]]:
    lines = [
        "# Growth (bench/growth.py)",
        "",
        f"`{COMMAND}` on {os.cpu_count()} cores, load average (1 min) {load_before:.2f} when it began. Dev "
        f"server, PostgreSQL, the simulator (own process, speed {SPEED:,.0f}: zero latency) and one worker in "
        f"this process; `parallel` {PARALLEL}. Each point {REPEATS} runs: wall time (start to result) is the "
        "median, the history (events, bytes of its JSON) the first run's. Whole run "
        f"{seconds:.0f} s. Code measured: {code_version()}.",
        "",
        "Growth = least-squares slope k of log(y) on log(size), y ~ size^k. Linear or better: **k <= "
        f"{TARGET}**. Judged over all points, and over the upper half of the sizes (the marginal growth, "
        "without the fixed cost of an operation that flattens the small sizes).",
    ]
    rows: list[Row] = []
    for fit in fits:
        points = fit.points
        first = points[0]
        lines += [
            "",
            f"## {fit.what}",
            "",
            f"| {fit.unit} | wall (s) | wall per {fit.unit[:-1]} (ms) | runs (s) | events | history (KB) | "
            f"activities | before first action (s) | of it, timers (s) | wall x | events x | bytes x |",
            "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in points:
            lines.append(
                f"| {p.size} | {p.wall:.2f} | {p.wall / p.size * 1000:.0f} | "
                f"{', '.join(f'{w:.2f}' for w in p.walls)} | {p.events} | {p.history_bytes / 1024:.0f} | "
                f"{p.activities} | {p.before_first_action:.2f} | {p.timers:.2f} | {p.wall / first.wall:.1f} | {p.events / first.events:.1f} | "
                f"{p.history_bytes / first.history_bytes:.1f} |"
            )
        lines += [
            f"(x: relative to {first.size} {fit.unit}; size grows {points[-1].size / first.size:g}x. Before first "
            "action: from the start to the first activity that changes a host, `LockNc` or the first "
            "`SetNcStatus`: validation, the plan's Houyi reads, leases, admission; timers: durable timers "
            "waited on, such as the re-online's wait after reboot, which with `NcReOnline: 0` still starts a "
            "0 s timer that the dev server fires about 1 s later.)",
            "",
            "| exponent k | all points | upper half (" + fit.tail_range() + ") |",
            "| --- | ---: | ---: |",
        ]
        whole, tail = fit.exponents(), fit.exponents(tail=True)
        for name in whole:
            verdicts = [("ok" if k <= TARGET else "over") for k in (whole[name], tail[name])]
            lines.append(f"| {name} | {whole[name]:.2f} ({verdicts[0]}) | {tail[name]:.2f} ({verdicts[1]}) |")
            short = fit.what.split(" ")[0]
            rows.append(
                row(
                    f"{short}: {name} exponent vs {fit.unit}",
                    round(whole[name], 3),
                    "exponent",
                    f"<= {TARGET}",
                )
            )
            rows.append(
                row(
                    f"{short}: {name} exponent vs {fit.unit}, upper half ({fit.tail_range()})",
                    round(tail[name], 3),
                    "exponent",
                    f"<= {TARGET}",
                )
            )
        last = points[-1]
        short = fit.what.split(" ")[0]
        rows += [
            row(f"{short}: wall time at {last.size} {fit.unit}", round(last.wall, 2), "s"),
            row(f"{short}: history events at {last.size} {fit.unit}", last.events, "events"),
            row(
                f"{short}: history JSON at {last.size} {fit.unit}", round(last.history_bytes / 1024, 1), "KB"
            ),
        ]
    lines.append("")
    return lines, rows


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        asyncio.run(main(Path(tmp)))


if __name__ == "__main__":
    run()
