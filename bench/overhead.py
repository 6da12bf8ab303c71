"""Engine overhead: 200 concurrent deep offlines against 200 bare Temporal workflows of the same shape.

    .venv/bin/python -m bench.overhead            # writes bench/results/overhead.md and overhead.json

Everything on this machine, in one run: the Temporal dev server, PostgreSQL (the embedded server, or
``DATABASE_URL``), the Houyi simulator as its own process at zero latency (speed ``SPEED``: a migration or
a power change takes microseconds) and one worker in this process.

*Ours*: ``N`` concurrent ``NcDeepOffline`` (0x400003) runs, one per host, each host carrying 2 to 4 running
VMs that all go live to a target host of their cluster. Nothing holds or drops them: approval is not needed
for manual reports of 0x400003 (the policy is set so), flow control for 0x400003 is off, the storm breaker
and the capacity guard are off for every cluster.

*Bare*: ``N`` concurrent ``BareOverhead`` workflows (bench/bare_workflow.py) whose only commands are no-op activities,
in the shape our runs have: a pilot deep offline per VM count gives, from its history, the activities each
workflow task scheduled (``ActivityTaskScheduled`` after each ``WorkflowTaskCompleted``) and the local
activities it ran (``core_local_activity`` markers: store writes are local activities since the
``local-store-writes`` patch); the bare workflow for a host of that VM count runs the same batches one after
the other, each batch's activities at once, and a no-op local activity where ours ran one. So the bare runs
execute the same activities, with the same parallelism, as ours.

*Bare + our upserts and payloads* (for the profile): the same bare workflow also replaying the pilot's
search-attribute upserts and activity payload sizes: a history like ours with no work behind it, which
separates what our history costs the server and the SDK from what our activities and workflow code cost.
As many as the others (``PROFILE_HOSTS``): at half the concurrency the server started more of its
activities eagerly, and its CPU per run did not compare.

All run on one worker per kind set up the same way (``build_worker``'s slots: 100 activities, 100 workflow
tasks, the sandboxed workflow runner with the workflow's modules passed through), ``STARTERS`` concurrent starts, each batch on a dev server started
for it alone and shut down after it (``batch_server``): bare, then ours, then bare with upserts and payloads.
None runs on a server holding another's histories, heap or pending timers (a timer fires even for a task
long done: on a shared server, the first batch's would fire inside the second). After ours, ``IDLE_SECONDS``
with its worker polling and nothing to run (what the longer of two batches costs only for lasting longer). Printed: wall time ours / bare (target <= 1.3),
and where the time goes: CPU seconds by process, the Temporal server's own counters (persistence requests,
history tasks, polls), events and workflow tasks per run, per activity type its count and time, Houyi calls
and store rows per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench import bare_workflow
from bench.bare_workflow import BareOverheadWorkflow, bare_call
from bench.harness import CpuMeter, dev_server, fresh_database, server_counters
from deploy.processes import free_port, houyi_simulator
from domain.operations import OperationResult, OpsState
from domain.opscodes import OpsCode
from houyi.http_client import HttpHouyiClient
from runtime.logging import configure_logging
from simulator.fleet import FleetFile
from store.lifecycle import CapacityGuard, FlowControlRule, StormBreaker
from store.repository import OperationStore
from store.seed import seed_dev_approvers
from worker import build_worker, passthrough_runner

HOSTS = int(os.environ.get("BENCH_OVERHEAD_HOSTS", "200"))
PROFILE_HOSTS = HOSTS  # the profile batch (bare + our upserts and payloads), at the same concurrency
VM_COUNTS = (2, 3, 4)  # host i carries VM_COUNTS[i % 3] VMs
SOURCES_PER_CLUSTER = 20
LOCAL_ACTIVITY_MARKER = "core_local_activity"
SPEED = 1_000_000.0  # simulated seconds per real second: the simulator at zero latency
POLL_SECONDS = 0.005  # power and migration polls
MAX_CONCURRENT_ACTIVITIES = 100  # build_worker's defaults, for both workers
MAX_CONCURRENT_WORKFLOW_TASKS = 100
STARTERS = 20
IDLE_SECONDS = 10.0  # the idle window after the batches
SERVER_ROWS = 24  # server counters shown, the biggest differences ours - bare (either way) first
TARGET = 1.3
RESULTS = Path(__file__).parent / "results" / "overhead.md"
COMMAND = ".venv/bin/python -m bench.overhead"
REGION = "cn-ovh-d01"
ZONE = "cn-ovh-d01-a"
CPU_MODEL = "Intel(R) Xeon(R) Platinum 8269CY"
SOFTWARE = "houyi-3.5.2"
BARE_RUNNER = passthrough_runner(bare_workflow.__name__)  # as worker.WORKFLOW_RUNNER passes `workflows`
COMPONENTS = ("this process (worker + client)", "dev server", "PostgreSQL", "simulator")


# ---- results: bench/results/<name>.json, the shape the combined report reads --------------------------


@dataclass(frozen=True)
class Row:
    """One figure; ``ok`` is None when it has no target."""

    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None


def row(metric: str, value: float, unit: str, target: str = "") -> Row:
    """A row whose ``ok`` follows from a target ``<= x`` or ``>= x`` (none: None)."""
    ok: bool | None = None
    if target:
        found = re.fullmatch(r"\s*(<=|>=)\s*([0-9.]+)\s*", target)
        assert found is not None, f"target {target!r} is not '<= x' or '>= x'"
        limit = float(found.group(2))
        ok = math.isfinite(value) and (value <= limit if found.group(1) == "<=" else value >= limit)
    return Row(metric=metric, value=value, unit=unit, target=target, ok=ok)


def write_results_json(name: str, seconds: float, rows: Sequence[Row], load_before: float) -> Path:
    """``bench/results/<name>.json``: name, command, seconds, rows (and when, cores, load at the start)."""
    path = Path(__file__).parent / "results" / f"{name}.json"
    document = {
        "name": name,
        "command": f"python -m bench.{name}",
        "seconds": round(seconds, 1),
        "rows": [asdict(r) for r in rows],
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "load_before": round(load_before, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


# ---- CPU by process (/proc) ---------------------------------------------------------------------------


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def dev_server_pid(port: int) -> int | None:
    """The ``temporal server start-dev`` listening on ``port``."""
    for pid in _pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start-dev" in argv and str(port).encode() in argv:
            return pid
    return None


def postmaster_pid(url: str) -> int | None:
    """The embedded PostgreSQL's postmaster (None for a server elsewhere)."""
    found = re.search(r"host=([^&]+)", url)
    pid_file = Path(found.group(1)) / "postmaster.pid" if found else None
    if pid_file is None or not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


