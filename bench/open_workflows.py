"""Open workflows: 5,000 operations waiting for approval on one worker process, then approvals among them.

    .venv/bin/python -m bench.open_workflows      # writes bench/results/open_workflows.md and .json

Everything real, on this machine, as ``bench/sizing.py`` runs it: the Temporal dev server, PostgreSQL, the Houyi
simulator as its own process (5,000 empty hosts in 250 clusters of 20, at 1000x real time) and ONE worker
process (``python worker.py``, default settings: ``max_cached_workflows`` is temporalio's default 1,000).

Opening. ``NcForcedReboot`` (0x400012; ``needLimit`` 0 so that flow control lets every one through,
``preLock`` 0; a manual report needs approval) on 5,000 distinct hosts; each ends up waiting in
``PendingApproval`` (its row in the store says so). They are started ``STARTERS`` at a time with at most
``IN_FLIGHT`` started and not yet waiting: started all at once, thousands of workflows would take turns on the
worker's 1,000-workflow cache between their own tasks and be replayed at every one. The worker's RSS
(``VmRSS`` of /proc/<pid>/status) is sampled idle, with 20 open (code loaded), once 1,000 are open and settled
(the per-1,000 figure: all of them in the cache), as 2,000 to 4,000 pass, and once 5,000 are open and settled;
``VmHWM`` is the peak over the run. ``temporal_sticky_cache_size`` (the SDK's gauge) says how many are cached.

Approvals. ``APPROVALS`` operations spread evenly over the 5,000 (every 25th, in a shuffled order) are approved
with the ``decide`` update (what ``opsctl approve`` and the intake's ``POST /v1/approvals`` send), one every
``1 / APPROVAL_RATE`` s whatever the answers (open loop). The latency of one approval is from the client's
clock when it sent the update to the ``ActivityTaskStarted`` event of the first step's activity (``LockNc``,
step ``PreLock``) in the workflow's history: the worker picked the step up. Dev server and client share this
machine's clock. Most of the sampled workflows were evicted from the sticky cache long before (only the last
~1,000 opened can still be there), so the worker replays their history before it can even validate the
update: this measures replay too. Targets: RSS < 1 GiB with 5,000 open; p95 < 1 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.report import row, write_results_json
from bench.sizing import HOSTS_PER_CLUSTER, SPEED, Stack, host_ip, request, rss_mib, running_stack, start_all
from domain.operations import OpsState
from domain.opscodes import OpsCode
from workflows.lifecycle import DecisionInput, DecisionResult

TOTAL = 5000
WARM = 20
SETTLED = (WARM, 1000, TOTAL)  # RSS after the worker settles (no workflow task left to run)
PASSING = (2000, 3000, 4000)  # RSS sampled as the count passes, without stopping
IN_FLIGHT = (
    300  # started, not yet in PendingApproval: well below the cache, so none is evicted while it opens
)
APPROVALS = 200
APPROVAL_RATE = 5.0  # approvals sent per second, open loop; each approved operation then runs its reboot
DEFAULT_MAX_CACHED = 1000  # temporalio.worker.Worker(max_cached_workflows=...) default; worker.py keeps it
FIRST_STEP, FIRST_ACTIVITY = "PreLock", "LockNc"
RSS_TARGET_MIB = 1024.0
P95_TARGET_SECONDS = 1.0
SETTLE_SECONDS = 5.0
STALL_SECONDS = 120.0  # no operation reached PendingApproval for this long: something is wrong
RESULTS = Path(__file__).parent / "results" / "open_workflows.md"
COMMAND = ".venv/bin/python -m bench.open_workflows"


def workflow_id(index: int, task_queue: str) -> str:
    return f"{OpsCode.NC_FORCED_REBOOT.value}-{host_ip(index)}-{task_queue}"


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def worker_metrics(metrics_url: str) -> dict[str, float]:
    """The SDK's sticky-cache series and workflow-task counters, summed over their labels."""
    try:
        async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
            text = await response.text()
    except aiohttp.ClientError:
        return {}
    sums: dict[str, float] = {}
    for name, value in re.findall(
        r"^(temporal_(?:sticky_cache|workflow_task)\w*)(?:\{[^}]*\})? (\S+)$", text, re.M
    ):
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums


@dataclass
class MemorySample:
    open_workflows: int
    rss_mib: float
    cached: int | None
    seconds: float  # since the first start
    settled: bool


