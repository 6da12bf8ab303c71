"""The whole service on this machine, on embedded defaults: ``python -m deploy.devstack`` (``make run``).

Starts, in order: the Temporal dev server (SQLite under the data dir, so workflows survive a restart),
PostgreSQL (embedded, unless ``DATABASE_URL`` is set), the Houyi simulator with its demo fleet, and the
worker. Prints where everything is and a command that locks a free NC of the demo fleet. Ctrl-C or
SIGTERM stops what it started, in reverse order; if a child dies, it says which and stops the rest.

Every component logs to ``<data dir>/logs/<name>.log``; this program prints only short lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel

from deploy import processes
from deploy.processes import ManagedProcess, ProcessNotReady
from domain.disk import LARGE_DISK_GIB
from domain.evacuation import plan_evacuation
from domain.model import DiskCategory, NcBizStatus
from runtime.config import DEFAULT_TASK_QUEUE
from runtime.logging import configure_logging
from simulator.fleet import DEMO_FLEET_PATH, Fleet
from store.embedded import start_embedded_postgres, stop_embedded_postgres
from store.repository import OperationStore
from store.seed import DEV_APPROVER_GROUP, DEV_APPROVERS, seed_dev_approvers, seed_dev_windows

READY_LINE = "ecs-opsflow dev stack is ready"
INTAKE_READY_SECONDS = 30.0
"""Printed once everything answers; tests wait for it."""

NC_REBOOT_EXAMPLE_INPUT: dict[str, Any] = {
    "requester": "alice",
    "reason_category": "hang",
    "reason": "nc_hang_exception: host stopped answering",
    "ticket": "CHG-1002",
    "settings": {"alertRuleName": "nc_hang_exception", "needDumpCn": 0, "needLimit": 1, "preLock": 0},
}
NC_RE_ONLINE_EXAMPLE_INPUT: dict[str, Any] = {
    "requester": "alice",
    "reason_category": "hang",
    "reason": "hang understood: kernel bug, patched",
    "ticket": "CHG-1002",
    "settings": {"parallel": 4, "NcReOnline": 0},
}
NC_DEEP_OFFLINE_EXAMPLE_INPUT: dict[str, Any] = {
    "requester": "alice",
    "reason_category": "hardware",
    "reason": "correctable DIMM errors climbing: drain the host and reboot it",
    "ticket": "CHG-1003",
    "settings": {"parallel": 4, "rate": 80, "downtime": 300, "needLimit": 1},
}
NC_LOCK_EXAMPLE_INPUT: dict[str, Any] = {
    "requester": "alice",
    "reason_category": "hardware",
    "reason": "CPU MCE on socket 1",
    "ticket": "CHG-1001",
    "settings": {"alertRuleName": "hardware_exception_alarm", "preLock": 0},
}

TEMPORAL_READY_SECONDS = 60.0
SIMULATOR_READY_SECONDS = 30.0
WORKER_READY_SECONDS = 60.0
# The worker drains in-flight tasks for up to 10 s (graceful_shutdown_timeout in worker.py).
WORKER_STOP_SECONDS = 15.0
STOP_SECONDS = 10.0
WATCH_INTERVAL_SECONDS = 0.5


class DevStackError(Exception):
    """A problem the operator can fix (a busy port, a bad setting); printed without a traceback."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _env_port(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise DevStackError(f"{name}={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise DevStackError(f"{name}={port} is not a port number (0-65535)")
    return port


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise DevStackError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise DevStackError(f"{name}={raw!r} must be greater than 0")
    return value


@dataclass(frozen=True)
class Port:
    what: str
    number: int
    env_var: str


@dataclass(frozen=True)
class DevStackConfig:
    data_dir: Path
    temporal_port: int
    temporal_ui_port: int
    simulator_port: int
    simulator_speed: float
    worker_metrics_port: int
    intake_port: int
    database_url: str | None
    task_queue: str
    namespace: str = "default"

    @classmethod
    def from_env(cls) -> DevStackConfig:
        return cls(
            data_dir=Path(_env("OPSFLOW_DATA_DIR", "var")).resolve(),
            temporal_port=_env_port("TEMPORAL_PORT", 7233),
            temporal_ui_port=_env_port("TEMPORAL_UI_PORT", 8233),
            simulator_port=_env_port("HOUYI_SIM_PORT", 8090),
            simulator_speed=_env_float("HOUYI_SIM_SPEED", 50),
            worker_metrics_port=_env_port("WORKER_METRICS_PORT", 9464),
            intake_port=_env_port("OPSFLOW_INTAKE_PORT", 8080),
            database_url=os.environ.get("DATABASE_URL", "").strip() or None,
            task_queue=_env("OPSFLOW_TASK_QUEUE", DEFAULT_TASK_QUEUE),
        )

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    def ports(self) -> list[Port]:
        """The ports this stack listens on."""
        ports = [
            Port("Temporal gRPC", self.temporal_port, "TEMPORAL_PORT"),
            Port("Temporal UI", self.temporal_ui_port, "TEMPORAL_UI_PORT"),
            Port("Houyi simulator", self.simulator_port, "HOUYI_SIM_PORT"),
            Port("intake", self.intake_port, "OPSFLOW_INTAKE_PORT"),
        ]
        if self.worker_metrics_port:  # 0 turns the worker's metrics off
            ports.append(Port("worker metrics", self.worker_metrics_port, "WORKER_METRICS_PORT"))
        return ports


def check_ports(config: DevStackConfig) -> None:
    """Fails before anything starts, naming the port and the variable that moves it."""
    seen: dict[int, Port] = {}
    for port in config.ports():
        if port.number == 0:
            raise DevStackError(f"{port.env_var}=0: the {port.what} needs a real port")
        if port.number in seen:
            other = seen[port.number]
            raise DevStackError(
                f"port {port.number} is given to both the {other.what} ({other.env_var}) "
                f"and the {port.what} ({port.env_var}); change one of them"
            )
        seen[port.number] = port
        if not processes.port_is_free(port.number):
            raise DevStackError(
                f"port {port.number} ({port.what}) is already in use; stop what uses it, "
                f"or set {port.env_var} to another port"
            )


def _shown(path: Path) -> str:
    """A path as short as it can be while still working from the current directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def say(line: str = "") -> None:
    print(line, flush=True)


def complain(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class DevStack:
    """What this run started, and how to stop each, newest last."""

    def __init__(self, config: DevStackConfig) -> None:
        self.config = config
        self.processes: list[ManagedProcess] = []
        self.database_url = ""
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self._postgres_starter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="postgres")

    async def start(self) -> None:
        config = self.config
        config.log_dir.mkdir(parents=True, exist_ok=True)
        say(f"ecs-opsflow dev stack: data in {_shown(config.data_dir)}, logs in {_shown(config.log_dir)}")

        temporal = processes.temporal_dev_server(
            config.data_dir,
            config.temporal_port,
            config.temporal_ui_port,
            config.namespace,
            log_dir=config.log_dir,
        )
        await self._start_process(temporal, TEMPORAL_READY_SECONDS)

        await self._start_postgres()
        await self._seed_store()

        simulator = processes.houyi_simulator(
            config.simulator_port, config.simulator_speed, log_dir=config.log_dir
        )
        await self._start_process(simulator, SIMULATOR_READY_SECONDS)

        env = processes.worker_env(
            temporal_address=config.temporal_address,
            database_url=self.database_url,
            houyi_url=config.simulator_url,
            metrics_port=config.worker_metrics_port,
            task_queue=config.task_queue,
            namespace=config.namespace,
            simulator_speed=config.simulator_speed,
        )
        worker = processes.worker(env, log_dir=config.log_dir)
        await self._start_process(worker, WORKER_READY_SECONDS)

        intake = processes.intake(
            {**env, "WORKER_METRICS_PORT": "0"}, config.intake_port, log_dir=config.log_dir
        )
        await self._start_process(intake, INTAKE_READY_SECONDS)

        await self._print_summary()

    async def _start_process(self, process: ManagedProcess, ready_seconds: float) -> None:
        began = time.monotonic()
        process.start()
        self.processes.append(process)
        stop_seconds = WORKER_STOP_SECONDS if process.name == "worker" else STOP_SECONDS
        self._stops.append((process.name, lambda: self._stop_process(process, stop_seconds)))
        await process.wait_ready(timeout=ready_seconds)
        elapsed = time.monotonic() - began
        say(
            f"  {process.name:<10} ready in {elapsed:.1f} s (pid {process.pid}, log {_shown(process.log_path)})"
        )

    @staticmethod
    def _stop_process(process: ManagedProcess, timeout: float) -> None:
        was_running = process.running
        code = process.terminate(timeout)
        say(f"  {process.name:<10} {'stopped' if was_running else 'had exited'} (exit code {code})")

    async def _start_postgres(self) -> None:
        if self.config.database_url:
            self.database_url = self.config.database_url
            say(f"  {'postgres':<10} DATABASE_URL is set: using it")
            return
        data_dir = self.config.data_dir
        if _embedded_postgres_running(data_dir):
            # Someone else's (an earlier run that was killed, or the tests'): use it, leave it running.
            self.database_url = await asyncio.to_thread(start_embedded_postgres, data_dir)
            say(f"  {'postgres':<10} embedded, already running (left running on exit)")
            return
        began = time.monotonic()
        # Started in a thread this object owns, so that a Ctrl-C during the start can still wait for it
        # to finish before stopping it (cancelling the await does not stop the thread).
        starting = self._postgres_starter.submit(start_embedded_postgres, data_dir)

        def stop_postgres() -> None:
            with contextlib.suppress(Exception):
                starting.result(timeout=120)
            stop_embedded_postgres(data_dir)
            say(f"  {'postgres':<10} stopped")

        self._stops.append(("postgres", stop_postgres))
        self.database_url = await asyncio.wrap_future(starting)
        elapsed = time.monotonic() - began
        say(f"  {'postgres':<10} embedded, ready in {elapsed:.1f} s (data {_shown(data_dir / 'pg')})")

    async def _seed_store(self) -> None:
        """Schema up to date, and the dev approvers (group ops-admins) so approvals can be tried at once."""
        store = await OperationStore.connect(self.database_url)
        clusters = sorted(Fleet.load(DEMO_FLEET_PATH).clusters)
        try:
            await seed_dev_approvers(store)
            await seed_dev_windows(store, clusters)
        finally:
            await store.close()
        say(f"  {'approvers':<10} group {DEV_APPROVER_GROUP} = {', '.join(DEV_APPROVERS)}")
        say(f"  {'windows':<10} maintenance window always open on the {len(clusters)} demo clusters")

    async def watch(self, stop: asyncio.Event) -> ManagedProcess | None:
        """Waits for ``stop``; returns the first child found dead before that, if any."""
        while not stop.is_set():
            for process in self.processes:
                if not process.running:
                    return process
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_SECONDS)
        return None

    def stop_all(self) -> None:
        """Stops everything this run started, newest first; one failure does not stop the rest."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as problem:
                complain(f"  {name:<10} could not be stopped cleanly: {problem}")
        self._postgres_starter.shutdown(wait=True)

    async def _print_summary(self) -> None:
        config = self.config
        free = await self._free_nc_ips(2)
        nc_ip = free[0] if free else None
        say()
        say(f"  Temporal UI      http://localhost:{config.temporal_ui_port}")
        say(f"  Temporal gRPC    {config.temporal_address} (namespace {config.namespace})")
        say(f"  Simulator admin  {config.simulator_url}/admin/ncs")
        if config.worker_metrics_port:
            say(f"  Worker metrics   http://127.0.0.1:{config.worker_metrics_port}/metrics")
        say(
            f"  Intake           http://127.0.0.1:{config.intake_port} (OpenAPI /openapi.json; dev tokens in deploy/dev/tokens.json)"
        )
        say(f"  Database         {self.database_url}")
        say()
        say("Lock a free NC of the demo fleet (0x410A01, workflow NcLock):")
        for command in nc_lock_example(config, nc_ip or "<nc_ip>"):
            say(f"  {command}")
        if nc_ip is None:
            say(f"  (no NC is free right now: pick one from {config.simulator_url}/admin/ncs)")
        say()
        say("Reboot another one (0x400012), approve it as approver1, then bring it back online (0x400011):")
        for command in reboot_and_re_online_example(config, free[1] if len(free) > 1 else "<nc_ip>"):
            say(f"  {command}")
        say()
        evacuate = deep_offline_example_host()
        say(f"Drain and reboot {evacuate} (0x400003): eligible VMs live-migrate, the others move cold:")
        for command in deep_offline_example(config, evacuate):
            say(f"  {command}")
        say()
        demo = demo_disks()
        say(f"Move river disk {demo.river} to {demo.destination} live (DiskLiveMigration), snapshot first:")
        for command in disk_migration_example(config, demo):
            say(f"  {command}")
        say("Disk source recycle runs daily (Schedule disk-recycle); run it now, or dry-run it by hand:")
        for command in disk_recycle_example(config):
            say(f"  {command}")
        say()
        hung = free[1] if len(free) > 1 else "<nc_ip>"
        say(
            f"Alertmanager's webhook: nc_hang_exception on {hung} starts 0x400012 once, however often it is sent:"
        )
        say(f"  {alert_example(config, hung)}")
        say()
        say(f"{READY_LINE}; Ctrl-C stops it.")

    async def _free_nc_ips(self, count: int) -> list[str]:
        """The first ``free`` NCs the simulator lists, so the printed examples work as they are."""
        url = f"{self.config.simulator_url}/admin/ncs"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                async with session.get(url) as response:
                    response.raise_for_status()
                    listing = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as problem:
            complain(f"could not list the simulator's NCs ({url}): {problem}")
            return []
        ncs = listing.get("ncs", []) if isinstance(listing, dict) else listing
        free = [
            str(nc["nc_ip"])
            for nc in (ncs if isinstance(ncs, list) else [])
            if isinstance(nc, dict) and nc.get("biz_status") == "free" and isinstance(nc.get("nc_ip"), str)
        ]
        return free[:count]


class DemoDisks(BaseModel):
    """Disks of the demo fleet for the disk live-migration examples: one that moves, one per refusal."""

    river: str
    destination: str
    local: str
    shared: str
    cross_zone: str
    long_name: str


def demo_disks(fleet_path: Path = DEMO_FLEET_PATH) -> DemoDisks:
    fleet = Fleet.load(fleet_path)
    source, destination = "river-qd-a1", "river-qd-a2"
    on_source = sorted(
        (d for d in fleet.disks.values() if d.storage_cluster == source), key=lambda d: d.disk_id
    )
    river = next(
        d
        for d in on_source
        if d.category is DiskCategory.RIVER and not d.shared and d.size_gib <= LARGE_DISK_GIB
    )
    local = min(d.disk_id for d in fleet.disks.values() if d.category is not DiskCategory.RIVER)
    shared = next(d.disk_id for d in on_source if d.shared)
    return DemoDisks(
        river=river.disk_id,
        destination=destination,
        local=local,
        shared=shared,
        cross_zone="river-qd-b1",
        long_name="river-qd-a-archive",
    )


DISK_MIGRATION_EXAMPLE_INPUT: dict[str, Any] = {
    "requester": "alice",
    "reason": "river-qd-a1 is 85 % full: rebalance",
    "ticket": "CHG-1004",
}


def disk_migration_example(config: DevStackConfig, demo: DemoDisks) -> list[str]:
    temporal = "temporal" if shutil.which("temporal") else _shown(Path(processes.find_binary("temporal")))
    address = "" if config.temporal_port == 7233 else f" --address {config.temporal_address}"
    workflow_id = f"DiskLiveMigration-{demo.river}"
    payload = json.dumps(
        {"disk_id": demo.river, "dst_storage_cluster": demo.destination, **DISK_MIGRATION_EXAMPLE_INPUT}
    )
    approve = json.dumps({"approver": "approver1", "comment": "rebalance approved"})
    return [
        f"{temporal} workflow start{address} --type DiskLiveMigration --task-queue {config.task_queue} "
        f"--workflow-id {workflow_id} --input {shlex.quote(payload)}",
        f"{temporal} workflow signal{address} --workflow-id {workflow_id} --name approve --input {shlex.quote(approve)}",
        f"{temporal} workflow result{address} --workflow-id {workflow_id}",
    ]


def disk_recycle_example(config: DevStackConfig) -> list[str]:
    temporal = "temporal" if shutil.which("temporal") else _shown(Path(processes.find_binary("temporal")))
    address = "" if config.temporal_port == 7233 else f" --address {config.temporal_address}"
    return [
        f"{temporal} schedule describe{address} --schedule-id disk-recycle",
        f"{temporal} schedule trigger{address} --schedule-id disk-recycle",
        f"{temporal} workflow execute{address} --type DiskRecycle --task-queue {config.task_queue} "
        f"--workflow-id disk-recycle-dry-run --input {shlex.quote(json.dumps({'dry_run': True}))}",
    ]


def alert_example(config: DevStackConfig, nc_ip: str) -> str:
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "ecs-opsflow",
        "groupKey": '{}:{alertname="nc_hang_exception"}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "nc_hang_exception", "nc_ip": nc_ip, "severity": "P1"},
                "annotations": {"summary": f"{nc_ip} stopped answering"},
                "startsAt": "2026-11-25T03:00:00Z",
                "fingerprint": f"demo-{nc_ip}",
            }
        ],
    }
    return (
        f"curl -s -X POST http://127.0.0.1:{config.intake_port}/v1/alertmanager "
        "-H 'Authorization: Bearer dev-alertmanager-token-0001' -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(payload))}"
    )


