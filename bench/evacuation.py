"""Evacuation makespan: how close the deep offline's migration schedule comes to the best possible.

    .venv/bin/python -m bench.evacuation            # writes bench/results/evacuation.md and evacuation.json

For hosts of 48 and 200 VMs (memory drawn from 4-64 GiB, so migration times vary) at ``parallel`` 4 and 8,
one real NcDeepOffline runs on the Temporal dev server with an in-process worker, the Houyi simulator (at
``REALISTIC_SPEED`` times real time: the judged rows) and PostgreSQL. The makespan is measured on the
simulator's own record of the migrations (first start to last end), in simulated seconds, and divided by the
lower bound max(longest migration, sum of migrations / parallel). Target: <= 1.10 at 48 and 200 VMs. Two
runs of 48 VMs at ``SPEED`` (1000x) show how a fixed real cost per migration weighs when simulated time runs
10x faster (not judged; the full 1000x matrix of 8, 48 and 200 VMs at parallel 1, 4, 8 was dropped to keep
``make bench`` short).

The engine overhead per migrated VM is measured with the simulator at zero latency (migrations take no
time): the wall time of the live-migration step divided by the VMs it moved, at parallel 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from temporalio.client import Client

from bench.harness import BenchDatabase, dev_server, fresh_database
from bench.report import Row, row, write_results_json
from deploy.processes import free_port, houyi_simulator
from domain.evacuation import lpt_makespan, makespan_lower_bound
from domain.operations import OperationResult, OpsState
from houyi.http_client import HttpHouyiClient
from simulator.evacuation_fleet import CLUSTER, SOURCE_IP, build_evacuation_fleet
from store.lifecycle import StormBreaker
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from worker import build_worker
from workflows.lifecycle import OperationStatus

SPEED = 1000.0  # simulated seconds per real second
ZERO_LATENCY_SPEED = 1_000_000.0
POLL_SECONDS = 0.05
RESULTS = Path(__file__).parent / "results" / "evacuation.md"
FAST = [(48, 4, SPEED), (48, 8, SPEED)]  # not judged: the lane gap at 1000x
TARGET = 1.10
# The lane gap (~30-40 ms of real time per migration: activity completion, workflow task, next activity's
# dispatch) is a fixed real cost; at 1000x it weighs as 30-40 s of simulated time against migrations of
# 1-14 minutes. The target is judged at 100x, closer to real time, on the runs that fit the time budget.
REALISTIC_SPEED = 100.0
REALISTIC = [(48, 4, REALISTIC_SPEED), (48, 8, REALISTIC_SPEED), (200, 8, REALISTIC_SPEED)]
# Run side by side to keep `make bench` short: the 200-VM run (~75 s) beside the two 48-VM ones (~40 + ~20 s).
REALISTIC_LANES = [REALISTIC[2:], REALISTIC[:2]]


@dataclass
class Run:
    vms: int
    parallel: int
    makespan: float  # simulated seconds
    lower_bound: float
    schedule: float  # makespan of longest-first on these durations, with no overhead at all
    step_wall: float  # real seconds of the OpsEvnLiveMigrate step
    migrated: int
    speed: float
    gap_ms: float  # mean real milliseconds a lane waits between two migrations

    @property
    def ratio(self) -> float:
        return self.makespan / self.lower_bound if self.lower_bound else float("nan")

    @property
    def schedule_ratio(self) -> float:
        return self.schedule / self.lower_bound if self.lower_bound else float("nan")


async def evacuate(
    client: Client, store: OperationStore, vms: int, parallel: int, speed: float, seed: int
) -> Run:
    workdir = Path(tempfile.mkdtemp())
    fleet_file = workdir / "fleet.json"
    fleet_file.write_text(json.dumps(build_evacuation_fleet(vms, seed=seed, with_full_cluster=False)))
    # The simulator runs as its own process, as Houyi would: the worker's event loop is not its.
    port = free_port()
    simulator = houyi_simulator(port, speed, fleet_file, log_dir=workdir).start()
    url = f"http://127.0.0.1:{port}"
    task_queue = f"bench-{uuid.uuid4()}"
    try:
        await simulator.wait_ready(timeout=30)
        async with HttpHouyiClient(url, recorder=store) as houyi:
            async with build_worker(
                client,
                task_queue,
                houyi=houyi,
                store=store,
                power_poll_seconds=0.05,
                migration_poll_seconds=POLL_SECONDS,
                time_scale=1 / speed,
                max_concurrent_activities=200,
            ):
                handle = await client.start_workflow(
                    "NcDeepOffline",
                    {
                        "nc_ip": SOURCE_IP,
                        "requester": "bench",
                        "reason_category": "hardware",
                        "source": "alert",
                        "settings": {"parallel": parallel, "needLimit": 0},
                    },
                    id=f"bench-{vms}-{parallel}-{uuid.uuid4()}",
                    task_queue=task_queue,
                    result_type=OperationResult,
                )
                result = await handle.result()
                status = await handle.query("status", result_type=OperationStatus)
        assert result.state is OpsState.SUCCEEDED, result.message
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/admin/migrations") as response:
                spans = await response.json()
    finally:
        simulator.terminate()
    assert all(span["ended_s"] is not None for span in spans), "every migration succeeded"
    # The engine's gap: how long a lane stays idle between one migration's end and the next one's start.
    ends = sorted(span["ended_s"] for span in spans)
    starts = sorted(span["started_s"] for span in spans)[parallel:]
    gaps = [start - max((end for end in ends if end <= start), default=start) for start in starts]
    gap_ms = 1000 * statistics.fmean(gaps) if gaps else 0.0
    durations = [span["simulated_seconds"] for span in spans]
    step = next(s for s in status.steps if s.name == "OpsEvnLiveMigrate")
    return Run(
        vms=vms,
        parallel=parallel,
        makespan=(max(s["ended_s"] for s in spans) - min(s["started_s"] for s in spans)) * speed,
        lower_bound=makespan_lower_bound(durations, parallel),
        schedule=lpt_makespan(durations, parallel),
        step_wall=step.elapsed_seconds or 0.0,
        migrated=len(spans),
        speed=speed,
        gap_ms=gap_ms,
    )


async def prepared_store() -> tuple[OperationStore, BenchDatabase]:
    """A store on a fresh database, ready for deep offlines of the evacuation fleet's source host."""
    database = await fresh_database("bench_evacuation")
    store = await OperationStore.connect(database.url)
    await seed_dev_approvers(store)
    await seed_dev_windows(store, [CLUSTER])
    # A dozen automatic deep offlines in one cluster within the hour is a storm by default (held for
    # approval after ten): off for this cluster, the benchmark is no storm.
    await store.lifecycle.set_storm_breaker(
        StormBreaker(cluster_id=CLUSTER, enabled=False), updated_by="bench"
    )
    return store, database


