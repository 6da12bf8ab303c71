"""What the lifecycle tests share: inputs, starting operations, watching them wait, reading their end."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain.operations import OperationResult, OpsState
from tests.helpers import SimulatorAdmin, eventually
from workflows.lifecycle import ApprovalInput, OperationStatus, StepCommandInput

REQUESTER = "alice"


def reboot_input(nc_ip: str, **settings: Any) -> dict[str, Any]:
    """A manual 0x400012 as an operator types it; ``settings`` use the product's names."""
    return {
        "nc_ip": nc_ip,
        "requester": REQUESTER,
        "reason_category": "hang",
        "reason": "nc_hang_exception: host stopped answering",
        "ticket": "CHG-3001",
        "settings": {"alertRuleName": "nc_hang_exception", "needLimit": 1, **settings},
    }


def lock_input(nc_ip: str) -> dict[str, Any]:
    return {
        "nc_ip": nc_ip,
        "requester": REQUESTER,
        "reason_category": "hardware",
        "reason": "CPU MCE on socket 1",
        "settings": {"preLock": 0},
    }


def re_online_input(nc_ips: list[str], **settings: Any) -> dict[str, Any]:
    return {
        "nc_ips": nc_ips,
        "requester": REQUESTER,
        "reason_category": "hardware",
        "reason": "fan replaced",
        "settings": {"parallel": 2, **settings},
    }


async def start(
    client: Client, workflow: str, raw: dict[str, Any], task_queue: str
) -> WorkflowHandle[Any, Any]:
    opscode = {"NcForcedReboot": "0x400012", "NcLock": "0x410A01", "NcReOnline": "0x400011"}[workflow]
    return await client.start_workflow(
        workflow,
        raw,
        id=f"{opscode}-{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=OperationResult,
    )


async def status_of(handle: WorkflowHandle[Any, Any]) -> OperationStatus:
    return await handle.query("status", result_type=OperationStatus)


async def wait_state(
    handle: WorkflowHandle[Any, Any],
    state: OpsState,
    *,
    within: float = 15.0,
    env: WorkflowEnvironment | None = None,
    skip: timedelta | None = None,
) -> OperationStatus:
    """Polls the ``status`` query until the operation is in ``state``.

    On the time-skipping server, ``env`` and ``skip`` move the workflow clock a little on each poll (to
    let activity retries through) without ever reaching the 24 h timeouts the states wait with.
    """

    async def check() -> OperationStatus:
        status = await status_of(handle)
        if status.state is not state and env is not None and skip is not None:
            await env.sleep(skip)
        assert status.state is state, f"{handle.id} is {status.state.value}, waiting for {state.value}"
        return status

    return await eventually(check, within=within, interval=0.05)


async def approve(handle: WorkflowHandle[Any, Any], approver: str = "approver1", comment: str = "ok") -> None:
    await handle.signal("approve", ApprovalInput(approver=approver, comment=comment))


async def reject(handle: WorkflowHandle[Any, Any], approver: str = "approver1", comment: str = "no") -> None:
    await handle.signal("reject", ApprovalInput(approver=approver, comment=comment))


async def command(
    handle: WorkflowHandle[Any, Any], signal: str, step: str | None, operator: str = "bob", comment: str = ""
) -> None:
    await handle.signal(signal, StepCommandInput(operator=operator, step=step, comment=comment))


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """The ``ApplicationError`` a failed operation's workflow ended with."""
    try:
        await handle.result()
    except WorkflowFailureError as failed:
        assert isinstance(failed.cause, ApplicationError), failed.cause
        return failed.cause
    raise AssertionError(f"{handle.id} completed, it was expected to fail")


async def free_ncs(admin: SimulatorAdmin, cluster_id: str, count: int) -> list[dict[str, Any]]:
    """``count`` free hosts of the cluster, in fleet order."""
    found = [nc for nc in await admin.ncs() if nc["cluster_id"] == cluster_id and nc["biz_status"] == "free"]
    assert len(found) >= count, f"{cluster_id} has {len(found)} free hosts, the test needs {count}"
    return found[:count]


class Simulator(SimulatorAdmin):
    """The admin API, plus setting a host's status or power for a test's setup."""

    async def patch_nc(self, nc_ip: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("PATCH", f"/admin/ncs/{nc_ip}", fields)
        return result
