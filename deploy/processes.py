"""Child processes for the dev stack and the end-to-end tests: start, wait until ready, stop.

Every child runs in its own process group (``start_new_session=True``) so that a Ctrl-C in the
terminal reaches only the parent, which then stops its children in order, and so that stopping a
child also stops anything the child started. Output goes to a log file, never to the parent's
terminal; readiness errors quote the tail of that log.

The component builders (``temporal_dev_server``, ``houyi_simulator``, ``worker``) return processes
that are not started yet and carry their own readiness check: ``proc.start()`` then
``await proc.wait_ready()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import aiohttp
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from runtime import search_attributes
from runtime.config import DEFAULT_TASK_QUEUE

REPO_ROOT = Path(__file__).resolve().parents[1]

ReadinessCheck = Callable[[], Awaitable[bool] | bool]
"""Answers whether a process is ready; may be sync or async. Raising counts as "not yet"."""

_POLL_INTERVAL_SECONDS = 0.2
# The waits below take ``timeout`` arguments (ruff ASYNC109) rather than leaving it to the caller's
# ``asyncio.timeout``: on expiry they raise an error that says what was awaited and quotes the log.
_LOG_TAIL_LINES = 30


class ProcessNotReady(RuntimeError):
    """A process exited, or did not become ready in time; the message quotes its log tail."""

    def __init__(self, name: str, reason: str, log_path: Path, log_tail: str, exit_code: int | None) -> None:
        self.name = name
        self.exit_code = exit_code
        self.log_path = log_path
        self.log_tail = log_tail
        tail = log_tail.rstrip() or "(log is empty)"
        super().__init__(f"{name} {reason}; last lines of {log_path}:\n{tail}")


def find_binary(name: str) -> str:
    """A program installed in this Python's environment (the venv's bin/) first, then on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} is not installed in {beside_python.parent} nor on PATH: run `make venv`"
        )
    return found


