"""Step building blocks several opscodes use on hosts: status checks and refusals."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.nc import DescribeNcInput, NcActivities
    from domain import errors, transitions
    from domain.model import Nc, NcBizStatus
    from workflows.common import HOUYI_READ


async def refuse_unless(operation: Any, nc: Nc, action: transitions.NcAction) -> None:
    """Refuses the operation, naming host and status, when ``action`` cannot start from the host's status."""
    if not transitions.can_apply(action, nc.biz_status):
        allowed = ", ".join(sorted(s.value for s in transitions.allowed_from(action)))
        await operation.refuse(
            errors.NC_WRONG_STATUS,
            f"NC {nc.nc_ip} ({nc.nc_id}) is {nc.biz_status.value}: cannot {action.value.replace('_', ' ')} "
            f"(allowed from: {allowed})",
        )


async def check_status(operation: Any, nc_id: str, expected: NcBizStatus) -> NcBizStatus:
    """Re-reads the host: an action Houyi answered but did not apply fails the step."""
    detail = await workflow.execute_activity_method(
        NcActivities.describe_nc, DescribeNcInput(caller=operation.workflow_id, nc_id=nc_id), **HOUYI_READ
    )
    if detail.nc.biz_status is not expected:
        raise ApplicationError(
            f"NC {detail.nc.nc_ip} ({nc_id}) reads {detail.nc.biz_status.value}, expected {expected.value}",
            type=errors.ACTION_NOT_APPLIED,
            non_retryable=True,
        )
    return detail.nc.biz_status
