"""Statistics: what the batcher records per run and per request, and how figures merge."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.core.batching import DynamicBatcher
from serving.core.statistics import GraphStatistics, RequestTiming, StatisticsBook


class Recorder:
    """A graph stand-in that doubles its input and can be held at a gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        return (batch * 2,)


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.001)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


async def test_queued_requests_get_their_wait_and_their_batch_run(executor) -> None:
    run, stats = Recorder(), GraphStatistics()
    batcher = DynamicBatcher(run, executor, max_batch_size=64, max_delay_s=0.05, statistics=stats)
    batcher.start()
    try:
        # One request holds the graph; three more queue up behind it and run as one batch.
        run.gate.clear()
        first_timing = RequestTiming()
        first = asyncio.ensure_future(batcher.submit(rows(0, 1), None, first_timing))
        await asyncio.get_running_loop().run_in_executor(None, run.entered.wait, 5)
        timings = [RequestTiming() for _ in range(3)]
        queued = [
            asyncio.ensure_future(batcher.submit(rows(10 * i, 2), None, t))
            for i, t in enumerate(timings)
        ]
        await wait_until(lambda: batcher.queue_depth == 3)
        await asyncio.sleep(0.02)  # a wait the queued requests must see
        run.gate.set()
        await asyncio.gather(first, *queued)
    finally:
        await batcher.close()
    assert stats.execution_count == 2
    assert sorted(stats.sizes) == [1, 6]
    assert stats.sizes[6].compute_infer.count == 1
    for timing in timings:
        assert timing.queue_ns >= 20_000_000
        # Requests of one batch share its run time (as Triton reports them).
        assert timing.infer_ns == stats.sizes[6].compute_infer.ns > 0
    assert first_timing.queue_ns == 0 and first_timing.infer_ns >= 20_000_000


async def test_a_lone_request_runs_without_queue(executor) -> None:
    stats = GraphStatistics()
    batcher = DynamicBatcher(Recorder(), executor, inline_max_rows=4, statistics=stats)
    batcher.start()
    timing = RequestTiming()
    try:
        await batcher.submit(rows(0, 2), None, timing)
    finally:
        await batcher.close()
    assert timing.queue_ns == 0 and timing.infer_ns > 0
    assert stats.execution_count == 1 and list(stats.sizes) == [2]


def test_success_and_failure_are_counted_apart() -> None:
    stats = GraphStatistics()
    stats.succeeded(5, 1000, RequestTiming(queue_ns=100, input_ns=10, infer_ns=700, output_ns=5))
    stats.failed(300)
    counts = stats.counts()
    assert counts["success.count"] == 1 and counts["success.ns"] == 1000
    assert counts["fail.count"] == 1 and counts["fail.ns"] == 300
    assert counts["queue.ns"] == 100 and counts["compute_infer.ns"] == 700
    assert counts["inference_count"] == 5


def test_snapshot_adds_the_peers_figures() -> None:
    book = StatisticsBook()
    book.graph("m", "1", "decoder").executed(4, 1, 2, 3)
    peer = {"execution_count": 2, "batch.4.compute_infer.count": 2, "last_inference": 5}
    book.peers = lambda: [(("m", "1", "decoder"), peer), (("m", "1", "encoder"), peer)]
    merged = book.snapshot()
    assert merged[("m", "1", "decoder")]["execution_count"] == 3
    assert merged[("m", "1", "decoder")]["batch.4.compute_infer.count"] == 3
    assert merged[("m", "1", "decoder")]["last_inference"] == 5  # the latest, not a sum
    assert merged[("m", "1", "encoder")]["execution_count"] == 2
    assert np.isclose(merged[("m", "1", "decoder")]["batch.4.compute_infer.ns"], 2)
