"""Fuzzing every workflow's input and settings, from the README's paste-ready examples.

- In memory (hypothesis, hundreds of cases): a mutated input (a field set to any JSON value, dropped, an
  unknown field or setting added, the whole input replaced) is either accepted or refused with
  ``InvalidInput``/``InvalidSettings`` and a message naming the field that was changed.
- On the dev server with a real worker, simulator and store (a sample, plus hand-picked nasty ones: NUL
  characters, a 10 KB host, deep nesting, a list, null): each workflow ends at once, failed with that
  refusal, its history holds no failed workflow task (no task-failure loop), nothing is sent to Houyi
  but reads, and the refusal is in the audit log.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from temporalio import workflow as temporal_workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain import errors
from domain.operations import InputRefused, parse_input
from houyi.http_client import HttpHouyiClient
from store.repository import OperationStore
from tests.helpers import SimulatorAdmin
from tests.readme_examples import examples
from worker import WORKFLOWS, build_worker
from workflows.disk_recycle import DiskRecycleInput

pytestmark = pytest.mark.reliability

REFUSALS = {errors.INVALID_INPUT, errors.INVALID_SETTINGS}


def input_model(workflow_class: type) -> type[BaseModel]:
    model: type[BaseModel] = getattr(workflow_class, "INPUT", DiskRecycleInput)
    return model


MODELS = {
    temporal_workflow._Definition.must_from_class(cls).name: input_model(cls)  # type: ignore[attr-defined]
    for cls in WORKFLOWS
}
EXAMPLES = {example["type"]: example["input"] for example in examples()}


def test_every_workflow_type_has_a_readme_example_to_fuzz_from() -> None:
    assert set(EXAMPLES) == set(MODELS), set(MODELS) ^ set(EXAMPLES)


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value: scalars of every kind (huge, negative, empty, unicode), lists and objects."""
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3 and roll < 0.3:
        return {
            rng.choice(["a", "nc_ip", "", "parallel", "\u00e9"]): json_value(rng, depth + 1) for _ in range(2)
        }
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            1,
            2**31,
            2**63,
            -(2**70),
            0.5,
            -3.25,
            1e308,
            "",
            " ",
            "x",
            "10.12.16.11",
            "10.0.0.300",
            "999.1.1.1",
            "a" * 300,
            "\u4e2d\u6587",
            "0x410A01",
            "null",
            "[]",
            "{}",
            "nul\x00byte",
        ]  # fmt: skip
    )


def mutate(rng: random.Random) -> tuple[str, Any, str | None]:
    """(workflow type, mutated input, the field or setting the mutation touched; None: the whole input)."""
    workflow_type = rng.choice(sorted(EXAMPLES))
    raw: Any = copy.deepcopy(EXAMPLES[workflow_type])
    kind = rng.choice(["set", "drop", "unknown", "setting", "unknown_setting", "whole"])
    fields = sorted(raw)
    if kind == "whole" or not fields:
        return workflow_type, json_value(rng), None
    if kind in ("set", "drop"):
        field = rng.choice(fields)
        if kind == "set":
            raw[field] = json_value(rng)
        else:
            del raw[field]
        return workflow_type, raw, field
    if kind == "unknown":
        field = "x_" + "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 8)))
        raw[field] = json_value(rng)
        return workflow_type, raw, field
    current = raw.get("settings")
    if not isinstance(current, dict):
        # An input without settings gets some: what is wrong then is the settings field itself.
        raw["settings"] = {"x": json_value(rng)}
        return workflow_type, raw, "settings"
    if kind == "setting" and current:
        name = rng.choice(sorted(current))
    else:
        name = "x" + "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 8)))
    current[name] = json_value(rng)
    return workflow_type, raw, name


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_a_mutated_input_is_accepted_or_refused_naming_what_is_wrong(rng: random.Random) -> None:
    workflow_type, raw, field = mutate(rng)
    model = MODELS[workflow_type]
    try:
        parsed = parse_input(model, raw)
    except InputRefused as refused:
        assert refused.error_type in REFUSALS, refused.error_type
        message = str(refused)
        assert message.startswith(("invalid ", "input must be a JSON object")), message
        if field is not None:
            assert field in message, (field, message)
        return
    # Accepted: it is a well-formed request of that type, and it survives the trip through JSON.
    assert model.model_validate(json.loads(parsed.model_dump_json(by_alias=True))) == parsed


# ---- the same on the dev server, whole workflows ----------------------------------------------------


