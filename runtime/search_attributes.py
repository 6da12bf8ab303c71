"""The custom search attributes every operation sets, registered by the dev stack and the worker."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

OPS_CODE = SearchAttributeKey.for_keyword("OpsCode")
NC_IP = SearchAttributeKey.for_keyword("NcIp")
REGION = SearchAttributeKey.for_keyword("Region")
CLUSTER = SearchAttributeKey.for_keyword("Cluster")
OPS_STATE = SearchAttributeKey.for_keyword("OpsState")
REQUESTER = SearchAttributeKey.for_keyword("Requester")

ALL = (OPS_CODE, NC_IP, REGION, CLUSTER, OPS_STATE, REQUESTER)


def cli_flags() -> list[str]:
    """``--search-attribute Name=Keyword`` flags for ``temporal server start-dev``."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags
