"""Worker crashes against the real dev server: one operation run end to end by a worker process on a fresh
demo fleet, optionally SIGKILLed once at a kill point and restarted, and everything it did, read back.

A run has its own simulator (the demo fleet, fresh), its own database (created on the session's PostgreSQL
as the ``database_url`` fixture does, dropped afterwards) and its own task queue; the dev server is the
session's. An uncrashed run is the **baseline**: its audit rows (and, for ``DiskRecycle``, which writes
none, its ``disk_recycles`` rows) are the step boundaries, its mutating ``houyi_calls`` (first call per
idempotency token, in the order they started) the calls to kill in. So the kill points follow the workflows
as they change, and a crashed run is compared with the baseline on everything that says what happened:
the workflow's result, the fleet's end state, the simulator's side-effect counters (fleet-wide and per
host), the number of times each mutating action acted, and the idempotency tokens used (none new).

Left out of the comparison, because two equally good runs differ there: ids, timestamps and durations; the
free text saying how a result was reached ("destroyed (answer replayed)", "recycled by <workflow>"); and
where the scheduler put each moved VM (it places by arrival order and load, which a held call or a crash
changes when lanes run in parallel): for the hosts VMs moved to, the sum of their VMs is compared, and VMs
moved in are counted fleet-wide. A baseline token missing from the crashed run's ``houyi_calls`` is not a
difference but is shown: the killed worker's call was applied and never recorded, because the retry found
its effect done and did not call again.

The k-th call of an action is held with two faults on the simulator's admin API, no new simulator option:
a 1 ms latency fault with ``count = k - 1`` takes the calls before it (a latency fault only slows a call),
then a latency fault with ``count = 1`` holds the k-th; its ``hits`` say when it is in flight.

A boundary kill holds the workflow too, so it cannot run past the boundary (to its end, say) between two
reads of the store: the Houyi call that followed the boundary in the baseline (read or mutating) is held in
the simulator, and the store write of the next boundary waits on an advisory lock the suite holds (a trigger
in the run's own database). The worker is killed as soon as the boundary's row is seen, usually before that
call has started; the waiting write, if any, then ends with its connection, uncommitted, as it would have
with the worker, and the lock is let go. After the last boundary nothing can be held: the store is read
once more when the workflow has ended, and a kill after the end is said so in the summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from deploy import processes
from houyi.wire import Action
from runtime import search_attributes as sa
from simulator.faults import FaultBook
from simulator.idempotency import TokenCache
from simulator.server import RunningSimulator, start_simulator
from store.repository import OperationStore
from store.seed import seed_dev_approvers, seed_dev_windows
from tests.fixtures.pg import fresh_database
from tests.helpers import SimulatorAdmin, eventually
from tests.readme_examples import examples
from tests.reliability_support import FULL
from workflows.lifecycle import ApprovalInput

SPEED = 1000.0  # simulated seconds per real second, as the e2e fixtures run the simulator
HOLD_SECONDS = 4.0  # how long the targeted call is held in the simulator: long enough to see it and kill
POLL_SECONDS = 0.03  # how often the store and the simulator are read while waiting for the kill point
READY_SECONDS = 180.0  # a worker process coming up on a loaded 2-core machine
RESULT_SECONDS = 420.0  # an operation to its end, recovery included (a dead worker's activity is retried
# only after its heartbeat timeout: up to 3 min for the power waits, workflows/nc_forced_reboot.py)
APPROVER = "approver1"

BOUNDARY = "boundary"
MIDCALL = "midcall"


@dataclass(frozen=True)
class Scenario:
    """One operation as the README's console examples start it on the demo fleet."""

    workflow: str
    id_prefix: str
    input: dict[str, Any]


def scenarios() -> dict[str, Scenario]:
    """Every workflow type's README example. ``DiskRecycle``'s is a dry run (nothing to crash in): the
    crash suite runs the real recycle, as the Schedule does (empty input)."""
    found: dict[str, Scenario] = {}
    for example in examples():
        raw = dict(example["input"])
        if example["type"] == "DiskRecycle":
            raw = {}
        found[example["type"]] = Scenario(example["type"], example["id"], raw)
    return found


