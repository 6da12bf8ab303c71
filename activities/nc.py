"""Activities on NCs through the Houyi adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import from_houyi
from activities.heartbeat import Pulse, heartbeating
from domain import errors
from domain.model import NcBizStatus, NcDetail, PowerState
from houyi.errors import HouyiError, HouyiNotFound
from houyi.port import CallContext, DumpResult, HouyiPort, NcStatusChange, PowerStatus

log = structlog.get_logger(__name__)

T = TypeVar("T")

# The product polls OOB power every 60 s; the dev stack and tests poll faster against the simulator.
DEFAULT_POWER_POLL_SECONDS = 60.0


class DescribeNcInput(BaseModel):
    caller: str
    nc_ip: str | None = None
    nc_id: str | None = None


class NcActionInput(BaseModel):
    """A mutating call on one NC; ``step`` names the step, which with ``caller`` makes the idempotency token."""

    caller: str
    step: str
    nc_id: str
    nc_ip: str


class LockNcInput(NcActionInput):
    status: NcBizStatus = NcBizStatus.MLOCK


class SetNcStatusInput(NcActionInput):
    status: NcBizStatus


class WaitPowerInput(BaseModel):
    caller: str
    nc_id: str
    nc_ip: str
    expected: PowerState


class NcActivities:
    """Reads and changes NC state. The Houyi client is injected: one per worker, shared."""

    def __init__(self, houyi: HouyiPort, *, power_poll_seconds: float = DEFAULT_POWER_POLL_SECONDS) -> None:
        self._houyi = houyi
        self._power_poll_seconds = power_poll_seconds

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
        return await self._act(
            request,
            f"lock {request.status.value}",
            self._houyi.lock_nc(self._ctx(request), nc_id=request.nc_id, status=request.status),
        )

    @activity.defn(name="UnlockNc")
    async def unlock_nc(self, request: NcActionInput) -> NcStatusChange:
        return await self._act(
            request, "unlock", self._houyi.unlock_nc(self._ctx(request), nc_id=request.nc_id)
        )

    @activity.defn(name="SetNcStatus")
    async def set_nc_status(self, request: SetNcStatusInput) -> NcStatusChange:
        return await self._act(
            request,
            f"set status {request.status.value}",
            self._houyi.set_nc_status(self._ctx(request), nc_id=request.nc_id, status=request.status),
        )

    @activity.defn(name="DumpCnMemory")
    async def dump_cn_memory(self, request: NcActionInput) -> DumpResult:
        return await self._act(
            request, "dump CN memory", self._houyi.dump_cn_memory(self._ctx(request), nc_id=request.nc_id)
        )

    @activity.defn(name="PowerCycleNc")
    async def power_cycle_nc(self, request: NcActionInput) -> PowerStatus:
        return await self._act(
            request, "OOB power cycle", self._houyi.oob_power_cycle(self._ctx(request), nc_id=request.nc_id)
        )

    @activity.defn(name="WaitPowerSettled")
    async def wait_power_settled(self, request: WaitPowerInput) -> PowerStatus:
        """Polls OOB power status until it reads ``expected``; heartbeats, so a hung poll is noticed.

        Bounded by the activity's start-to-close timeout: a host that never settles fails the step.
        """
        ctx = CallContext(caller=request.caller)
        pulse = Pulse()
        while True:
            try:
                status = await self._houyi.get_oob_power_status(ctx, nc_id=request.nc_id)
            except HouyiError as error:
                raise from_houyi(error) from None
            pulse.beat(status.power_state.value)
            if status.power_state is request.expected:
                return status
            await asyncio.sleep(self._power_poll_seconds)

    @staticmethod
    def _ctx(request: NcActionInput) -> CallContext:
        return CallContext(caller=request.caller).step(request.step)

    async def _act(self, request: NcActionInput, doing: str, call: Awaitable[T]) -> T:
        bound = log.bind(nc_ip=request.nc_ip, nc_id=request.nc_id, step=request.step)
        bound.info(f"{doing}: calling houyi")
        try:
            result = await heartbeating(call)
        except HouyiError as error:
            bound.warning(f"{doing} failed", error_type=error.error_type, error=error.message)
            raise from_houyi(error) from None
        bound.info(f"{doing}: done")
        return result
