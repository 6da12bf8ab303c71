"""The real HTTP adapter against the real simulator over loopback: data, every error class, idempotency, audit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from domain.model import NcBizStatus, NcDetail
from houyi.errors import (
    HouyiInvalidParameter,
    HouyiNotFound,
    HouyiProtocolError,
    HouyiThrottled,
    HouyiUnavailable,
    HouyiUnsupported,
    HouyiWrongState,
)
from houyi.http_client import HttpHouyiClient
from houyi.port import CallContext, MissingIdempotencyToken
from store.errors import StoreUnavailable
from store.repository import OperationStore
from tests.helpers import SimulatorAdmin

CALLER = CallContext(caller="test-caller")


@pytest.fixture
async def houyi(simulator: Any, store: OperationStore) -> AsyncIterator[HttpHouyiClient]:
    async with HttpHouyiClient(simulator.url, recorder=store, timeout_seconds=5) as client:
        yield client


async def test_describe_nc_by_ip_and_by_id_returns_the_host_and_its_vms(
    houyi: HttpHouyiClient, admin: SimulatorAdmin
) -> None:
    listed = await admin.first_nc("free")
    by_ip = await houyi.describe_nc(CALLER, nc_ip=listed["nc_ip"])
    by_id = await houyi.describe_nc(CALLER, nc_id=listed["nc_id"])
    assert isinstance(by_ip, NcDetail)
    assert by_ip.nc.nc_id == listed["nc_id"] and by_ip.nc.biz_status is NcBizStatus.FREE
    assert by_ip == by_id
    assert {vm.vm_id for vm in by_ip.vms} == {vm["vm_id"] for vm in (await admin.nc(listed["nc_ip"]))["vms"]}
    assert all(vm.nc_id == listed["nc_id"] for vm in by_ip.vms)


async def test_list_ncs_filters_by_cluster(houyi: HttpHouyiClient, admin: SimulatorAdmin) -> None:
    fleet = await admin.ncs()
    cluster = fleet[0]["cluster_id"]
    ncs = await houyi.list_ncs(CALLER, cluster_id=cluster)
    assert {nc.nc_ip for nc in ncs} == {nc["nc_ip"] for nc in fleet if nc["cluster_id"] == cluster}


async def test_unknown_host_is_not_found(houyi: HttpHouyiClient) -> None:
    with pytest.raises(HouyiNotFound) as caught:
        await houyi.describe_nc(CALLER, nc_ip="10.250.250.250")
    assert not caught.value.retryable and "10.250.250.250" in caught.value.message


async def test_locking_a_locked_host_is_wrong_state(houyi: HttpHouyiClient, admin: SimulatorAdmin) -> None:
    locked = await admin.first_nc("mlock")
    with pytest.raises(HouyiWrongState) as caught:
        await houyi.lock_nc(CALLER.step("LockNc"), nc_id=locked["nc_id"])
    assert "mlock" in caught.value.message and not caught.value.retryable


async def test_live_migrating_a_gpu_vm_is_unsupported(houyi: HttpHouyiClient, simulator: Any) -> None:
    gpu_vm = next(vm for vm in simulator.fleet.vms.values() if "gpu" in [str(d) for d in vm.devices])
    with pytest.raises(HouyiUnsupported) as caught:
        await houyi.live_migrate_vm(CALLER.step("OpsEvnLiveMigrate"), vm_id=gpu_vm.vm_id)
    assert "gpu" in caught.value.message


async def test_a_bad_parameter_is_invalid(houyi: HttpHouyiClient, simulator: Any) -> None:
    vm = next(iter(simulator.fleet.vms.values()))
    with pytest.raises(HouyiInvalidParameter) as caught:
        await houyi.live_migrate_vm(CALLER.step("m"), vm_id=vm.vm_id, downtime=100)
    assert "downtime" in caught.value.message


async def test_distribute_lock_fail_is_throttled_and_retryable(
    houyi: HttpHouyiClient, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    await admin.inject(action="lock_nc", code=429, message="distribute lock fail", count=1)
    with pytest.raises(HouyiThrottled) as caught:
        await houyi.lock_nc(CALLER.step("LockNc"), nc_id=nc["nc_id"])
    assert caught.value.retryable and caught.value.retry_after_seconds
    # The fault was not an execution: the same token now locks, once.
    change = await houyi.lock_nc(CALLER.step("LockNc"), nc_id=nc["nc_id"])
    assert change.status_after is NcBizStatus.MLOCK
    assert (await admin.nc(nc["nc_ip"]))["counters"]["lock_applied"] == 1


@pytest.mark.parametrize("code", [500, 503])
async def test_server_errors_are_unavailable_and_retryable(
    houyi: HttpHouyiClient, admin: SimulatorAdmin, code: int
) -> None:
    nc = await admin.first_nc("free")
    await admin.inject(action="describe_nc", code=code, message="backend down", count=1)
    with pytest.raises(HouyiUnavailable) as caught:
        await houyi.describe_nc(CALLER, nc_ip=nc["nc_ip"])
    assert caught.value.retryable and caught.value.code == code


async def test_a_hung_call_times_out_as_unavailable(simulator: Any, admin: SimulatorAdmin) -> None:
    nc = await admin.first_nc("free")
    await admin.inject(action="describe_nc", kind="hang", hang_seconds=3, count=1)
    async with HttpHouyiClient(simulator.url, timeout_seconds=0.3) as client:
        with pytest.raises(HouyiUnavailable, match="no answer within"):
            await client.describe_nc(CALLER, nc_ip=nc["nc_ip"])


async def test_a_refused_connection_is_unavailable(unused_tcp_port: int) -> None:
    async with HttpHouyiClient(f"http://127.0.0.1:{unused_tcp_port}", timeout_seconds=2) as client:
        with pytest.raises(HouyiUnavailable, match="transport error"):
            await client.describe_nc(CALLER, nc_ip="10.0.0.1")


async def test_an_answer_that_is_not_an_envelope_is_a_protocol_error(unused_tcp_port: int) -> None:
    # A proxy's error page in front of Houyi: a real HTTP server that does not speak the protocol.
    async def proxy_page(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>maintenance</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/go2hyapi/{action}", proxy_page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        async with HttpHouyiClient(f"http://127.0.0.1:{unused_tcp_port}") as client:
            with pytest.raises(HouyiProtocolError, match="expected <rsp>"):
                await client.describe_nc(CALLER, nc_ip="10.0.0.1")
    finally:
        await runner.cleanup()


async def test_a_mutation_without_a_token_is_refused_before_sending(
    houyi: HttpHouyiClient, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    before = await admin.counters()
    with pytest.raises(MissingIdempotencyToken):
        await houyi.lock_nc(CALLER, nc_id=nc["nc_id"])
    assert await admin.counters() == before
    assert (await admin.nc(nc["nc_ip"]))["biz_status"] == "free"


async def test_a_repeated_token_is_answered_not_executed(
    houyi: HttpHouyiClient, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    ctx = CallContext(caller="wf-idem").step("LockNc")
    first = await houyi.lock_nc(ctx, nc_id=nc["nc_id"])
    second = await houyi.lock_nc(ctx, nc_id=nc["nc_id"])
    assert first == second and first.status_before is NcBizStatus.FREE
    assert (await admin.nc(nc["nc_ip"]))["counters"]["lock_applied"] == 1
    assert (await admin.counters())["token_replays"] >= 1


async def test_every_call_is_recorded_for_the_audit(
    houyi: HttpHouyiClient, admin: SimulatorAdmin, store: OperationStore
) -> None:
    nc = await admin.first_nc("free")
    ctx = CallContext(caller="wf-audit")
    await houyi.describe_nc(ctx, nc_ip=nc["nc_ip"])
    await houyi.lock_nc(ctx.step("LockNc"), nc_id=nc["nc_id"])
    with pytest.raises(HouyiWrongState):
        await houyi.lock_nc(ctx.step("LockNcAgain"), nc_id=nc["nc_id"])

    calls = await store.list_houyi_calls(caller="wf-audit")
    assert [(c.action, c.code) for c in calls] == [("describe_nc", 200), ("lock_nc", 200), ("lock_nc", 409)]
    describe, lock, refused = calls
    assert describe.params == {"nc_ip": nc["nc_ip"]} and describe.token is None
    assert lock.token == "wf-audit/LockNc" and lock.params == {"nc_id": nc["nc_id"], "status": "mlock"}
    assert all(c.request_id and c.latency_ms > 0 for c in calls)
    assert "mlock" in refused.message


class StoreThatIsDownAtFirst:
    """The real store behind a switch: down (StoreUnavailable) for the first ``down_for`` write attempts."""

    def __init__(self, store: OperationStore, down_for: int) -> None:
        self.store, self.down_for = store, down_for

    async def record_houyi_call(self, call: Any) -> None:
        if self.down_for > 0:
            self.down_for -= 1
            raise StoreUnavailable("connection refused (test)")
        await self.store.record_houyi_call(call)


async def test_a_call_whose_record_cannot_be_written_still_succeeds_and_is_recorded_later(
    simulator: Any, store: OperationStore, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    async with HttpHouyiClient(
        simulator.url, recorder=StoreThatIsDownAtFirst(store, 3), timeout_seconds=5
    ) as client:
        caller = CallContext(caller="outage-test")
        await client.describe_nc(caller, nc_ip=nc["nc_ip"])  # store down: kept back
        await client.list_ncs(caller)  # store still down: kept back
        assert await store.list_houyi_calls(caller="outage-test") == []
        await client.describe_nc(caller, nc_id=nc["nc_id"])  # store back: all three, in call order
    recorded = await store.list_houyi_calls(caller="outage-test")
    assert [c.action for c in recorded] == ["describe_nc", "list_ncs", "describe_nc"]


async def test_concurrent_calls_during_an_outage_record_each_row_exactly_once(
    simulator: Any, store: OperationStore, admin: SimulatorAdmin
) -> None:
    nc = await admin.first_nc("free")
    async with HttpHouyiClient(
        simulator.url, recorder=StoreThatIsDownAtFirst(store, 8), timeout_seconds=5
    ) as client:
        caller = CallContext(caller="outage-burst")
        await asyncio.gather(*(client.describe_nc(caller, nc_ip=nc["nc_ip"]) for _ in range(50)))
        await client.list_ncs(caller)  # after the burst: writes whatever is still kept back
    recorded = await store.list_houyi_calls(caller="outage-burst")
    assert len(recorded) == 51
    assert len({(c.action, c.request_id) for c in recorded}) == 51, "a row written twice"
