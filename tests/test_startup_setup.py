"""What a worker sets up at every start against whatever cluster it is pointed at: the custom search attributes
of its namespace and the disk recycle Schedule, created where missing and left (or brought back) in line where
present; a second start, or a second worker, changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import ScheduleOverlapPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from runtime import search_attributes
from runtime.config import Settings, TemporalConnection
from runtime.schedules import RECYCLE_SCHEDULE_ID
from tests.fixtures.temporal import installed_binary
from worker import ensure_namespace_setup

NAMESPACE = "ops-cn-qingdao"


@pytest.fixture
async def bare_server() -> AsyncIterator[WorkflowEnvironment]:
    """A server that knows none of our search attributes, with a namespace of its own (not "default")."""
    env = await WorkflowEnvironment.start_local(
        namespace=NAMESPACE,
        data_converter=pydantic_data_converter,
        dev_server_existing_path=installed_binary("temporal"),
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


async def custom_attributes(env: WorkflowEnvironment) -> set[str]:
    listed = await env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=NAMESPACE)
    )
    return set(listed.custom_attributes)


async def test_search_attributes_and_the_schedule_are_created_once_and_kept_in_line(
    bare_server: WorkflowEnvironment,
) -> None:
    wanted = {key.name for key in search_attributes.ALL}
    assert wanted & await custom_attributes(bare_server) == set()
    settings = Settings(
        temporal=TemporalConnection(
            address=bare_server.client.service_client.config.target_host, namespace=NAMESPACE
        ),
        task_queue="ecs-ops",
        recycle_schedule="0 3 * * *",
    )

    first = await ensure_namespace_setup(bare_server.client, settings)  # what every worker start does
    assert sorted(first.added_search_attributes) == sorted(wanted) and first.schedule == "created"
    assert wanted <= await custom_attributes(bare_server)
    second = await ensure_namespace_setup(bare_server.client, settings)  # the next start, or a second worker
    assert (second.added_search_attributes, second.schedule) == ([], "updated")

    handle = bare_server.client.get_schedule_handle(RECYCLE_SCHEDULE_ID)
    described = await handle.describe()
    assert [calendar.hour[0].start for calendar in described.schedule.spec.calendars] == [3]
    assert described.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP

    # Someone paused it by hand and changed its hour; the next worker start puts the spec back, keeps the pause.
    await handle.pause(note="storage maintenance tonight")
    settings_5am = settings.model_copy(update={"recycle_schedule": "0 5 * * *"})
    assert (await ensure_namespace_setup(bare_server.client, settings_5am)).schedule == "updated"
    again = await handle.describe()
    assert [calendar.hour[0].start for calendar in again.schedule.spec.calendars] == [5]
    assert again.schedule.state.paused and again.schedule.state.note == "storage maintenance tonight"
    schedules = [s.id async for s in await bare_server.client.list_schedules()]
    assert schedules.count(RECYCLE_SCHEDULE_ID) == 1