@dataclass(frozen=True)
class KillPoint:
    """Where to SIGKILL the worker. ``boundary``: once boundary event ``index`` (0-based) is in the store;
    the call that followed it in the baseline, if any, is held meanwhile. ``midcall``: while mutating call
    ``index`` of the baseline is held in the simulator. The held call: ``action``, on ``vm_name`` if the
    call names a VM, the ``skip + 1``-th such call."""

    kind: str
    index: int
    of: int
    label: str
    action: str | None = None
    vm_name: str | None = None
    skip: int = 0

    def describe(self) -> str:
        return f"{self.kind} {self.index + 1}/{self.of} {self.label}"


@dataclass
class KillRecord:
    point: KillPoint
    seen: str = ""  # what the store or the simulator showed when the worker was killed
    worker_exit: int | None = None
    held_in_flight: bool | None = None  # midcall: the held call was still in flight after the kill
    seconds_to_end: float = 0.0  # from the kill to the operation's end


@dataclass
class RunRecord:
    """Everything one run did, normalised so that two runs of the same operation compare equal."""

    workflow_id: str
    end_state: dict[str, Any]
    fleet: dict[str, Any]
    totals: dict[str, int]
    touched: dict[str, dict[str, int]]
    executed: dict[str, int]
    tokens: list[str]
    boundaries: list[str]
    calls: list[tuple[str, str | None]]
    # Per boundary, the first Houyi call (read or mutating) that started after its row, as (action, vm_name,
    # skip): what a boundary kill holds. None: no call came after it.
    next_calls: list[tuple[str, str | None, int] | None] = field(default_factory=list)
    kill: KillRecord | None = None
    seconds: float = 0.0

    def compared(self, targets: set[str]) -> dict[str, Any]:
        """What must be the same in a crashed run as in the baseline. ``targets``: the hosts the scheduler
        moved VMs to in either run. It places by arrival order and load, which a held call or a crash
        changes when lanes run in parallel, so for them only the sum of their VMs is compared, and VMs
        moved in are counted fleet-wide (``migrations_in``, ``cold_migrations_in`` in the totals)."""
        per_host = self.fleet["VMs per host"]
        fleet = {
            **self.fleet,
            "VMs per host": {ip: n for ip, n in per_host.items() if ip not in targets},
            "VMs on the scheduler's target hosts": sum(n for ip, n in per_host.items() if ip in targets),
        }
        touched = {
            ip: {k: v for k, v in counters.items() if k not in _MOVED_IN}
            for ip, counters in self.touched.items()
        }
        return {
            "end state": self.end_state,
            "fleet": fleet,
            "side-effect counters": self.totals,
            "touched per host": {ip: counters for ip, counters in touched.items() if counters},
            "mutating actions executed": self.executed,
        }

    def scheduler_targets(self) -> set[str]:
        return {ip for ip, counters in self.touched.items() if any(counters.get(k) for k in _MOVED_IN)}

    def counters_line(self) -> str:
        effects = {name: n for name, n in self.totals.items() if n}
        return ", ".join(f"{name}={n}" for name, n in sorted(effects.items())) or "none"


_MOVED_IN = ("migrations_in", "cold_migrations_in")


def differences(baseline: RunRecord, crashed: RunRecord) -> list[str]:
    """Each compared item that differs, path by path (empty: the crash changed nothing)."""
    found = []
    new_tokens = sorted(set(crashed.tokens) - set(baseline.tokens))
    if new_tokens:
        found.append(f"idempotency tokens the baseline never used: {new_tokens}")
    targets = baseline.scheduler_targets() | crashed.scheduler_targets()
    expected, got = baseline.compared(targets), crashed.compared(targets)
    for name, value in expected.items():
        paths = _paths(value, got[name], "")
        if paths:
            shown = paths[:MAX_PATHS_SHOWN] + (
                [f"... {len(paths) - MAX_PATHS_SHOWN} more"] if len(paths) > MAX_PATHS_SHOWN else []
            )
            found.append(f"{name} (baseline -> crashed): " + "; ".join(shown))
    return found


