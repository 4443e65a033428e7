"""DynamicBatcher: merging, limits, dropping unwanted requests, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from serving.core.batching import DynamicBatcher
from serving.core.errors import ServingError


class Recorder:
    """A graph stand-in: doubles its input, records each batch, can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(batch.copy())
        with self._lock:
            self.active -= 1
        return batch * 2, batch.sum(axis=1, keepdims=True)


class Stats:
    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []
        self.depths: list[int] = []

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None:
        self.runs.append((rows, requests))

    def queue_changed(self, depth: int) -> None:
        self.depths.append(depth)

    def queue_waited(self, seconds: float) -> None:
        pass


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.001)


async def prime(batcher: DynamicBatcher, run: Recorder, callers: int) -> None:
    """Make the batcher see `callers` concurrent requests in its last batch: one request
    holds the graph while `callers` more queue up, then all are let through."""
    run.gate.clear()
    first = asyncio.ensure_future(batcher.submit(rows(-1, 1)))
    await asyncio.get_running_loop().run_in_executor(None, run.entered.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit(rows(-2 - i, 1))) for i in range(callers)]
    await wait_until(lambda: batcher.queue_depth == callers)
    run.gate.set()
    await asyncio.gather(first, *queued)
    run.batches.clear()
    run.entered.clear()


async def test_concurrent_requests_share_one_run_and_get_their_own_rows(executor):
    run, stats = Recorder(), Stats()
    batcher = DynamicBatcher(run, executor, max_batch_size=64, max_delay_s=0.05, observer=stats)
    batcher.start()
    inputs = [rows(10 * i, 1 + i % 3) for i in range(8)]
    results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    await batcher.close()
    # On an idle graph the first caller runs at once; the others arrive while it runs and
    # share the next run.
    assert len(run.batches) == 2
    assert stats.runs == [(len(inputs[0]), 1), (sum(len(x) for x in inputs[1:]), 7)]
    for x, (doubled, sums) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(sums, x.sum(axis=1, keepdims=True))


async def test_batches_never_exceed_max_batch_size_except_single_large_request(executor):
    run = Recorder()
    batcher = DynamicBatcher(run, executor, max_batch_size=4, max_delay_s=0.01)
    batcher.start()
    inputs = [rows(0, 3), rows(3, 3), rows(6, 1), rows(7, 9), rows(16, 2)]
    results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    await batcher.close()
    sizes = [len(b) for b in run.batches]
    assert 9 in sizes  # the oversized request ran alone
    assert all(s <= 4 for s in sizes if s != 9)
    assert sum(sizes) == 18
    for x, (doubled, _) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)


async def test_lone_caller_on_an_idle_graph_is_not_delayed(executor):
    stats = Stats()
    batcher = DynamicBatcher(
        Recorder(), executor, max_batch_size=64, max_delay_s=1.0, observer=stats
    )
    batcher.start()
    for i in range(5):
        start = time.perf_counter()
        (doubled, _) = await batcher.submit(rows(i, 1))
        assert time.perf_counter() - start < 0.5  # far below max_delay (1 s)
        np.testing.assert_array_equal(doubled, rows(i, 1) * 2)
    await batcher.close()
    assert stats.runs == [(1, 1)] * 5


async def test_small_lone_requests_run_on_the_loop_thread_larger_ones_in_the_executor(executor):
    threads: list[int] = []

    def run(batch: np.ndarray) -> tuple[np.ndarray]:
        threads.append(threading.get_ident())
        return (batch * 2,)

    stats = Stats()
    batcher = DynamicBatcher(run, executor, inline_max_rows=2, observer=stats)
    batcher.start()
    for n in (1, 2, 3):
        (doubled,) = await batcher.submit(rows(0, n))
        np.testing.assert_array_equal(doubled, rows(0, n) * 2)
    await batcher.close()
    loop_thread = threading.get_ident()
    assert threads[:2] == [loop_thread, loop_thread]
    assert threads[2] != loop_thread
    assert stats.runs == [(1, 1), (2, 1), (3, 1)]


async def test_a_request_close_behind_the_last_run_goes_to_the_executor(executor):
    # Under load the next request is read right after a run ends; running it inline too
    # would keep the loop from reading the others, and batching would never start.
    threads: list[int] = []

    def run(batch: np.ndarray) -> tuple[np.ndarray]:
        threads.append(threading.get_ident())
        return (batch * 2,)

    batcher = DynamicBatcher(run, executor, inline_max_rows=4, inline_after_idle_s=0.2)
    batcher.start()
    await batcher.submit(rows(0, 1))  # the graph has never run: idle long enough
    await batcher.submit(rows(1, 1))  # straight after: executor
    await asyncio.sleep(0.25)
    (doubled,) = await batcher.submit(rows(2, 1))  # idle again: inline
    await batcher.close()
    np.testing.assert_array_equal(doubled, rows(2, 1) * 2)
    loop_thread = threading.get_ident()
    assert [t == loop_thread for t in threads] == [True, False, True]