def nc_lock_example(config: DevStackConfig, nc_ip: str) -> list[str]:
    """``temporal`` commands that start NcLock on ``nc_ip``, wait for its result and show the host."""
    temporal = "temporal" if shutil.which("temporal") else _shown(Path(processes.find_binary("temporal")))
    address = "" if config.temporal_port == 7233 else f" --address {config.temporal_address}"
    workflow_id = f"0x410A01-{nc_ip}"
    payload = json.dumps({"nc_ip": nc_ip, **NC_LOCK_EXAMPLE_INPUT})
    return [
        f"{temporal} workflow start{address} --type NcLock --task-queue {config.task_queue} "
        f"--workflow-id {workflow_id} --static-summary {shlex.quote(f'0x410A01 lock NC {nc_ip}')} "
        f"--input {shlex.quote(payload)}",
        f"{temporal} workflow result{address} --workflow-id {workflow_id}",
        f"curl {config.simulator_url}/admin/ncs/{nc_ip}",
    ]


def reboot_and_re_online_example(config: DevStackConfig, nc_ip: str) -> list[str]:
    """``temporal`` commands: 0x400012 on ``nc_ip``, its approval by signal, then 0x400011 and its approval."""
    temporal = "temporal" if shutil.which("temporal") else _shown(Path(processes.find_binary("temporal")))
    address = "" if config.temporal_port == 7233 else f" --address {config.temporal_address}"
    reboot_id, re_online_id = f"0x400012-{nc_ip}", f"0x400011-{nc_ip}"
    reboot = json.dumps({"nc_ip": nc_ip, **NC_REBOOT_EXAMPLE_INPUT})
    re_online = json.dumps({"nc_ips": [nc_ip], **NC_RE_ONLINE_EXAMPLE_INPUT})
    approve = json.dumps({"approver": "approver1", "comment": "hang confirmed, reboot it"})
    approve_again = json.dumps({"approver": "approver2", "comment": "fault understood"})
    start = f"{temporal} workflow start{address} --task-queue {config.task_queue}"
    return [
        f"{start} --type NcForcedReboot --workflow-id {reboot_id} "
        f"--static-summary {shlex.quote(f'0x400012 forced reboot {nc_ip}')} --input {shlex.quote(reboot)}",
        f"{temporal} workflow query{address} --workflow-id {reboot_id} --name status",
        f"{temporal} workflow signal{address} --workflow-id {reboot_id} --name approve --input {shlex.quote(approve)}",
        f"{temporal} workflow result{address} --workflow-id {reboot_id}",
        f"{start} --type NcReOnline --workflow-id {re_online_id} "
        f"--static-summary {shlex.quote(f'0x400011 re-online {nc_ip}')} --input {shlex.quote(re_online)}",
        f"{temporal} workflow signal{address} --workflow-id {re_online_id} --name approve "
        f"--input {shlex.quote(approve_again)}",
        f"{temporal} workflow result{address} --workflow-id {re_online_id}",
    ]


