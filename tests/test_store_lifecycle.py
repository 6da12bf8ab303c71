"""The lifecycle store (flow control, storm breaker, capacity guard, approval policies, host leases)
against a real PostgreSQL: one fresh, migrated database per test (tests/fixtures/pg.py)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from domain.operations import OperationSource, OpsState, ReasonCategory
from domain.opscodes import OpsCode
from store.db import create_pool, load_migrations, migrate
from store.errors import StoreConflict, translated_errors
from store.lifecycle import (
    DEFAULT_CLUSTER,
    AdmissionDecision,
    AdmissionRequest,
    AdmissionVerdict,
    CapacityGuard,
    FlowControlRule,
    LeaseResult,
    LifecycleStore,
    StormBreaker,
)
from store.repository import NewOperation, OperationStore
from store.seed import seed_dev_approvers
from tests.fixtures.pg import REPO_ROOT

REGION = "cn-qd-d01"
OTHER_REGION = "cn-qd-d02"
CLUSTER = "ECS-CPU-A-8976"
OTHER_CLUSTER = "ECS-CPU-A-8977"
THIRD_CLUSTER = "ECS-MOC-A-0012"
HOST_A = "10.0.0.1"
HOST_B = "10.0.0.2"
HOST_C = "10.0.0.3"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WEEK = 7 * 24 * 60

REBOOT = OpsCode.NC_FORCED_REBOOT
ENABLED_BY_DEFAULT = {
    OpsCode.NC_FORCED_REBOOT,
    OpsCode.NC_DEEP_OFFLINE,
    OpsCode.NC_DEEP_OFFLINE_COLD,
    OpsCode.FORCED_DOWN_NC_MIGRATION,
}
DISABLED_BY_DEFAULT = {
    OpsCode.NC_LOCK,
    OpsCode.NC_RE_ONLINE,
    OpsCode.VM_RESIDUE_CLEANUP,
    OpsCode.WILD_VM_CLEANUP,
}
WITH_SEEDED_APPROVAL_POLICY = {
    OpsCode.NC_LOCK,
    OpsCode.NC_FORCED_REBOOT,
    OpsCode.NC_RE_ONLINE,
    OpsCode.NC_DEEP_OFFLINE,
    OpsCode.NC_DEEP_OFFLINE_COLD,
    OpsCode.VM_RESIDUE_CLEANUP,
    OpsCode.WILD_VM_CLEANUP,
    OpsCode.DISK_LIVE_MIGRATION,
}


def admission(
    workflow_id: str,
    *,
    minutes: float = 0,
    opscode: OpsCode = REBOOT,
    region: str = REGION,
    cluster: str = CLUSTER,
    nc_ip: str = HOST_A,
    source: OperationSource = OperationSource.MANUAL,
    bypass: bool = False,
) -> AdmissionRequest:
    return AdmissionRequest(
        workflow_id=workflow_id,
        opscode=opscode,
        region_id=region,
        cluster_id=cluster,
        nc_ip=nc_ip,
        source=source,
        at=T0 + timedelta(minutes=minutes),
        bypass_flow_control=bypass,
    )


def rule(**overrides: Any) -> FlowControlRule:
    fields: dict[str, Any] = {
        "opscode": REBOOT,
        "enabled": True,
        "region_window_minutes": 60,
        "region_limit": 1000,
        "cluster_window_minutes": 60,
        "cluster_limit": 1000,
    }
    fields.update(overrides)
    return FlowControlRule(**fields)


async def verdicts_in_table(store: OperationStore) -> dict[str, int]:
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT verdict, count(*) AS n FROM flow_control_admissions GROUP BY verdict")
    return {row["verdict"]: row["n"] for row in rows}


# ---- admissions across processes ------------------------------------------------------------------

# Run by each burst process: `python -c BURST_PROGRAM <database url> <workflow id prefix> <count> <at>`.
BURST_PROGRAM = (
    "import sys; from tests.test_store_lifecycle import admission_burst; admission_burst(sys.argv[1:])"
)


def admission_burst(args: list[str]) -> None:
    """Opens a pool, says "ready", waits for a line on stdin (so both processes fire together), then
    admits ``count`` workflows at once and prints the verdicts' counts as JSON."""
    url, prefix, count, at = args
    asyncio.run(_admission_burst(url, prefix, int(count), datetime.fromisoformat(at)))


