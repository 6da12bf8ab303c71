"""``python -m starter`` / ``opsflow-intake``: the intake HTTP service (starter/app.py).

Environment: ``OPSFLOW_INTAKE_PORT`` [8080], ``OPSFLOW_INTAKE_HOST`` [0.0.0.0], ``OPSFLOW_TOKENS_FILE``
(required), and the worker's ``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``OPSFLOW_TASK_QUEUE``,
``DATABASE_URL`` (runtime/config.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import structlog
from aiohttp import web

from runtime.config import ConfigError, Settings
from runtime.logging import configure_logging
from runtime.temporal import connect
from starter.app import Intake
from starter.auth import TokenFileError, Tokens
from store.embedded import resolve_database_url
from store.repository import OperationStore

log = structlog.get_logger("intake")


async def serve(settings: Settings, tokens: Tokens, host: str, port: int, stop: asyncio.Event) -> None:
    store = await OperationStore.connect(resolve_database_url(settings))
    client = await connect(settings.temporal)
    intake = Intake(client, store, tokens, task_queue=settings.task_queue)
    runner = web.AppRunner(intake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info(
        "intake started",
        host=host,
        port=port,
        temporal=settings.temporal_address,
        task_queue=settings.task_queue,
    )
    try:
        await stop.wait()
    finally:
        log.info("intake stopping")
        await runner.cleanup()
        await store.close()
        log.info("intake stopped")


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"opsflow-intake: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    tokens_file = os.environ.get("OPSFLOW_TOKENS_FILE", "").strip()
    if not tokens_file:
        print("opsflow-intake: set OPSFLOW_TOKENS_FILE to the JSON file of bearer tokens", file=sys.stderr)
        sys.exit(2)
    try:
        tokens = Tokens.load(Path(tokens_file))
    except TokenFileError as error:
        print(f"opsflow-intake: {error}", file=sys.stderr)
        sys.exit(2)
    host = os.environ.get("OPSFLOW_INTAKE_HOST", "0.0.0.0")
    port = int(os.environ.get("OPSFLOW_INTAKE_PORT", "8080"))

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, tokens, host, port, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
