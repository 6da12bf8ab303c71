"""The simulator's client tokens, injected faults and reset: what our retries and tests rely on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest_asyncio

from houyi.wire import Code
from simulator.server import RunningSimulator
from tests.fixtures.simulator import SimulatorClient, open_client


@pytest_asyncio.fixture
async def houyi(small_simulator: RunningSimulator) -> AsyncIterator[SimulatorClient]:
    async with open_client(small_simulator) as client:
        yield client


async def lock_applied(houyi: SimulatorClient, nc: str = "100-1") -> int:
    counters: int = (await houyi.nc(nc))["counters"]["lock_applied"]
    return counters


# ---- client tokens -----------------------------------------------------------------------------------------


async def test_a_repeated_token_gets_the_first_answer_without_acting_again(houyi: SimulatorClient) -> None:
    first = await houyi.call("lock_nc", nc_id="100-1", client_token="wf-1/LockNc")
    second = await houyi.call("lock_nc", nc_id="100-1", client_token="wf-1/LockNc", caller="someone-else")
    assert first.code == Code.OK and second == first  # same data, same requestId
    assert await lock_applied(houyi) == 1
    counters = await houyi.counters()
    assert counters["token_replays"] == 1 and counters["executed"]["lock_nc"] == 1
    assert counters["calls"]["lock_nc"] == {"200": 2}


async def test_a_token_reused_for_other_parameters_is_refused(houyi: SimulatorClient) -> None:
    await houyi.call("lock_nc", nc_id="100-1", client_token="t")
    other_host = await houyi.call("lock_nc", nc_id="100-2", client_token="t")
    other_action = await houyi.call("unlock_nc", nc_id="100-1", client_token="t")
    for answer in (other_host, other_action):
        assert answer.code == Code.INVALID_PARAMETER
        assert "client_token t reused with different parameters" in answer.msg
    assert (await houyi.nc("100-2"))["biz_status"] == "free"


async def test_a_business_refusal_is_remembered_too(houyi: SimulatorClient) -> None:
    refusal = await houyi.call("lock_nc", nc_id="100-4", client_token="t")
    assert refusal.code == Code.WRONG_STATE
    # Even once the host could be locked, the token keeps its first answer.
    await houyi.call("unlock_nc", nc_id="100-4", client_token="u")
    assert await houyi.call("lock_nc", nc_id="100-4", client_token="t") == refusal


async def test_a_repeat_during_the_first_call_waits_for_it_and_acts_once(houyi: SimulatorClient) -> None:
    await houyi.inject(action="lock_nc", kind="latency", latency_seconds=0.3, count=1)
    first = asyncio.create_task(houyi.call("lock_nc", nc_id="100-1", client_token="wf-2/LockNc"))
    await houyi.wait_inflight("lock_nc")
    assert (await houyi.nc("100-1"))["biz_status"] == "free"  # held, not acted yet
    repeat = asyncio.create_task(houyi.call("lock_nc", nc_id="100-1", client_token="wf-2/LockNc"))
    await houyi.wait_inflight("lock_nc", count=2)
    first_answer, repeat_answer = await asyncio.gather(first, repeat)
    assert first_answer.code == Code.OK and repeat_answer == first_answer
    assert await lock_applied(houyi) == 1
    counters = await houyi.counters()
    assert (
        counters["executed"]["lock_nc"] == 1 and counters["token_replays"] == 1 and counters["inflight"] == {}
    )


async def test_an_injected_error_is_not_remembered_so_the_retry_acts(houyi: SimulatorClient) -> None:
    await houyi.inject(action="lock_nc", code=429, message="distribute lock fail", count=2)
    answers = [await houyi.call("lock_nc", nc_id="100-1", client_token="wf-3/LockNc") for _ in range(3)]
    assert [(a.code, a.msg) for a in answers[:2]] == [(429, "distribute lock fail")] * 2
    assert answers[2].code == Code.OK
    assert await lock_applied(houyi) == 1
    assert (await houyi.counters())["calls"]["lock_nc"] == {"200": 1, "429": 2}


async def test_reads_are_never_answered_from_the_token_cache(houyi: SimulatorClient) -> None:
    before = await houyi.call("describe_nc", nc_id="100-1", client_token="read")
    await houyi.call("lock_nc", nc_id="100-1", client_token="lock")
    after = await houyi.call("describe_nc", nc_id="100-1", client_token="read")
    assert before.request_id != after.request_id
    assert after.data["nc"]["biz_status"] == "mlock"


# ---- faults ------------------------------------------------------------------------------------------------


async def test_an_error_fault_hits_count_calls_then_stops(houyi: SimulatorClient) -> None:
    fault = await houyi.inject(action="describe_nc", code=503, message="backend down", count=2)
    assert fault["remaining"] == 2 and fault["kind"] == "error"
    codes = [(await houyi.call("describe_nc", nc_id="100-1")).code for _ in range(4)]
    assert codes == [503, 503, 200, 200]
    listed = (await houyi.get("/admin/faults"))["faults"]
    assert [(f["hits"], f["remaining"]) for f in listed] == [(2, 0)]


async def test_an_error_rate_hits_some_calls_reproducibly(small_simulator: RunningSimulator) -> None:
    async def run() -> list[int]:
        small_simulator.reset()
        async with open_client(small_simulator) as houyi:
            await houyi.inject(action="describe_nc", code=500, error_rate=0.5)
            return [(await houyi.call("describe_nc", nc_id="100-1")).code for _ in range(40)]

    first, second = await run(), await run()
    assert first == second  # seeded: the same calls are hit after a reset
    assert 5 < first.count(500) < 35


async def test_a_fault_can_target_one_host(houyi: SimulatorClient) -> None:
    await houyi.inject(action="lock_nc", code=429, nc_id="100-2")
    assert (await houyi.call("lock_nc", nc_id="100-1", client_token="a")).code == Code.OK
    assert (await houyi.call("lock_nc", nc_id="100-2", client_token="b")).code == Code.THROTTLED
    # A VM's call is about the VM's host.
    await houyi.inject(action="stop_vm", code=503, nc_id="100-6")
    assert (await houyi.call("stop_vm", vm_name="i-half00000001", client_token="c")).code == Code.UNAVAILABLE
    assert (await houyi.call("stop_vm", vm_name="i-plain0000001", client_token="d")).code == Code.OK


async def test_latency_holds_the_call_in_flight_then_acts(houyi: SimulatorClient) -> None:
    await houyi.inject(action="lock_nc", kind="latency", latency_seconds=0.2, count=1)
    started = time.monotonic()
    call = asyncio.create_task(houyi.call("lock_nc", nc_id="100-1", client_token="t"))
    await houyi.wait_inflight("lock_nc")
    assert (await houyi.counters())["inflight"] == {"lock_nc": 1}
    assert (await call).code == Code.OK
    assert time.monotonic() - started >= 0.2
    assert await lock_applied(houyi) == 1


async def test_a_hang_answers_504_after_a_while_without_acting(houyi: SimulatorClient) -> None:
    await houyi.inject(action="lock_nc", kind="hang", hang_seconds=0.2, count=1)
    answer = await houyi.call("lock_nc", nc_id="100-1", client_token="t")
    assert (answer.code, answer.msg) == (Code.TIMEOUT, "request timed out")
    assert await lock_applied(houyi) == 0
    # The hang did nothing, so the retry with the same token acts.
    assert (await houyi.call("lock_nc", nc_id="100-1", client_token="t")).code == Code.OK


async def test_bad_faults_are_refused_with_a_reason(houyi: SimulatorClient) -> None:
    for body, reason in (
        ({"action": "reboot_everything"}, "action"),
        ({"action": "lock_nc", "error_rate": 2}, "error_rate"),
        ({"action": "lock_nc", "kind": "latency"}, "latency_seconds > 0"),
        ({"action": "lock_nc", "kind": "stuck"}, "live_migrate_vm only"),
        ({"action": "lock_nc", "colour": "red"}, "colour"),
        ({"action": "lock_nc", "code": 200}, "code"),
    ):
        status, answer = await houyi.admin("POST", "/admin/faults", json=body)
        assert status == 400 and reason in answer["error"], (body, answer)


async def test_faults_can_be_listed_and_cleared(houyi: SimulatorClient) -> None:
    status, added = await houyi.admin(
        "POST",
        "/admin/faults",
        json=[{"action": "lock_nc"}, {"action": "stop_vm", "kind": "hang", "hang_seconds": 1}],
    )
    assert status == 201 and [f["fault_id"] for f in added["faults"]] == [1, 2]
    assert len((await houyi.get("/admin/faults"))["faults"]) == 2
    assert (await houyi.admin("DELETE", "/admin/faults"))[0] == 200
    assert (await houyi.get("/admin/faults"))["faults"] == []
    assert (await houyi.call("lock_nc", nc_id="100-1", client_token="t")).code == Code.OK


# ---- reset -------------------------------------------------------------------------------------------------


async def test_reset_reloads_the_fleet_and_forgets_everything(houyi: SimulatorClient) -> None:
    await houyi.call("lock_nc", nc_id="100-1", client_token="t")
    await houyi.call("live_migrate_vm", vm_name="i-huge00000001", rate=1, client_token="m")
    await houyi.inject(action="describe_nc", code=500)
    status, body = await houyi.admin("POST", "/admin/reset")
    assert status == 200 and body["fleet"].startswith("fleet small:")

    host = await houyi.nc("100-1")
    assert host["biz_status"] == "free" and host["counters"]["lock_applied"] == 0
    assert (await houyi.get("/admin/faults"))["faults"] == []
    counters = await houyi.counters()
    assert counters["calls"] == {} and counters["token_replays"] == 0 and counters["tokens_remembered"] == 0
    assert (await houyi.call("get_live_migration_progress", vm_name="i-huge00000001")).code == Code.NOT_FOUND
    # The token is forgotten: the same token acts again.
    assert (await houyi.call("lock_nc", nc_id="100-1", client_token="t")).code == Code.OK
    assert (await houyi.nc("100-1"))["counters"]["lock_applied"] == 1


async def test_a_call_held_across_a_reset_does_not_touch_the_new_fleet(
    houyi: SimulatorClient, small_simulator: RunningSimulator
) -> None:
    await houyi.inject(action="lock_nc", kind="latency", latency_seconds=0.2, count=1)
    held = asyncio.create_task(houyi.call("lock_nc", nc_id="100-1", client_token="t"))
    await houyi.wait_inflight("lock_nc")
    small_simulator.reset()
    assert (await houyi.counters())["inflight"] == {}
    assert (await held).code == Code.OK
    assert (await houyi.nc("100-1"))["biz_status"] == "free"
    assert (await houyi.counters())["calls"] == {}
