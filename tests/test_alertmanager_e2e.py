"""A real Prometheus Alertmanager (Debian's prometheus-alertmanager, installed by the test setup where
missing) configured with our webhook: the same alert fired again and again at two replicas that do not
gossip (each notifies on its own, and repeats every few seconds) becomes exactly one operation; once
resolved it is recorded and starts nothing."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from deploy.processes import ManagedProcess, free_port, http_ok
from store.intake import IntakeStore
from tests.fixtures.intake import IntakeUnderTest
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def config(intake: IntakeUnderTest) -> str:
    return f"""
route:
  receiver: ecs-opsflow
  group_by: [alertname, nc_ip]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: ecs-opsflow
    webhook_configs:
      - url: {intake.url}/v1/alertmanager
        send_resolved: true
        max_alerts: 0
        http_config:
          authorization:
            type: Bearer
            credentials: {intake.tokens["alertmanager"]}
"""


@pytest.fixture
async def replicas(
    alertmanager_binary: str, intake: IntakeUnderTest, tmp_path: Path
) -> AsyncIterator[list[str]]:
    (tmp_path / "alertmanager.yml").write_text(config(intake))
    started: list[ManagedProcess] = []
    urls = []
    for index in (1, 2):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = ManagedProcess(
            f"alertmanager-{index}",
            [
                alertmanager_binary,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / f'am{index}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # no gossip: each replica notifies on its own
                "--log.level=warn",
            ],
            log_path=tmp_path / f"alertmanager-{index}.log",
            ready_check=functools.partial(http_ok, f"{url}/-/ready"),
        )
        process.start()
        started.append(process)
        await process.wait_ready(timeout=30)
        urls.append(url)
    yield urls
    for process in started:
        process.terminate()


async def fire(urls: list[str], nc_ip: str, starts: datetime, ends: datetime | None = None) -> None:
    alert = {
        "labels": {"alertname": "nc_hang_exception", "nc_ip": nc_ip, "severity": "P1"},
        "annotations": {"summary": f"{nc_ip} stopped answering"},
        "startsAt": starts.isoformat(),
        "generatorURL": "http://prometheus.example:9090/graph",
    }
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.post(f"{url}/api/v2/alerts", json=[alert]) as response:
                assert response.status == 200, await response.text()


async def test_one_alert_from_two_replicas_again_and_again_is_one_operation_and_resolving_starts_nothing(
    intake: IntakeUnderTest, replicas: list[str]
) -> None:
    nc_ip = next(nc["nc_ip"] for nc in await intake.admin.ncs() if nc["biz_status"] == "free")
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    receipts = IntakeStore.of(intake.store)

    for _ in range(4):  # Prometheus re-sends firing alerts to every replica on each evaluation
        await fire(replicas, nc_ip, starts)
        await asyncio.sleep(1.5)

    async def delivered_often() -> None:
        (receipt,) = [r for r in await receipts.receipts() if r.status == "firing"]
        assert receipt.deliveries >= 4, receipt  # two replicas, each repeating
        assert receipt.outcome == "started"

    await eventually(delivered_often, within=30, interval=0.5)

    async def one_operation() -> None:
        assert await intake.workflows() == [f"0x400012-{nc_ip}"]

    await eventually(one_operation, within=15)

    await fire(replicas, nc_ip, starts, ends=datetime.now(UTC) - timedelta(seconds=1))

    async def resolved() -> None:
        statuses = {r.status: r for r in await receipts.receipts()}
        assert "resolved" in statuses, statuses
        assert statuses["resolved"].outcome == "resolved" and statuses["resolved"].workflow_id is None

    await eventually(resolved, within=30, interval=0.5)
    await asyncio.sleep(3)  # more repeats of the resolved notification, if any, start nothing either
    assert await intake.workflows() == [f"0x400012-{nc_ip}"]
    firing = [r for r in await receipts.receipts() if r.status == "firing"]
    assert len(firing) == 1, "one distinct alert"
