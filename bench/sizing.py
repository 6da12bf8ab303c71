"""Sizing the workers: operations per second per worker.

    .venv/bin/python -m bench.sizing            # writes bench/results/sizing.md and sizing.json

Everything real, on this machine: the Temporal dev server, PostgreSQL (the embedded server, or
``DATABASE_URL``), the Houyi simulator as its own process (200 empty hosts in 10 clusters of 20, at
``SPEED`` times real time) and the workers as their own processes (``python worker.py``, as deployed).

A fixed batch of quick operations, 100 hosts each locked (``NcLock`` 0x410A01) then unlocked
(``NcUnlock``), 200 operations, all hosts at once, run once by 1 worker and once by 3 workers (fresh hosts
and task queue each time). Wall time from the first start to the last result; printed: operations/s, per
worker, the ratio 3 workers / 1 worker, how busy the machine was (all cores, /proc/stat) and where the CPU
went, per operation: workers, dev server, PostgreSQL, simulator, this client (/proc/<pid>/stat). On a small
machine they all share the cores, and the ratio says how far adding workers helps there.

Memory (worker RSS per 1,000 open workflows) is measured by ``bench/open_workflows.py``, with 5,000 open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.harness import CpuMeter, dev_server, fresh_database
from bench.report import row, write_results_json
from deploy import processes
from domain.operations import OperationResult, OpsState
from domain.opscodes import OpsCode
from store.lifecycle import CapacityGuard
from store.repository import OperationStore
from store.seed import seed_dev_approvers

SPEED = 1000.0
CLUSTERS = 10
HOSTS_PER_CLUSTER = 20
BATCH_HOSTS = 100  # each locked then unlocked: 200 operations, once on 1 worker and once on 3
STARTERS = 20  # concurrent start_workflow calls
RESULTS = Path(__file__).parent / "results" / "sizing.md"
COMMAND = ".venv/bin/python -m bench.sizing"
COMPONENTS = ("worker processes", "dev server", "PostgreSQL", "simulator", "bench client")


def fleet(clusters_count: int = CLUSTERS) -> dict[str, Any]:
    """Empty hosts, ``HOSTS_PER_CLUSTER`` in each of ``clusters_count`` clusters; host ``i`` is ``host_ip(i)``."""
    clusters = [f"ECS-CPU-S-{7000 + c}" for c in range(clusters_count)]
    return {
        "name": "sizing",
        "settings": {"power_settle_seconds": 100},
        "regions": [{"region_id": "cn-qd-d01", "zones": ["cn-qd-d01-a"]}],
        "clusters": [
            {"cluster_id": cluster, "region_id": "cn-qd-d01", "zone_id": "cn-qd-d01-a", "kind": "CPU"}
            for cluster in clusters
        ],
        "ncs": [
            {
                "nc_id": f"{7000 + c}-{i + 1}",
                "nc_ip": host_ip(c * HOSTS_PER_CLUSTER + i),
                "hostname": f"sizing-{c}-{i}",
                "sn": f"SN7{c:03d}{i:02d}",
                "cluster_id": cluster,
                "cpu_model": "Intel(R) Xeon(R) Platinum 8269CY",
                "software_version": "houyi-3.3.8",
                "vcpu_total": 96,
                "memory_gib_total": 384,
            }
            for c, cluster in enumerate(clusters)
            for i in range(HOSTS_PER_CLUSTER)
        ],
    }


def host_ip(index: int) -> str:
    return f"10.70.{index // 200}.{index % 200 + 10}"


def request(nc_ip: str, reason: str = "bench.sizing", **settings: Any) -> dict[str, Any]:
    return {
        "nc_ip": nc_ip,
        "requester": "alice",
        "reason_category": "hardware",
        "reason": reason,
        "ticket": "CHG-7000",
        **({"settings": settings} if settings else {}),
    }


# ---- /proc --------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def dev_server_pid(port: int) -> int | None:
    """The ``temporal server start-dev`` listening on ``port`` (the SDK starts it and keeps its pid)."""
    for pid in all_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start-dev" in argv and str(port).encode() in argv:
            return pid
    return None


def postgres_pids(postmaster: int | None) -> list[int]:
    """The postmaster and its children (one backend per pooled connection, and the background workers)."""
    if postmaster is None:
        return []
    children = []
    for pid in all_pids():
        try:
            if ppid(pid) == postmaster:
                children.append(pid)
        except (OSError, IndexError, ValueError):
            continue
    return [postmaster, *children]


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


# ---- the stack ------------------------------------------------------------------------------------------


@dataclass
class Stack:
    client: Client
    address: str
    database_url: str
    houyi_url: str
    log_dir: Path
    dev_server: int | None
    postmaster: int | None
    simulator: int | None

    def worker(self, task_queue: str, name: str) -> processes.ManagedProcess:
        """``python worker.py`` on ``task_queue``, default settings, metrics on a port of its own."""
        env = processes.worker_env(
            temporal_address=self.address,
            database_url=self.database_url,
            houyi_url=self.houyi_url,
            metrics_port=processes.free_port(),
            task_queue=task_queue,
            power_poll_seconds=0.2,
            simulator_speed=SPEED,
        )
        env["OPSFLOW_RECYCLE_SCHEDULE"] = "off"
        return processes.worker(env, log_dir=self.log_dir / name)


async def start_all(
    client: Client, task_queue: str, jobs: list[tuple[str, str, dict[str, Any]]]
) -> list[Any]:
    """Starts (workflow type, id, input) jobs, ``STARTERS`` at a time; their handles."""
    gate = asyncio.Semaphore(STARTERS)

    async def one(workflow_type: str, workflow_id: str, raw: dict[str, Any]) -> Any:
        async with gate:
            return await client.start_workflow(
                workflow_type, raw, id=workflow_id, task_queue=task_queue, result_type=OperationResult
            )

    return await asyncio.gather(*(one(*job) for job in jobs))


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.5)


# ---- throughput ---------------------------------------------------------------------------------------


@dataclass
class Throughput:
    workers: int
    operations: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds by component
    machine_busy: float

    @property
    def rate(self) -> float:
        return self.operations / self.seconds

    @property
    def busy_ms_per_operation(self) -> float:
        return self.machine_busy * self.seconds * (os.cpu_count() or 1) / self.operations * 1000

    @property
    def elsewhere(self) -> float:
        busy = self.machine_busy * self.seconds * (os.cpu_count() or 1)
        return max(0.0, busy - sum(self.cpu.values()))


async def throughput(stack: Stack, workers: int, first_host: int) -> Throughput:
    task_queue = f"sizing-{workers}w-{uuid.uuid4().hex[:8]}"
    started = [stack.worker(task_queue, f"throughput-{workers}w-{n}").start() for n in range(workers)]
    try:
        await asyncio.gather(*(w.wait_ready(timeout=120) for w in started))
        pids = [w.pid for w in started if w.pid is not None]
        hosts = [host_ip(first_host + i) for i in range(BATCH_HOSTS)]
        results: list[OperationResult] = []

        async def chain(nc_ip: str) -> None:
            for workflow_type, opscode in (
                ("NcLock", OpsCode.NC_LOCK),
                ("NcUnlock", OpsCode.AUTO_UNLOCK_AFTER_LOCK),
            ):
                handle = await stack.client.start_workflow(
                    workflow_type,
                    request(nc_ip),
                    id=f"{opscode.value}-{nc_ip}-{task_queue}",
                    task_queue=task_queue,
                    result_type=OperationResult,
                )
                results.append(await handle.result())

        meter = CpuMeter(
            {
                "worker processes": lambda: pids,
                "dev server": lambda: [stack.dev_server] if stack.dev_server else [],
                "PostgreSQL": lambda: postgres_pids(stack.postmaster),
                "simulator": lambda: [stack.simulator] if stack.simulator else [],
                "bench client": lambda: [os.getpid()],
            }
        )
        meter.start()
        busy_before, total_before = machine_ticks()
        began = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(chain(ip) for ip in hosts)), 300)
        seconds = time.monotonic() - began
        busy_after, total_after = machine_ticks()
        cpu = meter.stop()
    finally:
        for worker in started:
            await asyncio.to_thread(worker.terminate)
    bad = [r.workflow_id for r in results if r.state is not OpsState.SUCCEEDED]
    if len(results) != 2 * BATCH_HOSTS or bad:
        raise SystemExit(f"{workers} worker(s): {len(results)} results, not succeeded: {bad[:5]}")
    return Throughput(
        workers=workers,
        operations=len(results),
        seconds=seconds,
        cpu=cpu,
        machine_busy=(busy_after - busy_before) / max(1, total_after - total_before),
    )


def postmaster_pid(url: str) -> int | None:
    """The embedded server's postmaster (first line of postmaster.pid in its socket directory)."""
    found = re.search(r"host=([^&]+)", url)
    pid_file = Path(found.group(1)) / "postmaster.pid" if found else None
    if pid_file is None or not pid_file.exists():
        return None  # DATABASE_URL names a server elsewhere
    return int(pid_file.read_text().splitlines()[0])


