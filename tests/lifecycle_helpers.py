"""What the lifecycle tests share: inputs, a worker, starting operations, watching them wait, reading their end."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain.operations import OperationResult, OpsState
from houyi.http_client import HttpHouyiClient
from store.repository import OperationStore
from tests.fixtures.simulator import FIXTURE_SPEED
from tests.helpers import eventually
from worker import build_worker
from workflows.lifecycle import ApprovalInput, OperationStatus, StepCommandInput, StepStatus

REQUESTER = "alice"
APPROVERS = ["admin", "approver1", "approver2"]  # ops-admins as store.seed seeds it

WORKFLOW_OPSCODES = {
    "NcForcedReboot": "0x400012",
    "NcLock": "0x410A01",
    "NcUnlock": "0x4000A000000007",
    "NcReOnline": "0x400011",
    "NcDeepOffline": "0x400003",
    "NcDeepOfflineCold": "0x40003000001001",
    "WholeHostMigration": "WholeHostMigration",
    "DiskLiveMigration": "DiskLiveMigration",
    "VmResidueCleanup": "0x10001000008002",
    "WildVmCleanup": "0x3000000000802",
}


@contextlib.asynccontextmanager
async def running_worker(
    client: Client,
    task_queue: str,
    simulator_url: str,
    store: OperationStore,
    *,
    simulator_speed: float = FIXTURE_SPEED,
) -> AsyncIterator[Worker]:
    """The real worker (every workflow and activity) against the simulator and the store; real waits that
    model Houyi's shrink with the simulator's speed."""
    async with HttpHouyiClient(simulator_url, recorder=store) as houyi:
        worker = build_worker(
            client,
            task_queue,
            houyi=houyi,
            store=store,
            power_poll_seconds=0.05,
            migration_poll_seconds=0.02,
            time_scale=1 / simulator_speed,
            disk_poll_seconds=0.05,
            disk_slot_retry_seconds=0.3,
        )
        async with worker:
            yield worker


class Operations:
    """Starts operations and, at the end of the test, terminates the ones still open."""

    def __init__(self, client: Client, task_queue: str, store: OperationStore) -> None:
        self.client = client
        self.task_queue = task_queue
        self.store = store
        self.started: list[WorkflowHandle[Any, OperationResult]] = []

    async def start(
        self, workflow: str, raw: dict[str, Any], *, workflow_id: str | None = None, **options: Any
    ) -> WorkflowHandle[Any, OperationResult]:
        handle = await self.client.start_workflow(
            workflow,
            raw,
            id=workflow_id or f"{WORKFLOW_OPSCODES[workflow]}-{uuid.uuid4()}",
            task_queue=self.task_queue,
            result_type=OperationResult,
            **options,
        )
        self.started.append(handle)
        return handle

    async def reboot(self, nc_ip: str, **settings: Any) -> WorkflowHandle[Any, OperationResult]:
        return await self.start("NcForcedReboot", reboot_input(nc_ip, **settings))

    async def wait(
        self,
        handle: WorkflowHandle[Any, Any],
        state: OpsState,
        *,
        within: float = 15.0,
        env: WorkflowEnvironment | None = None,
        skip: timedelta | None = None,
    ) -> OperationStatus:
        """Polls the ``status`` query until the operation is in ``state``; for the states that wait for a
        person, until it has settled there: the wait's audit row (``approval_requested``, ``step_failed``
        for each waiting step) is written and no activity is in flight. Only then does a vote, command or
        cancel find it waiting rather than still writing its audit.

        On the time-skipping server, ``env`` and ``skip`` move the workflow clock a little on each poll (to
        let activity retries through) without ever coming near the 24 h timeouts the states wait with.
        """

        async def check() -> OperationStatus:
            status = await status_of(handle)
            if status.state is not state and env is not None and skip is not None:
                await env.sleep(skip)
            assert status.state is state, f"{handle.id} is {status.state.value}, waiting for {state.value}"
            if state in (OpsState.PENDING_APPROVAL, OpsState.STEP_FAILED):
                audit = await self.store.list_audit(workflow_id=handle.id)
                if state is OpsState.PENDING_APPROVAL:
                    assert any(a.action == "approval_requested" for a in audit), "approval not audited yet"
                else:
                    failed = {a.params.get("step") for a in audit if a.action == "step_failed"}
                    waiting = {s.name for s in status.steps if s.status is StepStatus.WAITING}
                    assert waiting <= failed, f"failed steps not audited yet: {waiting - failed}"
                in_flight = (await handle.describe()).raw_description.pending_activities
                assert not in_flight, f"{handle.id} is {state.value} with activities in flight"
            return status

        return await eventually(check, within=within, interval=0.05)

    async def close(self) -> None:
        for handle in self.started:
            with contextlib.suppress(RPCError):
                if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
                    await terminate_when_quiet(handle, "test over")


async def terminate_when_quiet(handle: WorkflowHandle[Any, Any], reason: str) -> None:
    """Terminates the workflow once no activity of it is in flight.

    The time-skipping test server keeps time skipping locked for good when an activity of a terminated
    workflow was still running (its completion finds the workflow gone): every later ``sleep`` would hang.
    """

    async def quiet() -> None:
        description = await handle.describe()
        assert description.status is not WorkflowExecutionStatus.RUNNING or not (
            description.raw_description.pending_activities
        ), f"{handle.id} has activities in flight"

    await eventually(quiet, within=10.0, interval=0.05)
    if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
        await handle.terminate(reason)


def reboot_input(nc_ip: str, *, requester: str = REQUESTER, **settings: Any) -> dict[str, Any]:
    """A manual 0x400012 as an operator types it; ``settings`` use the product's names."""
    return {
        "nc_ip": nc_ip,
        "requester": requester,
        "reason_category": "hang",
        "reason": "nc_hang_exception: host stopped answering",
        "ticket": "CHG-3001",
        "settings": {"alertRuleName": "nc_hang_exception", **settings},
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


async def status_of(handle: WorkflowHandle[Any, Any]) -> OperationStatus:
    return await handle.query("status", result_type=OperationStatus)


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """What the Web UI shows as the workflow's current details (the SDK's built-in metadata query)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def wait_status(
    handle: WorkflowHandle[Any, Any], what: str, holds: Any, *, within: float = 10.0
) -> OperationStatus:
    """Polls the ``status`` query until ``holds(status)``; ``what`` says what the test waits for."""

    async def check() -> OperationStatus:
        status = await status_of(handle)
        assert holds(status), f"{handle.id}: waiting for {what}; status: {status.model_dump_json()}"
        return status

    return await eventually(check, within=within, interval=0.05)


async def ops_state_attribute(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    attribute: list[Any] = (await handle.describe()).search_attributes.get("OpsState", [])
    return attribute


def _upserted(fields: Any, name: str) -> str | None:
    """A search attribute's value in an upsert: None when the upsert leaves it alone, "<unset>" when it unsets it."""
    if name not in fields:
        return None
    decoded = json.loads(fields[name].data) if fields[name].data else None
    return decoded if isinstance(decoded, str) else "<unset>"


async def upserted_states(handle: WorkflowHandle[Any, Any]) -> list[tuple[str | None, str | None]]:
    """(OpsState, OpsStep) of every upsert in the history that sets or unsets either, in order (_upserted)."""
    found: list[tuple[str | None, str | None]] = []
    async for event in handle.fetch_history_events():
        if not event.HasField("upsert_workflow_search_attributes_event_attributes"):
            continue
        fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        if "OpsState" in fields or "OpsStep" in fields:
            found.append((_upserted(fields, "OpsState"), _upserted(fields, "OpsStep")))
    return found


async def upserts_and_patches(
    handle: WorkflowHandle[Any, Any],
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    """The history's search-attribute upserts (workflow task number, name -> value, None when unset) and
    patch markers (workflow task number, patch id), in order; task n's commands follow its n-th completion."""
    upserts: list[tuple[int, dict[str, Any]]] = []
    patches: list[tuple[int, str]] = []
    task = 0
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_task_completed_event_attributes"):
            task += 1
        elif event.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            upserts.append((task, {n: json.loads(p.data) if p.data else None for n, p in fields.items()}))
        elif event.HasField("marker_recorded_event_attributes"):
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == "core_patch":
                patches.append((task, json.loads(marker.details["patch-data"].payloads[0].data)["id"]))
    return upserts, patches


async def approve(handle: WorkflowHandle[Any, Any], approver: str = "approver1", comment: str = "ok") -> None:
    await handle.signal("approve", ApprovalInput(approver=approver, comment=comment))


async def reject(handle: WorkflowHandle[Any, Any], approver: str = "approver1", comment: str = "no") -> None:
    await handle.signal("reject", ApprovalInput(approver=approver, comment=comment))


async def command(
    handle: WorkflowHandle[Any, Any], signal: str, step: str | None, operator: str = "bob", comment: str = ""
) -> None:
    """An operator's ``retry_step`` / ``skip_step`` / ``abort`` signal."""
    await handle.signal(signal, StepCommandInput(operator=operator, step=step, comment=comment))


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """The ``ApplicationError`` a failed operation's workflow ended with."""
    try:
        await handle.result()
    except WorkflowFailureError as failed:
        assert isinstance(failed.cause, ApplicationError), repr(failed.cause)
        return failed.cause
    raise AssertionError(f"{handle.id} completed, it was expected to fail")


def result_in(error: ApplicationError) -> OperationResult:
    """The ``OperationResult`` a failed operation carries in its error's details."""
    assert error.details, f"{error.type}: {error.message} carries no details"
    return OperationResult.model_validate(error.details[0])
