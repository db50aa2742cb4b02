"""Run a batch of requests: results in input order, one error per item, progress and cancellation.

`asyncio.gather(*calls)` loses the whole batch to the first exception (or, with `return_exceptions=True`,
hands back exceptions mixed with answers), creates every task at once, shows no progress and cannot be
stopped cleanly. `run_batch` keeps a fixed number of workers pulling items in order, so an item that is never
reached is never sent; `BatchRun.cancel()` stops pulling, cancels what is in flight and keeps what completed.
Concurrency here only bounds how many items are *started*; the rate limit belongs to the admission layer.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["BatchResult", "BatchRun", "ItemResult", "ItemStatus", "Observer", "run_batch", "start_batch"]


class ItemStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"  # was in flight when the batch was cancelled
    NOT_SENT = "not_sent"  # the batch was cancelled before this item started


@dataclass
class ItemResult(Generic[R]):
    """The outcome of one item: its value or its error, never both."""

    index: int
    status: ItemStatus = ItemStatus.NOT_SENT
    value: R | None = None
    error: BaseException | None = None
    latency_s: float | None = None
    finished_s: float | None = None  # when it ended, in seconds after the batch started

    @property
    def ok(self) -> bool:
        return self.status is ItemStatus.OK


@dataclass
class BatchResult(Generic[R]):
    """Every item's outcome, in input order, and how long the batch took."""

    items: list[ItemResult[R]]
    wall_s: float
    cancelled: bool = False

    @property
    def values(self) -> list[R | None]:
        return [item.value for item in self.items]

    def count(self, status: ItemStatus) -> int:
        return sum(item.status is status for item in self.items)

    @property
    def errors(self) -> list[ItemResult[R]]:
        return [item for item in self.items if item.status is ItemStatus.ERROR]

    def sustained_rate(self) -> float | None:
        """Completions per second over the second half of the batch's answers (None with fewer than 4).

        The throughput a limit allows is a rate; a whole batch's count over its wall time also holds its edges:
        the opening burst, and the last answer's latency after the last departure. The second half of the
        completions is past the burst and before the drain, so it measures the pace the batch settled at.
        """
        ends = sorted(item.finished_s for item in self.items if item.ok and item.finished_s is not None)
        if len(ends) < 4:
            return None
        half = len(ends) // 2
        span = ends[-1] - ends[half]
        return (len(ends) - 1 - half) / span if span > 0 else None

    def summary(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 3), "cancelled": self.cancelled} | {
            status.value: self.count(status) for status in ItemStatus
        }


class Observer(Protocol):
    """What a progress display implements; every method is called on the event loop, never from a thread."""

    def batch_started(self, total: int) -> None: ...

    def item_started(self, index: int) -> None: ...

    def item_finished(self, result: ItemResult[Any]) -> None: ...

    def batch_finished(self, result: BatchResult[Any]) -> None: ...


@dataclass
class BatchRun(Generic[T, R]):
    """A batch running as a task: `await run` (or `await run.wait()`) for its result, `run.cancel()` to stop."""

    fn: Callable[[T], Awaitable[R]]
    inputs: Sequence[T]
    concurrency: int
    observer: Observer | None = None
    items: list[ItemResult[R]] = field(init=False)
    task: asyncio.Task[BatchResult[R]] | None = field(default=None, init=False)
    _cancelled: bool = field(default=False, init=False)
    _workers: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.items = [ItemResult(i) for i in range(len(self.inputs))]

    def start(self) -> BatchRun[T, R]:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="labkit-batch")
        return self

    def cancel(self) -> None:
        """Stop the batch: items not started are never sent, in-flight ones are cancelled, results are kept."""
        self._cancelled = True
        for worker in self._workers:
            worker.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def wait(self) -> BatchResult[R]:
        if self.task is None:
            self.start()
        assert self.task is not None
        return await self.task

    def __await__(self) -> Any:
        return self.wait().__await__()

    async def _run(self) -> BatchResult[R]:
        t0 = time.perf_counter()
        if self.observer:
            self.observer.batch_started(len(self.inputs))
        queue = iter(range(len(self.inputs)))
        n = min(self.concurrency, len(self.inputs))
        self._workers = [asyncio.create_task(self._worker(queue, t0)) for _ in range(n)]
        if self._cancelled:  # cancelled before the workers existed
            self.cancel()
        try:
            await asyncio.gather(*self._workers, return_exceptions=True)
        except asyncio.CancelledError:  # the task itself was cancelled: stop the workers, keep results
            self.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        result = BatchResult(self.items, time.perf_counter() - t0, cancelled=self._cancelled)
        if self.observer:
            self.observer.batch_finished(result)
        return result

    @staticmethod
    def _ended(item: ItemResult[Any], started: float, batch_started: float) -> None:
        now = time.perf_counter()
        item.latency_s = now - started
        item.finished_s = now - batch_started

    async def _worker(self, queue: Any, batch_started: float) -> None:
        for index in queue:
            if self._cancelled:
                return
            item = self.items[index]
            if self.observer:
                self.observer.item_started(index)
            t0 = time.perf_counter()
            try:
                item.value = await self.fn(self.inputs[index])
                item.status = ItemStatus.OK
            except asyncio.CancelledError:
                item.status = ItemStatus.CANCELLED
                self._ended(item, t0, batch_started)
                if self.observer:
                    self.observer.item_finished(item)
                return
            except Exception as error:  # one item's failure is that item's result, not the batch's
                item.status = ItemStatus.ERROR
                item.error = error
            self._ended(item, t0, batch_started)
            if self.observer:
                self.observer.item_finished(item)


def start_batch(
    fn: Callable[[T], Awaitable[R]], inputs: Sequence[T], *, concurrency: int = 64, observer: Observer | None = None
) -> BatchRun[T, R]:
    """Start `fn` over `inputs` as a task (call from a running loop) and return the run at once."""
    return BatchRun(fn, list(inputs), concurrency, observer).start()


async def run_batch(
    fn: Callable[[T], Awaitable[R]], inputs: Sequence[T], *, concurrency: int = 64, observer: Observer | None = None
) -> BatchResult[R]:
    """Run `fn` over `inputs` with at most `concurrency` items in flight; results in input order."""
    return await start_batch(fn, inputs, concurrency=concurrency, observer=observer)
