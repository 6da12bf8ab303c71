"""scratch"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain.operations import OpsState
from houyi.http_client import HttpHouyiClient
from store.repository import OperationStore
from store.seed import seed_dev_approvers
from tests.lifecycle_helpers import Simulator, approve, command, reboot_input, start, status_of, wait_state
from worker import build_worker


@pytest.fixture
async def admin(simulator: Any) -> Simulator:
    return Simulator(simulator.url)


@pytest.fixture
async def worker(
    time_skipping_env: WorkflowEnvironment, simulator: Any, store: OperationStore, task_queue: str
) -> AsyncIterator[Worker]:
    await seed_dev_approvers(store)
    async with HttpHouyiClient(simulator.url, recorder=store) as houyi:
        built = build_worker(
            time_skipping_env.client, task_queue, houyi=houyi, store=store, power_poll_seconds=0.05
        )
        async with built:
            yield built


async def test_exp(
    time_skipping_env: WorkflowEnvironment, worker: Worker, admin: Simulator, store: OperationStore
) -> None:
    env = time_skipping_env
    nc = await admin.first_nc("free")
    t = time.monotonic()
    h = await start(env.client, "NcForcedReboot", reboot_input(nc["nc_ip"]), worker.task_queue)
    st = await wait_state(h, OpsState.PENDING_APPROVAL)
    print("pending after", time.monotonic() - t, st.markdown())
    await admin.inject(action="oob_power_cycle", code=500, message="bmc down")
    await approve(h)
    t = time.monotonic()
    from datetime import timedelta

    st = await wait_state(h, OpsState.STEP_FAILED, env=env, skip=timedelta(seconds=5), within=30)
    print("stepfailed after", time.monotonic() - t, st.markdown())
    print(await env.get_current_time())
    await admin.clear_faults()
    await command(h, "retry_step", None)
    t = time.monotonic()
    r = await h.result()
    print("done after", time.monotonic() - t, r)
    print((await status_of(h)).markdown())
