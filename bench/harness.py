"""What every benchmark stands on: a dev server of its own (our search attributes registered) and a fresh
database on ``DATABASE_URL`` or the embedded server under var/bench."""

from __future__ import annotations

import os
import re
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deploy.processes import find_binary
from runtime import search_attributes
from store.db import url_with_database
from store.embedded import start_embedded_postgres
from store.repository import OperationStore

BENCH_DATA_DIR = Path("var/bench")


# The server's search-attribute cache, on as in every production server. `temporal server start-dev` turns it
# off unless told (so that an attribute just added is usable at once): every start, upsert and visibility
# write with a search attribute then reads the cluster metadata and the namespace from the database, 4 to 5
# reads per upsert on SQLite, a cost that falls on workflows with search attributes (ours) and not on the bare
# ones. The benchmarks register their attributes before the server serves, so the cache never misses them.
SEARCH_ATTRIBUTE_CACHE = ["--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=false"]


async def dev_server(metrics_port: int | None = None) -> WorkflowEnvironment:
    """With ``metrics_port``, the server serves its own Prometheus metrics there (``server_counters``)."""
    return await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=list(search_attributes.ALL),
        dev_server_log_level="error",
        dev_server_extra_args=SEARCH_ATTRIBUTE_CACHE
        + (["--metrics-port", str(metrics_port)] if metrics_port else []),
    )


# The Temporal server's own counters that say what work it did: persistence and visibility requests by
# operation, history tasks by type, RPCs served by operation, task-queue polls answered (sync match or from
# the backlog).
SERVER_COUNTERS = (
    "persistence_requests",
    "visibility_persistence_requests",
    "task_requests",
    "service_requests",
)
SERVER_COUNTER_PREFIXES = ("poll_success",)
_OPERATION = re.compile(r'operation="([^"]*)"')


async def server_counters(metrics_port: int) -> dict[str, float]:
    """The server's counters now, summed over their other labels, keyed ``name operation``."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{metrics_port}/metrics") as answer,
    ):
        text = await answer.text()
    counters: defaultdict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if name not in SERVER_COUNTERS and not name.startswith(SERVER_COUNTER_PREFIXES):
            continue
        operation = _OPERATION.search(series)
        counters[f"{name} {operation.group(1)}" if operation else name] += float(value)
    return dict(counters)


@dataclass(frozen=True)
class BenchDatabase:
    """A database of one run on ``server``; migrated by the first store that connects."""

    server: str
    name: str

    @property
    def url(self) -> str:
        return url_with_database(self.server, self.name)

    async def drop(self) -> None:
        admin = await OperationStore.connect(self.server)
        try:
            await admin.pool.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()


async def fresh_database(prefix: str = "bench") -> BenchDatabase:
    """A new, empty database for one run, on ``DATABASE_URL`` or the embedded server."""
    server = os.environ.get("DATABASE_URL") or start_embedded_postgres(BENCH_DATA_DIR)
    database = BenchDatabase(server, f"{prefix}_{uuid.uuid4().hex}")
    admin = await OperationStore.connect(server)
    try:
        await admin.pool.execute(f'CREATE DATABASE "{database.name}"')
    finally:
        await admin.close()
    return database


# ---- CPU by process (/proc): the benchmarks say where the time goes ------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds that groups of processes used between ``start`` and ``stop`` (a process gone by then
    counts up to its last sample; one started meanwhile counts from zero)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        sampled: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            sampled[name] = {}
            for pid in pids():
                try:
                    sampled[name][pid] = cpu_seconds(pid)
                except (OSError, IndexError, ValueError):
                    continue
        return sampled

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        return {
            name: sum(
                seconds - self._before.get(name, {}).get(pid, 0.0) for pid, seconds in after[name].items()
            )
            for name in self.groups
        }
