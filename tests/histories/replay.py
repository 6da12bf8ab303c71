"""Replays every recorded history on today's workflow code, in a process of its own, and prints one JSON
line per history: ``{"history": name, "failure": null | "..."}``.

    .venv/bin/python -m tests.histories.replay

tests/test_replay.py runs it as a subprocess: a replay shares the SDK runtime with whatever else the
process runs, and inside the full test suite one replay once reported a nondeterminism that no replay in a
process of its own ever did (hundreds of runs). CI replays like a deployment check would: fresh.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from worker import WORKFLOW_RUNNER, WORKFLOWS

HERE = Path(__file__).parent


async def main() -> None:
    for path in sorted(HERE.glob("*.json")):
        replayer = Replayer(
            workflows=list(WORKFLOWS), workflow_runner=WORKFLOW_RUNNER, data_converter=pydantic_data_converter
        )
        history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        failure = None if result.replay_failure is None else str(result.replay_failure)
        print(json.dumps({"history": path.stem, "failure": failure}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