def postgres_pids(postmaster: int | None) -> list[int]:
    """The postmaster and its children (backends, background workers)."""
    if postmaster is None:
        return []
    children = []
    for pid in _pids():
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(pid)
        except (OSError, IndexError, ValueError):
            continue
    return [postmaster, *children]


# ---- the fleet ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    nc_ip: str
    nc_id: str
    target_nc_id: str
    vms: int


def build_fleet(count: int) -> tuple[dict[str, Any], list[Source]]:
    """``count`` source hosts, ``SOURCES_PER_CLUSTER`` a cluster, with 2-4 running VMs each; one target host
    per two sources in the same cluster (same CPU and software: every VM can go live there)."""
    clusters: list[dict[str, Any]] = []
    ncs: list[dict[str, Any]] = []
    vms: list[dict[str, Any]] = []
    sources: list[Source] = []

    def nc(nc_id: str, nc_ip: str, cluster: str) -> dict[str, Any]:
        return {
            "nc_id": nc_id,
            "nc_ip": nc_ip,
            "hostname": f"ovh-{nc_id}",
            "sn": f"SNOVH{nc_id.replace('-', '')}",
            "cluster_id": cluster,
            "cpu_model": CPU_MODEL,
            "software_version": SOFTWARE,
            "vcpu_total": 104,
            "memory_gib_total": 768,
        }

    for c in range((count + SOURCES_PER_CLUSTER - 1) // SOURCES_PER_CLUSTER):
        cluster = f"ECS-CPU-OVH-{c:02d}"
        clusters.append({"cluster_id": cluster, "region_id": REGION, "zone_id": ZONE, "kind": "CPU"})
        in_cluster = min(SOURCES_PER_CLUSTER, count - c * SOURCES_PER_CLUSTER)
        for t in range((in_cluster + 1) // 2):
            ncs.append(nc(f"{60000 + c}-{100 + t}", f"10.60.{c}.{100 + t}", cluster))
        for s in range(in_cluster):
            index = c * SOURCES_PER_CLUSTER + s
            source = Source(
                nc_ip=f"10.60.{c}.{10 + s}",
                nc_id=f"{60000 + c}-{10 + s}",
                target_nc_id=f"{60000 + c}-{100 + s // 2}",
                vms=VM_COUNTS[index % len(VM_COUNTS)],
            )
            sources.append(source)
            ncs.append(nc(source.nc_id, source.nc_ip, cluster))
            vms += [
                {
                    "vm_id": f"i-ovh{index:04d}{v:02d}",
                    "nc_id": source.nc_id,
                    "instance_type": "ecs.g6.large",
                    "vcpu": 2,
                    "memory_gib": 8,
                }
                for v in range(source.vms)
            ]
    fleet = {
        "name": "overhead",
        "settings": {"power_settle_seconds": 60},
        "regions": [{"region_id": REGION, "zones": [ZONE]}],
        "clusters": clusters,
        "storage_clusters": [],
        "ncs": ncs,
        "vms": vms,
        "disks": [],
    }
    FleetFile.model_validate(fleet)
    return fleet, sources


def deep_offline_input(source: Source) -> dict[str, Any]:
    return {
        "nc_ip": source.nc_ip,
        "requester": "alice",
        "reason_category": "hardware",
        "reason": "bench.overhead",
        "ticket": "CHG-6000",
        "settings": {"parallel": 4, "target": source.target_nc_id},
    }


# ---- histories ----------------------------------------------------------------------------------------


def _payload_bytes(payloads: Any) -> int:
    return sum(len(p.data) for p in payloads.payloads)


def history_tasks(history: WorkflowHistory) -> list[dict[str, Any]]:
    """What each workflow task of ``history`` did: the local activities it ran (result payload bytes; a local
    activity runs inside the task and its marker is recorded with the task's completion), its search-attribute
    upserts (name -> keyword value) and the activities it scheduled (input and result payload bytes), in
    order; tasks doing none of these left out."""
    tasks: list[dict[str, Any]] = []
    calls: dict[int, list[Any]] = {}  # [input bytes, result bytes, options]
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks.append({"local": [], "upserts": [], "calls": []})
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and tasks:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER:
                result = marker.details.get("result")
                tasks[-1]["local"].append([0, max(0, _payload_bytes(result) - 2) if result else 0])
        elif event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES and tasks:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            # TemporalChangeVersion comes with a patch marker (workflow.patched): not for workflow code to set.
            upsert = {n: json.loads(p.data) for n, p in fields.items() if n != "TemporalChangeVersion"}
            if upsert:
                tasks[-1]["upserts"].append(upsert)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and tasks:
            # The bare call's input is {"pad": ..., "reply": n}: about 24 bytes besides the pad.
            scheduled = event.activity_task_scheduled_event_attributes
            size_in = max(0, _payload_bytes(scheduled.input) - 24)
            calls[event.event_id] = [size_in, 0, scheduled_options(scheduled)]
            tasks[-1]["calls"].append(calls[event.event_id])
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes = event.activity_task_completed_event_attributes
            calls[attributes.scheduled_event_id][1] = max(0, _payload_bytes(attributes.result) - 2)
    return [t for t in tasks if t["local"] or t["upserts"] or t["calls"]]


def scheduled_options(scheduled: Any) -> dict[str, Any]:
    """The timeouts (seconds) and retry policy an ``ActivityTaskScheduled`` event carries: the bare call is
    scheduled with the same, so the server keeps the same timers for it (heartbeat, start-to-close,
    schedule-to-close) and the engine's work per activity is the same."""
    options: dict[str, Any] = {}
    for name in ("schedule_to_close", "start_to_close", "heartbeat"):
        duration = getattr(scheduled, f"{name}_timeout")
        if duration.ToTimedelta():
            options[f"{name}_timeout"] = duration.ToTimedelta().total_seconds()
    if scheduled.HasField("retry_policy"):
        retry = scheduled.retry_policy
        options["retry"] = {
            "initial_interval": retry.initial_interval.ToTimedelta().total_seconds(),
            "maximum_interval": retry.maximum_interval.ToTimedelta().total_seconds(),
            "backoff_coefficient": retry.backoff_coefficient,
            "maximum_attempts": retry.maximum_attempts,
        }
    return options


def describe_tasks(tasks: list[dict[str, Any]]) -> str:
    widths = [len(t["calls"]) for t in tasks if t["calls"]]
    return (
        f"{sum(widths)} activities in {len(widths)} batches (widths {' '.join(map(str, widths))}), "
        f"{sum(len(t['local']) for t in tasks)} local activities, {sum(len(t['upserts']) for t in tasks)} "
        f"search-attribute upserts ({unchanged_upserts(tasks)} of them changing nothing), "
        f"{len(tasks)} workflow tasks doing any of these"
    )


def unchanged_upserts(tasks: list[dict[str, Any]]) -> int:
    """Upserts that set every attribute to the value it already had."""
    current: dict[str, Any] = {}
    unchanged = 0
    for task in tasks:
        for upsert in task["upserts"]:
            unchanged += all(current.get(name) == value for name, value in upsert.items())
            current.update(upsert)
    return unchanged


def plain(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same activities (and local activities, with the same timeouts and retry policies) in the same
    batches, with no upsert and no payload."""
    return [
        {"local": [[0, 0] for _ in t["local"]], "upserts": [], "calls": [[0, 0, c[2]] for c in t["calls"]]}
        for t in tasks
        if t["calls"] or t["local"]
    ]


@dataclass
class HistoryProfile:
    """What a set of histories holds: events by type, and per activity type its count and times (ms)."""

    runs: int = 0
    events: Counter[str] = field(default_factory=Counter)
    history_bytes: int = 0
    schedule_to_start: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    start_to_close: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    workflow_task_ms: list[float] = field(default_factory=list)
    task_timeouts: Counter[str] = field(default_factory=Counter)
    local_activities: int = 0
    run_ms: list[float] = field(default_factory=list)

    def add(self, history: WorkflowHistory) -> None:
        self.runs += 1
        self.history_bytes += len(history.to_json())
        scheduled: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        wft_started: float | None = None
        events = list(history.events)
        for event in events:
            name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
            self.events[name] += 1
            at = event.event_time.ToMicroseconds() / 1000
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attributes = event.activity_task_scheduled_event_attributes
                scheduled[event.event_id] = (attributes.activity_type.name, at)
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                key = event.activity_task_started_event_attributes.scheduled_event_id
                started[key] = at
                kind, when = scheduled[key]
                self.schedule_to_start[kind].append(at - when)
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                key = event.activity_task_completed_event_attributes.scheduled_event_id
                kind, when = scheduled[key]
                self.start_to_close[kind].append(at - started.get(key, when))
            elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                self.local_activities += (
                    event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
                )
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                timeout = event.workflow_task_timed_out_event_attributes.timeout_type
                self.task_timeouts[TimeoutType.Name(timeout).removeprefix("TIMEOUT_TYPE_")] += 1
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                wft_started = at
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and wft_started is not None:
                self.workflow_task_ms.append(at - wft_started)
        if events:
            first = events[0].event_time.ToMicroseconds() / 1000
            self.run_ms.append(events[-1].event_time.ToMicroseconds() / 1000 - first)

    def per_run(self, name: str) -> float:
        return self.events[name] / self.runs if self.runs else 0.0

    @property
    def activities(self) -> int:
        return self.events["ACTIVITY_TASK_SCHEDULED"]


async def fetch_histories(client: Client, workflow_ids: list[str]) -> list[WorkflowHistory]:
    gate = asyncio.Semaphore(20)

    async def one(workflow_id: str) -> WorkflowHistory:
        async with gate:
            return await client.get_workflow_handle(workflow_id).fetch_history()

    return await asyncio.gather(*(one(w) for w in workflow_ids))


# ---- runs ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    label: str
    seconds: float
    cpu: dict[str, float]
    workflow_ids: list[str]
    server: dict[str, float] = field(default_factory=dict)  # the server's own counters over the batch


async def run_batch(
    client: Client,
    task_queue: str,
    label: str,
    jobs: list[tuple[str, str, Any]],
    meter: CpuMeter,
    metrics_port: int,
) -> Batch:
    """Starts (workflow type, id, input) jobs ``STARTERS`` at a time and waits for every result."""
    gate = asyncio.Semaphore(STARTERS)

    async def one(workflow_type: str, workflow_id: str, argument: Any) -> Any:
        async with gate:
            handle = await client.start_workflow(
                workflow_type, argument, id=workflow_id, task_queue=task_queue
            )
        return await handle.result()

    counted = await server_counters(metrics_port)
    meter.start()
    began = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*(one(*job) for job in jobs)), 600)
    seconds = time.monotonic() - began
    cpu = meter.stop()
    server = {k: v - counted.get(k, 0.0) for k, v in (await server_counters(metrics_port)).items()}
    for (workflow_type, workflow_id, _), result in zip(jobs, results, strict=True):
        if workflow_type == "NcDeepOffline":
            outcome = OperationResult.model_validate(result)
            if outcome.state is not OpsState.SUCCEEDED:
                raise SystemExit(f"{workflow_id}: {outcome.state.value}: {outcome.message}")
    print(f"  {label}: {len(jobs)} workflows in {seconds:.1f} s", flush=True)
    return Batch(label, seconds, cpu, [job[1] for job in jobs], server)


def bare_worker(client: Client, task_queue: str) -> Worker:
    """Set up as ``build_worker`` sets up ours (slots, workflow module passed through the sandbox, shutdown,
    heartbeat throttle), with the bare workflow and its no-op activity only."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BareOverheadWorkflow],
        workflow_runner=BARE_RUNNER,
        activities=[bare_call],
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        max_concurrent_workflow_tasks=MAX_CONCURRENT_WORKFLOW_TASKS,
        graceful_shutdown_timeout=timedelta(seconds=10),
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )


@dataclass
class Measured:
    bare: Batch  # no-op activities only, in our batches
    ours: Batch
    shaped: Batch  # the bare workflow with our upserts and payload sizes too
    idle: Batch  # ours' worker polling, no workflow to run
    profiles: dict[str, HistoryProfile]  # by batch label
    tasks: dict[int, list[dict[str, Any]]]  # the pilot's workflow tasks, by VM count
    houyi_calls: list[tuple[str, int, float]]  # action, calls, mean latency ms
    store_rows: dict[str, int]
    load_before: float
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.ours.seconds / self.bare.seconds


BARE = "bare"
OURS = "ours (NcDeepOffline)"
SHAPED = "bare + our upserts and payloads"


@dataclass
class BatchServer:
    """The dev server one batch runs on, started for it alone."""

    env: WorkflowEnvironment
    metrics_port: int
    pid: int | None

    @property
    def client(self) -> Client:
        return self.env.client


@contextlib.asynccontextmanager
async def batch_server(running: dict[str, int | None]) -> AsyncIterator[BatchServer]:
    """A fresh dev server (in-memory SQLite) for one batch, its pid in ``running["server"]`` while it runs
    (the CPU meter reads it there), shut down after: no batch runs on a server holding another batch's
    histories, caches, heap or pending timers, so the order of the batches decides nothing."""
    metrics_port = free_port()
    env = await dev_server(metrics_port)
    address = env.client.service_client.config.target_host
    server = BatchServer(env, metrics_port, dev_server_pid(int(address.rsplit(":", 1)[1])))
    running["server"] = server.pid
    try:
        yield server
    finally:
        running["server"] = None
        await env.shutdown()


async def history_profile(client: Client, batch: Batch) -> HistoryProfile:
    profile = HistoryProfile()
    for history in await fetch_histories(client, batch.workflow_ids):
        profile.add(history)
    return profile


async def measure(workdir: Path) -> Measured:
    load_before = os.getloadavg()[0]
    fleet, sources = build_fleet(HOSTS + len(VM_COUNTS))
    pilots, sources = sources[: len(VM_COUNTS)], sources[len(VM_COUNTS) :]
    fleet_path = workdir / "fleet.json"
    fleet_path.write_text(json.dumps(fleet))
    database = await fresh_database("bench_overhead")
    simulator = None
    store = await OperationStore.connect(database.url)  # the worker's pool, as deployed
    try:
        await seed_dev_approvers(store)
        lifecycle = store.lifecycle
        await lifecycle.set_approval_policy(
            OpsCode.NC_DEEP_OFFLINE, manual_report_needs_approval=False, updated_by="bench"
        )
        await lifecycle.set_flow_control_rule(
            FlowControlRule(opscode=OpsCode.NC_DEEP_OFFLINE, enabled=False), updated_by="bench"
        )
        await lifecycle.set_storm_breaker(StormBreaker(cluster_id="*", enabled=False), updated_by="bench")
        await lifecycle.set_capacity_guard(CapacityGuard(cluster_id="*", enabled=False), updated_by="bench")
        port = free_port()
        simulator = houyi_simulator(port, SPEED, fleet_path, log_dir=workdir / "logs").start()
        await simulator.wait_ready(timeout=60)
        postmaster = postmaster_pid(database.server)
        simulator_pid = simulator.pid
        running: dict[str, int | None] = {"server": None}
        meter = CpuMeter(
            {
                COMPONENTS[0]: lambda: [os.getpid()],
                COMPONENTS[1]: lambda: [pid] if (pid := running["server"]) else [],
                COMPONENTS[2]: lambda: postgres_pids(postmaster),
                COMPONENTS[3]: lambda: [simulator_pid] if simulator_pid else [],
            }
        )
        run_tag = uuid.uuid4().hex[:6]
        ours_queue, bare_queue = f"ovh-ours-{run_tag}", f"ovh-bare-{run_tag}"
        profiles: dict[str, HistoryProfile] = {}
        async with HttpHouyiClient(f"http://127.0.0.1:{port}", recorder=store) as houyi:

            def ours_worker(client: Client) -> Worker:
                return build_worker(
                    client,
                    ours_queue,
                    houyi=houyi,
                    store=store,
                    max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
                    max_concurrent_workflow_tasks=MAX_CONCURRENT_WORKFLOW_TASKS,
                    power_poll_seconds=POLL_SECONDS,
                    migration_poll_seconds=POLL_SECONDS,
                    time_scale=1 / SPEED,
                )

            # The pilot: one deep offline per VM count, whose histories give the bare workflows' shape.
            async with batch_server(running) as server, ours_worker(server.client):
                pilot = await run_batch(
                    server.client,
                    ours_queue,
                    "pilot (one deep offline per VM count)",
                    [
                        ("NcDeepOffline", f"0x400003-{p.nc_ip}-{run_tag}", deep_offline_input(p))
                        for p in pilots
                    ],
                    meter,
                    server.metrics_port,
                )
                histories = await fetch_histories(server.client, pilot.workflow_ids)
            tasks = {p.vms: history_tasks(h) for p, h in zip(pilots, histories, strict=True)}
            for vms, shown in sorted(tasks.items()):
                print(f"  {vms} VMs: {describe_tasks(shown)}", flush=True)

            async def on_own_server(
                label: str,
                worker_for: Callable[[Client], Worker],
                task_queue: str,
                jobs: list[tuple[str, str, Any]],
                *,
                then_idle: bool = False,
            ) -> tuple[Batch, Batch | None]:
                """The batch on a server of its own, its history profile kept; with ``then_idle``, the
                worker up and nothing to run for ``IDLE_SECONDS`` after it: what the processes burn per
                second just polling, to tell how much of ours' extra CPU comes only from lasting longer."""
                idle = None
                async with batch_server(running) as server:
                    async with worker_for(server.client):
                        batch = await run_batch(
                            server.client, task_queue, label, jobs, meter, server.metrics_port
                        )
                        if then_idle:
                            meter.start()
                            began_idle = time.monotonic()
                            await asyncio.sleep(IDLE_SECONDS)
                            idle = Batch("idle", time.monotonic() - began_idle, meter.stop(), [])
                    profiles[label] = await history_profile(server.client, batch)
                return batch, idle

            def bare_for(client: Client) -> Worker:
                return bare_worker(client, bare_queue)

            bare, _ = await on_own_server(
                BARE,
                bare_for,
                bare_queue,
                [("BareOverhead", f"bare-{s.nc_ip}-{run_tag}", plain(tasks[s.vms])) for s in sources],
            )
            ours, idle = await on_own_server(
                OURS,
                ours_worker,
                ours_queue,
                [("NcDeepOffline", f"0x400003-{s.nc_ip}-{run_tag}", deep_offline_input(s)) for s in sources],
                then_idle=True,
            )
            shaped, _ = await on_own_server(
                SHAPED,
                bare_for,
                bare_queue,
                [
                    ("BareOverhead", f"shaped-{s.nc_ip}-{run_tag}", tasks[s.vms])
                    for s in sources[:PROFILE_HOSTS]
                ],
            )
            assert idle is not None
        rows = await store.pool.fetch(
            """
            SELECT action, count(*) AS calls, avg(latency_ms) AS latency FROM houyi_calls
            WHERE caller = ANY($1::text[]) GROUP BY action ORDER BY count(*) DESC
            """,
            ours.workflow_ids,
        )
        houyi_calls = [(r["action"], int(r["calls"]), float(r["latency"])) for r in rows]
        store_rows = {
            table: int(
                await store.pool.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", ours.workflow_ids)
            )
            for table, where in (
                ("audit_log", "workflow_id = ANY($1::text[])"),
                ("houyi_calls", "caller = ANY($1::text[])"),
                ("operations", "workflow_id = ANY($1::text[])"),
            )
        }
    finally:
        await store.close()
        if simulator is not None:
            simulator.terminate()
        await database.drop()
    return Measured(
        bare=bare,
        ours=ours,
        shaped=shaped,
        idle=idle,
        profiles=profiles,
        tasks=tasks,
        houyi_calls=houyi_calls,
        store_rows=store_rows,
        load_before=load_before,
    )


# ---- the report ---------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def code_version() -> str:
    """The commit, and the files of the workflow and activity code changed in the work tree, if any
    (``BENCH_CODE_VERSION`` says it instead, for a run from an exported tree)."""
    if os.environ.get("BENCH_CODE_VERSION"):
        return os.environ["BENCH_CODE_VERSION"]
    root = Path(__file__).parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "workflows", "activities", "store", "houyi", "worker.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    dirty = [line[3:] for line in changed if line.strip()]
    return f"commit {commit}" + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "")


def report(m: Measured) -> tuple[list[str], list[Row]]:
    batches = (m.bare, m.ours, m.shaped)
    bp, op, sp = (m.profiles[b.label] for b in batches)
    runs = len(m.ours.workflow_ids)
    met = m.ratio <= TARGET
    cpu = {b.label: sum(b.cpu.values()) for b in batches}
    lines = [
        "# Engine overhead (bench/overhead.py)",
        "",
        f"`{COMMAND}` on {os.cpu_count()} cores, load average (1 min) {m.load_before:.2f} when it began. "
        f"Dev server (a fresh one per batch), PostgreSQL, the simulator (own process, speed {SPEED:,.0f}: zero latency) and one worker "
        f"in this process ({MAX_CONCURRENT_ACTIVITIES} activity / {MAX_CONCURRENT_WORKFLOW_TASKS} workflow-task "
        f"slots for every kind). Whole run {m.seconds:.0f} s. Code measured: {code_version()}.",
        "",
        f"- *Ours*: {runs} concurrent `NcDeepOffline` (0x400003), one per host, 2-4 running VMs each "
        "(live-migrated to a target host of the cluster); no approval, flow control, storm breaker or capacity "
        "guard in the way.",
        f"- *Bare*: {runs} concurrent `BareOverhead` workflows running no-op activities in the batches a pilot "
        "deep offline of the same VM count scheduled them (per workflow task), and a no-op local activity where "
        "ours ran a local activity: the same activity executions with the same parallelism, nothing else.",
        f"- *{SHAPED}* (for the profile, {len(m.shaped.workflow_ids)} runs, compared by CPU per run): the same bare "
        "workflow also replaying the pilot's search-attribute upserts and activity payload sizes: a history like "
        "ours, with no work behind it.",
        "",
        "| run | workflows | activities | local activities | wall (s) | workflows/s | / bare |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {b.label} | {len(b.workflow_ids)} | {m.profiles[b.label].activities} | "
            f"{m.profiles[b.label].local_activities} | {b.seconds:.1f} | "
            f"{len(b.workflow_ids) / b.seconds:.1f} | {b.seconds / m.bare.seconds:.2f} |"
            for b in batches
        ],
        "",
        f"**Wall time ours / bare: {m.ratio:.2f}** (target <= {TARGET}: {'met' if met else 'NOT met'}).",
        "",
        f"Drift check: *{SHAPED}* does bare's work and a little more, so it cannot honestly take less time than "
        f"bare; it took {m.shaped.seconds / m.bare.seconds:.2f}x bare's, and ours / it is "
        f"{m.ours.seconds / m.shaped.seconds:.2f}. Below 1.00, the machine ran faster during the later batch "
        "than during bare's (shared cores drift within a run): read the headline ratio within that spread.",
        "",
        "A deep offline, by VM count (pilot histories; a batch = the activities one workflow task "
        "scheduled): "
        + "; ".join(f"{v} VMs: {describe_tasks(ts)}" for v, ts in sorted(m.tasks.items()))
        + ". The bare workflow replays the activities and the local activities (as no-op local activities, "
        "each in the workflow task where ours ran it), so both run the same activity executions.",
        "",
        "## Where the time goes",
        "",
        "The machine is saturated in every batch (2 cores, all processes on them), so wall time follows CPU. "
        "CPU seconds by process during each batch (user + system, /proc/<pid>/stat):",
        "",
        f"| run | {' | '.join(COMPONENTS)} | total | per workflow (ms) |",
        f"| --- | {' | '.join('---:' for _ in COMPONENTS)} | ---: | ---: |",
    ]
    for batch in batches:
        lines.append(
            f"| {batch.label} | {' | '.join(f'{batch.cpu[c]:.1f}' for c in COMPONENTS)} | "
            f"{cpu[batch.label]:.1f} | {cpu[batch.label] / len(batch.workflow_ids) * 1000:.0f} |"
        )

    def per_run_ms(batch: Batch, component: str) -> float:
        return batch.cpu[component] / len(batch.workflow_ids) * 1000

    extra = {c: per_run_ms(m.ours, c) - per_run_ms(m.bare, c) for c in COMPONENTS}
    shape_extra = {c: per_run_ms(m.shaped, c) - per_run_ms(m.bare, c) for c in COMPONENTS}
    total_extra, total_shape = sum(extra.values()), sum(shape_extra.values())
    lines += [
        "",
        f"A deep offline costs {total_extra:.0f} CPU ms more than a bare run of the same activities: "
        + ", ".join(f"{c} {extra[c]:+.0f} ms ({extra[c] / total_extra:.0%})" for c in COMPONENTS)
        + f". The history alone (bare + our upserts and payloads, {len(m.shaped.workflow_ids)} runs) costs "
        f"{total_shape:+.0f} ms of it ({total_shape / total_extra:.0%}): "
        + ", ".join(f"{c} {shape_extra[c]:+.0f} ms" for c in COMPONENTS)
        + f"; the other {total_extra - total_shape:.0f} ms ({(total_extra - total_shape) / total_extra:.0%}) "
        "is the work behind our activities and workflow code (store writes, Houyi calls and the simulator "
        "answering them, logging, pydantic models, the status rendered at every state change).",
    ]
    # Idle cost per second, charged over the seconds ours' batch lasted longer than bare's.
    idle_rate = {c: m.idle.cpu[c] / m.idle.seconds for c in COMPONENTS}
    longer = m.ours.seconds - m.bare.seconds
    idle_share = {c: idle_rate[c] * longer / runs * 1000 for c in COMPONENTS}
    lines += [
        "",
        f"Idle, the worker polling and nothing to run ({m.idle.seconds:.0f} s), the processes use "
        + ", ".join(f"{c} {idle_rate[c] * 1000:.0f}" for c in COMPONENTS)
        + f" CPU ms per second. Ours' batch lasted {longer:.1f} s longer than bare's; at that idle rate the "
        f"longer batch alone costs {sum(idle_share.values()):.0f} ms per run of the {total_extra:.0f} ms "
        "(" + ", ".join(f"{c} {idle_share[c]:.0f} ms" for c in COMPONENTS) + ").",
    ]

    def server_per_run(batch: Batch, key: str) -> float:
        return batch.server.get(key, 0.0) / len(batch.workflow_ids)

    def persistence_per_run(batch: Batch) -> float:
        return sum(server_per_run(batch, k) for k in batch.server if k.startswith("persistence_requests "))

    server_keys = sorted(
        (
            k
            for k in set(m.ours.server) | set(m.bare.server)
            if max(server_per_run(b, k) for b in batches) >= 0.5
        ),
        key=lambda k: -abs(server_per_run(m.ours, k) - server_per_run(m.bare, k)),
    )
    lines += [
        "",
        "What the Temporal server did per run, from its own metrics (`persistence_requests` and "
        "`visibility_persistence_requests` by operation, `task_requests` by history task, `service_requests`: "
        "RPCs served, by operation, `poll_success*`: task-queue polls answered, `_sync` by a sync match; the "
        "server runs with its search-attribute cache on, as in production: `bench.harness.SEARCH_ATTRIBUTE_CACHE`), "
        "the biggest differences (either way) first:",
        "",
        "| server counter | ours | bare | bare + upserts, payloads | ours - bare |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[
            f"| {k} | {server_per_run(m.ours, k):.1f} | {server_per_run(m.bare, k):.1f} | "
            f"{server_per_run(m.shaped, k):.1f} | {server_per_run(m.ours, k) - server_per_run(m.bare, k):+.1f} |"
            for k in server_keys[:SERVER_ROWS]
        ],
        "| **persistence requests, all** | "
        + " | ".join(f"{persistence_per_run(b):.1f}" for b in (m.ours, m.bare, m.shaped))
        + f" | {persistence_per_run(m.ours) - persistence_per_run(m.bare):+.1f} |",
    ]
    event_names = sorted(set(op.events) | set(bp.events), key=lambda n: -op.events[n])
    lines += [
        "",
        "History per run (events by type):",
        "",
        "| event | ours | bare | bare + upserts, payloads |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {name} | {op.per_run(name):.1f} | {bp.per_run(name):.1f} | {sp.per_run(name):.1f} |"
            for name in event_names
        ],
        "| **all events** | "
        + " | ".join(f"{sum(p.events.values()) / p.runs:.1f}" for p in (op, bp, sp))
        + " |",
        "| history JSON (KB) | "
        + " | ".join(f"{p.history_bytes / p.runs / 1024:.1f}" for p in (op, bp, sp))
        + " |",
        "",
        "Workflow tasks, started to completed (server clock; includes waiting for the worker's CPU): "
        + "; ".join(
            f"{label} {_mean(p.workflow_task_ms):.0f} ms mean, {len(p.workflow_task_ms) / p.runs:.1f} per run"
            for label, p in (("ours", op), ("bare", bp), ("bare + upserts, payloads", sp))
        )
        + ". Run, first to last event: "
        + ", ".join(
            f"{label} {_mean(p.run_ms) / 1000:.1f} s"
            for label, p in (("ours", op), ("bare", bp), ("bare + upserts, payloads", sp))
        )
        + " mean. Workflow tasks timed out: "
        + "; ".join(
            f"{label} {sum(p.task_timeouts.values())}"
            + (
                f" ({', '.join(f'{k} {n}' for k, n in sorted(p.task_timeouts.items()))})"
                if p.task_timeouts
                else ""
            )
            for label, p in (("ours", op), ("bare", bp), ("bare + upserts, payloads", sp))
        )
        + " (SCHEDULE_TO_START: the sticky worker did not pick the task up within its timeout, so it went to "
        "the normal queue and the worker replayed the whole history; START_TO_CLOSE: the worker took over "
        "10 s to answer).",
        "",
        "Activities by type (schedule-to-start: waiting for a slot and the worker; start-to-close: the "
        f"activity's own time; server clock, under the load of all {runs} runs):",
        "",
        "| activity | per run | schedule-to-start mean (ms) | start-to-close mean (ms) | start-to-close total (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, profile in (("", op), (" (bare)", bp), (" (bare + upserts, payloads)", sp)):
        for kind in sorted(profile.start_to_close, key=lambda k: -sum(profile.start_to_close[k])):
            closes = profile.start_to_close[kind]
            lines.append(
                f"| {kind}{label} | {len(closes) / profile.runs:.1f} | "
                f"{_mean(profile.schedule_to_start[kind]):.0f} | {_mean(closes):.0f} | {sum(closes) / 1000:.1f} |"
            )
    calls = sum(c for _, c, _ in m.houyi_calls)
    lines += [
        "",
        f"Houyi calls (each also a row written to `houyi_calls`): {calls / runs:.1f} per run; by action, calls "
        "per run (mean latency the client saw): "
        + ", ".join(f"{a} {c / runs:.1f} ({lat:.1f} ms)" for a, c, lat in m.houyi_calls)
        + ". Store rows per run: "
        + ", ".join(f"{t} {n / runs:.1f}" for t, n in m.store_rows.items())
        + ".",
        "",
    ]
    rows = [
        row(
            f"wall time ours / bare ({runs} NcDeepOffline vs {runs} no-op workflows of the same shape)",
            round(m.ratio, 3),
            "ratio",
            f"<= {TARGET}",
        ),
        row("wall time, ours", round(m.ours.seconds, 2), "s"),
        row("wall time, bare", round(m.bare.seconds, 2), "s"),
        row(
            f"drift check: wall time ours / {SHAPED} (the last batch; bare's work and a little more)",
            round(m.ours.seconds / m.shaped.seconds, 3),
            "ratio",
        ),
        row("activities per deep offline (mean)", round(op.activities / op.runs, 1), "activities"),
        row(
            "local activities per deep offline (mean)", round(op.local_activities / op.runs, 1), "activities"
        ),
        row("history events per deep offline (mean)", round(sum(op.events.values()) / op.runs, 1), "events"),
        row(
            "search-attribute upserts per deep offline (mean)",
            round(op.per_run("UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"), 1),
            "upserts",
        ),
        row(
            "of those, upserts that change no attribute (pilot, 4 VMs)",
            unchanged_upserts(m.tasks[max(m.tasks)]),
            "upserts",
        ),
        row("history events per bare run (mean)", round(sum(bp.events.values()) / bp.runs, 1), "events"),
        row("CPU ours / bare (all processes)", round(cpu[OURS] / cpu[BARE], 3), "ratio"),
        row("CPU per deep offline (all processes)", round(cpu[OURS] / runs * 1000, 1), "ms"),
        row("CPU per bare run (all processes)", round(cpu[BARE] / runs * 1000, 1), "ms"),
        row(
            "workflow tasks timed out per deep offline (sticky misses and slow answers)",
            round(sum(op.task_timeouts.values()) / op.runs, 2),
            "tasks",
        ),
        row(
            "CPU per bare run with our upserts and payloads (all processes)",
            round(cpu[SHAPED] / len(m.shaped.workflow_ids) * 1000, 1),
            "ms",
        ),
        row(
            "server persistence requests per deep offline", round(persistence_per_run(m.ours), 1), "requests"
        ),
        row("server persistence requests per bare run", round(persistence_per_run(m.bare), 1), "requests"),
        row("CPU idle, the worker polling (all processes)", round(sum(idle_rate.values()) * 1000, 1), "ms/s"),
        row(
            "of the extra CPU per deep offline, its longer batch at the idle rate",
            round(sum(idle_share.values()), 1),
            "ms",
        ),
    ]
    return lines, rows


async def main(workdir: Path) -> None:
    began = time.monotonic()
    # The worker logs as deployed (JSON lines, INFO), to a file rather than this terminal.
    configure_logging("INFO")
    log_file = (workdir / "worker.log").open("w")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log_file)
    print(
        f"overhead: {HOSTS} NcDeepOffline vs {HOSTS} bare workflows (load {os.getloadavg()[0]:.2f})",
        flush=True,
    )
    measured = await measure(workdir)
    measured.seconds = time.monotonic() - began
    lines, rows = report(measured)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    write_results_json("overhead", measured.seconds, rows, measured.load_before)
    print("\n".join(lines))


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        asyncio.run(main(Path(tmp)))


if __name__ == "__main__":
    run()