class ManagedProcess:
    """One child process: its command, environment, log file and readiness check."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = REPO_ROOT,
        ready_check: ReadinessCheck | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env_overrides = dict(env or {})
        self.cwd = cwd
        self.ready_check = ready_check
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        # The log is appended to across runs; the tail quoted in errors starts at this run's header.
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, running={self.running})"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def start(self) -> ManagedProcess:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started (pid {self._popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        self._log_offset = log_file.tell()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log_file.write(f"=== {stamp} start: {' '.join(self.command)}\n".encode())
        log_file.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env_overrides}
        try:
            self._popen = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            log_file.close()
            raise
        self._log_file = log_file
        return self

    async def wait_ready(self, check: ReadinessCheck | None = None, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Polls ``check`` (default: the process's own) until it answers true.

        Raises ``ProcessNotReady`` as soon as the process exits, or when ``timeout`` seconds pass.
        """
        check = check or self.ready_check
        if check is None:
            raise ValueError(f"{self.name} has no readiness check")
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = time.monotonic() + timeout
        last_problem = ""
        while True:
            if not self.running:
                raise self._not_ready(f"exited with code {self.returncode} before it was ready")
            try:
                if await _call_check(check):
                    return
            except Exception as problem:  # a check that raises just means "not ready yet"
                last_problem = f"{type(problem).__name__}: {problem}"
            if time.monotonic() >= deadline:
                detail = f" (last check: {last_problem})" if last_problem else ""
                raise self._not_ready(f"was not ready within {timeout:g} s{detail}")
            await asyncio.sleep(_POLL_INTERVAL_SECONDS)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the process group; SIGKILL if it has not exited after ``timeout`` seconds.

        Returns the exit code (None if never started). Blocks; from async code, consider
        ``await asyncio.to_thread(proc.terminate, timeout)``.
        """
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait()
        self._kill_leftovers()
        self._close_log()
        return self._popen.returncode

    def kill(self) -> int | None:
        """SIGKILL to the process group, no grace: what a crash looks like to everything else."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal_group(signal.SIGKILL)
            self._popen.wait()
        self._kill_leftovers()
        self._close_log()
        return self._popen.returncode

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines this run wrote to its log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        # The process leads its own group (start_new_session), so its pid is the group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)

    def _kill_leftovers(self) -> None:
        """Children the leader left behind in its group would otherwise keep ports and files open."""
        self._signal_group(signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _not_ready(self, reason: str) -> ProcessNotReady:
        return ProcessNotReady(self.name, reason, self.log_path, self.log_tail(), self.returncode)


async def _call_check(check: ReadinessCheck) -> bool:
    answer = check()
    if inspect.isawaitable(answer):
        answer = await answer
    return bool(answer)


# --- readiness checks and waits --------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a server could listen on ``port``.

    Binds the wildcard address so that a listener on any local address counts as a clash, and sets
    SO_REUSEADDR like servers do, so that connections still in TIME_WAIT do not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


async def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:  # noqa: ASYNC109
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_ok(url: str, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
    """Whether ``GET url`` answers 200."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_until(check: ReadinessCheck, timeout: float, what: str) -> None:  # noqa: ASYNC109
    """Polls ``check`` until it answers true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await _call_check(check):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g} s")
        await asyncio.sleep(_POLL_INTERVAL_SECONDS)


async def wait_for_tcp(host: str, port: int, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    await wait_until(lambda: tcp_open(host, port), timeout, f"TCP {host}:{port}")


async def wait_for_http(url: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    await wait_until(lambda: http_ok(url), timeout, f"HTTP 200 from {url}")


# --- Temporal ---------------------------------------------------------------------------------------


class _TemporalReady:
    """The dev server is ready once gRPC and the UI answer and our search attributes are registered."""

    def __init__(self, port: int, ui_port: int, namespace: str) -> None:
        self.address = f"127.0.0.1:{port}"
        self.ui_url = f"http://127.0.0.1:{ui_port}/"
        self.namespace = namespace
        self._client: Client | None = None

    async def __call__(self) -> bool:
        host, port = self.address.rsplit(":", 1)
        if not await tcp_open(host, int(port)) or not await http_ok(self.ui_url):
            return False
        if self._client is None:
            self._client = await Client.connect(self.address, namespace=self.namespace)
        # Fails while the server is still creating the namespace; wait_ready retries.
        # `start-dev --search-attribute` registers them only when it creates its SQLite file: an existing
        # var/temporal.db from older code would lack newer ones.
        await search_attributes.ensure_registered(self._client, self.namespace)
        return True


def temporal_dev_server(
    data_dir: Path,
    port: int,
    ui_port: int,
    namespace: str = "default",
    *,
    log_dir: Path | None = None,
) -> ManagedProcess:
    """``temporal server start-dev`` on 127.0.0.1 with its state in ``data_dir/temporal.db``, so
    workflows survive a restart. Ready: gRPC on ``port``, the UI on ``ui_port``, search attributes."""
    data_dir = data_dir.resolve()
    command = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--db-filename",
        str(data_dir / "temporal.db"),
        "--namespace",
        namespace,
        "--log-level",
        "warn",
        *search_attributes.cli_flags(),
    ]
    return ManagedProcess(
        "temporal",
        command,
        log_path=(log_dir or data_dir / "logs") / "temporal.log",
        ready_check=_TemporalReady(port, ui_port, namespace),
    )


# --- Houyi simulator --------------------------------------------------------------------------------


def houyi_simulator(
    port: int,
    speed: float,
    fleet: Path | None = None,
    *,
    log_dir: Path,
    seed: int | None = None,
    host: str = "127.0.0.1",
) -> ManagedProcess:
    """``python -m simulator``; without ``fleet`` it serves its built-in demo fleet. Ready: ``/healthz``."""
    command = [
        sys.executable,
        "-m",
        "simulator",
        "--host",
        host,
        "--port",
        str(port),
        "--speed",
        f"{speed:g}",
    ]
    if fleet is not None:
        command += ["--fleet", str(fleet.resolve())]
    if seed is not None:
        command += ["--seed", str(seed)]
    health_url = f"http://{host}:{port}/healthz"
    return ManagedProcess(
        "simulator",
        command,
        log_path=log_dir / "simulator.log",
        ready_check=lambda: http_ok(health_url),
    )


# --- intake -----------------------------------------------------------------------------------------

DEV_TOKENS_FILE = REPO_ROOT / "deploy" / "dev" / "tokens.json"


def intake(
    env: Mapping[str, str], port: int, *, log_dir: Path, tokens_file: Path = DEV_TOKENS_FILE
) -> ManagedProcess:
    """``python -m starter`` (the intake) with the worker's environment; ready: ``/readyz`` answers 200."""
    return ManagedProcess(
        "intake",
        [sys.executable, "-m", "starter"],
        log_path=log_dir / "intake.log",
        env={
            **env,
            "OPSFLOW_INTAKE_HOST": "127.0.0.1",
            "OPSFLOW_INTAKE_PORT": str(port),
            "OPSFLOW_TOKENS_FILE": str(tokens_file),
        },
        ready_check=lambda: http_ok(f"http://127.0.0.1:{port}/readyz"),
    )


# --- worker -----------------------------------------------------------------------------------------


def worker_env(
    *,
    temporal_address: str,
    database_url: str,
    houyi_url: str,
    metrics_port: int,
    task_queue: str = DEFAULT_TASK_QUEUE,
    namespace: str = "default",
    power_poll_seconds: float = 1.0,
    simulator_speed: float | None = None,
) -> dict[str, str]:
    """The environment ``worker.py`` reads (runtime/config.py); ``metrics_port=0`` disables metrics."""
    return {
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_NAMESPACE": namespace,
        "DATABASE_URL": database_url,
        "HOUYI_URL": houyi_url,
        "WORKER_METRICS_PORT": str(metrics_port),
        "OPSFLOW_TASK_QUEUE": task_queue,
        # The simulator settles OOB power in seconds; the product's 60 s poll would only slow the demo.
        "OPSFLOW_POWER_POLL_SECONDS": f"{power_poll_seconds:g}",
        # Against the simulator at speed N, real waits modelling Houyi's (migration deadlines, throttle
        # back-off) shrink N times, and migrations are polled often enough to see them end.
        **(
            {
                "OPSFLOW_TIME_SCALE": f"{1 / simulator_speed:g}",
                "OPSFLOW_MIGRATION_POLL_SECONDS": f"{min(5.0, max(50 / simulator_speed, 0.05)):g}",
                "OPSFLOW_DISK_POLL_SECONDS": f"{min(5.0, max(50 / simulator_speed, 0.05)):g}",
                "OPSFLOW_DISK_SLOT_RETRY_SECONDS": f"{min(30.0, max(300 / simulator_speed, 0.5)):g}",
            }
            if simulator_speed
            else {}
        ),
    }


_WORKER_REQUIRED_ENV = ("TEMPORAL_ADDRESS", "DATABASE_URL", "HOUYI_URL")


class _WorkerPolling:
    """The worker is ready once Temporal lists it among the workflow pollers of its task queue.

    The SDK's default identity is ``<pid>@<hostname>``, so matching the pid ignores pollers of
    other workers, including a crashed one the server still remembers.
    """

    def __init__(self, process: ManagedProcess, address: str, namespace: str, task_queue: str) -> None:
        self.process = process
        self.address = address
        self.namespace = namespace
        self.task_queue = task_queue
        self._client: Client | None = None

    async def __call__(self) -> bool:
        if self._client is None:
            self._client = await Client.connect(self.address, namespace=self.namespace)
        response = await self._client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.namespace,
                task_queue=TaskQueue(name=self.task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        prefix = f"{self.process.pid}@"
        return any(poller.identity.startswith(prefix) for poller in response.pollers)


def worker(
    env: Mapping[str, str],
    *,
    log_dir: Path,
    poll_address: str | None = None,
    root: Path = REPO_ROOT,
    name: str = "worker",
) -> ManagedProcess:
    """``python worker.py`` with ``env`` (see ``worker_env``) on top of this process's environment.

    Ready: the worker polls its task queue, as seen at ``poll_address`` (default: the worker's own
    ``TEMPORAL_ADDRESS``; a test whose worker goes through a TLS front names the server behind it).
    ``root``: the source tree to run (an upgrade test runs an older release's tree beside this one).
    """
    missing = [name for name in _WORKER_REQUIRED_ENV if not env.get(name)]
    if missing:
        raise ValueError(f"worker environment lacks {', '.join(missing)}")
    process = ManagedProcess(
        name,
        [sys.executable, str(root / "worker.py")],
        log_path=log_dir / f"{name}.log",
        # The tree's own packages first: the installed (editable) ones are this checkout's.
        env={**env, "PYTHONPATH": str(root)} if root != REPO_ROOT else env,
        cwd=root,
    )
    process.ready_check = _WorkerPolling(
        process,
        poll_address or env["TEMPORAL_ADDRESS"],
        env.get("TEMPORAL_NAMESPACE") or "default",
        env.get("OPSFLOW_TASK_QUEUE") or DEFAULT_TASK_QUEUE,
    )
    return process