@dataclass
class Opener:
    """Opens operations on one worker, keeping at most ``IN_FLIGHT`` on their way to ``PendingApproval``."""

    stack: Stack
    task_queue: str
    conn: asyncpg.Connection
    worker_pid: int
    metrics_url: str
    began: float = 0.0
    started: int = 0
    samples: list[MemorySample] = field(default_factory=list)

    async def pending(self) -> int:
        count = await self.conn.fetchval(
            "SELECT count(*) FROM operations WHERE state = $1 AND workflow_id LIKE $2",
            OpsState.PENDING_APPROVAL.value,
            f"%-{self.task_queue}",
        )
        return int(count)

    async def others(self) -> dict[str, int]:
        """Operations of this run in any other state (none is expected)."""
        rows = await self.conn.fetch(
            "SELECT state, count(*) AS n FROM operations WHERE state <> $1 AND workflow_id LIKE $2 GROUP BY state",
            OpsState.PENDING_APPROVAL.value,
            f"%-{self.task_queue}",
        )
        return {r["state"]: int(r["n"]) for r in rows}

    async def sample(self, open_workflows: int, settled: bool) -> MemorySample:
        cached = (await worker_metrics(self.metrics_url)).get("temporal_sticky_cache_size")
        taken = MemorySample(
            open_workflows,
            rss_mib(self.worker_pid),
            None if cached is None else int(cached),
            time.monotonic() - self.began,
            settled,
        )
        self.samples.append(taken)
        print(
            f"  {open_workflows} open{'' if settled else ' (passing)'}: RSS {taken.rss_mib:.0f} MiB, "
            f"cached {taken.cached}, {taken.seconds:.0f} s",
            flush=True,
        )
        return taken

    async def open_until(self, target: int) -> None:
        if not self.began:
            self.began = time.monotonic()
        passing = [n for n in PASSING if n > self.started]
        last_count, last_progress = -1, time.monotonic()
        while True:
            count = await self.pending()
            if count >= target:
                break
            if count != last_count:
                last_count, last_progress = count, time.monotonic()
            elif time.monotonic() - last_progress > STALL_SECONDS:
                raise SystemExit(
                    f"stalled at {count} of {target} pending approval for {STALL_SECONDS:g} s; "
                    f"other states: {await self.others()}"
                )
            while passing and count >= passing[0]:
                await self.sample(passing.pop(0), settled=False)
            more = min(target, count + IN_FLIGHT) - self.started
            if more > 0:
                jobs = [
                    (
                        "NcForcedReboot",
                        workflow_id(i, self.task_queue),
                        request(host_ip(i), "bench.open_workflows", needLimit=0, needDumpCn=0, preLock=0),
                    )
                    for i in range(self.started, self.started + more)
                ]
                await start_all(self.stack.client, self.task_queue, jobs)
                self.started += more
            await asyncio.sleep(0.5)
        stray = await self.others()
        if stray:
            raise SystemExit(f"operations not waiting for approval: {stray}")
        await asyncio.sleep(SETTLE_SECONDS)  # the last workflow tasks complete, the worker settles
        await self.sample(target, settled=True)


# ---- approvals ---------------------------------------------------------------------------------------------


@dataclass
class Approval:
    index: int  # the order in which its operation was opened
    sent: float  # epoch seconds, this client's clock
    answered: float
    accepted: float = 0.0  # WorkflowExecutionUpdateAccepted, the dev server's clock (the same machine's)
    scheduled: float = 0.0  # ActivityTaskScheduled of the first step's activity
    step_started: float = 0.0  # ActivityTaskStarted of the first step's activity
    history_before: int = 0  # events in its history before the approval: what a replay goes through

    @property
    def latency(self) -> float:
        return self.step_started - self.sent

    @property
    def recent(self) -> bool:
        """Among the last ``DEFAULT_MAX_CACHED`` opened: the only ones the cache can still hold."""
        return self.index >= TOTAL - DEFAULT_MAX_CACHED