# ---- the run --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_stack(workdir: Path, name: str, clusters: int = CLUSTERS) -> AsyncIterator[Stack]:
    """Dev server, a fresh database (dev approvers, capacity guard off), the simulator with ``fleet(clusters)``;
    all stopped, the database dropped, on leaving."""
    env = await dev_server()
    database = await fresh_database(f"bench_{name}")
    simulator: processes.ManagedProcess | None = None
    try:
        store = await OperationStore.connect(database.url)  # migrates
        try:
            await seed_dev_approvers(store)
            # A lock takes a host out of service: locking 100 hosts at once would trip the capacity guard.
            await store.lifecycle.set_capacity_guard(
                CapacityGuard(cluster_id="*", enabled=False), updated_by="bench"
            )
        finally:
            await store.close()
        fleet_path = workdir / f"{name}-fleet.json"
        fleet_path.write_text(json.dumps(fleet(clusters)))
        port = processes.free_port()
        simulator = processes.houyi_simulator(port, SPEED, fleet_path, log_dir=workdir / "logs").start()
        await simulator.wait_ready(timeout=60)
        address = env.client.service_client.config.target_host
        yield Stack(
            client=env.client,
            address=address,
            database_url=database.url,
            houyi_url=f"http://127.0.0.1:{port}",
            log_dir=workdir / "logs",
            dev_server=dev_server_pid(int(address.rsplit(":", 1)[1])),
            postmaster=postmaster_pid(database.server),
            simulator=simulator.pid,
        )
    finally:
        if simulator is not None:
            simulator.terminate()
        await env.shutdown()
        await database.drop()


