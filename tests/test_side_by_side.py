"""workflows.lifecycle.side_by_side: the multi-host planning's reads and leases, a bounded number at once."""

from __future__ import annotations

import asyncio
import random

from workflows.lifecycle import SIDE_BY_SIDE, side_by_side


async def test_results_keep_the_order_of_the_items_and_no_more_than_the_bound_run_at_once() -> None:
    running = 0
    most = 0
    rng = random.Random(7)

    async def read(host: int) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(rng.random() / 1000)  # finish in another order than started
        running -= 1
        if host % 97 == 3:
            raise LookupError(f"no host {host}")
        return f"host-{host}"

    hosts = list(range(2 * SIDE_BY_SIDE + 17))
    results = await side_by_side(hosts, read)

    assert most == SIDE_BY_SIDE
    assert len(results) == len(hosts)
    for host, result in zip(hosts, results, strict=True):
        if host % 97 == 3:
            assert isinstance(result, LookupError) and str(result) == f"no host {host}"
        else:
            assert result == f"host-{host}"


async def test_no_items_no_calls() -> None:
    async def never(_: int) -> int:
        raise AssertionError("called")

    assert await side_by_side([], never) == []
