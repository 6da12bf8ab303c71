"""Run the Houyi simulator: ``python -m simulator [--fleet PATH] [--host H] [--port P] [--speed S] [--seed N]``.

Defaults: the packaged demo fleet, 127.0.0.1, port ``$HOUYI_SIM_PORT`` or 8090, speed ``$HOUYI_SIM_SPEED`` or
50 (simulated seconds per real second), seed 7. Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from simulator.fleet import DEMO_FLEET_PATH
from simulator.server import start_simulator

logger = logging.getLogger("simulator")

DEFAULT_PORT = 8090
DEFAULT_SPEED = 50.0


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name}={raw!r} is not a number") from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulator", description="Houyi control-plane simulator")
    parser.add_argument(
        "--fleet", type=Path, default=DEMO_FLEET_PATH, help="fleet JSON file (default: the demo fleet)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(_env_number("HOUYI_SIM_PORT", DEFAULT_PORT)))
    parser.add_argument(
        "--speed",
        type=float,
        default=_env_number("HOUYI_SIM_SPEED", DEFAULT_SPEED),
        help="simulated seconds per real second (1 = real durations)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of every random choice")
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be positive")
    return args


async def _serve(args: argparse.Namespace) -> None:
    simulator = await start_simulator(
        args.fleet, host=args.host, port=args.port, speed=args.speed, seed=args.seed
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info(
        "houyi simulator listening on %s (%s, speed %s)",
        simulator.url,
        simulator.fleet.summary(),
        f"{args.speed:g}",
    )
    try:
        await stop.wait()
    finally:
        logger.info("houyi simulator stopping")
        await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
