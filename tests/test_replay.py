"""Histories recorded from real runs (tests/histories/, see record.py) must replay on today's workflow code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

# This module defines a workflow, so the sandbox imports it again: what it imports passes through, as in
# the workflow modules (structlog would pull rich, which draws random numbers at import).
with workflow.unsafe.imports_passed_through():
    from activities.nc import LockNcInput, NcActivities
    from worker import WORKFLOWS
    from workflows.common import HOUYI_WRITE

pytestmark = pytest.mark.reliability

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_every_workflow_path_has_a_recorded_history() -> None:
    assert {p.stem for p in HISTORIES} >= {
        "nc_lock_succeeded",
        "nc_lock_refused_wrong_status",
        "nc_lock_refused_invalid_input",
        "nc_lock_failed_lock_race",
        "nc_forced_reboot_succeeded",
        "nc_forced_reboot_abandoned",
        "nc_forced_reboot_rejected",
        "nc_re_online_step_retried",
        "nc_deep_offline_succeeded",
        "nc_deep_offline_cold_waited_for_window",
        "nc_deep_offline_stuck_corrected",
        "whole_host_migration_relaunched",
        "vm_residue_cleanup_destroyed",
        "wild_vm_cleanup_swept",
        "nc_unlock_succeeded",
        "disk_live_migration_succeeded",
        "disk_live_migration_refused_shared",
        "disk_recycle_recycled_and_skipped",
        # Recorded before workflow.patched("void-unexecuted-admissions"): they must still replay.
        "nc_forced_reboot_rejected_before_void_patch",
        "nc_forced_reboot_abandoned_before_void_patch",
        # Recorded with workflow.patched("ops-step-search-attribute") in force.
        "nc_forced_reboot_step_retried_with_ops_step",
        # ... and with workflow.patched("upsert-only-changed-search-attributes").
        "nc_forced_reboot_step_retried_upserts_changed_only",
        # ... and with workflow.patched("local-store-writes").
        "nc_forced_reboot_step_retried_local_store_writes",
        # ... and with "ops-step-where-it-stops" and "running-again-after-operator".
        "nc_forced_reboot_step_retried_ops_step_at_stops",
        # ... and with "patch-checks-at-start" (every patch checked in the first workflow task), as a deep
        # offline too.
        "nc_forced_reboot_step_retried_patch_checks_at_start",
        "nc_deep_offline_succeeded_patch_checks_at_start",
        # A deep offline cancelled during its live migrations, before and with "lanes-end-together".
        "nc_deep_offline_cancelled_in_live_migration_before_lanes_patch",
        "nc_deep_offline_cancelled_in_live_migration",
        # A re-online of four hosts with "batched-host-planning" (nc_re_online_step_retried: before it).
        "nc_re_online_batched_planning",
    }
    recorded_types = {
        json.loads(p.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"][
            "name"
        ]
        for p in HISTORIES
    }
    assert recorded_types == {getattr(cls, "__temporal_workflow_definition").name for cls in WORKFLOWS}


@pytest.fixture(scope="module")
def replays() -> dict[str, str | None]:
    """Every history replayed in a fresh process (tests/histories/replay.py says why)."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.histories.replay"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return {r["history"]: r["failure"] for r in results}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
def test_recorded_history_replays(path: Path, replays: dict[str, str | None]) -> None:
    assert path.stem in replays, f"{path.stem} was not replayed"
    assert replays[path.stem] is None, f"{path.stem}: {replays[path.stem]}"


@workflow.defn(name="NcLock")
class NcLockWithoutPrecheck:
    """NcLock changed without ``workflow.patched``: it locks before describing the host."""

    @workflow.run
    async def run(self, raw_input: Any) -> None:
        await workflow.execute_activity_method(
            NcActivities.lock_nc,
            LockNcInput(
                caller=workflow.info().workflow_id, step="LockNc", nc_id="1-1", nc_ip=raw_input["nc_ip"]
            ),
            **HOUYI_WRITE,
        )


async def test_a_change_without_patched_fails_replay() -> None:
    replayer = Replayer(workflows=[NcLockWithoutPrecheck], data_converter=pydantic_data_converter)
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(load(Path(__file__).parent / "histories" / "nc_lock_succeeded.json"))
