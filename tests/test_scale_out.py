"""Scale-out end to end: three worker processes on one dev server, one PostgreSQL database and one simulator
of 60 hosts in four clusters over two regions; 300 operations, 5 per host one after another (lock, unlock,
lock, unlock, forced reboot); one worker SIGKILLed once a third have finished.

Every operation ends exactly once with the state it must: the operations table holds exactly 300 rows, all
final; the simulator applied each lock, unlock and power cycle exactly once per operation (idempotency tokens
turn the retries after the kill into replays); the work was shared by the three workers and the dead one did
nothing after its death. Polled every 0.5 s while it runs, from the store: no host is held by two operations
(host leases, and operations not yet final), and no flow-control window holds more admissions than its limit.

Flow control is configured so that its limits are reached, not avoided: the locks (0x410A01) are switched on
with room for exactly the 2 locks per host (every one must be admitted), and the forced reboots (0x400012)
have 8 per cluster and 14 per region, so of the 30 reboots asked for in each region exactly 14 run and 16
are abandoned, whichever worker decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from deploy import processes
from domain.model import NcBizStatus
from domain.operations import HostOutcomeKind, OperationResult, OpsState
from domain.opscodes import OpsCode
from store.lifecycle import CapacityGuard, FlowControlRule
from store.repository import OperationStore
from store.seed import seed_dev_approvers
from tests.helpers import SimulatorAdmin

pytestmark = pytest.mark.e2e

SPEED = 1000.0  # simulated seconds per real second: a 100 s power settle takes 0.1 s
WORKERS = 3
# (cluster, region, zone): two regions of two clusters each.
CLUSTERS = (
    ("ECS-CPU-A-5101", "cn-qd-d01", "cn-qd-d01-a"),
    ("ECS-CPU-B-5102", "cn-qd-d01", "cn-qd-d01-b"),
    ("ECS-CPU-A-5201", "cn-hz-d02", "cn-hz-d02-a"),
    ("ECS-MOC-A-5202", "cn-hz-d02", "cn-hz-d02-a"),
)
HOSTS_PER_CLUSTER = 15
HOSTS = len(CLUSTERS) * HOSTS_PER_CLUSTER  # 60
# Per host, one after another. The reboot locks first (preLock=0: the host is free), then power-cycles.
PLAN = ("NcLock", "NcUnlock", "NcLock", "NcUnlock", "NcForcedReboot")
OPERATIONS = HOSTS * len(PLAN)  # 300
KILL_AFTER = OPERATIONS // 3
POLL_SECONDS = 0.5
IN_FLIGHT_GRACE = timedelta(seconds=1)
RUN_TIMEOUT_SECONDS = 150.0
# While the victim is killed, lock and unlock calls are held this long in the simulator (a slow Houyi):
# longer than the 5 s heartbeat timeout, so the retry elsewhere arrives while the first call is still held.
HELD_CALL_SECONDS = 8.0

# 0x410A01 on, with room for exactly the locks asked for: one lock abandoned by a miscount breaks a chain.
LOCKS_PER_CLUSTER = 2 * HOSTS_PER_CLUSTER
LOCKS_PER_REGION = 2 * LOCKS_PER_CLUSTER
# 0x400012: 15 asked per cluster, 30 per region; the region's limit binds before both clusters' do.
REBOOT_CLUSTER_LIMIT = 8
REBOOT_REGION_LIMIT = 14
REGIONS = sorted({region for _, region, _ in CLUSTERS})
REBOOTS_RUN = REBOOT_REGION_LIMIT * len(REGIONS)  # 28
REBOOTS_ABANDONED = HOSTS - REBOOTS_RUN  # 32

OPSCODE_OF = {
    "NcLock": OpsCode.NC_LOCK,
    "NcUnlock": OpsCode.AUTO_UNLOCK_AFTER_LOCK,
    "NcForcedReboot": OpsCode.NC_FORCED_REBOOT,
}
FINAL_STATES = [state.value for state in OpsState if state.final]


def scale_fleet() -> dict[str, Any]:
    """60 empty free hosts, 15 in each of four clusters over two regions; power settles in 100 s."""
    ncs = [
        {
            "nc_id": f"{51 + c}{i:02d}-1",
            "nc_ip": f"10.51.{c}.{10 + i}",
            "hostname": f"{cluster.lower()}-r01-{i:02d}",
            "sn": f"SN51{c}{i:02d}",
            "cluster_id": cluster,
            "cpu_model": "Intel(R) Xeon(R) Platinum 8269CY",
            "software_version": "houyi-3.3.8",
            "vcpu_total": 96,
            "memory_gib_total": 384,
        }
        for c, (cluster, _, _) in enumerate(CLUSTERS)
        for i in range(HOSTS_PER_CLUSTER)
    ]
    zones: dict[str, list[str]] = {}
    for _, region, zone in CLUSTERS:
        zones.setdefault(region, [])
        if zone not in zones[region]:
            zones[region].append(zone)
    return {
        "name": "scale-out",
        "settings": {"power_settle_seconds": 100},
        "regions": [{"region_id": region, "zones": zone_ids} for region, zone_ids in zones.items()],
        "clusters": [
            {"cluster_id": cluster, "region_id": region, "zone_id": zone, "kind": "CPU"}
            for cluster, region, zone in CLUSTERS
        ],
        "ncs": ncs,
    }


def operation_input(workflow_type: str, nc_ip: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "nc_ip": nc_ip,
        "requester": "alice",
        "reason_category": "hardware",
        "reason": "scale-out test",
        "ticket": "CHG-5000",
    }
    if workflow_type == "NcLock":
        return {**base, "settings": {"alertRuleName": "hardware_exception_alarm", "preLock": 0}}
    if workflow_type == "NcForcedReboot":
        return {
            **base,
            "reason_category": "hang",
            "settings": {"needDumpCn": 0, "needLimit": 1, "preLock": 0},
        }
    return base


@dataclass
class Run:
    """What the driver knows while the operations run; the invariant poller reads it."""

    run_id: str
    client: Client
    task_queue: str
    current: dict[str, int] = field(default_factory=dict)  # host -> index in PLAN of the one running
    completed: set[str] = field(default_factory=set)
    results: dict[str, OperationResult] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    finished: int = 0
    one_third: asyncio.Event = field(default_factory=asyncio.Event)

    def workflow_id(self, nc_ip: str, index: int) -> str:
        # `<opscode>-<host>` by convention; the suffix keeps the five operations on one host apart.
        return f"{OPSCODE_OF[PLAN[index]].value}-{nc_ip}-{self.run_id}-{index}"

    def host_of(self, workflow_id: str) -> str:
        return workflow_id.split("-")[1]

    async def chain(self, nc_ip: str) -> None:
        for index, workflow_type in enumerate(PLAN):
            workflow_id = self.workflow_id(nc_ip, index)
            self.current[nc_ip] = index
            try:
                handle = await self.client.start_workflow(
                    workflow_type,
                    operation_input(workflow_type, nc_ip),
                    id=workflow_id,
                    task_queue=self.task_queue,
                    result_type=OperationResult,
                )
                self.results[workflow_id] = await handle.result()
            except WorkflowFailureError as failure:
                self.failures.append(f"{workflow_id}: {failure.cause!r}")
                return
            finally:
                self.completed.add(workflow_id)
                self.finished += 1
                if self.finished >= KILL_AFTER:
                    self.one_third.set()
        self.current.pop(nc_ip, None)


@dataclass
class Invariants:
    checks: int = 0
    most_leases: int = 0
    most_reboot_admissions: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


async def check_invariants(conn: asyncpg.Connection, run: Run, seen: Invariants) -> None:
    """One look at the store: leases, operations not final, and every enabled flow-control window."""
    done_before = set(run.completed)
    leases = await conn.fetch("SELECT nc_ip, workflow_id FROM host_leases")
    seen.most_leases = max(seen.most_leases, len(leases))
    for lease in leases:
        if run.host_of(lease["workflow_id"]) != lease["nc_ip"]:
            seen.violations.append(f"lease of {lease['nc_ip']} held by {lease['workflow_id']}")
        if lease["workflow_id"] in done_before:
            seen.violations.append(f"lease of {lease['nc_ip']} still held by finished {lease['workflow_id']}")
    busy = await conn.fetch(
        """
        SELECT host, array_agg(workflow_id) AS holders FROM operations, unnest(hosts) AS host
        WHERE state <> ALL($1::text[]) GROUP BY host HAVING count(*) > 1
        """,
        FINAL_STATES,
    )
    seen.violations += [f"{row['host']} has two operations at once: {row['holders']}" for row in busy]
    for scope, column in (("cluster", "cluster_id"), ("region", "region_id")):
        windows = await conn.fetch(
            f"""
            SELECT a.opscode, a.{column} AS subject, count(*) AS n, max(r.{scope}_limit) AS lim
            FROM flow_control_admissions a JOIN flow_control_rules r ON r.opscode = a.opscode AND r.enabled
            WHERE a.verdict IN ('admitted', 'held_for_approval') AND a.voided_at IS NULL
              AND a.admitted_at > now() - make_interval(mins => r.{scope}_window_minutes)
            GROUP BY a.opscode, a.{column}
            """
        )
        for window in windows:
            if window["n"] > window["lim"]:
                seen.violations.append(
                    f"{window['opscode']} {scope} {window['subject']}: {window['n']} admitted, limit {window['lim']}"
                )
            if window["opscode"] == OpsCode.NC_FORCED_REBOOT.value:
                key = f"{scope} {window['subject']}"
                seen.most_reboot_admissions[key] = max(seen.most_reboot_admissions.get(key, 0), window["n"])
    seen.checks += 1


async def poll_invariants(database_url: str, run: Run, stop: asyncio.Event, seen: Invariants) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        while not stop.is_set():
            await check_invariants(conn, run, seen)
            try:
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
        await check_invariants(conn, run, seen)
    finally:
        await conn.close()


@dataclass
class Participation:
    """Who did what, from the workflow histories."""

    completed_by: Counter[str] = field(default_factory=Counter)  # the worker whose task closed the workflow
    took_part: Counter[str] = field(default_factory=Counter)  # operations a worker ran any task of
    tasks: Counter[str] = field(default_factory=Counter)  # workflow and activity tasks completed
    after_death: list[str] = field(default_factory=list)
    handed_over: int = 0  # operations the killed worker began and the others finished
    not_completed: list[str] = field(default_factory=list)


async def participation(
    client: Client, workflow_ids: list[str], killed: str, dead_at: datetime
) -> Participation:
    found = Participation()
    gate = asyncio.Semaphore(16)

    async def one(workflow_id: str) -> None:
        async with gate:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        identities: list[tuple[str, datetime]] = []
        last_workflow_task = ""
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                identity = event.workflow_task_completed_event_attributes.identity
                last_workflow_task = identity
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                identity = event.activity_task_completed_event_attributes.identity
            else:
                continue
            identities.append((identity, event.event_time.ToDatetime(tzinfo=UTC)))
        if history.events[-1].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            found.not_completed.append(f"{workflow_id}: {EventType.Name(history.events[-1].event_type)}")
        found.completed_by[last_workflow_task] += 1
        for identity in {identity for identity, _ in identities}:
            found.took_part[identity] += 1
        found.tasks.update(identity for identity, _ in identities)
        found.after_death += [
            f"{workflow_id}: {identity} at {at.isoformat()}"
            for identity, at in identities
            # a completion it sent just before dying may still be on its way into the server
            if identity == killed and at > dead_at + IN_FLIGHT_GRACE
        ]
        if any(identity == killed for identity, _ in identities) and last_workflow_task != killed:
            found.handed_over += 1

    await asyncio.gather(*(one(workflow_id) for workflow_id in workflow_ids))
    return found


async def victim_mid_call(run: Run, admin: SimulatorAdmin, victim: str) -> list[str]:
    """Holds lock and unlock calls in the simulator for a few seconds, and returns as soon as the victim
    worker has some of them in flight: the workflow ids whose lock or unlock it is waiting on."""
    for action in ("lock_nc", "unlock_nc"):
        await admin.inject(action=action, kind="latency", latency_seconds=HELD_CALL_SECONDS, count=30)

    gate = asyncio.Semaphore(8)

    async def waiting_on_victim(workflow_id: str) -> bool:
        async with gate:
            description = await run.client.get_workflow_handle(workflow_id).describe()
        now = datetime.now(UTC)
        return any(
            pending.activity_type.name in ("LockNc", "UnlockNc")
            and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and pending.last_worker_identity == victim
            # started a moment ago: its call has reached the simulator, which holds it
            and 0.3 < (now - pending.last_started_time.ToDatetime(tzinfo=UTC)).total_seconds() < 2
            for pending in description.raw_description.pending_activities
        )

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [run.workflow_id(nc_ip, index) for nc_ip, index in list(run.current.items())]
        answers = await asyncio.gather(*(waiting_on_victim(workflow_id) for workflow_id in running))
        caught = [workflow_id for workflow_id, held in zip(running, answers, strict=True) if held]
        if caught:
            return caught
        await asyncio.sleep(0.1)
    raise AssertionError(f"{victim} never had a lock or unlock call in flight")


@pytest.fixture
async def fleet_simulator(tmp_path: Path) -> AsyncIterator[tuple[str, processes.ManagedProcess]]:
    fleet = tmp_path / "scale-fleet.json"
    fleet.write_text(json.dumps(scale_fleet()), encoding="utf-8")
    port = processes.free_port()
    simulator = processes.houyi_simulator(port, SPEED, fleet, log_dir=tmp_path / "logs").start()
    try:
        await simulator.wait_ready(timeout=30)
        yield f"http://127.0.0.1:{port}", simulator
    finally:
        simulator.terminate()


async def configure(database_url: str) -> None:
    store = await OperationStore.connect(database_url)  # migrates the fresh database
    try:
        await seed_dev_approvers(store)
        lifecycle = store.lifecycle
        await lifecycle.set_flow_control_rule(
            FlowControlRule(
                opscode=OpsCode.NC_LOCK,
                enabled=True,
                cluster_limit=LOCKS_PER_CLUSTER,
                region_limit=LOCKS_PER_REGION,
            ),
            updated_by="test_scale_out",
        )
        await lifecycle.set_flow_control_rule(
            FlowControlRule(
                opscode=OpsCode.NC_FORCED_REBOOT,
                enabled=True,
                cluster_limit=REBOOT_CLUSTER_LIMIT,
                region_limit=REBOOT_REGION_LIMIT,
            ),
            updated_by="test_scale_out",
        )
        # A manual forced reboot runs at once (the product's "manual report needs approval: no").
        await lifecycle.set_approval_policy(
            OpsCode.NC_FORCED_REBOOT, manual_report_needs_approval=False, updated_by="test_scale_out"
        )
        # Locking every host of a cluster in turn would trip the capacity guard into asking for approval.
        await lifecycle.set_capacity_guard(CapacityGuard(cluster_id="*", enabled=False), updated_by="test")
    finally:
        await store.close()


async def test_three_workers_share_300_operations_and_a_killed_one_loses_none(
    dev_server_env: WorkflowEnvironment,
    database_url: str,
    fleet_simulator: tuple[str, processes.ManagedProcess],
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    houyi_url, _ = fleet_simulator
    await configure(database_url)
    client = dev_server_env.client
    address = client.service_client.config.target_host
    task_queue = f"scale-{uuid.uuid4()}"
    workers = []
    for number in range(WORKERS):
        env = processes.worker_env(
            temporal_address=address,
            database_url=database_url,
            houyi_url=houyi_url,
            metrics_port=processes.free_port(),
            task_queue=task_queue,
            power_poll_seconds=0.2,
            simulator_speed=SPEED,
        )
        # The disk-recycle Schedule is one per namespace: leave the other tests' alone.
        env["OPSFLOW_RECYCLE_SCHEDULE"] = "off"
        workers.append(processes.worker(env, log_dir=tmp_path / "logs" / f"worker-{number}").start())
    background: list[asyncio.Future[Any]] = []
    try:
        await asyncio.gather(*(worker.wait_ready(timeout=90) for worker in workers))
        hostname = socket.gethostname()  # the SDK's default identity is <pid>@<hostname>
        identities = [f"{worker.pid}@{hostname}" for worker in workers]
        admin = SimulatorAdmin(houyi_url)
        ncs = await admin.ncs()
        assert len(ncs) == HOSTS and all(nc["biz_status"] == "free" for nc in ncs)
        cluster_of = {nc["nc_ip"]: nc["cluster_id"] for nc in ncs}
        region_of_cluster = {cluster: region for cluster, region, _ in CLUSTERS}

        run = Run(run_id=uuid.uuid4().hex[:6], client=client, task_queue=task_queue)
        seen = Invariants()
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_invariants(database_url, run, stop, seen))
        started = time.monotonic()
        chains = asyncio.gather(*(run.chain(nc["nc_ip"]) for nc in ncs))
        background += [poller, chains]
        await asyncio.wait_for(run.one_third.wait(), RUN_TIMEOUT_SECONDS)
        victim = workers[0]
        caught = await victim_mid_call(run, admin, identities[0])
        finished_at_kill = run.finished
        in_flight_at_kill = len(run.current)
        await asyncio.to_thread(victim.kill)
        dead_at = datetime.now(UTC)  # kill() returns once the process is reaped
        await admin.clear_faults()
        await asyncio.wait_for(chains, RUN_TIMEOUT_SECONDS)
        run_seconds = time.monotonic() - started
        stop.set()
        await poller
    finally:
        for task in background:  # a failure midway leaves nothing running behind the next test
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for worker in workers:
            await asyncio.to_thread(worker.terminate)

    assert run.failures == [], run.failures
    assert (seen.violations, seen.checks >= 10) == ([], True), (seen.violations[:20], seen.checks)
    workflow_ids = [run.workflow_id(nc["nc_ip"], index) for nc in ncs for index in range(len(PLAN))]
    assert sorted(run.results) == sorted(workflow_ids)

    # -- every workflow ended with the state it must --------------------------------------------------
    ended: Counter[tuple[str, str]] = Counter()
    rebooted: set[str] = set()
    for workflow_id, result in run.results.items():
        workflow_type = PLAN[int(workflow_id.rsplit("-", 1)[1])]
        ended[(workflow_type, result.state.value)] += 1
        (host,) = result.hosts
        if workflow_type == "NcForcedReboot" and result.state is OpsState.SUCCEEDED:
            assert (host.status_after, host.outcome) == (NcBizStatus.NC_DOWN, HostOutcomeKind.SUCCEEDED)
            rebooted.add(host.nc_ip)
        elif workflow_type == "NcForcedReboot":
            assert host.outcome is HostOutcomeKind.ABANDONED, result
        else:
            expected = NcBizStatus.MLOCK if workflow_type == "NcLock" else NcBizStatus.FREE
            assert (host.status_after, host.outcome) == (expected, HostOutcomeKind.SUCCEEDED), result
    assert ended == {
        ("NcLock", "Succeeded"): 2 * HOSTS,
        ("NcUnlock", "Succeeded"): 2 * HOSTS,
        ("NcForcedReboot", "Succeeded"): REBOOTS_RUN,
        ("NcForcedReboot", "Abandoned"): REBOOTS_ABANDONED,
    }
    per_region = Counter(region_of_cluster[cluster_of[ip]] for ip in rebooted)
    per_cluster = Counter(cluster_of[ip] for ip in rebooted)
    assert per_region == dict.fromkeys(REGIONS, REBOOT_REGION_LIMIT)
    assert max(per_cluster.values()) <= REBOOT_CLUSTER_LIMIT

    # -- the store: exactly one row per operation, all final; leases all given back ------------------
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT workflow_id, opscode, state, finished_at FROM operations")
        admissions = await conn.fetch(
            "SELECT workflow_id, opscode, verdict, voided_at FROM flow_control_admissions"
        )
        leases_left = await conn.fetchval("SELECT count(*) FROM host_leases")
    finally:
        await conn.close()
    assert len(rows) == OPERATIONS
    assert sorted(row["workflow_id"] for row in rows) == sorted(workflow_ids)
    assert all(row["finished_at"] is not None for row in rows)
    assert Counter((row["opscode"], row["state"]) for row in rows) == {
        (OpsCode.NC_LOCK.value, "Succeeded"): 2 * HOSTS,
        (OpsCode.AUTO_UNLOCK_AFTER_LOCK.value, "Succeeded"): 2 * HOSTS,
        (OpsCode.NC_FORCED_REBOOT.value, "Succeeded"): REBOOTS_RUN,
        (OpsCode.NC_FORCED_REBOOT.value, "Abandoned"): REBOOTS_ABANDONED,
    }
    assert leases_left == 0
    assert len(admissions) == OPERATIONS and len({a["workflow_id"] for a in admissions}) == OPERATIONS
    assert Counter((a["opscode"], a["verdict"]) for a in admissions) == {
        (OpsCode.NC_LOCK.value, "admitted"): 2 * HOSTS,
        (OpsCode.AUTO_UNLOCK_AFTER_LOCK.value, "admitted"): 2 * HOSTS,
        (OpsCode.NC_FORCED_REBOOT.value, "admitted"): REBOOTS_RUN,
        (OpsCode.NC_FORCED_REBOOT.value, "abandoned"): REBOOTS_ABANDONED,
    }
    # An operation that ends before it executes gives its slot back: exactly the abandoned ones, none that ran.
    voided = {a["workflow_id"] for a in admissions if a["voided_at"] is not None}
    assert voided == {a["workflow_id"] for a in admissions if a["verdict"] == "abandoned"}

    # -- the simulator: each side effect exactly once per operation -----------------------------------
    counters = await admin.counters()
    locks = 2 * HOSTS + REBOOTS_RUN  # two NcLock per host, and the reboot's PreLock where it ran
    fleet = counters["fleet"]
    assert (
        fleet["lock_applied"],
        fleet["unlock_applied"],
        fleet["power_cycles"],
        fleet["status_changes"],
        fleet["power_offs"],
        fleet["dumps"],
    ) == (locks, 2 * HOSTS, REBOOTS_RUN, 0, 0, 0)
    # The calls the victim died waiting on were retried elsewhere with the same token, and answered again
    # from the first call's outcome instead of being applied twice.
    assert counters["token_replays"] >= len(caught), (counters["token_replays"], caught)
    executed = counters["executed"]
    assert (executed.get("lock_nc"), executed.get("unlock_nc"), executed.get("oob_power_cycle")) == (
        locks,
        2 * HOSTS,
        REBOOTS_RUN,
    ), executed
    for nc in await admin.ncs():
        ip = nc["nc_ip"]
        expected_touched = {"lock_applied": 3, "unlock_applied": 2, "power_cycles": 1}
        if ip not in rebooted:
            expected_touched = {"lock_applied": 2, "unlock_applied": 2}
        assert await admin.touched(ip) == expected_touched, ip
        assert nc["biz_status"] == ("nc_down" if ip in rebooted else "free"), nc

    # -- the three workers shared the work; the dead one did nothing after its death ------------------
    shared = await participation(client, workflow_ids, identities[0], dead_at)
    assert shared.not_completed == []
    assert set(shared.tasks) <= set(identities), (set(shared.tasks), identities)
    assert shared.after_death == [], shared.after_death[:10]
    # Before the kill all three ran tasks; after it the two left finished the rest, including operations
    # the dead worker had begun.
    assert all(shared.took_part[identity] >= 20 for identity in identities), shared.took_part
    assert shared.completed_by[identities[0]] >= 1 and shared.handed_over >= 1, shared
    assert all(shared.completed_by[identity] >= OPERATIONS // 5 for identity in identities[1:])

    wall = time.monotonic() - began
    print(
        f"\nscale-out: {OPERATIONS} operations on {HOSTS} hosts, {WORKERS} workers, run {run_seconds:.1f} s "
        f"({OPERATIONS / run_seconds:.1f} ops/s), test {wall:.1f} s; killed {identities[0]} after "
        f"{finished_at_kill} finished with {in_flight_at_kill} in flight, {len(caught)} of them mid-call on it; handed over {shared.handed_over}\n"
        f"  operations completed by worker: {[shared.completed_by[i] for i in identities]}\n"
        f"  operations each worker took part in: {[shared.took_part[i] for i in identities]}\n"
        f"  tasks completed by worker: {[shared.tasks[i] for i in identities]}\n"
        f"  simulator: lock {fleet['lock_applied']}, unlock {fleet['unlock_applied']}, power cycles "
        f"{fleet['power_cycles']}, token replays {counters['token_replays']}\n"
        f"  invariants: {seen.checks} checks, at most {seen.most_leases} leases at once, reboot admissions "
        f"peak {dict(sorted(seen.most_reboot_admissions.items()))}"
    )
