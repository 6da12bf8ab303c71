"""The worker's own HTTP side, on ``WORKER_METRICS_PORT``: ``/metrics``, ``/healthz``, ``/readyz``.

``/metrics`` is one scrape target per worker: the service's metrics (runtime/metrics.py) followed by the
Temporal SDK's (task slots, schedule-to-start latencies, ...), which the SDK's Rust core serves on a
loopback port of its own; we fetch and append them, so Prometheus and Kubernetes need to know one port.

``/healthz`` (liveness) fails only when the worker has stopped polling for good: restarting the pod helps.
``/readyz`` (readiness) also fails while the store does not answer: this worker cannot do useful work, but a
restart would not help either.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger("ops_server")

Check = Callable[[], Awaitable[str | None]]  # None when fine, else what is wrong


def loopback_port() -> int:
    """A free port on 127.0.0.1 for the SDK's metrics, which only this process reads."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        sdk_metrics_url: str | None,
        live: Check,
        ready: Check,
    ) -> None:
        self._registry = registry
        self._sdk_metrics_url = sdk_metrics_url
        self._live = live
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def start(self, host: str, port: int) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        if self._sdk_metrics_url and self._session is not None:
            try:
                async with self._session.get(self._sdk_metrics_url) as answer:
                    body += b"\n" + await answer.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                # Our series still matter without the SDK's; the gap shows as missing temporal_* series.
                log.warning("sdk metrics unavailable", error=str(error))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return await self._answer(self._live)

    async def readyz(self, request: web.Request) -> web.Response:
        return await self._answer(self._ready)

    @staticmethod
    async def _answer(check: Check) -> web.Response:
        try:
            problem = await asyncio.wait_for(check(), timeout=3)
        except TimeoutError:
            problem = "check did not answer within 3 s"
        if problem is None:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable", "problem": problem}, status=503)