MAX_PATHS_SHOWN = 8


def _paths(expected: Any, got: Any, path: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(got, dict):
        return [
            line
            for key in sorted(set(expected) | set(got), key=str)
            for line in _paths(expected.get(key, "<absent>"), got.get(key, "<absent>"), f"{path}.{key}")
        ]
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) == len(got):
            return [
                line
                for i, (a, b) in enumerate(zip(expected, got, strict=True))
                for line in _paths(a, b, f"{path}[{i}]")
            ]
        gone = [x for x in expected if x not in got]
        new = [x for x in got if x not in expected]
        return [
            f"{path or '.'}: {len(expected)} -> {len(got)} items, only in baseline {gone!r}, only crashed {new!r}"
        ]
    return [] if expected == got else [f"{path or '.'}: {expected!r} -> {got!r}"]


def unrecorded_tokens(baseline: RunRecord, crashed: RunRecord) -> list[str]:
    """Tokens of the baseline missing from the crashed run's ``houyi_calls``: a call the killed worker made
    (and Houyi applied) that no worker recorded, because the retry found its effect done and did not call."""
    return sorted(set(baseline.tokens) - set(crashed.tokens))


def boundary_points(baseline: RunRecord) -> list[KillPoint]:
    count = len(baseline.boundaries)
    points = []
    for i, (label, held) in enumerate(zip(baseline.boundaries, baseline.next_calls, strict=True)):
        action, vm_name, skip = held if held is not None else (None, None, 0)
        points.append(KillPoint(BOUNDARY, i, count, f"after {label!r}", action, vm_name, skip))
    return points


def midcall_points(baseline: RunRecord) -> list[KillPoint]:
    points = []
    seen: Counter[tuple[str, str | None]] = Counter()
    count = len(baseline.calls)
    for i, (action, vm_name) in enumerate(baseline.calls):
        target = f"{action}" + (f" {vm_name}" if vm_name else "")
        points.append(
            KillPoint(
                MIDCALL,
                i,
                count,
                f"in {target}",
                action=action,
                vm_name=vm_name,
                skip=seen[(action, vm_name)],
            )
        )
        seen[(action, vm_name)] += 1
    return points


# ---- one run ---------------------------------------------------------------------------------------------


@dataclass
class CrashLab:
    """What every run shares: the dev server, the session's PostgreSQL, a log directory, a bound on how many
    runs go at once (each is mostly waiting on the server's timeouts, not on the CPU)."""

    client: Client
    address: str
    postgres_url: str
    log_root: Path
    slots: asyncio.Semaphore
    scenarios: dict[str, Scenario] = field(default_factory=scenarios)
    _baselines: dict[str, asyncio.Task[RunRecord]] = field(default_factory=dict)

    def baseline(self, workflow: str) -> asyncio.Task[RunRecord]:
        """The uncrashed run of ``workflow``, run once and shared by every case of that workflow."""
        if workflow not in self._baselines:
            self._baselines[workflow] = asyncio.create_task(self.run(workflow, None))
        return self._baselines[workflow]

    async def close(self) -> None:
        for task in self._baselines.values():
            task.cancel()
        await asyncio.gather(*self._baselines.values(), return_exceptions=True)

    async def run(
        self, workflow: str, kill: KillPoint | None, *, forget_tokens_after_kill: bool = False
    ) -> RunRecord:
        async with self.slots:
            return await _run(self, self.scenarios[workflow], kill, forget_tokens_after_kill)


