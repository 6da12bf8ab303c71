"""Activities on NCs through the Houyi adapter."""

from __future__ import annotations

import structlog
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import from_houyi
from activities.heartbeat import heartbeating
from domain import errors
from domain.model import NcBizStatus, NcDetail
from houyi.errors import HouyiError, HouyiNotFound
from houyi.port import CallContext, HouyiPort, NcStatusChange

log = structlog.get_logger(__name__)


class DescribeNcInput(BaseModel):
    caller: str
    nc_ip: str | None = None
    nc_id: str | None = None


class LockNcInput(BaseModel):
    caller: str
    step: str
    nc_id: str
    nc_ip: str
    status: NcBizStatus = NcBizStatus.MLOCK


class NcActivities:
    """Reads and changes NC state. The Houyi client is injected: one per worker, shared."""

    def __init__(self, houyi: HouyiPort) -> None:
        self._houyi = houyi

    @activity.defn(name="DescribeNc")
    async def describe_nc(self, request: DescribeNcInput) -> NcDetail:
        host = request.nc_ip or request.nc_id
        try:
            return await heartbeating(
                self._houyi.describe_nc(
                    CallContext(caller=request.caller), nc_ip=request.nc_ip, nc_id=request.nc_id
                )
            )
        except HouyiNotFound as error:
            raise ApplicationError(
                f"NC {host} not found in the control plane ({error.message})",
                type=errors.NC_NOT_FOUND,
                non_retryable=True,
            ) from None
        except HouyiError as error:
            raise from_houyi(error) from None

    @activity.defn(name="LockNc")
    async def lock_nc(self, request: LockNcInput) -> NcStatusChange:
        """Locks the NC. The token makes a retry after a lost answer (or a killed worker) a replay, not a second lock."""
        ctx = CallContext(caller=request.caller).step(request.step)
        bound = log.bind(
            workflow_id=request.caller,
            nc_ip=request.nc_ip,
            nc_id=request.nc_id,
            attempt=activity.info().attempt,
        )
        bound.info("locking nc", status=request.status.value)
        try:
            change = await heartbeating(self._houyi.lock_nc(ctx, nc_id=request.nc_id, status=request.status))
        except HouyiError as error:
            bound.warning("lock failed", error_type=error.error_type, error=error.message)
            raise from_houyi(error) from None
        bound.info(
            "nc locked", status_before=change.status_before.value, status_after=change.status_after.value
        )
        return change