def report(run: Run) -> Run:
    print(
        f"{run.vms:>4} VMs, parallel {run.parallel}, {run.speed:g}x: makespan {run.makespan:9.0f} s, lower bound "
        f"{run.lower_bound:9.0f} s, ratio {run.ratio:.3f} (longest-first alone {run.schedule_ratio:.3f}), "
        f"lane gap {run.gap_ms:.0f} ms",
        flush=True,
    )
    return run


async def main() -> None:
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    env = await dev_server()
    # Every lane of runs (below) holds the source host's lease in a store of its own.
    lanes = [await prepared_store() for _ in REALISTIC_LANES]
    store = lanes[0][0]
    try:
        # CPU-bound measures first, alone on the machine: the 1000x runs and the engine overhead.
        runs = [report(await evacuate(env.client, store, v, p, speed, seed=v)) for v, p, speed in FAST]
        overhead = await evacuate(env.client, store, 48, 1, ZERO_LATENCY_SPEED, seed=48)
        per_vm_ms = overhead.gap_ms
        print(f"engine overhead per migrated VM (zero-latency simulator, parallel 1): {per_vm_ms:.1f} ms")

        # The judged runs at 100x mostly wait on simulated time (a few % of a core each): the lanes run side
        # by side, each its runs one after the other.
        async def lane(lane_store: OperationStore, specs: list[tuple[int, int, float]]) -> list[Run]:
            return [
                report(await evacuate(env.client, lane_store, v, p, speed, seed=v)) for v, p, speed in specs
            ]

        by_lane = await asyncio.gather(
            *(lane(lane_store, specs) for (lane_store, _), specs in zip(lanes, REALISTIC_LANES, strict=True))
        )
        order = {spec: n for n, spec in enumerate(REALISTIC)}
        runs += sorted(
            (r for runs_of_lane in by_lane for r in runs_of_lane),
            key=lambda r: order[(r.vms, r.parallel, r.speed)],
        )
    finally:
        for lane_store, database in lanes:
            await lane_store.close()
            await database.drop()
        await env.shutdown()
    lines = [
        "# Evacuation makespan (bench/evacuation.py)",
        "",
        f"NcDeepOffline on the Temporal dev server, simulator at {SPEED:g}x and {REALISTIC_SPEED:g}x real time, migrations polled at most "
        f"{POLL_SECONDS:g} s real apart, sooner as their end nears. The simulator runs as its own process. Makespan and lower bound in simulated "
        "seconds; lower bound = max(longest migration, sum / parallel). The 1000x runs and the zero-latency run "
        f"run alone; the {REALISTIC_SPEED:g}x runs (judged) run in two lanes side by side, the 200-VM run beside the two "
        "48-VM ones (each its own simulator, worker and store; they mostly wait on simulated time).",
        "",
        "| VMs | parallel | speed | makespan (s) | lower bound (s) | ratio | longest-first alone | lane gap (ms) | target |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        judged = run.vms >= 48 and run.speed == REALISTIC_SPEED
        target = f"<= {TARGET}{' ok' if run.ratio <= TARGET else ' MISSED'}" if judged else "-"
        lines.append(
            f"| {run.vms} | {run.parallel} | {run.speed:g}x | {run.makespan:.0f} | {run.lower_bound:.0f} "
            f"| {run.ratio:.3f} | {run.schedule_ratio:.3f} | {run.gap_ms:.0f} | {target} |"
        )
    lines += [
        "",
        f"Engine overhead per migrated VM (simulator at zero latency, 48 VMs, parallel 1: a lane's idle time "
        f"between two migrations): {per_vm_ms:.1f} ms.",
        "",
        f"Run took {time.monotonic() - began:.0f} s; machine load average (1 min) when it began: {load_before:.2f}.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows: list[Row] = []
    for run in runs:
        judged = run.vms >= 48 and run.speed == REALISTIC_SPEED
        rows.append(
            row(
                f"makespan / lower bound, {run.vms} VMs, parallel {run.parallel}, simulator {run.speed:g}x"
                + ("" if judged else " (not judged: lane gap weighs 10x)"),
                round(run.ratio, 3),
                "x",
                f"<= {TARGET:.2f}" if judged else "",
            )
        )
    rows.append(
        row("engine overhead per migrated VM (zero-latency simulator, parallel 1)", round(per_vm_ms, 1), "ms")
    )
    write_results_json(
        "evacuation", "bench.evacuation", time.monotonic() - began, rows, load_before=load_before
    )
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