async def test_concurrent_single_row_callers_get_batched_despite_the_inline_path(executor):
    # Callers that each send their next request as soon as the last answer arrives, as
    # gRPC clients under load do: after the first inline run, runs must hold many rows.
    stats = Stats()

    def run(batch: np.ndarray) -> tuple[np.ndarray]:
        time.sleep(0.002)  # long enough for the others to queue behind an executor run
        return (batch * 2,)

    batcher = DynamicBatcher(
        run,
        executor,
        max_batch_size=64,
        max_delay_s=0.01,
        inline_max_rows=4,
        inline_after_idle_s=0.001,
        observer=stats,
    )
    batcher.start()

    async def caller(i: int) -> None:
        for j in range(20):
            (doubled,) = await batcher.submit(rows(100 * i + j, 1))
            np.testing.assert_array_equal(doubled, rows(100 * i + j, 1) * 2)

    await asyncio.gather(*(caller(i) for i in range(16)))
    await batcher.close()
    assert sum(r for r, _ in stats.runs) == 16 * 20
    assert len(stats.runs) < 16 * 20 / 4, f"{len(stats.runs)} runs: requests ran one by one"


async def test_an_inline_run_error_reaches_the_caller_and_frees_the_graph(executor):
    calls = 0

    def run(batch: np.ndarray) -> tuple[np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("graph failed")
        return (batch * 2,)

    batcher = DynamicBatcher(run, executor, inline_max_rows=4)
    batcher.start()
    with pytest.raises(RuntimeError, match="graph failed"):
        await batcher.submit(rows(0, 1))
    (doubled,) = await asyncio.wait_for(batcher.submit(rows(1, 1)), 5)
    np.testing.assert_array_equal(doubled, rows(1, 1) * 2)
    await batcher.close()


async def test_cancelled_lone_caller_keeps_the_slot_until_its_run_ends(executor):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, executor, max_batch_size=8, max_delay_s=0.0)
    batcher.start()
    lone = asyncio.ensure_future(batcher.submit(rows(0, 1)))  # runs at once, held at the gate
    await asyncio.get_running_loop().run_in_executor(None, run.entered.wait, 5)
    lone.cancel()
    nxt = asyncio.ensure_future(batcher.submit(rows(1, 1)))
    await asyncio.sleep(0.05)
    assert run.active == 1  # the next request waits: the graph is still busy
    run.gate.set()
    (doubled, _) = await nxt
    np.testing.assert_array_equal(doubled, rows(1, 1) * 2)
    assert lone.cancelled()
    assert run.max_active == 1
    await batcher.close()


async def test_after_a_shared_batch_a_request_waits_at_most_about_max_delay(executor):
    run = Recorder()
    batcher = DynamicBatcher(run, executor, max_batch_size=64, max_delay_s=0.1)
    batcher.start()
    await prime(batcher, run, 3)  # the last batch had 3 callers
    start = time.perf_counter()
    await batcher.submit(rows(10, 1))  # waits for the two others, which never come
    elapsed = time.perf_counter() - start
    await batcher.submit(rows(11, 1))  # the expectation has dropped back to one caller
    second = time.perf_counter() - start - elapsed
    await batcher.close()
    assert 0.08 <= elapsed < 1.0
    assert second < 0.08
    assert [len(b) for b in run.batches] == [1, 1]


async def test_requests_arriving_within_max_delay_join_the_batch_in_order(executor):
    run = Recorder()
    batcher = DynamicBatcher(run, executor, max_batch_size=64, max_delay_s=0.5)
    batcher.start()
    await prime(batcher, run, 2)  # expect two callers per batch
    late = []
    for i in range(2):
        late.append(asyncio.ensure_future(batcher.submit(rows(10 + 5 * i, 2 + i))))
        await asyncio.sleep(0.02)  # well within max_delay
    results = await asyncio.gather(*late)
    await batcher.close()
    assert [len(b) for b in run.batches] == [5]
    # Rows are concatenated in arrival order and each caller gets back exactly its own.
    np.testing.assert_array_equal(run.batches[0], np.concatenate([rows(10, 2), rows(15, 3)]))
    np.testing.assert_array_equal(results[0][0], rows(10, 2) * 2)
    np.testing.assert_array_equal(results[1][0], rows(15, 3) * 2)


async def test_full_batch_runs_without_waiting_for_the_delay(executor):
    batcher = DynamicBatcher(Recorder(), executor, max_batch_size=2, max_delay_s=5.0)
    batcher.start()
    start = time.perf_counter()
    await asyncio.gather(batcher.submit(rows(0, 1)), batcher.submit(rows(1, 1)))
    await batcher.close()
    assert time.perf_counter() - start < 2.0


async def test_queue_bound_gives_resource_exhausted(executor):
    run = Recorder()
    run.gate.clear()  # hold the first batch inside the graph
    batcher = DynamicBatcher(run, executor, max_batch_size=1, max_delay_s=0.0, max_queue=2)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await asyncio.get_running_loop().run_in_executor(None, run.entered.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit(rows(i, 1))) for i in (1, 2)]
    await wait_until(lambda: batcher.queue_depth == 2)
    with pytest.raises(ServingError) as info:
        await batcher.submit(rows(3, 1))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue 2" in info.value.message
    run.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.close()