async def _run(lab: CrashLab, scenario: Scenario, kill: KillPoint | None, forget_tokens: bool) -> RunRecord:
    started = time.monotonic()
    tag = "baseline" if kill is None else f"{kill.kind}{kill.index + 1}"
    workflow_id = f"{scenario.id_prefix}-{tag}-{uuid.uuid4().hex[:8]}"
    log_dir = lab.log_root / workflow_id
    simulator = await start_simulator(speed=SPEED, residue_rate=0.0)
    workers: list[processes.ManagedProcess] = []
    try:
        async with fresh_database(lab.postgres_url) as database_url:
            store = await OperationStore.connect(database_url)
            try:
                await seed_dev_approvers(store)
                await seed_dev_windows(store, sorted(simulator.fleet.clusters))
            finally:
                await store.close()
            env = {
                **processes.worker_env(
                    temporal_address=lab.address,
                    database_url=database_url,
                    houyi_url=simulator.url,
                    metrics_port=0,
                    task_queue=f"crash-{uuid.uuid4()}",
                    simulator_speed=SPEED,
                ),
                # One dev server for every run: leave the namespace's disk-recycle Schedule alone.
                "OPSFLOW_RECYCLE_SCHEDULE": "off",
            }
            conn = await asyncpg.connect(database_url)
            try:
                workers.append(processes.worker(env, log_dir=log_dir, name="worker-1").start())
                await workers[0].wait_ready(timeout=READY_SECONDS)
                record = await _drive(
                    lab, scenario, kill, forget_tokens, workflow_id, env, log_dir, simulator, conn, workers
                )
            finally:
                for worker in workers:
                    worker.kill()
                await conn.close()
    finally:
        await simulator.stop()
    record.seconds = time.monotonic() - started
    return record


async def _drive(
    lab: CrashLab,
    scenario: Scenario,
    kill: KillPoint | None,
    forget_tokens: bool,
    workflow_id: str,
    env: dict[str, str],
    log_dir: Path,
    simulator: RunningSimulator,
    conn: asyncpg.Connection,
    workers: list[processes.ManagedProcess],
) -> RunRecord:
    admin = SimulatorAdmin(simulator.url)
    hold_fault: int | None = None
    if kill is not None and kill.action is not None:
        hold_fault = await _hold_the_call(admin, kill)
    write_hold: int | None = None
    if kill is not None and kill.kind == BOUNDARY and kill.index + 1 < kill.of:
        write_hold = await _hold_the_next_boundary(conn, workflow_id, kill.index)
    handle = await lab.client.start_workflow(
        scenario.workflow, scenario.input, id=workflow_id, task_queue=env["OPSFLOW_TASK_QUEUE"]
    )
    result_task: asyncio.Task[dict[str, Any]] = asyncio.create_task(_end_state(handle.result()))
    record_kill = KillRecord(kill) if kill is not None else None
    killed_at: float | None = None
    approved = False
    deadline = time.monotonic() + RESULT_SECONDS
    try:
        while True:
            # Whether it had ended before the store was read: then that read saw every row it wrote.
            ended = result_task.done()
            events = await _boundaries(conn, workflow_id)
            if kill is not None and record_kill is not None and killed_at is None:
                seen = await _kill_point_reached(kill, events, simulator, hold_fault, conn, write_hold)
                if seen is not None:
                    after_end = result_task.done()
                    record_kill.worker_exit = workers[-1].kill()
                    killed_at = time.monotonic()
                    record_kill.seen = seen + (" (the workflow had already ended)" if after_end else "")
                    if write_hold is not None:
                        await _release_the_next_boundary(conn, write_hold, record_kill)
                    if kill.kind == MIDCALL:
                        inflight = simulator.state.current.inflight
                        record_kill.held_in_flight = inflight.get(kill.action or "", 0) >= 1
                        if forget_tokens:
                            await _forget_tokens_once_answered(simulator, kill)
                    workers.append(processes.worker(env, log_dir=log_dir, name="worker-2").start())
                    await workers[-1].wait_ready(timeout=READY_SECONDS)
            # Approve as a person would: once the server shows it pending (committed), not when its audit row
            # appears (a local activity writes that row before the workflow task that reached the gate is done).
            if not approved and "approval_requested" in events and await _shown_pending(handle):
                await handle.signal("approve", ApprovalInput(approver=APPROVER, comment="crash suite"))
                approved = True
            if ended:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{workflow_id} did not end within {RESULT_SECONDS:g} s"
                    f" (kill point {kill.describe() if kill else 'none'}, killed: {killed_at is not None});"
                    f" boundaries so far {events}; last worker's log:\n" + workers[-1].log_tail()
                )
            await asyncio.wait({result_task}, timeout=POLL_SECONDS)
        end_state = result_task.result()
    finally:
        if not result_task.done():
            result_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await result_task
    if kill is not None:
        assert record_kill is not None and killed_at is not None, (
            f"{workflow_id} ended before its kill point {kill.describe()} was reached"
        )
        record_kill.seconds_to_end = time.monotonic() - killed_at
    await _quiet(simulator)
    record = await _read_back(workflow_id, end_state, simulator, conn)
    record.kill = record_kill
    return record