def sample_indices() -> list[int]:
    spread = list(range(0, TOTAL, TOTAL // APPROVALS))[:APPROVALS]
    random.Random(7).shuffle(spread)
    return spread


async def approve_sample(client: Client, task_queue: str) -> list[Approval]:
    async def one(index: int, delay: float) -> Approval:
        await asyncio.sleep(delay)
        handle = client.get_workflow_handle(workflow_id(index, task_queue))
        sent = time.time()
        answer = await handle.execute_update(
            "decide",
            DecisionInput(approver="approver1", approve=True, comment="bench.open_workflows"),
            result_type=DecisionResult,
        )
        answered = time.time()
        if answer.approvals != 1:
            raise SystemExit(f"{handle.id}: decide answered {answer}")
        return Approval(index=index, sent=sent, answered=answered)

    return list(
        await asyncio.gather(*(one(index, n / APPROVAL_RATE) for n, index in enumerate(sample_indices())))
    )


def event_seconds(event: Any) -> float:
    return float(event.event_time.ToNanoseconds()) / 1e9


async def read_history(client: Client, task_queue: str, approval: Approval, timeout: float) -> None:  # noqa: ASYNC109
    """Fills the server-side times from the workflow's history, once the first step's activity has ended
    (the history shows an activity's start with its end)."""
    handle = client.get_workflow_handle(workflow_id(approval.index, task_queue))
    deadline = time.monotonic() + timeout
    while True:
        events = (await handle.fetch_history()).events
        accepted = [
            e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        ]
        scheduled = [
            e
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == FIRST_ACTIVITY
        ]
        started = [
            e
            for e in events
            if scheduled
            and e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and e.activity_task_started_event_attributes.scheduled_event_id == scheduled[0].event_id
        ]
        if accepted and scheduled and started:
            approval.accepted = event_seconds(accepted[0])
            approval.scheduled = event_seconds(scheduled[0])
            approval.step_started = event_seconds(started[0])
            approval.history_before = next(
                i for i, e in enumerate(events) if e.event_id == accepted[0].event_id
            )
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{handle.id}: no {FIRST_ACTIVITY} started within {timeout:g} s of the approval")
        await asyncio.sleep(1.0)


async def read_histories(client: Client, task_queue: str, approvals: list[Approval]) -> None:
    gate = asyncio.Semaphore(10)

    async def one(approval: Approval) -> None:
        async with gate:
            await read_history(client, task_queue, approval, timeout=120)

    await asyncio.gather(*(one(a) for a in approvals))


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(share * len(ordered) + 0.999999) - 1))]


@dataclass(frozen=True)
class Spread:
    count: int
    p50: float
    p95: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(
            len(values),
            percentile(values, 0.50),
            percentile(values, 0.95),
            max(values),
            statistics.fmean(values),
        )

    def cells(self) -> str:
        return f"{self.count} | {self.p50 * 1000:.0f} | {self.p95 * 1000:.0f} | {self.max * 1000:.0f} | {self.mean * 1000:.0f}"


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    idle: float
    samples: list[MemorySample]
    open_seconds: float
    approvals: list[Approval]
    approvals_seconds: float
    after_approvals: float
    peak: float
    cache_before: dict[str, float]
    cache_after: dict[str, float]

    def at(self, open_workflows: int) -> MemorySample:
        return next(s for s in self.samples if s.open_workflows == open_workflows and s.settled)


async def measure(stack: Stack) -> Outcome:
    task_queue = f"open-{uuid.uuid4().hex[:8]}"
    worker = stack.worker(task_queue, "open-workflows")
    metrics_url = f"http://127.0.0.1:{worker.env_overrides['WORKER_METRICS_PORT']}/metrics"
    worker.start()
    conn = await asyncpg.connect(stack.database_url)
    try:
        await worker.wait_ready(timeout=120)
        assert worker.pid is not None
        idle = rss_mib(worker.pid)
        print(f"worker ready: RSS {idle:.0f} MiB idle", flush=True)
        opener = Opener(stack, task_queue, conn, worker.pid, metrics_url)
        print(f"opening {TOTAL} forced reboots, at most {IN_FLIGHT} on their way at a time", flush=True)
        for target in SETTLED:
            await opener.open_until(target)
        open_seconds = opener.samples[-1].seconds - SETTLE_SECONDS * len(SETTLED)
        cache_before = await worker_metrics(metrics_url)
        print(f"approving {APPROVALS} of them with `decide`, {APPROVAL_RATE:g} per second", flush=True)
        began = time.monotonic()
        approvals = await approve_sample(stack.client, task_queue)
        await read_histories(stack.client, task_queue, approvals)
        approvals_seconds = time.monotonic() - began
        await asyncio.sleep(SETTLE_SECONDS)
        cache_after = await worker_metrics(metrics_url)
        after = rss_mib(worker.pid)
        peak = vm_hwm_mib(worker.pid)
    finally:
        await conn.close()
        await asyncio.to_thread(worker.terminate)
    return Outcome(
        idle=idle,
        samples=opener.samples,
        open_seconds=open_seconds,
        approvals=approvals,
        approvals_seconds=approvals_seconds,
        after_approvals=after,
        peak=peak,
        cache_before=cache_before,
        cache_after=cache_after,
    )


