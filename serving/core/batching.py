"""Dynamic batching: concurrent requests to one graph share one onnxruntime run.

A :class:`DynamicBatcher` sits in front of one graph; `submit(inputs, deadline)` takes a
request of N x ... float32 rows and returns its N output rows. Each request takes one of
four paths:

- **disabled** (`enabled=False`): runs alone in the executor; the baseline to compare with.
- **inline**: the graph is idle, nothing is queued, the previous batch had one request, the
  request has at most `inline_max_rows` rows and the graph has been idle `inline_after_idle_s`:
  it runs on the event-loop thread itself, with no thread hand-over.
- **fast-path executor**: the same idle graph, but a larger request, or one that follows the
  last run closely (a sign of concurrent callers): it runs at once in the executor, with no
  hand-over to the gatherer task.
- **gathered**: otherwise it queues (at most `max_queue` waiting, then RESOURCE_EXHAUSTED).
  A gatherer task takes the oldest request, waits for a run slot (at most `concurrency`
  runs of the graph at once), then adds whole requests in order until the batch holds
  `max_batch_size` rows, `max_delay_s` has passed, or the queue is empty and the batch holds
  as many requests as the previous one did. Cancelled and expired requests are dropped, the
  rest are concatenated, run once in the executor, and each gets back its own rows.

One clock throughout: time.monotonic(), which is also what the event loop's timers and the
request deadlines (serving.core.model.monotonic_deadline) use. The batcher knows nothing about
models or gRPC: it batches arrays for a `run` callable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Protocol

import numpy as np
import numpy.typing as npt

from latentserve.wording import counted
from serving.core.errors import ServingError, deadline_exceeded, overloaded, unavailable
from serving.core.statistics import GraphStatistics, RequestTiming

log = logging.getLogger(__name__)

# The tuned inline path (the registry passes these; docs/performance.md, "Batcher tuning",
# has the A/B runs behind them). Runs of at most this many rows take a fraction of a
# millisecond, less than the two thread wake-ups of an executor hand-off.
INLINE_MAX_ROWS = 4
# Only that long after the graph's last run: a lone caller's next request comes a full
# round trip later, while concurrent callers' requests follow within half a millisecond
# and must queue up to be batched.
INLINE_AFTER_IDLE_S = 0.0004

Float32Array = npt.NDArray[np.float32]
Outputs = tuple[Float32Array, ...]
RunFn = Callable[[Float32Array], Outputs]


class BatchObserver(Protocol):
    """Receives batch statistics (the metrics module implements this)."""

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None: ...

    def queue_changed(self, depth: int) -> None: ...

    def queue_waited(self, seconds: float) -> None:
        """One request's wait from `submit` to its run (0 when it ran at once)."""


class BatchTracer(Protocol):
    """Records spans of the runs (serving/process/tracing.py implements this; the core
    never imports opentelemetry)."""

    def current(self) -> object | None:
        """A handle of the calling request's span, or None when it is not traced."""

    def ran(
        self,
        rows: int,
        calls: Sequence[tuple[object | None, float]],
        gathered: float,
        start: float,
        done: float,
    ) -> None:
        """One run of `rows` rows for `calls` (handle, time queued), all times
        time.monotonic(): gathering ended, the run started, the run ended."""


class _NullObserver:
    def batch_ran(self, rows: int, requests: int, seconds: float) -> None:
        pass

    def queue_waited(self, seconds: float) -> None:
        pass

    def queue_changed(self, depth: int) -> None:
        pass


