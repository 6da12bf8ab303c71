"""The bare workflow of bench.overhead: no-op activities in the shape of a deep offline, nothing else.

A module of its own, as small as the workflow, passed through the sandbox as ours are (bench.overhead's
``BARE_RUNNER``, worker.WORKFLOW_RUNNER): neither kind re-imports its workflow's module for every new run.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy, SearchAttributeKey


@activity.defn(name="BareCall")
async def bare_call(request: dict[str, Any]) -> str:
    """Does nothing; answers ``reply`` bytes (0 for the plain bare runs)."""
    return "x" * int(request["reply"])


@workflow.defn(name="BareOverhead")
class BareOverheadWorkflow:
    """Runs ``tasks``, one workflow task's commands after the other: its local activities one after the
    other, its search-attribute upserts (none for the plain bare runs), then its activities all at once
    (``[input bytes, result bytes]`` each, ``[0, 0]`` for the plain bare runs)."""

    @workflow.run
    async def run(self, tasks: list[dict[str, Any]]) -> int:
        done = 0
        for task in tasks:
            for size_in, size_out in task["local"]:
                await workflow.execute_local_activity(
                    bare_call,
                    {"pad": "x" * size_in, "reply": size_out},
                    start_to_close_timeout=timedelta(seconds=30),
                )
                done += 1
            for upsert in task["upserts"]:
                workflow.upsert_search_attributes(
                    [SearchAttributeKey.for_keyword(name).value_set(value) for name, value in upsert.items()]
                )
            calls = task["calls"]
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        bare_call, {"pad": "x" * size_in, "reply": size_out}, **activity_options(options)
                    )
                    for size_in, size_out, options in calls
                )
            )
            done += len(calls)
        return done


def activity_options(options: dict[str, Any]) -> dict[str, Any]:
    """``execute_activity`` keywords from the timeouts (seconds) and retry policy ``history_tasks`` read."""
    keywords: dict[str, Any] = {
        name: timedelta(seconds=seconds) for name, seconds in options.items() if name.endswith("_timeout")
    }
    if "retry" in options:
        retry = options["retry"]
        keywords["retry_policy"] = RetryPolicy(
            initial_interval=timedelta(seconds=retry["initial_interval"]),
            maximum_interval=timedelta(seconds=retry["maximum_interval"])
            if retry["maximum_interval"]
            else None,
            backoff_coefficient=retry["backoff_coefficient"],
            maximum_attempts=retry["maximum_attempts"],
        )
    return keywords