async def main(workdir: Path) -> None:
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    async with running_stack(workdir, "open_workflows", clusters=TOTAL // HOSTS_PER_CLUSTER) as stack:
        outcome = await measure(stack)
    write_results(outcome, time.monotonic() - began, load_before, os.getloadavg()[0])


def counter_delta(outcome: Outcome, name: str) -> float | None:
    if name not in outcome.cache_after:
        return None
    return outcome.cache_after[name] - outcome.cache_before.get(name, 0.0)


def write_results(outcome: Outcome, seconds: float, load_before: float, load_after: float) -> None:
    warm, thousand, full = outcome.at(WARM), outcome.at(1000), outcome.at(TOTAL)
    per_thousand = (thousand.rss_mib - warm.rss_mib) / (thousand.open_workflows - warm.open_workflows) * 1000
    approvals = outcome.approvals
    to_step = Spread.of([a.latency for a in approvals])
    groups = [
        ("all sampled", approvals),
        (
            f"opened among the last {DEFAULT_MAX_CACHED:,} (could still be cached)",
            [a for a in approvals if a.recent],
        ),
        ("opened earlier (evicted: replayed first)", [a for a in approvals if not a.recent]),
    ]
    sent_rate = APPROVALS / (approvals[-1].sent - approvals[0].sent) if len(approvals) > 1 else float("nan")
    counters = [
        (name, counter_delta(outcome, name))
        for name in sorted(outcome.cache_after)
        if name != "temporal_sticky_cache_size" and not name.endswith(("_bucket", "_sum"))
    ]
    gauge = outcome.cache_after.get("temporal_sticky_cache_size")
    cached_after = "n/a" if gauge is None else f"{gauge:.0f}"
    history = statistics.fmean(a.history_before for a in approvals)
    misses = counter_delta(outcome, "temporal_sticky_cache_miss")
    rss_ok = full.rss_mib < RSS_TARGET_MIB
    p95_ok = to_step.p95 < P95_TARGET_SECONDS
    lines = [
        "# Open workflows (bench/open_workflows.py)",
        "",
        f"`{COMMAND}` on {os.cpu_count()} cores; dev server, PostgreSQL, simulator (speed {SPEED:g}, {TOTAL:,} "
        "empty hosts) and ONE worker process (`python worker.py`, default settings: `max_cached_workflows` "
        f"{DEFAULT_MAX_CACHED:,}) all on this machine. Whole run {seconds:.0f} s. Machine load average (1 min): "
        f"{load_before:.2f} when the run began, {load_after:.2f} when it ended; other processes on the machine "
        "slow the opening and the approvals.",
        "",
        f"## {TOTAL:,} operations waiting for approval",
        "",
        f"`NcForcedReboot` (0x400012, `needLimit` 0, `preLock` 0) on {TOTAL:,} distinct hosts, each waiting in "
        f"`PendingApproval`; started {IN_FLIGHT} on their way at a time. RSS is `VmRSS` of the worker process; "
        "cached is the SDK gauge `temporal_sticky_cache_size`; settled: sampled "
        f"{SETTLE_SECONDS:g} s after the count was reached, with nothing left to run.",
        "",
        "| open workflows | worker RSS (MiB) | cached | seconds since the first start | |",
        "| ---: | ---: | ---: | ---: | --- |",
        f"| 0 (idle, ready) | {outcome.idle:.0f} | 0 | | |",
        *[
            f"| {s.open_workflows:,} | {s.rss_mib:.0f} | {s.cached if s.cached is not None else 'n/a'} "
            f"| {s.seconds:.0f} | {'settled' if s.settled else 'passing, still opening'} |"
            for s in outcome.samples
        ],
        f"| {TOTAL:,}, after the {APPROVALS} approvals below | {outcome.after_approvals:.0f} | "
        f"{cached_after} | | settled |",
        "",
        f"- **{full.rss_mib:.0f} MiB with {TOTAL:,} open** (target < {RSS_TARGET_MIB:.0f} MiB: "
        f"{'met' if rss_ok else 'MISSED'}); peak (`VmHWM`) over the whole run {outcome.peak:.0f} MiB.",
        f"- **{per_thousand:.0f} MiB per 1,000 open workflows** while all are cached ({WARM} → 1,000 open: "
        f"{warm.rss_mib:.0f} → {thousand.rss_mib:.0f} MiB); {thousand.rss_mib:.0f} MiB with 1,000 open.",
        f"- Beyond the cache ({DEFAULT_MAX_CACHED:,}) the worker evicts the least recently used workflow instead "
        f"of keeping it: 1,000 → {TOTAL:,} open added {full.rss_mib - thousand.rss_mib:.0f} MiB "
        f"({(full.rss_mib - thousand.rss_mib) / ((TOTAL - 1000) / 1000):.0f} MiB per 1,000), allocator churn "
        "rather than state (an evicted workflow keeps nothing in the worker).",
        f"- Opening them took {outcome.open_seconds:.0f} s ({TOTAL / outcome.open_seconds:.1f} operations/s "
        "into `PendingApproval`, each validated, planned against Houyi, leased, admitted and recorded).",
        "",
        "## Approve → first step",
        "",
        f"{APPROVALS} of the {TOTAL:,}, every {TOTAL // APPROVALS}th opened, in a shuffled order, approved with the "
        f"`decide` update, {APPROVAL_RATE:g} per second whatever the answers (sent at {sent_rate:.1f}/s). Latency: "
        "from this client's clock when the update was sent to the `ActivityTaskStarted` event of the first "
        f"step's activity (`{FIRST_ACTIVITY}`, step `{FIRST_STEP}`) in the workflow's history (the dev server's "
        "clock, the same machine's). It includes the update's round trip, the replay of a workflow evicted from "
        "the cache, the vote's audit record, the `Running` state change and the activity's dispatch.",
        "",
        "| approvals | count | p50 (ms) | p95 (ms) | max (ms) | mean (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {Spread.of([a.latency for a in group]).cells()} |" for name, group in groups],
        "",
        "The same approvals, by stage (all sampled):",
        "",
        "| stage | count | p50 (ms) | p95 (ms) | max (ms) | mean (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| update sent → accepted (history) | {Spread.of([a.accepted - a.sent for a in approvals]).cells()} |",
        f"| update sent → answered (client) | {Spread.of([a.answered - a.sent for a in approvals]).cells()} |",
        f"| accepted → `{FIRST_ACTIVITY}` scheduled | {Spread.of([a.scheduled - a.accepted for a in approvals]).cells()} |",
        f"| `{FIRST_ACTIVITY}` scheduled → started (eager dispatch: handed back with the workflow task's "
        f"completion) | {Spread.of([a.step_started - a.scheduled for a in approvals]).cells()} |",
        f"| **update sent → `{FIRST_ACTIVITY}` started** | {to_step.cells()} |",
        "",
        f"- **p95 {to_step.p95:.2f} s** (target < {P95_TARGET_SECONDS:g} s: {'met' if p95_ok else 'MISSED'}), "
        f"p50 {to_step.p50:.2f} s, max {to_step.max:.2f} s.",
    ]
    if counters:
        lines += [
            "- The worker's SDK counters over the approvals (sticky cache hits and misses, workflow tasks): "
            + ", ".join(f"`{name}` {value:+.0f}" for name, value in counters if value is not None)
            + ".",
        ]
    lines += [
        "",
        f"Reading: one worker holds {TOTAL:,} operations waiting for a person in {full.rss_mib:.0f} MiB, since "
        f"memory stops growing with the cache full ({DEFAULT_MAX_CACHED:,} workflows, about "
        f"{per_thousand:.0f} MiB per 1,000 cached). Waking one that was evicted costs a replay of its history "
        f"({history:.0f} events on average here) before the update is even validated"
        + (
            f" ({misses:.0f} sticky-cache misses over the {APPROVALS} approvals)"
            if misses is not None
            else ""
        )
        + ": compare the two groups above.",
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    write_results_json(
        "open_workflows",
        "bench.open_workflows",
        seconds,
        [
            row(
                f"worker RSS, {TOTAL:,} operations open (PendingApproval)",
                round(full.rss_mib),
                "MiB",
                "< 1024",
            ),
            row("worker RSS, 1,000 open", round(thousand.rss_mib), "MiB"),
            row("worker RSS per 1,000 open workflows (all cached)", round(per_thousand), "MiB"),
            row("worker RSS idle", round(outcome.idle), "MiB"),
            row("worker peak RSS (VmHWM) over the run", round(outcome.peak), "MiB"),
            row(
                "operations opened into PendingApproval per second",
                round(TOTAL / outcome.open_seconds, 1),
                "ops/s",
            ),
            row("decide update sent → first step's activity started, p50", round(to_step.p50, 3), "s"),
            row(
                f"decide update sent → first step's activity started, p95 ({APPROVALS} approvals)",
                round(to_step.p95, 3),
                "s",
                "< 1",
            ),
            row("decide update sent → first step's activity started, max", round(to_step.max, 3), "s"),
        ],
        load_before=load_before,
    )
    print("\n".join(lines))


def run() -> None:
    if shutil.which("temporal") is None and not (Path(sys.executable).parent / "temporal").exists():
        raise SystemExit("the temporal CLI is not installed: run `make venv`")
    with tempfile.TemporaryDirectory(prefix="bench-open-") as tmp:
        asyncio.run(main(Path(tmp)))


if __name__ == "__main__":
    run()