async def _admission_burst(url: str, prefix: str, count: int, at: datetime) -> None:
    pool = await create_pool(url, min_size=20, max_size=20)
    try:
        lifecycle = LifecycleStore(pool)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        decisions = await asyncio.gather(
            *(
                lifecycle.admit(
                    AdmissionRequest(
                        workflow_id=f"{prefix}-{n}",
                        opscode=REBOOT,
                        region_id=REGION,
                        cluster_id=CLUSTER,
                        nc_ip=HOST_A,
                        source=OperationSource.MANUAL,
                        at=at,
                    )
                )
                for n in range(count)
            )
        )
        print(json.dumps(Counter(decision.verdict.value for decision in decisions)), flush=True)
    finally:
        await pool.close()


async def test_200_concurrent_admissions_against_a_limit_of_1_admit_exactly_1_across_two_processes(
    store: OperationStore, database_url: str
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(region_limit=1, cluster_limit=1))
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BURST_PROGRAM,
            database_url,
            f"proc{n}",
            "100",
            T0.isoformat(),
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(2)
    ]
    for process in processes:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
    outputs = await asyncio.wait_for(
        asyncio.gather(*(process.communicate(b"go\n") for process in processes)), 60
    )

    assert [process.returncode for process in processes] == [0, 0]
    totals: Counter[str] = Counter()
    for stdout, _ in outputs:
        totals.update(json.loads(stdout.decode().strip().splitlines()[-1]))
    assert totals == {"admitted": 1, "abandoned": 199}
    assert await verdicts_in_table(store) == {"admitted": 1, "abandoned": 199}


# ---- admissions: limits and windows ---------------------------------------------------------------


async def test_a_retried_admission_returns_the_first_decision_replayed_and_counts_once(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(cluster_limit=1))

    first = await store.lifecycle.admit(admission("wf-1"))
    retried = await store.lifecycle.admit(admission("wf-1", minutes=5))
    second = await store.lifecycle.admit(admission("wf-2", minutes=10))
    # Once the window has passed a retry still answers what was decided: a verdict never flips.
    second_retried_later = await store.lifecycle.admit(admission("wf-2", minutes=120))

    assert first.verdict is AdmissionVerdict.ADMITTED and not first.replayed
    assert retried == first.model_copy(update={"replayed": True})
    assert second.verdict is AdmissionVerdict.ABANDONED
    assert second.cluster_count == 1
    assert second_retried_later == second.model_copy(update={"replayed": True})
    assert await verdicts_in_table(store) == {"admitted": 1, "abandoned": 1}
    assert await store.lifecycle.admissions("wf-1") == [retried]


async def test_the_region_window_slides_and_other_regions_proceed(store: OperationStore) -> None:
    await store.lifecycle.set_flow_control_rule(rule(region_limit=1))

    first = await store.lifecycle.admit(admission("wf-1", cluster=CLUSTER))
    same_region = await store.lifecycle.admit(admission("wf-2", minutes=59, cluster=OTHER_CLUSTER))
    other_region = await store.lifecycle.admit(
        admission("wf-3", minutes=59, region=OTHER_REGION, cluster=THIRD_CLUSTER)
    )
    after_the_window = await store.lifecycle.admit(admission("wf-4", minutes=61, cluster=OTHER_CLUSTER))

    assert first.verdict is AdmissionVerdict.ADMITTED
    assert same_region.verdict is AdmissionVerdict.ABANDONED
    assert (
        same_region.reason
        == "region cn-qd-d01 already had 1 of at most 1 0x400012 within 60 min (latest: wf-1)"
    )
    assert (same_region.region_count, same_region.cluster_count) == (1, 0)
    assert other_region.verdict is AdmissionVerdict.ADMITTED
    assert after_the_window.verdict is AdmissionVerdict.ADMITTED
    assert after_the_window.region_count == 0


async def test_the_cluster_window_slides_and_other_clusters_proceed(store: OperationStore) -> None:
    await store.lifecycle.set_flow_control_rule(rule(cluster_limit=1))

    first = await store.lifecycle.admit(admission("wf-1"))
    same_cluster = await store.lifecycle.admit(admission("wf-2", minutes=59, nc_ip=HOST_B))
    other_cluster = await store.lifecycle.admit(admission("wf-3", minutes=59, cluster=OTHER_CLUSTER))
    # The window is (at - 60 min, at]: an admission exactly 60 minutes old has left it.
    window_edge = await store.lifecycle.admit(admission("wf-4", minutes=60, nc_ip=HOST_B))

    assert first.verdict is AdmissionVerdict.ADMITTED
    assert same_cluster.verdict is AdmissionVerdict.ABANDONED
    assert same_cluster.reason == (
        "cluster ECS-CPU-A-8976 already had 1 of at most 1 0x400012 within 60 min (latest: wf-1)"
    )
    assert other_cluster.verdict is AdmissionVerdict.ADMITTED
    assert window_edge.verdict is AdmissionVerdict.ADMITTED