def deep_offline_example_host(fleet_path: Path = DEMO_FLEET_PATH) -> str:
    """A free demo host whose VMs mix live-eligible and ineligible ones, in a cluster with room for them."""
    fleet = Fleet.load(fleet_path)
    candidates = []
    for nc in fleet.ncs.values():
        detail = fleet.describe_nc(nc_id=nc.nc_id)
        if detail.nc.biz_status is not NcBizStatus.FREE or not detail.vms:
            continue
        plan = plan_evacuation(
            detail.nc, detail.vms, fleet.list_ncs(cluster_id=nc.cluster_id), live=True, rate=80, parallel=4
        )
        if plan.live and plan.cold and not plan.unplaceable:
            candidates.append((-len(plan.cold), -len(plan.live), nc.nc_ip))
    return min(candidates)[2] if candidates else "<nc_ip>"


def deep_offline_example(config: DevStackConfig, nc_ip: str) -> list[str]:
    """``temporal`` commands: 0x400003 on ``nc_ip``, its progress, its approval, its result."""
    temporal = "temporal" if shutil.which("temporal") else _shown(Path(processes.find_binary("temporal")))
    address = "" if config.temporal_port == 7233 else f" --address {config.temporal_address}"
    workflow_id = f"0x400003-{nc_ip}"
    payload = json.dumps({"nc_ip": nc_ip, **NC_DEEP_OFFLINE_EXAMPLE_INPUT})
    approve = json.dumps({"approver": "approver1", "comment": "DIMM replacement scheduled"})
    return [
        f"{temporal} workflow start{address} --type NcDeepOffline --task-queue {config.task_queue} "
        f"--workflow-id {workflow_id} --static-summary {shlex.quote(f'0x400003 deep offline {nc_ip}')} "
        f"--input {shlex.quote(payload)}",
        f"{temporal} workflow query{address} --workflow-id {workflow_id} --name status",
        f"{temporal} workflow signal{address} --workflow-id {workflow_id} --name approve --input {shlex.quote(approve)}",
        f"{temporal} workflow result{address} --workflow-id {workflow_id}",
    ]


