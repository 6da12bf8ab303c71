"""Worker crash at every step: each opscode workflow, its worker process SIGKILLed (a) at each step boundary
(right after the step's row appears in the store, the workflow held there meanwhile) and (b) in the middle of each mutating Houyi call (held
in the simulator by a latency fault), then restarted. The operation ends as an uncrashed run of the same
operation on an identical fresh fleet ends, and no side effect is applied twice: the result, the fleet's end
state, the simulator's side-effect counters (fleet-wide and per host), how many times each mutating action
acted, and the idempotency tokens used are all equal to the baseline's (tests/reliability/crashes.py).

The kill points are discovered from the baseline run of each workflow, so the matrix follows the workflows
as they change. Full matrix (``OPSFLOW_RELIABILITY=full``): every workflow x {boundary, midcall}, each case
killing at every point of its kind, one fresh run per point. Reduced (``make test``): each workflow once,
midcall and boundary alternating, at one point (the middle one of the list).

The runs are independent (own simulator, database, task queue and worker processes; one dev server), and
mostly wait on the server's timeouts (a dead worker's activity is retried after its heartbeat or
start-to-close timeout), so the module starts every selected case at once and runs up to
``OPSFLOW_CRASH_CONCURRENCY`` runs together (6 reduced, 10 full); each test item then waits for and checks its own case.
Run with ``-s`` to see one summary line per run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.reliability.crashes import (
    BOUNDARY,
    CONCURRENCY,
    MIDCALL,
    CrashLab,
    KillPoint,
    RunRecord,
    boundary_points,
    differences,
    midcall_points,
    unrecorded_tokens,
    worker_exit_signal,
)
from tests.reliability_support import FULL, matrix

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

WORKFLOWS = (
    "NcLock",
    "NcUnlock",
    "NcForcedReboot",
    "NcReOnline",
    "NcDeepOffline",
    "NcDeepOfflineCold",
    "WholeHostMigration",
    "VmResidueCleanup",
    "WildVmCleanup",
    "DiskLiveMigration",
    "DiskRecycle",
)
KINDS = (BOUNDARY, MIDCALL)


@dataclass(frozen=True)
class Case:
    workflow: str
    kind: str

    def __str__(self) -> str:
        return f"{self.workflow}-{self.kind}"


FULL_CASES = [Case(workflow, kind) for workflow in WORKFLOWS for kind in KINDS]
# Alternating, mid-call first: so the reduced set's reboot is killed in its power cycle call, not after it,
# where the worker dies inside the power wait and the retry comes only after that activity's 3 min heartbeat
# timeout (the full matrix has that point; it passes, slowly).
REDUCED_CASES = [Case(workflow, KINDS[(i + 1) % 2]) for i, workflow in enumerate(WORKFLOWS)]
CASES = matrix(FULL_CASES, REDUCED_CASES)
CONTROL = "NcForcedReboot"  # the control run: a Houyi that forgets its tokens mid-call


@dataclass
class CaseOutcome:
    baseline: RunRecord
    runs: list[tuple[KillPoint, RunRecord]]


def kill_points(case: Case, baseline: RunRecord) -> list[KillPoint]:
    points = boundary_points(baseline) if case.kind == BOUNDARY else midcall_points(baseline)
    assert points, f"the baseline of {case.workflow} has no {case.kind} kill point: {baseline.boundaries}"
    return points if FULL else [points[len(points) // 2]]


def summary(case: Case | str, point: KillPoint, baseline: RunRecord, run: RunRecord) -> str:
    kill = run.kill
    assert kill is not None
    equal = "equal" if not differences(baseline, run) else "DIFFERENT"
    held = "" if kill.held_in_flight is None else f", held call in flight at kill: {kill.held_in_flight}"
    unrecorded = unrecorded_tokens(baseline, run)
    if unrecorded:
        held += f"; applied but not in houyi_calls: {', '.join(unrecorded)}"
    return (
        f"[crash] {case}: kill {point.describe()} ({kill.seen}; worker {worker_exit_signal(kill.worker_exit)}"
        f"{held}); end {_end(run)}; ended {kill.seconds_to_end:.1f} s after the kill;"
        f" counters baseline [{baseline.counters_line()}] vs crashed [{run.counters_line()}]: {equal}"
    )


def _end(run: RunRecord) -> str:
    state = run.end_state.get("state") or run.end_state.get("failed")
    if state is None and "tasks" in run.end_state:
        state = ", ".join(f"{t['task_id']} {t['outcome']}" for t in run.end_state["tasks"])
    return str(state)


class Campaign:
    """Every selected case, started at once; each test item awaits its own."""

    def __init__(self, lab: CrashLab, cases: Sequence[Case], control: bool) -> None:
        self.lab = lab
        self.tasks: dict[str, asyncio.Task[CaseOutcome]] = {
            str(case): asyncio.create_task(self._case(case)) for case in cases
        }
        if control:
            self.tasks["control"] = asyncio.create_task(self._control())

    async def _case(self, case: Case) -> CaseOutcome:
        baseline = await self.lab.baseline(case.workflow)
        points = kill_points(case, baseline)
        runs = await asyncio.gather(*(self.lab.run(case.workflow, point) for point in points))
        return CaseOutcome(baseline, list(zip(points, runs, strict=True)))

    async def _control(self) -> CaseOutcome:
        baseline = await self.lab.baseline(CONTROL)
        point = next(p for p in midcall_points(baseline) if p.action == "oob_power_cycle")
        run = await self.lab.run(CONTROL, point, forget_tokens_after_kill=True)
        return CaseOutcome(baseline, [(point, run)])

    async def outcome(self, key: str) -> CaseOutcome:
        return await self.tasks[key]

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.lab.close()


@pytest.fixture(scope="module")
async def campaign(
    request: pytest.FixtureRequest,
    dev_server_env: WorkflowEnvironment,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Campaign]:
    selected: list[pytest.Function] = []
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.module is request.module:
            selected.append(item)
    cases: list[Case] = []
    for item in selected:
        if item.originalname == "test_a_worker_killed_anywhere_changes_nothing":
            case = item.callspec.params["case"]
            assert isinstance(case, Case)
            cases.append(case)
    control = any(
        item.originalname == "test_the_comparison_sees_a_side_effect_applied_twice" for item in selected
    )
    client = dev_server_env.client
    lab = CrashLab(
        client=client,
        address=client.service_client.config.target_host,
        postgres_url=postgres_url,
        log_root=Path(tmp_path_factory.mktemp("crashes")),
        slots=asyncio.Semaphore(CONCURRENCY),
    )
    running = Campaign(lab, cases, control)
    try:
        yield running
    finally:
        await running.close()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_a_worker_killed_anywhere_changes_nothing(case: Case, campaign: Campaign) -> None:
    outcome = await campaign.outcome(str(case))
    baseline = outcome.baseline
    assert baseline.kill is None
    problems = []
    for point, run in outcome.runs:
        print(summary(case, point, baseline, run))
        assert run.kill is not None and run.kill.worker_exit is not None and run.kill.worker_exit < 0, (
            f"{case} {point.describe()}: the worker was not killed by a signal ({run.kill})"
        )
        if point.kind == MIDCALL:
            # Killed while the call was held in the simulator, not after it answered.
            assert run.kill.held_in_flight, f"{case} {point.describe()}: the held call was not in flight"
        found = differences(baseline, run)
        if found:
            problems.append(f"{point.describe()} ({run.workflow_id}):\n    " + "\n    ".join(found))
    assert not problems, f"{case}: a crashed run differs from the baseline:\n  " + "\n  ".join(problems)


@pytest.mark.timeout(1800)
async def test_the_comparison_sees_a_side_effect_applied_twice(campaign: Campaign) -> None:
    """The control: a worker killed mid power cycle against a Houyi that forgets its idempotency tokens
    (the simulator's remembered answers dropped once the held call has acted), so the retried activity
    cycles the host a second time. The same comparison that passes every crash above must see it."""
    outcome = await campaign.outcome("control")
    ((point, run),) = outcome.runs
    print(summary("control (tokens forgotten)", point, outcome.baseline, run))
    found = differences(outcome.baseline, run)
    assert any("power_cycles" in line for line in found), found
    assert run.totals["power_cycles"] == outcome.baseline.totals["power_cycles"] + 1
