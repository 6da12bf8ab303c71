"""The custom search attributes every operation sets, registered by the dev stack and the worker."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

INDEXED_VALUE_TYPE_KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD

OPS_CODE = SearchAttributeKey.for_keyword("OpsCode")
NC_IP = SearchAttributeKey.for_keyword("NcIp")
REGION = SearchAttributeKey.for_keyword("Region")
CLUSTER = SearchAttributeKey.for_keyword("Cluster")
OPS_STATE = SearchAttributeKey.for_keyword("OpsState")
REQUESTER = SearchAttributeKey.for_keyword("Requester")

# The step where the operation stopped: the failed step while it waits in StepFailed, the last step run once it
# has ended; unset while it runs (workflows.lifecycle.OPS_STEP_WHERE_IT_STOPS; operations started before that
# patch name the running step too).
OPS_STEP = SearchAttributeKey.for_keyword("OpsStep")

ALL = (OPS_CODE, NC_IP, REGION, CLUSTER, OPS_STATE, REQUESTER, OPS_STEP)


def cli_flags() -> list[str]:
    """``--search-attribute Name=Keyword`` flags for ``temporal server start-dev``."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags


async def ensure_registered(client: Client, namespace: str = "default") -> list[str]:
    """Registers the missing ones; safe to call at every start against a Temporal server. Returns what it added.

    The time-skipping test server cannot list search attributes: register on it with ``register`` once.
    """
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = [key.name for key in ALL if key.name not in listed.custom_attributes]
    if missing:
        await register(client, namespace, missing)
    return missing


async def register(client: Client, namespace: str = "default", names: list[str] | None = None) -> None:
    wanted = names if names is not None else [key.name for key in ALL]
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace, search_attributes=dict.fromkeys(wanted, INDEXED_VALUE_TYPE_KEYWORD)
        )
    )
