"""Evacuation makespan: how close the deep offline's migration schedule comes to the best possible.

    .venv/bin/python -m bench.evacuation            # writes bench/results/evacuation.md

For hosts of 8, 48 and 200 VMs (memory drawn from 4-64 GiB, so migration times vary) at ``parallel`` 1, 4
and 8, one real NcDeepOffline runs on the Temporal dev server with an in-process worker, the Houyi simulator
(at ``SPEED`` times real time) and PostgreSQL. The makespan is measured on the simulator's own record of the
migrations (first start to last end), in simulated seconds, and divided by the lower bound
max(longest migration, sum of migrations / parallel). Target: <= 1.10 at 48 and 200 VMs.

The engine overhead per migrated VM is measured with the simulator at zero latency (migrations take no
time): the wall time of the live-migration step divided by the VMs it moved, at parallel 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deploy.processes import find_binary
from domain.evacuation import makespan_lower_bound
from domain.operations import OperationResult, OpsState
from houyi.http_client import HttpHouyiClient
from runtime import search_attributes
from simulator.evacuation_fleet import CLUSTER, SOURCE_IP, build_evacuation_fleet
from simulator.server import start_simulator
from store.db import url_with_database
from store.embedded import start_embedded_postgres
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from worker import build_worker
from workflows.lifecycle import OperationStatus

SPEED = 1000.0  # simulated seconds per real second
ZERO_LATENCY_SPEED = 1_000_000.0
POLL_SECONDS = 0.02
RESULTS = Path(__file__).parent / "results" / "evacuation.md"
SIZES = (8, 48, 200)
PARALLELS = (1, 4, 8)
TARGET = 1.10


@dataclass
class Run:
    vms: int
    parallel: int
    makespan: float  # simulated seconds
    lower_bound: float
    step_wall: float  # real seconds of the OpsEvnLiveMigrate step
    migrated: int

    @property
    def ratio(self) -> float:
        return self.makespan / self.lower_bound if self.lower_bound else float("nan")


async def evacuate(
    client: Client, store: OperationStore, vms: int, parallel: int, speed: float, seed: int
) -> Run:
    fleet_file = Path(tempfile.mkdtemp()) / "fleet.json"
    fleet_file.write_text(json.dumps(build_evacuation_fleet(vms, seed=seed, with_full_cluster=False)))
    simulator = await start_simulator(fleet_file, speed=speed)
    task_queue = f"bench-{uuid.uuid4()}"
    try:
        async with HttpHouyiClient(simulator.url, recorder=store) as houyi:
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
        spans = simulator.fleet.live_migration_spans()
        assert all(end is not None for _, _, end, _ in spans), "every migration succeeded"
        starts = [start for _, start, _, _ in spans]
        ends = [end for _, _, end, _ in spans if end is not None]
        durations = [copy * speed for _, _, _, copy in spans]
        step = next(s for s in status.steps if s.name == "OpsEvnLiveMigrate")
        return Run(
            vms=vms,
            parallel=parallel,
            makespan=(max(ends) - min(starts)) * speed,
            lower_bound=makespan_lower_bound(durations, parallel),
            step_wall=step.elapsed_seconds or 0.0,
            migrated=len(spans),
        )
    finally:
        await simulator.stop()


async def main() -> None:
    began = time.monotonic()
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=list(search_attributes.ALL),
        dev_server_log_level="error",
    )
    server = os.environ.get("DATABASE_URL") or start_embedded_postgres(Path("var/bench"))
    store = await OperationStore.connect(server)
    database = f"bench_{uuid.uuid4().hex}"
    await store.pool.execute(f'CREATE DATABASE "{database}"')
    await store.close()
    store = await OperationStore.connect(url_with_database(server, database))
    await seed_dev_approvers(store)
    await seed_dev_windows(store, [CLUSTER])
    try:
        runs = []
        for vms in SIZES:
            for parallel in PARALLELS:
                run = await evacuate(env.client, store, vms, parallel, SPEED, seed=vms)
                runs.append(run)
                print(
                    f"{vms:>4} VMs, parallel {parallel}: makespan {run.makespan:9.0f} s, lower bound "
                    f"{run.lower_bound:9.0f} s, ratio {run.ratio:.3f}",
                    flush=True,
                )
        overhead = await evacuate(env.client, store, 48, 1, ZERO_LATENCY_SPEED, seed=48)
        per_vm_ms = 1000 * (overhead.step_wall - overhead.makespan / ZERO_LATENCY_SPEED) / overhead.migrated
        print(f"engine overhead per migrated VM (zero-latency simulator, parallel 1): {per_vm_ms:.1f} ms")
    finally:
        await store.close()
        await env.shutdown()
    lines = [
        "# Evacuation makespan (bench/evacuation.py)",
        "",
        f"NcDeepOffline on the Temporal dev server, simulator at {SPEED:g}x real time, migrations polled every "
        f"{POLL_SECONDS:g} s real ({POLL_SECONDS * SPEED:g} s simulated). Makespan and lower bound in simulated "
        "seconds; lower bound = max(longest migration, sum / parallel).",
        "",
        "| VMs | parallel | makespan (s) | lower bound (s) | ratio | target |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        target = f"<= {TARGET}" if run.vms >= 48 else "-"
        verdict = "" if run.vms < 48 else (" ok" if run.ratio <= TARGET else " MISSED")
        lines.append(
            f"| {run.vms} | {run.parallel} | {run.makespan:.0f} | {run.lower_bound:.0f} | {run.ratio:.3f} "
            f"| {target}{verdict} |"
        )
    lines += [
        "",
        f"Engine overhead per migrated VM (simulator at zero latency, 48 VMs, parallel 1): {per_vm_ms:.1f} ms.",
        "",
        f"Run took {time.monotonic() - began:.0f} s.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