async def main(workdir: Path) -> None:
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    async with running_stack(workdir, "sizing") as stack:
        print(
            f"throughput: {2 * BATCH_HOSTS} operations ({BATCH_HOSTS} hosts locked then unlocked)", flush=True
        )
        one = await throughput(stack, 1, 0)
        print(f"  1 worker: {one.rate:.1f} ops/s", flush=True)
        three = await throughput(stack, 3, BATCH_HOSTS)
        print(f"  3 workers: {three.rate:.1f} ops/s ({three.rate / 3:.1f} per worker)", flush=True)
    write_results(one, three, time.monotonic() - began, load_before)


def write_results(one: Throughput, three: Throughput, seconds: float, load_before: float) -> None:
    cores = os.cpu_count()
    worker_ms = one.cpu["worker processes"] / one.operations * 1000
    lines = [
        "# Worker sizing (bench/sizing.py)",
        "",
        f"`{COMMAND}` on {cores} cores; dev server, PostgreSQL, simulator (speed {SPEED:g}) and the "
        f"workers (`python worker.py`, default settings) all on this machine. Whole run {seconds:.0f} s.",
        "",
        "## Throughput: operations per second per worker",
        "",
        f"{one.operations} quick operations: {BATCH_HOSTS} hosts, each `NcLock` (0x410A01) then `NcUnlock` "
        "(0x4000A000000007), all hosts at once; wall time from the first start to the last result.",
        "",
        "| workers | wall (s) | operations/s | per worker | machine CPU busy (all cores) |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {t.workers} | {t.seconds:.1f} | {t.rate:.1f} | {t.rate / t.workers:.1f} | {t.machine_busy:.0%} |"
            for t in (one, three)
        ],
        "",
        f"3 workers / 1 worker: **{three.rate / one.rate:.2f}x** the operations per second.",
        "",
        "Where the CPU went, in CPU milliseconds per operation (user + system, /proc/<pid>/stat; "
        "*elsewhere* is the machine's busy time not in these processes: other load on the machine):",
        "",
        f"| run | {' | '.join(COMPONENTS)} | elsewhere | total |",
        f"| --- | {' | '.join('---:' for _ in COMPONENTS)} | ---: | ---: |",
        *[
            f"| {t.workers} worker{'s' if t.workers > 1 else ''} "
            f"| {' | '.join(f'{t.cpu[c] / t.operations * 1000:.0f}' for c in COMPONENTS)} "
            f"| {t.elsewhere / t.operations * 1000:.0f} | {t.busy_ms_per_operation:.0f} |"
            for t in (one, three)
        ],
        "",
        f"Reading: one operation costs about {one.busy_ms_per_operation:.0f} ms of CPU on this machine in all, "
        f"{worker_ms:.0f} ms of it in the worker, so {cores} cores "
        f"carry at most about {(cores or 1) * 1000 / one.busy_ms_per_operation:.0f} operations/s however many "
        "workers share them: more workers on the same cores only add their own overhead. With the dev server "
        "and PostgreSQL on other machines, a worker process (one Python interpreter: one core at most) "
        f"carries about {1000 / worker_ms:.0f} operations/s per core "
        "it gets; size the worker count from that, and the Temporal server from its own share.",
        "",
        "## Memory",
        "",
        "Worker memory per 1,000 open workflows, and with 5,000 open on one worker, is measured by "
        "`python -m bench.open_workflows`: [open_workflows.md](open_workflows.md).",
        "",
        f"Machine load average (1 min) when the run began: {load_before:.2f}; other processes on the machine "
        "count in *machine CPU busy* and *elsewhere*.",
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    write_results_json(
        "sizing",
        "bench.sizing",
        seconds,
        [
            row("operations/s, 1 worker (NcLock + NcUnlock)", round(one.rate, 2), "ops/s"),
            row("operations/s per worker, 3 workers on the same cores", round(three.rate / 3, 2), "ops/s"),
            row("3 workers / 1 worker, operations/s", round(three.rate / one.rate, 3), "x"),
            row("worker CPU per quick operation", round(worker_ms, 1), "ms"),
            row("machine CPU per quick operation (all processes)", round(one.busy_ms_per_operation, 1), "ms"),
            row(
                "operations/s per core a worker gets (1000 / worker CPU ms)",
                round(1000 / worker_ms, 1),
                "ops/s",
            ),
        ],
        load_before=load_before,
    )
    print("\n".join(lines))


def run() -> None:
    if shutil.which("temporal") is None and not (Path(sys.executable).parent / "temporal").exists():
        raise SystemExit("the temporal CLI is not installed: run `make venv`")
    with tempfile.TemporaryDirectory(prefix="bench-sizing-") as tmp:
        asyncio.run(main(Path(tmp)))


if __name__ == "__main__":
    run()
