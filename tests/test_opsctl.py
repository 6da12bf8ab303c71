"""``opsctl`` as an engineer runs it (a process of its own) against the dev stack: dev server, worker
process, demo simulator, PostgreSQL. Every command; ``watch`` follows a deep offline to its end; a batch
unlock of 10 hosts previews, asks, and unlocks exactly those 10 (and nothing when told no)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from typing import Any

import pytest

from deploy.devstack import NC_DEEP_OFFLINE_EXAMPLE_INPUT, deep_offline_example_host
from domain.opscodes import OpsCode
from simulator.server import RunningSimulator
from store.repository import OperationStore
from tests.fixtures.stack import Stack
from tests.helpers import SimulatorAdmin, eventually

pytestmark = pytest.mark.e2e


class Opsctl:
    def __init__(self, stack: Stack, database_url: str) -> None:
        self.env = {
            **os.environ,
            "TEMPORAL_ADDRESS": stack.address,
            "OPSFLOW_TASK_QUEUE": stack.task_queue,
            "DATABASE_URL": database_url,
        }

    async def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "opsctl", *args, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=120)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        code, out, err = await self("--json", *args)
        assert code == 0, err
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def opsctl(stack: Stack, database_url: str) -> Opsctl:
    return Opsctl(stack, database_url)


async def free_ips(admin: SimulatorAdmin, count: int) -> list[str]:
    found = [nc["nc_ip"] for nc in await admin.ncs() if nc["biz_status"] == "free"]
    assert len(found) >= count
    return found[:count]


async def test_submit_status_approve_and_list(
    opsctl: Opsctl, admin: SimulatorAdmin, store_view: OperationStore
) -> None:
    a, b = await free_ips(admin, 2)
    code, out, err = await opsctl(
        "submit",
        "0x400012",
        "--host",
        a,
        "--reason-category",
        "hang",
        "--reason",
        "hung",
        "--as",
        "alice",
        "--setting",
        "needDumpCn=0",
    )
    assert code == 0, err
    assert f"0x400012-{a}" in out and "started" in out

    async def pending() -> str:
        code, out, _ = await opsctl("status", f"0x400012-{a}")
        assert code == 0 and "state PendingApproval" in out, out
        return out

    shown = await eventually(pending, within=30)
    assert "STEP" in shown and "PowerCycleNc" in shown
    code, out, err = await opsctl("approve", f"0x400012-{a}", "--as", "alice")
    assert code == 1 and "refused" in err, (out, err)  # the requester cannot approve
    code, out, err = await opsctl("approve", f"0x400012-{a}", "--as", "approver1", "--comment", "go")
    assert code == 0 and "1 of 1 approval(s)" in out, err
    code, out, err = await opsctl("watch", f"0x400012-{a}", "--interval", "0.2")
    assert code == 0 and f"=== 0x400012-{a} ended Succeeded" in out, (out, err)

    code, out, err = await opsctl(
        "submit", "NcLock", "--host", b, "--reason-category", "hardware", "--as", "alice", "--wait"
    )
    assert code == 0, err
    listed = await opsctl.json("list", "--host", b)
    assert [(r["workflow_id"], r["state"]) for r in listed] == [(f"0x410A01-{b}", "Succeeded")]
    listed = await opsctl.json("list", "--opscode", "0x400012", "--since-hours", "1")
    assert [r["workflow_id"] for r in listed] == [f"0x400012-{a}"]


async def test_bad_input_exits_2_naming_the_problem(opsctl: Opsctl) -> None:
    cases = [
        (("submit", "0x999999", "--host", "10.0.0.1", "--reason-category", "hang", "--as", "alice"), "unknown opscode '0x999999'"),
        (("submit", "0x400012", "--host", "10.0.0.300", "--reason-category", "hang", "--as", "alice"), "'10.0.0.300' is not an IPv4 address"),
        (("submit", "0x400012", "--host", "10.0.0.1", "--reason-category", "cosmic", "--as", "alice"), "reason_category"),
        (("submit", "0x400012", "--host", "10.0.0.1", "--reason-category", "hang", "--as", "alice", "--setting", "preLock=7"), "settings.preLock"),
        (("list", "--state", "Sleeping"), "--state: one of Validating"),
        (("config", "set-window", "--cluster", "C", "--weekday", "9", "--start", "02:00", "--minutes", "60", "--as", "alice"), "weekday"),
        (("batch", "unlock", "--as", "alice"), "give --hosts"),
    ]  # fmt: skip
    for args, fragment in cases:
        code, out, err = await opsctl(*args)
        assert code == 2 and fragment in err, (args, code, out, err)
    code, _, err = await opsctl("status", "0x400012-10.9.9.9")
    assert code == 1 and "no operation 0x400012-10.9.9.9" in err


async def test_watch_shows_a_deep_offline_progressing_to_its_end(opsctl: Opsctl, stack: Stack) -> None:
    nc_ip = deep_offline_example_host()
    raw = {"nc_ip": nc_ip, **NC_DEEP_OFFLINE_EXAMPLE_INPUT}
    settings = [f"{k}={v}" for k, v in raw["settings"].items()]
    code, out, err = await opsctl(
        "submit", "0x400003", "--host", nc_ip, "--reason-category", "hardware", "--reason", raw["reason"],
        "--as", "alice", *(x for s in settings for x in ("--setting", s)),
    )  # fmt: skip
    assert code == 0, err
    workflow_id = f"0x400003-{nc_ip}"

    async def pending() -> None:
        code, out, _ = await opsctl("status", workflow_id)
        assert "PendingApproval" in out, out

    await eventually(pending, within=30)
    watching = asyncio.create_task(opsctl("watch", workflow_id, "--interval", "0.2"))
    await asyncio.sleep(1)
    code, _, err = await opsctl("approve", workflow_id, "--as", "approver1")
    assert code == 0, err
    code, out, err = await watching

    assert code == 0, err
    tables = out.split("--- ")
    assert len(tables) >= 4, out  # the table changed as the steps ran
    assert "OpsEvnLiveMigrate  running" in out or "OpsEvnLiveMigrate running" in " ".join(out.split())
    assert f"=== {workflow_id} ended Succeeded" in out
    final = tables[-1]
    assert final.count("succeeded") == 13


async def test_retry_skip_and_cancel(opsctl: Opsctl, admin: SimulatorAdmin) -> None:
    a, b = await free_ips(admin, 2)
    # Two reboots in one cluster: the recommended 1 per week would abandon the second.
    assert (await opsctl("config", "set-flow-control", "0x400012", "--enabled", "false", "--as", "test"))[
        0
    ] == 0
    await admin.inject(action="oob_power_cycle", code=500, message="BMC down", count=20)
    await opsctl("submit", "0x400012", "--host", a, "--reason-category", "hang", "--as", "alice")
    code, _, err = await opsctl("approve", f"0x400012-{a}", "--as", "approver1")

    async def step_failed() -> None:
        code, out, _ = await opsctl("status", f"0x400012-{a}")
        assert "state StepFailed" in out, out

    if code != 0:  # not pending yet
        await eventually(lambda: opsctl("approve", f"0x400012-{a}", "--as", "approver1"), within=20)
    await eventually(step_failed, within=60)
    code, out, err = await opsctl("skip-step", f"0x400012-{a}", "--as", "admin")
    assert code == 1 and "cannot be skipped" in err, (out, err)
    await admin.clear_faults()
    code, out, err = await opsctl("retry-step", f"0x400012-{a}", "--as", "admin")
    assert code == 0, err
    code, out, err = await opsctl("watch", f"0x400012-{a}", "--interval", "0.2")
    assert code == 0 and "ended Succeeded" in out, (out, err)

    await opsctl("submit", "0x400012", "--host", b, "--reason-category", "hang", "--as", "alice")

    async def pending_b() -> None:
        code, out, _ = await opsctl("status", f"0x400012-{b}")
        assert "PendingApproval" in out

    await eventually(pending_b, within=30)
    code, out, err = await opsctl("cancel", f"0x400012-{b}")
    assert code == 0 and "cancel requested" in out, err
    code, out, _ = await opsctl("watch", f"0x400012-{b}", "--interval", "0.2")
    assert code == 1 and "ended Cancelled" in out


async def test_config_shows_and_changes_with_validation(opsctl: Opsctl) -> None:
    rules = await opsctl.json("config", "show", "alert-rules")
    assert {r["name"] for r in rules} >= {"nc-hang-reboot", "hardware-lock"}
    code, _, err = await opsctl(
        "config", "set-alert-rule", "qemu-residue", "--alertname", "vm_monitor_qemu_exception", "--opscode",
        "0x10001000008002", "--reason-category", "system", "--match", "severity=P2", "--setting", "preLock=0",
        "--as", "admin",
    )  # fmt: skip
    assert code == 0, err
    rules = {r["name"]: r for r in await opsctl.json("config", "show", "alert-rules")}
    assert (
        rules["qemu-residue"]["match"] == {"severity": "P2"}
        and rules["qemu-residue"]["opscode"] == "0x10001000008002"
    )
    code, _, err = await opsctl(
        "config",
        "set-alert-rule",
        "bad",
        "--alertname",
        "x",
        "--opscode",
        "0x400012",
        "--reason-category",
        "cosmic",
        "--as",
        "admin",
    )
    assert code == 2 and "reason_category" in err
    assert (await opsctl("config", "remove-alert-rule", "qemu-residue", "--as", "admin"))[0] == 0
    assert (await opsctl("config", "remove-alert-rule", "qemu-residue", "--as", "admin"))[0] == 1

    assert (await opsctl("config", "set-flow-control", "0x400012", "--cluster-limit", "3", "--as", "admin"))[
        0
    ] == 0
    flow = {r["opscode"]: r for r in await opsctl.json("config", "show", "flow-control")}
    assert flow["0x400012"]["cluster_limit"] == 3 and flow["0x400012"]["region_limit"] == 1
    code, _, err = await opsctl(
        "config", "set-flow-control", "0x400012", "--cluster-limit", "-1", "--as", "admin"
    )
    assert code == 2 and "cluster_limit" in err

    assert (await opsctl("config", "set-approval", "0x410A01", "--min-approvals", "2", "--as", "admin"))[
        0
    ] == 0
    policies = {r["opscode"]: r for r in await opsctl.json("config", "show", "approval")}
    assert policies["0x410A01"]["min_approvals"] == 2

    code, _, err = await opsctl(
        "config",
        "set-window",
        "--cluster",
        "ECS-CPU-A-8976",
        "--weekday",
        "3",
        "--start",
        "02:00",
        "--minutes",
        "240",
        "--tz",
        "Asia/Shanghai",
        "--as",
        "admin",
    )
    assert code == 0, err
    windows = await opsctl.json("config", "show", "windows")
    assert any(w["cluster_id"] == "ECS-CPU-A-8976" and "02:00" in w["window"] for w in windows)


async def test_a_batch_unlock_of_ten_hosts_previews_asks_and_unlocks_exactly_those(
    opsctl: Opsctl, admin: SimulatorAdmin, simulator: RunningSimulator
) -> None:
    ten = await free_ips(admin, 10)
    for ip in ten:
        await admin.patch_nc(ip, biz_status="mlock")
    before = {nc["nc_ip"]: nc["biz_status"] for nc in await admin.ncs()}
    hosts = ",".join(ten)

    code, out, _ = await opsctl("batch", "unlock", "--hosts", hosts, "--as", "admin", stdin="n\n")
    assert code == 0 and "Proceed with unlock of 10? [y/N]" in out and "nothing done" in out
    assert all(ip in out for ip in ten)
    assert {nc["nc_ip"]: nc["biz_status"] for nc in await admin.ncs()} == before

    code, out, err = await opsctl("batch", "unlock", "--hosts", hosts, "--as", "admin", "--wait", stdin="y\n")

    assert code == 0, (out, err)
    after = {nc["nc_ip"]: nc["biz_status"] for nc in await admin.ncs()}
    assert {ip for ip in after if after[ip] != before[ip]} == set(ten)
    assert {after[ip] for ip in ten} == {"free"}
    assert out.count(OpsCode.AUTO_UNLOCK_AFTER_LOCK.value) >= 20  # previewed, then reported


async def test_batch_cancel_and_complete_over_a_query(
    opsctl: Opsctl, admin: SimulatorAdmin, stack: Stack
) -> None:
    a, b, c = await free_ips(admin, 3)
    assert (await opsctl("config", "set-flow-control", "0x400012", "--enabled", "false", "--as", "test"))[
        0
    ] == 0
    for ip in (a, b, c):
        await opsctl("submit", "0x400012", "--host", ip, "--reason-category", "hang", "--as", "alice")

    async def all_pending() -> None:
        for ip in (a, b, c):
            code, out, _ = await opsctl("status", f"0x400012-{ip}")
            assert "PendingApproval" in out

    await eventually(all_pending, within=30)

    async def visible() -> None:
        code, out, _ = await opsctl(
            "batch", "complete", "--query", f"NcIp = '{a}'", "--as", "admin", stdin="n\n"
        )
        assert f"0x400012-{a}" in out and "mark complete" in out, out

    await eventually(visible, within=20)
    code, out, err = await opsctl("batch", "complete", "--query", f"NcIp = '{a}'", "--as", "admin", "--yes")
    assert code == 0, err
    code, out, _ = await opsctl("watch", f"0x400012-{a}", "--interval", "0.2")
    assert "ended Succeeded" in out
    assert (await admin.nc(a))["counters"].get(
        "power_cycles", 0
    ) == 0  # nothing done: marked complete by hand

    code, out, err = await opsctl("batch", "cancel", "--hosts", f"{b},{c}", "--as", "admin", "--yes")
    assert code == 0 and out.count("requested") == 2, (out, err)
    for ip in (b, c):
        code, out, _ = await opsctl("watch", f"0x400012-{ip}", "--interval", "0.2")
        assert "ended Cancelled" in out


async def test_reject_abort_and_mark_complete_at_a_failed_step(opsctl: Opsctl, admin: SimulatorAdmin) -> None:
    a, b, c = await free_ips(admin, 3)
    assert (await opsctl("config", "set-flow-control", "0x400012", "--enabled", "false", "--as", "test"))[
        0
    ] == 0
    for ip in (a, b, c):
        assert (
            await opsctl("submit", "0x400012", "--host", ip, "--reason-category", "hang", "--as", "alice")
        )[0] == 0

    async def pending(ip: str) -> None:
        code, out, _ = await opsctl("status", f"0x400012-{ip}")
        assert "PendingApproval" in out, out

    for ip in (a, b, c):
        await eventually(functools.partial(pending, ip), within=30)
    code, out, err = await opsctl("reject", f"0x400012-{a}", "--as", "approver2", "--comment", "not a hang")
    assert code == 0 and "Rejected" in out, (out, err)

    await admin.inject(action="oob_power_cycle", code=500, message="BMC down", count=40)
    for ip in (b, c):
        assert (await opsctl("approve", f"0x400012-{ip}", "--as", "approver1"))[0] == 0

    async def step_failed(ip: str) -> None:
        code, out, _ = await opsctl("status", f"0x400012-{ip}")
        assert "StepFailed" in out, out

    for ip in (b, c):
        await eventually(functools.partial(step_failed, ip), within=60)
    code, out, err = await opsctl("abort", f"0x400012-{b}", "--as", "admin", "--comment", "BMC dead")
    assert code == 0, err
    code, out, _ = await opsctl("watch", f"0x400012-{b}", "--interval", "0.2")
    assert code == 1 and "ended Failed" in out and "aborted by admin" in out, out
    code, out, err = await opsctl(
        "batch", "complete", "--hosts", c, "--as", "admin", "--reason", "rebooted by hand", "--yes"
    )
    assert code == 0 and "requested" in out, (out, err)
    code, out, _ = await opsctl("watch", f"0x400012-{c}", "--interval", "0.2")
    assert code == 0 and "ended Succeeded" in out, out
    status = await opsctl.json("status", f"0x400012-{c}")
    assert status["state"] == "Succeeded"