async def _hold_the_call(admin: SimulatorAdmin, kill: KillPoint) -> int:
    """Faults that let the first ``skip`` matching calls through (1 ms late) and hold the next one."""
    target: dict[str, Any] = {"action": kill.action, "kind": "latency"}
    if kill.vm_name:
        target["vm_name"] = kill.vm_name
    if kill.skip:
        await admin.inject(**target, latency_seconds=0.001, count=kill.skip)
    added = await admin.inject(**target, latency_seconds=HOLD_SECONDS, count=1)
    hold: int = added["faults"][0]["fault_id"]
    return hold


async def _hold_the_next_boundary(conn: asyncpg.Connection, workflow_id: str, index: int) -> int:
    """Makes the store write of the boundary after ``index`` (0-based) wait on an advisory lock that ``conn``
    holds: a trigger on the boundary tables, in this run's own database. Returns the lock's key."""
    key = uuid.uuid4().int % 2**31  # below 2**31: pg_locks shows it whole in objid
    literal = workflow_id.replace("'", "''")
    await conn.execute(
        f"""
        CREATE FUNCTION crash_suite_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.workflow_id = '{literal}'
               AND (SELECT count(*) FROM audit_log WHERE workflow_id = NEW.workflow_id)
                   + (SELECT count(*) FROM disk_recycles WHERE workflow_id = NEW.workflow_id) = {index + 1}
            THEN
                PERFORM pg_advisory_xact_lock_shared({key});
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER crash_suite_hold BEFORE INSERT ON audit_log
            FOR EACH ROW EXECUTE FUNCTION crash_suite_hold();
        CREATE TRIGGER crash_suite_hold BEFORE INSERT ON disk_recycles
            FOR EACH ROW EXECUTE FUNCTION crash_suite_hold();
        """
    )
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    return key


_WAITING_ON = (
    "FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid = $1::bigint::oid"
)


async def _writers_held(conn: asyncpg.Connection, key: int) -> bool:
    return bool(await conn.fetchval(f"SELECT count(*) {_WAITING_ON}", key))


async def _release_the_next_boundary(conn: asyncpg.Connection, key: int, record: KillRecord) -> None:
    """After the kill: the killed worker's write waiting on the hold is ended with its connection (as the
    worker's death would have ended it, uncommitted), then the hold is let go for the next worker."""
    ended = await conn.fetchval(
        f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) {_WAITING_ON}", key
    )
    await conn.execute("SELECT pg_advisory_unlock($1)", key)
    if ended:
        record.seen += f"; its write of the next boundary, held, ended with its connection ({ended})"