async def test_abandoned_admissions_do_not_count_and_the_reason_names_the_latest_counted_workflow(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(cluster_limit=2))

    verdicts = [(await store.lifecycle.admit(admission(f"wf-{n}", minutes=n))).verdict for n in range(1, 5)]
    fifth = await store.lifecycle.admit(admission("wf-5", minutes=5))

    assert verdicts == [AdmissionVerdict.ADMITTED] * 2 + [AdmissionVerdict.ABANDONED] * 2
    assert fifth.cluster_count == 2
    assert fifth.reason is not None and fifth.reason.endswith("within 60 min (latest: wf-2)")


async def test_the_host_window_stops_one_host_while_other_hosts_in_the_cluster_proceed(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(host_window_minutes=WEEK, host_limit=1))

    first = await store.lifecycle.admit(admission("wf-1", nc_ip=HOST_A))
    same_host = await store.lifecycle.admit(admission("wf-2", minutes=24 * 60, nc_ip=HOST_A))
    other_host = await store.lifecycle.admit(admission("wf-3", minutes=24 * 60, nc_ip=HOST_B))
    next_week = await store.lifecycle.admit(admission("wf-4", minutes=WEEK + 1, nc_ip=HOST_A))

    assert first.verdict is AdmissionVerdict.ADMITTED and first.host_count == 0
    assert same_host.verdict is AdmissionVerdict.ABANDONED
    assert (
        same_host.reason
        == "host 10.0.0.1 already had 1 of at most 1 0x400012 within 10080 min (latest: wf-1)"
    )
    assert other_host.verdict is AdmissionVerdict.ADMITTED
    assert next_week.verdict is AdmissionVerdict.ADMITTED


async def test_a_disabled_rule_or_no_rule_admits_everything_with_nothing_counted(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(enabled=False, region_limit=1, cluster_limit=1))

    disabled = [await store.lifecycle.admit(admission(f"wf-{n}", minutes=n)) for n in range(3)]
    without_rule = await store.lifecycle.admit(admission("wf-defrag", opscode=OpsCode.MEMORY_DEFRAG))

    assert [d.verdict for d in disabled] == [AdmissionVerdict.ADMITTED] * 3
    assert disabled[-1].rule is not None and not disabled[-1].rule.enabled
    assert (disabled[-1].region_count, disabled[-1].cluster_count, disabled[-1].host_count) == (0, 0, None)
    assert without_rule.verdict is AdmissionVerdict.ADMITTED and without_rule.rule is None


async def test_a_bypass_is_admitted_over_the_limit_recorded_as_bypassed_and_counted(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(cluster_limit=1))

    await store.lifecycle.admit(admission("wf-1"))
    bypassed = await store.lifecycle.admit(admission("wf-2", minutes=1, bypass=True))
    after = await store.lifecycle.admit(admission("wf-3", minutes=2))

    assert bypassed.verdict is AdmissionVerdict.ADMITTED and bypassed.bypassed
    assert bypassed.cluster_count == 1  # the evidence of what was bypassed
    # It really ran, so it counts against the next execution.
    assert after.verdict is AdmissionVerdict.ABANDONED and after.cluster_count == 2
    assert after.reason is not None and after.reason.endswith("(latest: wf-2)")
    async with store.pool.acquire() as conn:
        recorded = await conn.fetch(
            "SELECT workflow_id, bypassed, verdict FROM flow_control_admissions ORDER BY id"
        )
    assert [tuple(row) for row in recorded] == [
        ("wf-1", False, "admitted"),
        ("wf-2", True, "admitted"),
        ("wf-3", False, "abandoned"),
    ]