class _Pending:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "rows", "timing", "trace")

    def __init__(
        self,
        inputs: Float32Array,
        future: asyncio.Future[Outputs],
        deadline: float | None,
        timing: RequestTiming | None = None,
    ) -> None:
        self.inputs = inputs
        self.future = future
        # Absolute time (time.monotonic()) after which the caller no longer wants the answer.
        self.deadline = deadline
        self.rows = int(inputs.shape[0])
        self.timing = timing
        self.enqueued = time.monotonic()
        self.trace: object | None = None


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


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
        statistics: GraphStatistics | None = None,
        tracer: BatchTracer | None = None,
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
        # Runs by batch size, for the statistics extension (serving.core.statistics).
        self._statistics = statistics
        self._tracer = tracer
        self._queue: deque[_Pending] = deque()
        # Resolved by `submit` (or the batch's delay timer) while the gatherer waits: a bare
        # future, since asyncio.Event.wait under wait_for costs a task and a timer per wait,
        # once for every request that trickles in.
        self._waiter: asyncio.Future[None] | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        # Executor runs of gathered batches; their done-callbacks hand out the rows.
        self._running: set[concurrent.futures.Future[Outputs]] = set()
        # Requests taken off the queue for the batch being gathered (failed on close).
        self._gathering: list[_Pending] = []
        # Requests gathered into the previous batch: the batcher's estimate of concurrency.
        self._last_batch_requests = 1
        # time.monotonic() when the last run ended.
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
                pending.future.set_exception(self._shutting_down())
        if self._running:
            running = [asyncio.wrap_future(f) for f in self._running]
            await asyncio.gather(*running, return_exceptions=True)

    async def submit(
        self,
        inputs: Float32Array,
        deadline: float | None = None,
        timing: RequestTiming | None = None,
    ) -> Outputs:
        """Queue `inputs` (N x ...) for a batched run and return this request's N output rows.

        `deadline` is a time.monotonic() value; past it the request is dropped unrun.
        `timing`, when given, gets this request's queue, input, run and output times added.
        """
        if self._closed:
            raise self._shutting_down()
        if not self.enabled:
            return await self._run_alone(inputs, timing)
        if self.queue_depth >= self.max_queue:
            raise overloaded(
                f"{self.name}: {counted(self.queue_depth, 'request')} already queued (max_queue "
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
            return await self._run_now(inputs, timing)
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, loop.create_future(), deadline, timing)
        if self._tracer is not None:
            pending.trace = self._tracer.current()
        self._queue.append(pending)
        self._observer.queue_changed(self.queue_depth)
        self._wake_gatherer()
        # If our caller is cancelled, the future is cancelled too and the gatherer skips it.
        return await pending.future

    async def _run_alone(self, inputs: Float32Array, timing: RequestTiming | None) -> Outputs:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        outputs = await loop.run_in_executor(self._executor, self._run, inputs)
        seconds = time.monotonic() - start
        self._observer.batch_ran(int(inputs.shape[0]), 1, seconds)
        self._ran_alone(int(inputs.shape[0]), start, seconds, timing)
        return outputs

    def _ran_alone(
        self, rows: int, start: float, seconds: float, timing: RequestTiming | None
    ) -> None:
        """Statistics of a request that ran by itself, with no queue and no input copy."""
        self._observer.queue_waited(0.0)
        if self._tracer is not None:
            call = ((self._tracer.current(), start),)
            self._tracer.ran(rows, call, start, start, start + seconds)
        if self._statistics is not None:
            self._statistics.executed(rows, 0, _ns(seconds), 0)
        if timing is not None:
            timing.infer_ns += _ns(seconds)

    async def _run_now(self, inputs: Float32Array, timing: RequestTiming | None) -> Outputs:
        await self._slots.acquire()  # free (checked by the caller): does not suspend
        start = time.monotonic()
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
            self._ran_alone(int(inputs.shape[0]), start, self._last_run_end - start, timing)
            return outputs
        running = asyncio.get_running_loop().run_in_executor(self._executor, self._run, inputs)
        # The slot stays taken until onnxruntime is done, even if our caller gives up first.
        running.add_done_callback(lambda _: self._run_ended())
        outputs = await asyncio.shield(running)
        seconds = time.monotonic() - start
        self._observer.batch_ran(int(inputs.shape[0]), 1, seconds)
        self._ran_alone(int(inputs.shape[0]), start, seconds, timing)
        return outputs

    def _run_ended(self) -> None:
        self._last_run_end = time.monotonic()
        self._slots.release()

    def _shutting_down(self) -> ServingError:
        return unavailable(f"{self.name}: server is shutting down")

    def _wake_gatherer(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_for_wakeup(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _next_request(self) -> _Pending:
        while not self._queue:
            await self._wait_for_wakeup()
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
            self._start_batch(batch)

    async def _gather_batch(self, first: _Pending) -> list[_Pending]:
        batch, rows = self._gathering, first.rows
        # How many callers to wait for: as many as shared the previous batch. Under load
        # (many concurrent callers) that fills batches; a lone caller on an idle graph runs
        # at once instead of paying max_delay on every request. When load drops, one batch
        # waits out the delay and the expectation falls back to what actually came.
        expected = self._last_batch_requests
        delay_over = self.max_delay_s <= 0
        timer: asyncio.TimerHandle | None = None

        def close_batch() -> None:
            nonlocal delay_over
            delay_over = True
            self._wake_gatherer()

        try:
            while rows < self.max_batch_size:
                if self._queue:
                    if rows + self._queue[0].rows > self.max_batch_size:
                        break  # keep request order; the next one starts the next batch
                    if self._queue[0].inputs.shape[1:] != first.inputs.shape[1:]:
                        break  # another image size (dynamic graphs): one batch per size
                    nxt = self._queue.popleft()
                    batch.append(nxt)
                    rows += nxt.rows
                    continue
                if len(batch) >= expected or delay_over:
                    break
                if timer is None:
                    # One timer per batch (the loop's clock is time.monotonic()).
                    timer = asyncio.get_running_loop().call_later(self.max_delay_s, close_batch)
                await self._wait_for_wakeup()
        finally:
            if timer is not None:
                timer.cancel()
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

    def _start_batch(self, batch: list[_Pending]) -> None:
        """Run `batch` in the executor; `_finish_batch` hands out the rows (a callback, not a
        task per batch)."""
        gathered = time.monotonic()
        inputs = (
            batch[0].inputs
            if len(batch) == 1
            else np.concatenate([p.inputs for p in batch], axis=0)
        )
        loop = asyncio.get_running_loop()
        finish = functools.partial(
            self._finish_batch, batch, int(inputs.shape[0]), gathered, time.monotonic()
        )
        try:
            running = self._executor.submit(self._run, inputs)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._run_ended()
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(self._shutting_down())
            return
        self._running.add(running)
        # Called in the executor thread: one hand-over to the loop (run_in_executor would
        # chain an asyncio future to it and take a second loop turn per batch).
        running.add_done_callback(lambda done: loop.call_soon_threadsafe(finish, done))

    def _finish_batch(
        self,
        batch: list[_Pending],
        rows: int,
        gathered: float,
        start: float,
        running: concurrent.futures.Future[Outputs],
    ) -> None:
        done = time.monotonic()
        self._running.discard(running)
        try:
            error = self._shutting_down() if running.cancelled() else running.exception()
            if error is not None:
                if not running.cancelled():
                    log.error("%s: batch of %d rows failed", self.name, rows, exc_info=error)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
            outputs = running.result()
            self._observer.batch_ran(rows, len(batch), done - start)
            offset = 0
            for pending in batch:
                end = offset + pending.rows
                if not pending.future.done():
                    pending.future.set_result(tuple(o[offset:end] for o in outputs))
                offset = end
            self._account(batch, rows, gathered, start, done)
        finally:
            self._run_ended()

    def _account(
        self, batch: list[_Pending], rows: int, gathered: float, start: float, done: float
    ) -> None:
        """Statistics of a gathered batch: the run's, and each request's (its own queue
        wait, the batch's input copy, run and hand-out), before any caller resumes."""
        input_ns, infer_ns, output_ns = (
            _ns(start - gathered),
            _ns(done - start),
            _ns(time.monotonic() - done),
        )
        if self._statistics is not None:
            self._statistics.executed(rows, input_ns, infer_ns, output_ns)
        if self._tracer is not None:
            calls = [(p.trace, p.enqueued) for p in batch]
            self._tracer.ran(rows, calls, gathered, start, done)
        for pending in batch:
            self._observer.queue_waited(gathered - pending.enqueued)
            timing = pending.timing
            if timing is not None:
                timing.queue_ns += _ns(gathered - pending.enqueued)
                timing.input_ns += input_ns
                timing.infer_ns += infer_ns
                timing.output_ns += output_ns