async def test_cancelled_and_expired_requests_are_dropped_before_running(executor):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, executor, max_batch_size=8, max_delay_s=0.0)
    batcher.start()
    blocker = asyncio.ensure_future(batcher.submit(rows(100, 1)))
    await asyncio.get_running_loop().run_in_executor(None, run.entered.wait, 5)
    cancelled = asyncio.ensure_future(batcher.submit(rows(200, 1)))
    expired = asyncio.ensure_future(batcher.submit(rows(300, 1), deadline=time.monotonic() + 0.01))
    kept = asyncio.ensure_future(batcher.submit(rows(400, 1)))
    await wait_until(lambda: batcher.queue_depth == 3)
    cancelled.cancel()
    await asyncio.sleep(0.05)  # let the deadline pass while the graph is busy
    run.gate.set()
    await blocker
    (doubled, _) = await kept
    np.testing.assert_array_equal(doubled, rows(400, 1) * 2)
    with pytest.raises(ServingError) as info:
        await expired
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled.cancelled()
    seen = np.concatenate(run.batches)[:, 0]
    assert 200 not in seen and 300 not in seen and 400 in seen
    await batcher.close()


async def test_disabled_batching_runs_each_request_alone(executor):
    run, stats = Recorder(), Stats()
    batcher = DynamicBatcher(run, executor, enabled=False, observer=stats)
    batcher.start()
    inputs = [rows(i, 2) for i in range(5)]
    results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    await batcher.close()
    assert sorted(len(b) for b in run.batches) == [2] * 5
    assert stats.runs == [(2, 1)] * 5
    for x, (doubled, _) in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)


async def test_run_error_reaches_every_request_in_the_batch(executor):
    def broken(batch: np.ndarray) -> tuple[np.ndarray]:
        raise RuntimeError("graph exploded")

    batcher = DynamicBatcher(broken, executor, max_batch_size=8, max_delay_s=0.02)
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit(rows(i, 1)) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    # The batcher survives a failed run.
    batcher._run = lambda b: (b,)  # type: ignore[assignment]
    (out,) = await batcher.submit(rows(0, 1))
    np.testing.assert_array_equal(out, rows(0, 1))
    await batcher.close()


async def test_concurrency_allows_overlapping_runs(executor):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, executor, max_batch_size=1, max_delay_s=0.0, concurrency=2)
    batcher.start()
    calls = [asyncio.ensure_future(batcher.submit(rows(i, 1))) for i in range(4)]
    await wait_until(lambda: run.active == 2)
    await asyncio.sleep(0.05)
    assert run.active == 2  # never more than `concurrency`
    run.gate.set()
    await asyncio.gather(*calls)
    await batcher.close()
    assert run.max_active == 2


async def test_close_fails_queued_requests_and_refuses_new_ones(executor):
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, executor, max_batch_size=1, max_delay_s=0.0)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await asyncio.get_running_loop().run_in_executor(None, run.entered.wait, 5)
    queued = asyncio.ensure_future(batcher.submit(rows(1, 1)))
    await wait_until(lambda: batcher.queue_depth == 1)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.02)
    run.gate.set()
    await closing
    (doubled, _) = await running  # the running batch finished
    np.testing.assert_array_equal(doubled, rows(0, 1) * 2)
    with pytest.raises(ServingError) as info:
        await queued
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ServingError):
        await batcher.submit(rows(2, 1))


async def test_observer_sees_queue_depth(executor):
    stats = Stats()
    batcher = DynamicBatcher(
        Recorder(), executor, max_batch_size=8, max_delay_s=0.01, observer=stats
    )
    batcher.start()
    await asyncio.gather(*(batcher.submit(rows(i, 1)) for i in range(3)))
    await batcher.close()
    assert max(stats.depths) >= 1
    assert stats.depths[-1] == 0


async def test_requests_of_other_sizes_run_in_their_own_batches(executor):
    """A graph with dynamic sizes gets requests whose rows differ in shape: they cannot be
    concatenated, so each size runs in its own batch, in request order."""
    run = Recorder()
    batcher = DynamicBatcher(run, executor, max_batch_size=64, max_delay_s=0.05)
    batcher.start()
    run.gate.clear()
    first = asyncio.ensure_future(batcher.submit(rows(0, 1)))
    await asyncio.get_running_loop().run_in_executor(None, run.entered.wait, 5)
    wide = np.ones((2, 5), np.float32)
    queued = [batcher.submit(rows(1, 2)), batcher.submit(wide), batcher.submit(rows(3, 1))]
    pending = [asyncio.ensure_future(q) for q in queued]
    await wait_until(lambda: batcher.queue_depth == 3)
    run.gate.set()
    results = await asyncio.gather(first, *pending)
    await batcher.close()
    assert [b.shape for b in run.batches] == [(1, 3), (2, 3), (2, 5), (1, 3)]
    np.testing.assert_array_equal(results[2][0], wide * 2)