async def test_the_seeded_rule_allows_one_reboot_per_region_per_week(store: OperationStore) -> None:
    first = await store.lifecycle.admit(admission("wf-1"))
    same_week = await store.lifecycle.admit(
        admission("wf-2", minutes=WEEK - 1, cluster=OTHER_CLUSTER, nc_ip=HOST_B)
    )
    next_week = await store.lifecycle.admit(
        admission("wf-3", minutes=WEEK + 1, cluster=OTHER_CLUSTER, nc_ip=HOST_B)
    )

    assert first.verdict is AdmissionVerdict.ADMITTED
    assert same_week.verdict is AdmissionVerdict.ABANDONED
    assert same_week.reason == (
        "region cn-qd-d01 already had 1 of at most 1 0x400012 within 10080 min (latest: wf-1)"
    )
    assert next_week.verdict is AdmissionVerdict.ADMITTED


async def test_a_limit_of_zero_abandons_every_execution_with_a_reason(store: OperationStore) -> None:
    await store.lifecycle.set_flow_control_rule(rule(cluster_limit=0))

    decision = await store.lifecycle.admit(admission("wf-1"))

    assert decision.verdict is AdmissionVerdict.ABANDONED
    assert decision.reason == "cluster ECS-CPU-A-8976 already had 0 of at most 0 0x400012 within 60 min"


def test_an_admission_on_a_clock_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        AdmissionRequest(
            workflow_id="wf-1",
            opscode=REBOOT,
            region_id=REGION,
            cluster_id=CLUSTER,
            nc_ip=HOST_A,
            source=OperationSource.MANUAL,
            at=datetime(2026, 3, 2, 8, 0),
        )


# ---- storm breaker --------------------------------------------------------------------------------


async def test_30_alert_reboots_in_one_cluster_within_an_hour_admit_10_and_hold_20(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(enabled=False))

    decisions: list[AdmissionDecision] = []
    for n in range(30):
        decisions.append(
            await store.lifecycle.admit(
                admission(f"wf-{n}", minutes=n * 1.5, nc_ip=f"10.0.1.{n}", source=OperationSource.ALERT)
            )
        )

    assert [d.verdict for d in decisions] == (
        [AdmissionVerdict.ADMITTED] * 10 + [AdmissionVerdict.HELD_FOR_APPROVAL] * 20
    )
    assert decisions[10].reason == (
        "storm breaker: 10 automatic operations in cluster ECS-CPU-A-8976 within 60 min (threshold 10)"
    )
    assert decisions[29].storm_count == 29  # held ones count: the storm is still going on
    assert decisions[0].storm == StormBreaker(cluster_id=DEFAULT_CLUSTER, threshold=10, window_minutes=60)


async def test_the_storm_breaker_counts_every_opscode_but_never_holds_manual_operations(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_storm_breaker(StormBreaker(cluster_id=CLUSTER, threshold=2))
    for n, opscode in enumerate([OpsCode.NC_LOCK, OpsCode.VM_RESIDUE_CLEANUP]):
        await store.lifecycle.admit(
            admission(f"wf-{n}", opscode=opscode, nc_ip=f"10.0.1.{n}", source=OperationSource.ALERT)
        )

    alert = await store.lifecycle.admit(
        admission("wf-alert", opscode=OpsCode.WILD_VM_CLEANUP, source=OperationSource.ALERT)
    )
    manual = await store.lifecycle.admit(admission("wf-manual", opscode=OpsCode.WILD_VM_CLEANUP))
    scheduled = await store.lifecycle.admit(
        admission("wf-scheduled", opscode=OpsCode.NC_LOCK, nc_ip=HOST_C, source=OperationSource.SCHEDULE)
    )
    an_hour_later = await store.lifecycle.admit(
        admission("wf-later", minutes=60, opscode=OpsCode.NC_LOCK, source=OperationSource.ALERT)
    )

    assert alert.verdict is AdmissionVerdict.HELD_FOR_APPROVAL and alert.storm_count == 2
    assert manual.verdict is AdmissionVerdict.ADMITTED and manual.storm is None
    assert scheduled.verdict is AdmissionVerdict.ADMITTED
    # The window is (at - 60 min, at]: everything admitted or held at T0 has left it.
    assert an_hour_later.verdict is AdmissionVerdict.ADMITTED and an_hour_later.storm_count == 0


async def test_a_clusters_own_storm_breaker_overrides_the_default_row(store: OperationStore) -> None:
    await store.lifecycle.set_flow_control_rule(rule(enabled=False))
    await store.lifecycle.set_storm_breaker(StormBreaker(cluster_id=OTHER_CLUSTER, threshold=2))
    await store.lifecycle.set_storm_breaker(StormBreaker(cluster_id=THIRD_CLUSTER, enabled=False))

    async def burst(cluster: str) -> list[AdmissionVerdict]:
        return [
            (
                await store.lifecycle.admit(
                    admission(f"{cluster}-{n}", minutes=n, cluster=cluster, source=OperationSource.ALERT)
                )
            ).verdict
            for n in range(12)
        ]

    admitted, held = AdmissionVerdict.ADMITTED, AdmissionVerdict.HELD_FOR_APPROVAL
    assert await burst(CLUSTER) == [admitted] * 10 + [held] * 2
    assert await burst(OTHER_CLUSTER) == [admitted] * 2 + [held] * 10
    assert await burst(THIRD_CLUSTER) == [admitted] * 12
    assert (await store.lifecycle.storm_breaker(CLUSTER)).cluster_id == DEFAULT_CLUSTER
    assert await store.lifecycle.storm_breaker(OTHER_CLUSTER) == StormBreaker(
        cluster_id=OTHER_CLUSTER, threshold=2
    )


async def test_editing_the_default_storm_breaker_applies_to_clusters_without_their_own(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_storm_breaker(
        StormBreaker(cluster_id=DEFAULT_CLUSTER, threshold=3, window_minutes=30), updated_by="alice"
    )

    breaker = await store.lifecycle.storm_breaker("ECS-ANY-0001")

    assert breaker == StormBreaker(cluster_id=DEFAULT_CLUSTER, threshold=3, window_minutes=30)


# ---- capacity guard -------------------------------------------------------------------------------


async def test_the_capacity_guard_defaults_to_80_percent_and_a_cluster_row_overrides_it(
    store: OperationStore,
) -> None:
    default = await store.lifecycle.capacity_guard(CLUSTER)
    await store.lifecycle.set_capacity_guard(
        CapacityGuard(cluster_id=OTHER_CLUSTER, min_schedulable_share=0.75), updated_by="alice"
    )
    await store.lifecycle.set_capacity_guard(CapacityGuard(cluster_id=THIRD_CLUSTER, enabled=False))

    assert default == CapacityGuard(cluster_id=DEFAULT_CLUSTER, enabled=True, min_schedulable_share=0.8)
    assert await store.lifecycle.capacity_guard(OTHER_CLUSTER) == CapacityGuard(
        cluster_id=OTHER_CLUSTER, min_schedulable_share=0.75
    )
    assert not (await store.lifecycle.capacity_guard(THIRD_CLUSTER)).enabled
    with pytest.raises(ValidationError):
        CapacityGuard(cluster_id=CLUSTER, min_schedulable_share=1.5)


# ---- approval policies ----------------------------------------------------------------------------


async def test_an_opscode_without_a_row_gets_the_catalog_defaults(store: OperationStore) -> None:
    policy = await store.lifecycle.approval_policy(OpsCode.MEMORY_DEFRAG)

    assert policy.model_dump() == {
        "opscode": OpsCode.MEMORY_DEFRAG,
        "allow_manual_report": True,
        "manual_report_needs_approval": True,
        "approvers": ["ops-admins"],
        "min_approvals": 1,
        "approval_timeout_minutes": 1440,
        "fixed": False,
    }


async def test_the_migrations_seed_an_approval_policy_for_every_opscode_in_scope(
    store: OperationStore,
) -> None:
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM approval_policies")

    assert {OpsCode(row["opscode"]) for row in rows} == WITH_SEEDED_APPROVAL_POLICY
    for row in rows:
        assert row["approvers"] == ["ops-admins"]
        # A lock is reversible and keeps VMs running: a manual one runs without approval.
        needs_approval = row["opscode"] != OpsCode.NC_LOCK.value
        assert (row["allow_manual_report"], row["manual_report_needs_approval"]) == (True, needs_approval)
        assert (row["min_approvals"], row["approval_timeout_minutes"]) == (1, 1440)
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM approver_groups") == 0


async def test_the_fixed_policy_of_auto_unlock_is_never_approved_whatever_its_row_says_and_cannot_be_set(
    store: OperationStore,
) -> None:
    async with store.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO approval_policies (opscode, manual_report_needs_approval, approvers) "
            "VALUES ('0x4000A000000007', true, '{alice}')"
        )

    policy = await store.lifecycle.approval_policy(OpsCode.AUTO_UNLOCK_AFTER_LOCK)
    with pytest.raises(ValueError, match="0x4000A000000007"):
        await store.lifecycle.set_approval_policy(
            OpsCode.AUTO_UNLOCK_AFTER_LOCK, manual_report_needs_approval=True, updated_by="alice"
        )

    assert policy.fixed
    assert policy.allow_manual_report and not policy.manual_report_needs_approval


async def test_setting_an_approval_policy_changes_only_the_fields_given(store: OperationStore) -> None:
    reboot = await store.lifecycle.set_approval_policy(
        REBOOT, approvers=["ops-admins", "carol", "carol"], min_approvals=2, updated_by="alice"
    )
    defrag = await store.lifecycle.set_approval_policy(
        OpsCode.MEMORY_DEFRAG, manual_report_needs_approval=False, updated_by="alice"
    )
    no_manual_reboots = await store.lifecycle.set_approval_policy(
        REBOOT, allow_manual_report=False, updated_by="bob"
    )

    assert (reboot.approvers, reboot.min_approvals, reboot.approval_timeout_minutes) == (
        ["ops-admins", "carol"],
        2,
        1440,
    )
    assert (defrag.manual_report_needs_approval, defrag.approvers) == (False, ["ops-admins"])
    assert no_manual_reboots == reboot.model_copy(update={"allow_manual_report": False})
    assert await store.lifecycle.approval_policy(REBOOT) == no_manual_reboots


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("approvers", [], "at least one user or group"),
        ("min_approvals", 0, "at least 1"),
        ("approval_timeout_minutes", 0, "must be positive"),
    ],
)
async def test_an_approval_policy_that_nobody_could_satisfy_is_refused(
    store: OperationStore, field: str, value: Any, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        await store.lifecycle.set_approval_policy(REBOOT, updated_by="alice", **{field: value})

    assert (await store.lifecycle.approval_policy(REBOOT)).min_approvals == 1


async def test_resolving_approvers_expands_groups_and_keeps_users(store: OperationStore) -> None:
    await store.lifecycle.set_approver_group("sre", ["carol", "bob", "carol"], updated_by="alice")
    await store.lifecycle.set_approver_group("nobody", [])

    resolved = await store.lifecycle.resolve_approvers(["sre", "alice", "bob", "nobody"])

    assert resolved == ["alice", "bob", "carol"]


async def test_seeding_the_dev_approvers_makes_ops_admins_three_people_and_can_be_repeated(
    store: OperationStore,
) -> None:
    await seed_dev_approvers(store)
    await seed_dev_approvers(store.lifecycle)

    resolved = await store.lifecycle.resolve_approvers(["ops-admins"])

    assert resolved == ["admin", "approver1", "approver2"]


async def test_the_seed_command_migrates_and_seeds_the_dev_approvers(database_url: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "store.seed",
        "--dev-approvers",
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0, stderr.decode()
    latest = load_migrations()[-1].version
    assert f"schema at version {latest}" in stdout.decode()
    assert "approver group ops-admins = admin, approver1, approver2" in stdout.decode()
    store = await OperationStore.connect(database_url)
    try:
        assert await store.lifecycle.resolve_approvers(["ops-admins"]) == ["admin", "approver1", "approver2"]
    finally:
        await store.close()


# ---- host leases ----------------------------------------------------------------------------------


async def test_a_host_lease_is_held_by_one_workflow_until_it_releases_it(store: OperationStore) -> None:
    leases = store.lifecycle

    first = await leases.acquire_lease(
        nc_ip=HOST_A, nc_id="14783-4", cluster_id=CLUSTER, workflow_id="wf-1", opscode=OpsCode.NC_LOCK
    )
    refused = await leases.acquire_lease(
        nc_ip=HOST_A, nc_id="14783-4", cluster_id=CLUSTER, workflow_id="wf-2", opscode=REBOOT
    )
    again = await leases.acquire_lease(
        nc_ip=HOST_A, nc_id="14783-4", cluster_id=CLUSTER, workflow_id="wf-1", opscode=OpsCode.NC_LOCK
    )
    released_by_other = await leases.release_lease(nc_ip=HOST_A, workflow_id="wf-2")
    released = await leases.release_lease(nc_ip=HOST_A, workflow_id="wf-1")
    released_again = await leases.release_lease(nc_ip=HOST_A, workflow_id="wf-1")
    after = await leases.acquire_lease(
        nc_ip=HOST_A, nc_id="14783-4", cluster_id=CLUSTER, workflow_id="wf-2", opscode=REBOOT
    )

    assert first.acquired and first.holder.workflow_id == "wf-1"
    assert first.holder.opscode is OpsCode.NC_LOCK and first.holder.nc_id == "14783-4"
    assert not refused.acquired and refused.holder == first.holder
    assert again.acquired and again.holder == first.holder
    assert (released_by_other, released, released_again) == (False, True, False)
    assert after.acquired and after.holder.workflow_id == "wf-2"


async def test_taking_over_a_lease_succeeds_only_from_the_workflow_that_still_holds_it(
    store: OperationStore,
) -> None:
    leases = store.lifecycle
    await leases.acquire_lease(
        nc_ip=HOST_A, nc_id=None, cluster_id=CLUSTER, workflow_id="wf-1", opscode=REBOOT
    )

    async def take_over(from_workflow_id: str, workflow_id: str, nc_ip: str = HOST_A) -> LeaseResult:
        return await leases.take_over_lease(
            nc_ip=nc_ip,
            from_workflow_id=from_workflow_id,
            nc_id="14783-4",
            cluster_id=CLUSTER,
            workflow_id=workflow_id,
            opscode=OpsCode.NC_LOCK,
        )

    stale = await take_over("wf-0", "wf-3")
    taken = await take_over("wf-1", "wf-2")
    retried = await take_over("wf-1", "wf-2")
    nobody_held_it = await take_over("wf-9", "wf-4", nc_ip=HOST_B)

    assert not stale.acquired and stale.holder.workflow_id == "wf-1"
    assert taken.acquired and taken.holder.workflow_id == "wf-2"
    assert (taken.holder.opscode, taken.holder.nc_id) == (OpsCode.NC_LOCK, "14783-4")
    assert retried.acquired and retried.holder == taken.holder
    assert nobody_held_it.acquired and nobody_held_it.holder.workflow_id == "wf-4"
    assert await leases.lease(HOST_A) == taken.holder


async def test_leases_in_a_cluster_list_the_hosts_held_there_and_a_workflow_releases_all_of_its_own(
    store: OperationStore,
) -> None:
    leases = store.lifecycle
    for nc_ip, cluster, workflow_id in [
        (HOST_A, CLUSTER, "wf-1"),
        (HOST_B, CLUSTER, "wf-1"),
        (HOST_C, OTHER_CLUSTER, "wf-2"),
    ]:
        await leases.acquire_lease(
            nc_ip=nc_ip, nc_id=None, cluster_id=cluster, workflow_id=workflow_id, opscode=OpsCode.NC_RE_ONLINE
        )

    in_cluster = await leases.leases_in_cluster(CLUSTER)
    released = await leases.release_leases_of("wf-1")

    assert sorted(lease.nc_ip for lease in in_cluster) == [HOST_A, HOST_B]
    assert released == [HOST_A, HOST_B]
    assert await leases.leases_in_cluster(CLUSTER) == []
    assert [lease.nc_ip for lease in await leases.leases_in_cluster(OTHER_CLUSTER)] == [HOST_C]


async def test_50_concurrent_acquires_of_one_host_give_it_to_exactly_one_workflow(
    store: OperationStore,
) -> None:
    results = await asyncio.gather(
        *(
            store.lifecycle.acquire_lease(
                nc_ip=HOST_A, nc_id=None, cluster_id=CLUSTER, workflow_id=f"wf-{n}", opscode=REBOOT
            )
            for n in range(50)
        )
    )

    winners = [result.holder for result in results if result.acquired]
    assert len(winners) == 1
    assert {result.holder for result in results} == {winners[0]}


# ---- schema ---------------------------------------------------------------------------------------


async def test_the_migrations_seed_the_recommended_flow_control_rules_and_default_breakers(
    store: OperationStore,
) -> None:
    rules = {opscode: await store.lifecycle.flow_control_rule(opscode) for opscode in OpsCode}

    for opscode in ENABLED_BY_DEFAULT | DISABLED_BY_DEFAULT:
        assert rules[opscode] == FlowControlRule(
            opscode=opscode,
            enabled=opscode in ENABLED_BY_DEFAULT,
            region_window_minutes=WEEK,
            region_limit=1,
            cluster_window_minutes=WEEK,
            cluster_limit=1,
        )
    assert {opscode for opscode, found in rules.items() if found is None} == (
        set(OpsCode) - ENABLED_BY_DEFAULT - DISABLED_BY_DEFAULT
    )
    assert await store.lifecycle.storm_breaker(CLUSTER) == StormBreaker(cluster_id=DEFAULT_CLUSTER)


async def test_setting_a_flow_control_rule_replaces_it_whole(store: OperationStore) -> None:
    replaced = rule(host_window_minutes=WEEK, host_limit=1, region_limit=5)
    await store.lifecycle.set_flow_control_rule(replaced, updated_by="alice")
    await store.lifecycle.set_flow_control_rule(rule(region_limit=7), updated_by="bob")

    assert await store.lifecycle.flow_control_rule(REBOOT) == rule(region_limit=7)
    with pytest.raises(ValidationError, match="set together"):
        rule(host_window_minutes=WEEK)


async def test_the_state_check_accepts_expired_and_rejects_the_old_timed_out(store: OperationStore) -> None:
    await store.record_operation(
        NewOperation(
            workflow_id="wf-1",
            opscode=REBOOT,
            workflow_type="NcForcedReboot",
            source=OperationSource.MANUAL,
            requester="alice",
            reason_category=ReasonCategory.HANG,
        )
    )

    expired = await store.set_operation_state("wf-1", OpsState.EXPIRED)
    async with store.pool.acquire() as conn:
        with pytest.raises(StoreConflict) as raised, translated_errors("forcing TimedOut"):
            await conn.execute("UPDATE operations SET state = 'TimedOut' WHERE workflow_id = 'wf-1'")

    assert expired.state is OpsState.EXPIRED and expired.finished_at is not None
    assert raised.value.constraint == "operations_state_check"


async def test_the_lifecycle_migration_turns_timed_out_operations_into_expired_ones(
    database_url: str,
) -> None:
    migrations = load_migrations()
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, [m for m in migrations if m.version < 3])
        await conn.execute(
            "INSERT INTO operations (workflow_id, opscode, workflow_type, source, requester, reason_category, "
            "state) VALUES ('wf-1', '0x400012', 'NcForcedReboot', 'manual', 'alice', 'hang', 'TimedOut')"
        )
        await migrate(conn, migrations)
        state = await conn.fetchval("SELECT state FROM operations WHERE workflow_id = 'wf-1'")
    finally:
        await conn.close()

    assert state == "Expired"


async def test_a_voided_admission_gives_its_flow_control_slot_back_but_still_counts_for_the_storm(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(region_limit=1, cluster_limit=1))
    await store.lifecycle.set_storm_breaker(StormBreaker(cluster_id=CLUSTER, threshold=1, window_minutes=60))
    rejected = await store.lifecycle.admit(admission("wf-rejected", source=OperationSource.ALERT))
    assert rejected.verdict is AdmissionVerdict.ADMITTED

    assert await store.lifecycle.void_admissions("wf-rejected", "Rejected") == 1
    assert await store.lifecycle.void_admissions("wf-rejected", "Rejected") == 0, "voiding is idempotent"

    manual = await store.lifecycle.admit(admission("wf-next", minutes=1))
    # A lock (no flow control) from an alert: the storm breaker still counts the rejected alert.
    automatic = await store.lifecycle.admit(
        admission("wf-alert", minutes=2, opscode=OpsCode.NC_LOCK, nc_ip=HOST_B, source=OperationSource.ALERT)
    )
    assert manual.verdict is AdmissionVerdict.ADMITTED and manual.cluster_count == 0
    assert automatic.verdict is AdmissionVerdict.HELD_FOR_APPROVAL and automatic.storm_count == 1


async def test_voiding_a_multi_host_operation_voids_each_of_its_hosts_admissions(
    store: OperationStore,
) -> None:
    await store.lifecycle.set_flow_control_rule(rule(region_limit=5, cluster_limit=5))
    for host in (HOST_A, HOST_B):
        await store.lifecycle.admit(admission(f"wf-multi/{host}", nc_ip=host))
    await store.lifecycle.admit(admission("wf-multiple", nc_ip=HOST_A))

    assert await store.lifecycle.void_admissions("wf-multi", "Expired") == 2
    assert (
        await store.lifecycle.admit(admission("wf-after", minutes=1))
    ).cluster_count == 1  # only wf-multiple