NASTY: list[tuple[str, Any]] = [
    ("NcLock", None),
    ("NcLock", ["10.12.16.11"]),
    ("NcLock", "10.12.16.11"),
    ("NcLock", {**EXAMPLES["NcLock"], "nc_ip": "10.12.16.11" * 1000}),
    ("NcLock", {**EXAMPLES["NcLock"], "reason": "bad\u0000byte"}),
    ("NcLock", {**EXAMPLES["NcLock"], "nc_ip": "10.0.\u00000.1"}),
    ("NcForcedReboot", {**EXAMPLES["NcForcedReboot"], "settings": {"needDumpCn": {"a": [[[[[[1]]]]]]}}}),
    ("NcReOnline", {**EXAMPLES["NcReOnline"], "nc_ips": [f"10.1.{i // 250}.{i % 250}" for i in range(5000)]}),
    ("NcDeepOffline", {**EXAMPLES["NcDeepOffline"], "settings": {"parallel": 10**30}}),
    ("DiskLiveMigration", {**EXAMPLES["DiskLiveMigration"], "disk_id": "\u202e" * 300}),
    ("DiskRecycle", {"dry_run": "sometimes", "parallel": -1}),
    ("WildVmCleanup", {**EXAMPLES["WildVmCleanup"], "requester": ""}),
]


def sampled_cases(count: int, seed: int) -> list[tuple[str, Any]]:
    """Invalid inputs drawn by the same mutations (accepted ones are left out: they would really run)."""
    rng = random.Random(seed)
    found: list[tuple[str, Any]] = []
    while len(found) < count:
        workflow_type, raw, _ = mutate(rng)
        try:
            parse_input(MODELS[workflow_type], raw)
        except InputRefused:
            found.append((workflow_type, raw))
    return found


@pytest.fixture
async def fuzz_worker(
    dev_server_env: WorkflowEnvironment, simulator: Any, store: OperationStore, task_queue: str
) -> AsyncIterator[Worker]:
    async with HttpHouyiClient(simulator.url, recorder=store) as houyi:
        worker = build_worker(dev_server_env.client, task_queue, houyi=houyi, store=store)
        async with worker:
            yield worker


MUTATING = (
    "lock",
    "unlock",
    "power",
    "migrate",
    "destroy",
    "snapshot",
    "delete",
    "recycle",
    "set_nc",
    "dump",
)


async def test_invalid_inputs_end_their_workflows_at_once_without_a_task_failure_loop(
    dev_server_env: WorkflowEnvironment, fuzz_worker: Worker, admin: SimulatorAdmin, store: OperationStore
) -> None:
    client: Client = dev_server_env.client
    before = await admin.counters()
    cases = NASTY + sampled_cases(12, seed=20261125)
    outcomes = await asyncio.gather(
        *(run_refused(client, fuzz_worker.task_queue, t, raw) for t, raw in cases)
    )
    problems = [outcome for outcome in outcomes if outcome is not None]
    assert problems == [], problems
    after = await admin.counters()
    changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    assert not [k for k in changed if any(word in k for word in MUTATING)], changed
    refusals = [a for a in await store.list_audit() if a.action == "refuse"]
    # DiskRecycle refuses without an audit row (it has no operation row either); every other one is audited.
    assert len(refusals) == len([c for c in cases if c[0] != "DiskRecycle"])


async def run_refused(client: Client, task_queue: str, workflow_type: str, raw: Any) -> str | None:
    """None when the workflow ended at once refused as it should; else what went wrong."""
    handle = await client.start_workflow(
        workflow_type, raw, id=f"fuzz-{workflow_type}-{uuid.uuid4().hex[:8]}", task_queue=task_queue
    )
    try:
        await asyncio.wait_for(handle.result(), timeout=60)
    except WorkflowFailureError as failure:
        cause = failure.cause
        if not isinstance(cause, ApplicationError) or cause.type not in REFUSALS:
            return f"{workflow_type}: ended with {cause!r}"
    except TimeoutError:
        pass
    else:
        return f"{workflow_type}: accepted {str(raw)[:200]}"
    task_failures = [
        event.workflow_task_failed_event_attributes.failure.message
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]
    if task_failures:
        return f"{workflow_type}: {len(task_failures)} workflow task failure(s): {task_failures[0][:300]}"
    description = await handle.describe()
    if description.close_time is None:
        return f"{workflow_type}: still open after 60 s"
    return None
