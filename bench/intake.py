"""Intake throughput: 2,000 Alertmanager webhooks from 20 concurrent clients, half of them duplicates.

    .venv/bin/python -m bench.intake            # writes bench/results/intake.md and intake.json

The intake runs in this process (aiohttp on loopback) against the Temporal dev server and PostgreSQL, as
in production; no worker polls the task queue, so what is measured is the front door: claim the alert,
match the rule, validate, start the workflow. 1,000 distinct alerts (each a host of its own) are each sent
twice, the copies shuffled among the 20 clients. Printed: accepted alerts/s, p50/p99 latency, and, in the
same run, the dev server's raw ``start_workflow`` rate (20 concurrent starters, 1,000 workflows): the
intake's throughput as a share of it. Checked: exactly 1,000 operations started, 1,000 deduplicated.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web
from temporalio.client import Client

from bench.harness import dev_server, fresh_database
from bench.report import row, write_results_json
from deploy.processes import free_port
from runtime.logging import configure_logging
from starter.app import Intake
from starter.auth import Tokens
from store.repository import OperationStore

DISTINCT = 1000
COPIES = 2
CLIENTS = 20
RESULTS = Path(__file__).parent / "results" / "intake.md"


def alert(index: int) -> dict[str, object]:
    nc_ip = f"10.{200 + index // 65536}.{index // 256 % 256}.{index % 256}"
    return {
        "version": "4",
        "status": "firing",
        "receiver": "ecs-opsflow",
        "groupKey": f'{{}}:{{alertname="nc_hang_exception",nc_ip="{nc_ip}"}}',
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "nc_hang_exception", "nc_ip": nc_ip},
                "annotations": {"summary": "hang"},
                "startsAt": "2026-11-25T03:00:00Z",
                "fingerprint": f"bench{index:06d}",
            }
        ],
    }


async def post_all(url: str, token: str, bodies: list[bytes]) -> tuple[float, list[float], dict[str, int]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def client() -> None:
        async with aiohttp.ClientSession(headers=headers) as session:
            while not queue.empty():
                body = queue.get_nowait()
                began = time.perf_counter()
                async with session.post(f"{url}/v1/alertmanager", data=body) as response:
                    answer = await response.json()
                latencies.append(time.perf_counter() - began)
                assert response.status == 200, answer
                for result in answer["results"]:
                    outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return time.perf_counter() - began, latencies, outcomes


async def raw_starts(client: Client, task_queue: str) -> float:
    """Starts per second of bare ``start_workflow`` calls, CLIENTS at a time."""
    ids = iter(range(DISTINCT))

    async def starter() -> None:
        for index in ids:
            await client.start_workflow(
                "NcForcedReboot", {"raw": index}, id=f"raw-{uuid.uuid4()}", task_queue=task_queue
            )

    began = time.perf_counter()
    await asyncio.gather(*(starter() for _ in range(CLIENTS)))
    return DISTINCT / (time.perf_counter() - began)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main(token: str, tokens_file: Path) -> None:
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    env = await dev_server()
    store = await OperationStore.connect((await fresh_database()).url)
    task_queue = f"bench-intake-{uuid.uuid4()}"
    intake = Intake(env.client, store, Tokens.load(tokens_file), task_queue=task_queue)
    runner = web.AppRunner(intake.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        bodies = [json.dumps(alert(i)).encode() for i in range(DISTINCT) for _ in range(COPIES)]
        random.Random(7).shuffle(bodies)
        wall, latencies, outcomes = await post_all(f"http://127.0.0.1:{port}", token, bodies)
        raw_rate = await raw_starts(env.client, f"{task_queue}-raw")
        started = 0
        async for _ in env.client.list_workflows(f"TaskQueue = '{task_queue}'"):
            started += 1
    finally:
        await runner.cleanup()
        await store.close()
        await env.shutdown()
    rate = len(bodies) / wall
    p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
    distinct_rate = outcomes.get("started", 0) / wall
    exact = outcomes.get("started") == DISTINCT and outcomes.get("deduplicated") == DISTINCT * (COPIES - 1)
    lines = [
        "# Intake throughput (bench/intake.py)",
        "",
        f"{len(bodies)} Alertmanager webhooks ({DISTINCT} distinct alerts x {COPIES}) from {CLIENTS} concurrent "
        "clients over loopback; intake in-process against the Temporal dev server (SQLite in memory) and "
        "PostgreSQL; no worker. Raw rate: bare `start_workflow` calls, same concurrency, same run.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| accepted alerts/s (started + deduplicated) | {rate:.0f} |",
        f"| operations started/s | {distinct_rate:.0f} |",
        f"| latency p50 / p99 (ms) | {p50:.1f} / {p99:.1f} |",
        f"| outcomes | {json.dumps(outcomes, sort_keys=True)} |",
        f"| workflows on the task queue (visibility) | {started} |",
        f"| raw start_workflow/s | {raw_rate:.0f} |",
        f"| intake starts/s as a share of raw | {distinct_rate / raw_rate:.2f} |",
        f"| exactly the distinct ones started | {'yes' if exact else 'NO'} |",
        "",
        f"Machine load average (1 min) when the run began: {load_before:.2f}.",
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    write_results_json(
        "intake",
        "bench.intake",
        time.monotonic() - began,
        [
            row(
                f"accepted alerts/s ({DISTINCT:,} distinct x {COPIES}: 50% duplicates)",
                round(rate, 1),
                "alerts/s",
            ),
            row("operations started/s", round(distinct_rate, 1), "ops/s"),
            row("webhook latency p50", round(p50, 1), "ms"),
            row("webhook latency p99", round(p99, 1), "ms"),
            row("raw start_workflow/s (same run, same concurrency)", round(raw_rate, 1), "starts/s"),
            row("intake starts/s / raw start_workflow/s", round(distinct_rate / raw_rate, 3), "x"),
            row(
                "operations started (one per distinct alert)",
                outcomes.get("started", 0),
                "operations",
                f"== {DISTINCT}",
            ),
            row(
                "duplicate alerts deduplicated",
                outcomes.get("deduplicated", 0),
                "alerts",
                f"== {DISTINCT * (COPIES - 1)}",
            ),
        ],
        load_before=load_before,
    )
    print("\n".join(lines))
    if not exact:
        raise SystemExit(f"deduplication failed: {outcomes}")


def run() -> None:
    configure_logging("WARNING")  # one line per alert would measure the terminal, not the intake
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        tokens_file = Path(tmp) / "tokens.json"
        tokens_file.write_text(json.dumps({token: {"identity": "alertmanager", "roles": ["alertmanager"]}}))
        asyncio.run(main(token, tokens_file))


if __name__ == "__main__":
    run()
