"""Dynamic batching: concurrent requests to one graph share one onnxruntime run.

A :class:`DynamicBatcher` sits in front of one graph. `submit(inputs)` queues a request
(N_i x ... float32) and awaits its slice of the outputs. A background task takes the
oldest request, then keeps gathering whole requests until the batch holds
`max_batch_size` rows, or `max_delay_s` has passed since the first one, or (with the queue
empty) it holds as many requests as the previous batch did, so that a lone caller is not
delayed at all while many concurrent callers still share runs; it concatenates them,
runs the graph once in a thread executor, and hands each request back its rows. At most
`concurrency` batches of one graph run at a time; while they run, new requests queue up,
which is what makes batches grow under load. The queue is bounded (RESOURCE_EXHAUSTED
beyond `max_queue` waiting requests); requests whose caller has gone (cancelled) or whose
deadline has passed are dropped before the run. A request larger than `max_batch_size`
runs alone. A request that finds the graph idle, nothing queued and no recent sign of
concurrent callers runs at once, without the hand-over to the gatherer task, and with at
most `inline_max_rows` rows on the event-loop thread itself (for runs known to be short),
provided the graph has been idle for `inline_after_idle_s`. With
`enabled=False` every request runs on its own (same API).

The batcher knows nothing about models or gRPC: it batches arrays for a `run` callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .errors import deadline_exceeded, resource_exhausted, unavailable

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
Outputs = tuple[Float32Array, ...]
RunFn = Callable[[Float32Array], Outputs]


class BatchObserver(Protocol):
    """Receives batch statistics (the metrics module implements this)."""

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None: ...

    def queue_changed(self, depth: int) -> None: ...


class _NullObserver:
    def batch_ran(self, rows: int, requests: int, seconds: float) -> None:
        pass

    def queue_changed(self, depth: int) -> None:
        pass


@dataclass
class _Pending:
    inputs: Float32Array
    future: asyncio.Future[Outputs]
    # Absolute time (time.monotonic()) after which the caller no longer wants the answer.
    deadline: float | None = None
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = int(self.inputs.shape[0])


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        max_batch_size: int = 256,
        max_delay_s: float = 0.002,
        max_queue: int = 1024,
        concurrency: int = 1,
        enabled: bool = True,
        inline_max_rows: int = 0,
        inline_after_idle_s: float = 0.0,
        observer: BatchObserver | None = None,
        name: str = "",
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.enabled = enabled
        self.inline_max_rows = inline_max_rows
        self.inline_after_idle_s = inline_after_idle_s
        self.name = name
        self._observer: BatchObserver = observer or _NullObserver()
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        # Requests taken off the queue for the batch being gathered (failed on close).
        self._gathering: list[_Pending] = []
        # Requests gathered into the previous batch: the batcher's estimate of concurrency.
        self._last_batch_requests = 1
        # time.perf_counter() when the last run ended.
        self._last_run_end = float("-inf")
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Requests waiting to run: queued, or held by the gatherer until a slot frees."""
        return len(self._queue) + len(self._gathering)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._gather_forever(), name=f"batcher[{self.name}]"
            )

    async def close(self) -> None:
        """Stop gathering; queued requests fail with UNAVAILABLE, running batches finish."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        leftovers = [*self._gathering, *self._queue]
        self._gathering, self._queue = [], deque()
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(unavailable(f"{self.name}: server is shutting down"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, inputs: Float32Array, deadline: float | None = None) -> Outputs:
        """Queue `inputs` (N x ...) for a batched run and return this request's N output rows.

        `deadline` is a time.monotonic() value; past it the request is dropped unrun.
        """
        if self._closed:
            raise unavailable(f"{self.name}: server is shutting down")
        if not self.enabled:
            return await self._run_alone(inputs)
        if self.queue_depth >= self.max_queue:
            raise resource_exhausted(
                f"{self.name}: {self.queue_depth} requests already queued (max_queue "
                f"{self.max_queue}); retry with backoff"
            )
        if (
            not self._queue
            and not self._gathering
            and self._last_batch_requests <= 1
            and not self._slots.locked()
        ):
            # An idle graph and no sign of concurrent callers: run at once, skipping the
            # hand-over to the gatherer task (two event-loop turns of latency).
            return await self._run_now(inputs)
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, loop.create_future(), deadline)
        self._queue.append(pending)
        self._observer.queue_changed(self.queue_depth)
        self._arrived.set()
        # If our caller is cancelled, the future is cancelled too and the gatherer skips it.
        return await pending.future

    async def _run_alone(self, inputs: Float32Array) -> Outputs:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        outputs = await loop.run_in_executor(self._executor, self._run, inputs)
        self._observer.batch_ran(int(inputs.shape[0]), 1, time.perf_counter() - start)
        return outputs

    async def _run_now(self, inputs: Float32Array) -> Outputs:
        await self._slots.acquire()  # free (checked by the caller): does not suspend
        start = time.perf_counter()
        # While a run blocks the loop thread no other request is even read, so under load
        # every request would find the graph idle and run alone, inline, one after another:
        # batching would never start. A request that follows the previous run closely is
        # most likely one of several callers; it goes to the executor, and whatever arrives
        # while that runs queues up and is batched.
        if (
            inputs.shape[0] <= self.inline_max_rows
            and start - self._last_run_end >= self.inline_after_idle_s
        ):
            try:
                outputs = self._run(inputs)
            finally:
                self._run_ended()
            self._observer.batch_ran(int(inputs.shape[0]), 1, self._last_run_end - start)
            return outputs
        running = asyncio.get_running_loop().run_in_executor(self._executor, self._run, inputs)
        # The slot stays taken until onnxruntime is done, even if our caller gives up first.
        running.add_done_callback(lambda _: self._run_ended())
        outputs = await asyncio.shield(running)
        self._observer.batch_ran(int(inputs.shape[0]), 1, time.perf_counter() - start)
        return outputs

    def _run_ended(self) -> None:
        self._last_run_end = time.perf_counter()
        self._slots.release()

    async def _next_request(self) -> _Pending:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        return self._queue.popleft()

    async def _gather_forever(self) -> None:
        while True:
            first = await self._next_request()
            self._gathering = [first]
            # Wait for a run slot before gathering more: while every slot is busy, requests
            # pile up in the queue and the next batch is larger.
            await self._slots.acquire()
            try:
                batch = await self._gather_batch(first)
            except BaseException:
                self._slots.release()
                raise
            batch = self._drop_unwanted(batch)
            self._observer.queue_changed(self.queue_depth)
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather_batch(self, first: _Pending) -> list[_Pending]:
        batch, rows = self._gathering, first.rows
        loop = asyncio.get_running_loop()
        close_at = loop.time() + self.max_delay_s
        # How many callers to wait for: as many as shared the previous batch. Under load
        # (many concurrent callers) that fills batches; a lone caller on an idle graph runs
        # at once instead of paying max_delay on every request. When load drops, one batch
        # waits out the delay and the expectation falls back to what actually came.
        expected = self._last_batch_requests
        while rows < self.max_batch_size:
            if self._queue:
                if rows + self._queue[0].rows > self.max_batch_size:
                    break  # keep request order; the next one starts the next batch
                nxt = self._queue.popleft()
                batch.append(nxt)
                rows += nxt.rows
                continue
            if len(batch) >= expected:
                break
            remaining = close_at - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        self._gathering = []
        self._last_batch_requests = len(batch)
        return batch

    @staticmethod
    def _drop_unwanted(batch: list[_Pending]) -> list[_Pending]:
        now = time.monotonic()
        kept = []
        for pending in batch:
            if pending.future.done():  # cancelled by the caller
                continue
            if pending.deadline is not None and now >= pending.deadline:
                pending.future.set_exception(
                    deadline_exceeded("deadline passed while the request was queued")
                )
                continue
            kept.append(pending)
        return kept

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            inputs = (
                batch[0].inputs
                if len(batch) == 1
                else np.concatenate([p.inputs for p in batch], axis=0)
            )
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, inputs)
            except Exception as e:
                log.exception("%s: batch of %d rows failed", self.name, inputs.shape[0])
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(e)
                return
            self._observer.batch_ran(int(inputs.shape[0]), len(batch), time.perf_counter() - start)
            offset = 0
            for pending in batch:
                end = offset + pending.rows
                if not pending.future.done():
                    pending.future.set_result(tuple(o[offset:end] for o in outputs))
                offset = end
        finally:
            self._run_ended()