def _embedded_postgres_running(data_dir: Path) -> bool:
    """Whether the embedded server under ``data_dir/pg`` (store/embedded.py's layout) is up already."""
    pid_file = data_dir / "pg" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # a stale file from a crash
    except PermissionError:
        return True  # alive, owned by the server's own user
    return True


async def run(config: DevStackConfig) -> int:
    """Starts the stack, waits for a signal or a dead child, stops the stack; returns the exit code."""
    stack = DevStack(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            say(f"\n{sig.name} received: stopping")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        starting = asyncio.create_task(stack.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            return 0
        failure = starting.exception()
        if failure is not None:
            if isinstance(failure, ProcessNotReady | DevStackError):
                complain(f"failed to start: {failure}")
            else:
                complain("failed to start:")
                traceback.print_exception(failure)
            return 1
        dead = await stack.watch(stop)
        if dead is not None:
            complain(
                f"{dead.name} (pid {dead.pid}) exited unexpectedly with code {dead.returncode}; "
                f"last lines of {_shown(dead.log_path)}:\n{dead.log_tail(15)}"
            )
            complain("stopping the rest")
            return 1
        return 0
    finally:
        # Blocking on purpose: a second Ctrl-C only sets the event again instead of cutting this short,
        # and every stop has its own timeout.
        stack.stop_all()
        say("dev stack stopped")


def main() -> None:
    # Only warnings from libraries (the store's, the SDK's): the components' logs are in their files.
    configure_logging("WARNING", json=False)
    try:
        config = DevStackConfig.from_env()
        check_ports(config)
    except DevStackError as problem:
        complain(f"cannot start the dev stack: {problem}")
        sys.exit(1)
    sys.exit(asyncio.run(run(config)))


if __name__ == "__main__":
    main()
