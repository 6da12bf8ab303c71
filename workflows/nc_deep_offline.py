"""0x400003 host deep offline with live migration: the chain of workflows.deep_offline, VMs moved live."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.operations import OperationResult
    from domain.opscodes import OpsCode
    from workflows.deep_offline import DeepOfflineWorkflow


@workflow.defn(name="NcDeepOffline")
class NcDeepOfflineWorkflow(DeepOfflineWorkflow):
    """0x400003: input ``NcDeepOfflineInput`` as raw JSON."""

    OPSCODE = OpsCode.NC_DEEP_OFFLINE
    LIVE = True

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)
