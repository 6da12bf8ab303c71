"""``python -m deploy.devstack`` (``make run``) as an operator runs it: up, answering, and gone after Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from deploy import processes
from deploy.devstack import READY_LINE
from store.embedded import stop_embedded_postgres

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_SECONDS = 60.0
STOP_SECONDS = 30.0
PID_LINE = re.compile(r"^\s+(?P<name>\S+)\s+ready in .*\(pid (?P<pid>\d+)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _start_devstack(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.devstack",
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _collect(stream: asyncio.StreamReader, lines: list[str], ready: asyncio.Event) -> None:
    while raw := await stream.readline():
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        if line.startswith(READY_LINE):
            ready.set()


@pytest.mark.e2e
async def test_devstack_starts_everything_and_stops_it_all_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    ports = {
        "TEMPORAL_PORT": processes.free_port(),
        "TEMPORAL_UI_PORT": processes.free_port(),
        "HOUYI_SIM_PORT": processes.free_port(),
        "WORKER_METRICS_PORT": processes.free_port(),
        "OPSFLOW_INTAKE_PORT": processes.free_port(),
    }
    env = {
        **os.environ,
        "OPSFLOW_DATA_DIR": str(data_dir),
        **{name: str(port) for name, port in ports.items()},
    }
    embedded_postgres = not env.get("DATABASE_URL", "").strip()

    devstack = await _start_devstack(env)
    assert devstack.stdout is not None
    lines: list[str] = []
    ready = asyncio.Event()
    reader = asyncio.create_task(_collect(devstack.stdout, lines, ready))
    pids: dict[str, int] = {}
    try:
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({waiting, reader}, timeout=READY_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        output = "\n".join(lines)
        assert ready.is_set(), f"the dev stack did not print its ready line:\n{output}"
        for line in lines:
            if match := PID_LINE.match(line):
                pids[match["name"]] = int(match["pid"])
        assert set(pids) == {"temporal", "simulator", "worker", "intake"}, output

        assert await processes.http_ok(f"http://127.0.0.1:{ports['TEMPORAL_UI_PORT']}/")
        assert await processes.http_ok(f"http://127.0.0.1:{ports['HOUYI_SIM_PORT']}/admin/ncs")
        assert _alive(pids["worker"])
        assert await processes.http_ok(f"http://127.0.0.1:{ports['WORKER_METRICS_PORT']}/metrics")
        assert await processes.http_ok(f"http://127.0.0.1:{ports['OPSFLOW_INTAKE_PORT']}/readyz")
        # The printed example names a real free NC of the demo fleet, on this stack's gRPC port.
        assert "--type NcLock --task-queue ecs-ops --workflow-id 0x410A01-" in output
        assert f"--address 127.0.0.1:{ports['TEMPORAL_PORT']}" in output
        assert "<nc_ip>" not in output
        if embedded_postgres:
            assert (data_dir / "pg" / "postmaster.pid").exists()

        devstack.send_signal(signal.SIGINT)
        exit_code = await asyncio.wait_for(devstack.wait(), STOP_SECONDS)
        output = "\n".join(lines)
        assert exit_code == 0, output
        assert "dev stack stopped" in output
        for name, port in ports.items():
            assert not await processes.tcp_open("127.0.0.1", port), f"{name} {port} still open:\n{output}"
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} (pid {pid}) still runs"
        if embedded_postgres:
            assert not (data_dir / "pg" / "postmaster.pid").exists(), "the embedded PostgreSQL still runs"
    finally:
        if devstack.returncode is None:
            devstack.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(devstack.wait(), STOP_SECONDS)
            except TimeoutError:
                devstack.kill()
                await devstack.wait()
        # Only if the dev stack itself failed to: each child leads its own process group.
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if embedded_postgres:
            await asyncio.to_thread(stop_embedded_postgres, data_dir)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_devstack_refuses_a_busy_port_naming_the_variable(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        env = {
            **os.environ,
            "OPSFLOW_DATA_DIR": str(tmp_path / "var"),
            "TEMPORAL_PORT": str(processes.free_port()),
            "TEMPORAL_UI_PORT": str(processes.free_port()),
            "HOUYI_SIM_PORT": str(busy_port),
            "WORKER_METRICS_PORT": str(processes.free_port()),
            "OPSFLOW_INTAKE_PORT": str(processes.free_port()),
        }
        devstack = await _start_devstack(env)
        stdout, _ = await asyncio.wait_for(devstack.communicate(), 30)
    message = stdout.decode()
    assert devstack.returncode == 1, message
    assert f"port {busy_port} (Houyi simulator) is already in use" in message
    assert "HOUYI_SIM_PORT" in message
    assert not (tmp_path / "var").exists(), "nothing should start when a port is busy"
