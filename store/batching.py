"""Group commit: rows that many concurrent callers append, written one statement per batch.

Every Houyi call and every audit entry is a row, written while an activity runs; one INSERT per row was a
pool checkout, a statement and a commit each. ``GroupCommit`` queues the rows and a single writer task
inserts whatever has queued up while the previous batch was being written. A caller still returns only
once its own row is committed, so nothing an activity reported done is lost with the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from store.errors import StoreUnavailable

RowT = TypeVar("RowT")
ResultT = TypeVar("ResultT")

# One statement carries at most this many rows (its parameters are arrays of this length).
MAX_BATCH_ROWS = 500


class GroupCommit(Generic[RowT, ResultT]):
    """``submit(row)`` returns ``write``'s result for that row once the batch holding it is committed.

    ``write`` inserts a batch in one statement and returns one result per row, in order. When a batch fails
    for any reason but an unreachable database, its rows are written one by one, so one bad row fails only
    its own caller.
    """

    def __init__(
        self, write: Callable[[Sequence[RowT]], Awaitable[list[ResultT]]], *, max_rows: int = MAX_BATCH_ROWS
    ) -> None:
        self._write = write
        self._max_rows = max_rows
        self._queued: list[tuple[RowT, asyncio.Future[ResultT]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, row: RowT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queued.append((row, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return await future

    async def drain(self) -> None:
        """Waits until every row queued so far is written (or failed)."""
        while self._writer is not None and not self._writer.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._writer)

    async def _write_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued[: self._max_rows], self._queued[self._max_rows :]
            batch = [(row, future) for row, future in batch if not future.done()]  # callers cancelled
            if not batch:
                continue
            try:
                results = await self._write([row for row, _ in batch])
            except StoreUnavailable as error:
                _fail(batch, error)
            except Exception:
                for one in batch:
                    try:
                        (result,) = await self._write([one[0]])
                    except Exception as error:
                        _fail([one], error)
                    else:
                        _resolve([one], [result])
            except BaseException as error:  # cancelled with the worker: the callers are told, then it ends
                _fail(batch + self._queued, StoreUnavailable(f"the store is closing: {error!r}"))
                self._queued = []
                raise
            else:
                _resolve(batch, results)


def _resolve(batch: list[tuple[RowT, asyncio.Future[ResultT]]], results: list[ResultT]) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(batch: list[tuple[RowT, asyncio.Future[ResultT]]], error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
