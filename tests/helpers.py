"""Small helpers the tests share: the simulator's admin API, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


class SimulatorAdmin:
    """The Houyi simulator's JSON admin API, as tests read and steer it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    async def _request(self, method: str, path: str, json: Any = None) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, f"{self.base_url}{path}", json=json) as response:
                body = await response.json(content_type=None)
                if response.status >= 400:
                    raise AssertionError(f"{method} {path} -> {response.status}: {body}")
                return body

    async def ncs(self) -> list[dict[str, Any]]:
        return await self._request("GET", "/admin/ncs")

    async def nc(self, nc_ip: str) -> dict[str, Any]:
        return await self._request("GET", f"/admin/ncs/{nc_ip}")

    async def counters(self) -> dict[str, Any]:
        return await self._request("GET", "/admin/counters")

    async def inject(self, **fault: Any) -> Any:
        return await self._request("POST", "/admin/faults", fault)

    async def clear_faults(self) -> Any:
        return await self._request("DELETE", "/admin/faults")

    async def reset(self) -> Any:
        return await self._request("POST", "/admin/reset")

    async def patch_nc(self, nc_ip: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("PATCH", f"/admin/ncs/{nc_ip}", fields)
        return result

    async def vm(self, vm_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/admin/vms/{vm_id}")
        return result

    async def patch_vm(self, vm_id: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("PATCH", f"/admin/vms/{vm_id}", fields)
        return result

    async def disk(self, disk_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/admin/disks/{disk_id}")
        return result

    async def disk_migrations(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._request("GET", "/admin/disk-migrations")
        return result

    async def set_not_loaded(self, directory: str, count: int, *, after_next_check: bool = False) -> Any:
        return await self._request(
            "POST",
            "/admin/not-loaded",
            {"dir": directory, "count": count, "after_next_check": after_next_check},
        )

    async def free_ncs(self, cluster_id: str, count: int) -> list[dict[str, Any]]:
        """``count`` free hosts of the cluster, in fleet order."""
        found = [
            nc for nc in await self.ncs() if nc["cluster_id"] == cluster_id and nc["biz_status"] == "free"
        ]
        assert len(found) >= count, f"{cluster_id} has {len(found)} free hosts, the test needs {count}"
        return found[:count]

    async def touched(self, nc_ip: str) -> dict[str, int]:
        """The counters of every change the simulator applied to the host (all 0: nothing touched)."""
        counters: dict[str, int] = (await self.nc(nc_ip))["counters"]
        return {name: value for name, value in counters.items() if value}

    async def first_nc(self, status: str, *, exclude: set[str] | None = None) -> dict[str, Any]:
        for nc in await self.ncs():
            if nc["biz_status"] == status and nc["nc_ip"] not in (exclude or set()):
                return nc
        raise AssertionError(f"the fleet has no NC in status {status}")


async def eventually(check: Callable[[], Awaitable[T]], *, within: float = 10.0, interval: float = 0.1) -> T:
    """Polls ``check`` until it returns without an AssertionError (its result), or fails with the last one."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)
