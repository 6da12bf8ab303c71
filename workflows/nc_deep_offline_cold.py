"""0x40003000001001 host deep offline without live migration: the chain of workflows.deep_offline, every VM
cold-migrated inside the maintenance window."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.operations import OperationResult
    from domain.opscodes import OpsCode
    from workflows.deep_offline import DeepOfflineWorkflow


@workflow.defn(name="NcDeepOfflineCold")
class NcDeepOfflineColdWorkflow(DeepOfflineWorkflow):
    """0x40003000001001: every VM cold-migrated inside the maintenance window, then the reboot."""

    OPSCODE = OpsCode.NC_DEEP_OFFLINE_COLD
    LIVE = False

    @workflow.run
    async def run(self, raw_input: Any) -> OperationResult:
        return await self.lifecycle(raw_input)