async def _kill_point_reached(
    kill: KillPoint,
    events: list[str],
    simulator: RunningSimulator,
    hold_fault: int | None,
    conn: asyncpg.Connection,
    write_hold: int | None,
) -> str | None:
    """What shows the kill point is reached (None: not yet)."""
    if kill.kind == BOUNDARY:
        if len(events) <= kill.index:
            if write_hold is not None and await _writers_held(conn, write_hold):
                # Its row went into one statement with the next boundary's, which waits on the hold.
                return f"boundary row {kill.index + 1} written with the next one, which is held"
            return None
        seen = f"boundary row {kill.index + 1} {events[kill.index]!r} in the store"
        if kill.action is None:
            return seen + ", no call after it to hold"
        held = "held in flight" if _held(simulator, hold_fault) else "not started"
        return seen + f", next call {kill.action} {held}"
    if _held(simulator, hold_fault):
        return f"{kill.action} held in the simulator (fault {hold_fault} hit)"
    return None


def _held(simulator: RunningSimulator, hold_fault: int | None) -> bool:
    book: FaultBook = simulator.state.faults
    return any(fault.fault_id == hold_fault and fault.hits >= 1 for fault in book.all())


async def _forget_tokens_once_answered(simulator: RunningSimulator, kill: KillPoint) -> None:
    """The control run: a Houyi without idempotency. Once the held call has acted, the remembered answers
    are dropped, so the retry of the killed activity acts a second time."""

    async def answered() -> None:
        assert simulator.state.current.inflight.get(kill.action or "", 0) == 0, "still held"

    await eventually(answered, within=HOLD_SECONDS * 10, interval=0.05)
    simulator.state.current.tokens = TokenCache()


async def _end_state(result: Any) -> dict[str, Any]:
    try:
        value = await result
    except WorkflowFailureError as failure:
        cause = failure.cause
        return {
            "failed": cause.type if isinstance(cause, ApplicationError) else type(cause).__name__,
            "message": str(cause),
        }
    return dict(value) if isinstance(value, dict) else {"result": value}


async def _boundaries(conn: asyncpg.Connection, workflow_id: str) -> list[str]:
    return [label for label, _ in await _timed_boundaries(conn, workflow_id)]


async def _timed_boundaries(conn: asyncpg.Connection, workflow_id: str) -> list[tuple[str, datetime]]:
    audit = await conn.fetch(
        "SELECT action, at FROM audit_log WHERE workflow_id = $1 ORDER BY id", workflow_id
    )
    recycles = await conn.fetch(
        "SELECT outcome, task_id, at FROM disk_recycles WHERE workflow_id = $1 ORDER BY at, task_id",
        workflow_id,
    )
    return [(row["action"], row["at"]) for row in audit] + [
        (f"{row['outcome']} {row['task_id']}", row["at"]) for row in recycles
    ]


def _next_calls(
    boundaries: list[tuple[str, datetime]], calls: list[tuple[str, str | None, datetime]]
) -> list[tuple[str, str | None, int] | None]:
    """Per boundary, the first call started after its row, with how many calls a fault on it would meet
    first: those of its action (on its VM, if it names one) started before it."""
    found: list[tuple[str, str | None, int] | None] = []
    for _, at in boundaries:
        following = next((i for i, call in enumerate(calls) if call[2] > at), None)
        if following is None:
            found.append(None)
            continue
        action, vm_name, _ = calls[following]
        skip = sum(1 for a, v, _ in calls[:following] if a == action and (vm_name is None or v == vm_name))
        found.append((action, vm_name, skip))
    return found


async def _quiet(simulator: RunningSimulator) -> None:
    """No mutating call still in flight (a call held past its killed worker acts when its hold ends)."""

    async def nothing_in_flight() -> None:
        inflight = {a: n for a, n in simulator.state.current.inflight.items() if n and Action(a).mutating}
        assert not inflight, inflight

    await eventually(nothing_in_flight, within=HOLD_SECONDS * 10, interval=0.05)


# ---- reading a run back ----------------------------------------------------------------------------------

# What differs between any two runs: ids, timestamps, durations; and the free text saying how a result was
# reached ("destroyed (answer replayed)", "recycled by <workflow>", a process's last-seen pid and state),
# which legitimately tells a retry from a first call. Outcomes, states and verdicts are compared.
_DROPPED_KEYS = frozenset(
    {"operation_id", "workflow_id", "finished_at", "finished_before", "elapsed_seconds", "migration_id"}
    | {"message", "reason", "pid", "process_state"}
)
# Where the scheduler put each moved VM: it places by arrival order, which a crash changes when lanes run
# in parallel (two VMs of one size swap hosts). The VMs per host, and every counter per host, are compared.
_PLACEMENT_KEYS = frozenset({"nc_id", "target_nc_id"})


def _normalised(value: Any, workflow_id: str, key: str = "") -> Any:
    """The result without what differs between any two equally good runs (above)."""
    if isinstance(value, dict):
        dropped = _DROPPED_KEYS | (_PLACEMENT_KEYS if key == "vms" else frozenset())
        return {
            k: _normalised(v, workflow_id, k)
            for k, v in value.items()
            if k not in dropped and not k.endswith("_at")
        }
    if isinstance(value, list):
        return [_normalised(v, workflow_id, key) for v in value]
    if isinstance(value, str):
        return value.replace(workflow_id, "<workflow>")
    return value


async def _read_back(
    workflow_id: str, end_state: dict[str, Any], simulator: RunningSimulator, conn: asyncpg.Connection
) -> RunRecord:
    fleet = simulator.fleet
    summaries = fleet.admin_nc_summaries()
    details = {nc["nc_ip"]: fleet.admin_nc_detail(nc["nc_id"]) for nc in summaries}
    ip_of = {nc["nc_id"]: nc["nc_ip"] for nc in summaries}
    counters = simulator.state.counters_json()
    calls = await conn.fetch("SELECT at, action, token, params FROM houyi_calls ORDER BY at, id")
    first_calls: list[tuple[str, str | None]] = []
    every_call: list[tuple[str, str | None, datetime]] = []
    tokens: set[str] = set()
    for row in calls:
        params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
        every_call.append((row["action"], params.get("vm_name"), row["at"]))
        if not Action(row["action"]).mutating or row["token"] in tokens:
            continue
        tokens.add(row["token"])
        first_calls.append((row["action"], params.get("vm_name")))
    boundaries = await _timed_boundaries(conn, workflow_id)
    return RunRecord(
        workflow_id=workflow_id,
        end_state=_normalised(end_state, workflow_id),
        fleet={
            "hosts": {nc["nc_ip"]: (nc["biz_status"], nc["power_state"]) for nc in summaries},
            "VM status": {vm_id: vm.status.value for vm_id, vm in sorted(fleet.vms.items())},
            "VMs per host": dict(sorted(Counter(ip_of[vm.nc_id] for vm in fleet.vms.values()).items())),
            "residues": {
                ip: sorted((r["vm_id"], r["state"]) for r in d["residues"])
                for ip, d in details.items()
                if d["residues"]
            },
            "disk migrations": sorted(
                (m["task_id"], m["disk_id"], m["state"], bool(m["src_recycled"]))
                for m in fleet.admin_disk_migrations()
            ),
            "RI reservations held": len(fleet.active_reservations()),
        },
        totals=dict(counters["fleet"]),
        touched={
            ip: {k: v for k, v in d["counters"].items() if v}
            for ip, d in details.items()
            if any(d["counters"].values())
        },
        executed={a: n for a, n in sorted(counters["executed"].items()) if Action(a).mutating},
        tokens=sorted(t.replace(workflow_id, "<workflow>") for t in tokens),
        boundaries=[label for label, _ in boundaries],
        calls=first_calls,
        next_calls=_next_calls(boundaries, every_call),
    )


def worker_exit_signal(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else f"exit {code}"


# Runs at once: 6 for the reduced matrix, 10 for the full one (measured on 2 shared cores: the runs mostly
# wait on the server's timeouts); OPSFLOW_CRASH_CONCURRENCY overrides.
CONCURRENCY = int(os.environ.get("OPSFLOW_CRASH_CONCURRENCY", "10" if FULL else "6"))


async def _shown_pending(handle: Any) -> bool:
    description = await handle.describe()
    return bool(description.typed_search_attributes.get(sa.OPS_STATE) == "PendingApproval")
