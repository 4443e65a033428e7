"""The load generator: closed-loop gRPC callers in worker processes, bounded in time and count.

Each worker process runs `concurrency` asyncio callers on `channels` grpc.aio channels
(latentserve.channels: with more than one, each has its own subchannel pool and so its own
connection, and calls go round them), so that a server whose worker processes share one
SO_REUSEPORT port gets connections to spread; one channel would pin a generator process
to one server worker. Requests are
serialised once up front and sent as raw bytes, and responses are kept as bytes (only the
first one is parsed and checked), so the generator spends its CPU on gRPC, not on protobuf:
on a 2-core machine the generator shares the CPU with the server, and a heavy client would
measure itself. Workers start together at a wall-clock instant, warm up, then record every
call that starts inside the measured window.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve.channels import RoundRobin, aio_channels, channel_options

SERVICE = "/latentserve.v1.Autoencoder/"
# The cheapest call the server answers: the gRPC round-trip floor on this machine.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# What each RPC answers with, and the response field whose first dimension is the batch.
RESPONSES: dict[str, tuple[Any, str]] = {
    "Encode": (pb.EncodeResponse, "latents"),
    "Decode": (pb.DecodeResponse, "images"),
    "SampleRandom": (pb.SampleResponse, "images"),
}
MAX_MESSAGE = 256 << 20


@dataclass(frozen=True)
class LoadSpec:
    """One worker's share of a load run."""

    target: str
    rpc: str  # a key of RESPONSES, or "HealthCheck"
    request: bytes  # serialised request message
    items: int  # images (latents) per request, checked against the first response
    concurrency: int  # callers in this process
    warmup_s: float
    duration_s: float
    max_requests: int  # this process stops starting calls after this many measured ones
    start_at: float  # time.time() at which every worker begins
    timeout_s: float = 30.0
    # Slow calls: keep going past duration_s until this many were measured (up to 3x).
    min_requests: int = 1
    channels: int = 1  # grpc.aio channels in this process, each with its own connection


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    window_start: float = 0.0  # time.time() when the first measured call started
    window_end: float = 0.0  # time.time() when the last measured call ended
    problem: str = ""  # a malformed response, if any


def _method(rpc: str) -> str:
    return HEALTH_CHECK if rpc == "HealthCheck" else SERVICE + rpc


def _check_response(rpc: str, data: bytes, items: int) -> str:
    if rpc == "HealthCheck":
        status = health_pb2.HealthCheckResponse.FromString(data).status
        return "" if status == health_pb2.HealthCheckResponse.SERVING else f"health {status}"
    cls, tensor_field = RESPONSES[rpc]
    message = cls.FromString(data)
    tensor = getattr(message, tensor_field)
    if not tensor.shape or tensor.shape[0] != items:
        return f"{rpc}: response {tensor_field} shape {list(tensor.shape)}, expected {items} rows"
    expected = 4 * items
    for d in tensor.shape[1:]:
        expected *= d
    if len(tensor.raw_data) != expected:
        return f"{rpc}: response {tensor_field} holds {len(tensor.raw_data)} bytes, not {expected}"
    return ""


async def _run(spec: LoadSpec) -> LoadResult:
    # No retries: the generator counts every failed attempt, and balancing is the server's.
    options = channel_options(max_message_bytes=MAX_MESSAGE, load_balancing=None, retry=None)
    result = LoadResult()
    errors: Counter[str] = Counter()
    channels = aio_channels(spec.target, spec.channels, options)
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), spec.timeout_s)
        # bytes in, bytes out; each call takes the next channel's callable
        calls = RoundRobin([c.unary_unary(_method(spec.rpc), None, None) for c in channels])
        first = await calls.next()(spec.request, timeout=spec.timeout_s)
        result.problem = _check_response(spec.rpc, first, spec.items)
        await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        measure_from = time.time() + spec.warmup_s
        stop_at = measure_from + spec.duration_s
        # Past this nobody starts a call, even when min_requests is not reached.
        hard_stop = measure_from + 3 * spec.duration_s
        result.window_start = float("inf")
        started = 0

        async def caller() -> None:
            nonlocal started
            while True:
                now = time.time()
                enough = started >= spec.min_requests
                if started >= spec.max_requests or now >= hard_stop or (now >= stop_at and enough):
                    return
                measured = now >= measure_from
                if measured:
                    started += 1
                    result.window_start = min(result.window_start, now)
                t0 = time.perf_counter()
                try:
                    await calls.next()(spec.request, timeout=spec.timeout_s)
                except grpc.aio.AioRpcError as e:
                    if measured:
                        errors[e.code().name] += 1
                    continue
                if measured:
                    result.latencies_s.append(time.perf_counter() - t0)
                    result.window_end = time.time()

        await asyncio.gather(*(caller() for _ in range(spec.concurrency)))
    finally:
        for channel in channels:
            await channel.close(None)
    result.errors = dict(errors)
    return result


def run_load(spec: LoadSpec) -> LoadResult:
    """Worker entry point (top-level so that spawned processes can unpickle it)."""
    return asyncio.run(_run(spec))


@dataclass
class Aggregate:
    latencies_s: list[float]
    errors: dict[str, int]
    window_s: float
    problems: list[str]


class LoadGenerator:
    """A pool of spawned worker processes, reused across runs (spawning costs ~1 s each)."""

    def __init__(self, processes: int = 2, channels: int = 1) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.processes = processes
        # Per worker process; more than one reach more of a multi-worker server's processes.
        self.channels = channels
        self._pool: Pool | None = None

    def __enter__(self) -> LoadGenerator:
        self._pool = multiprocessing.get_context("spawn").Pool(self.processes)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def run(
        self,
        target: str,
        rpc: str,
        request: bytes,
        items: int,
        concurrency: int,
        *,
        warmup_s: float,
        duration_s: float,
        max_requests: int,
        min_requests: int = 1,
        timeout_s: float = 30.0,
    ) -> Aggregate:
        """Closed-loop load with `concurrency` callers spread over the worker processes."""
        assert self._pool is not None, "use LoadGenerator as a context manager"
        workers = max(1, min(self.processes, concurrency))
        shares = [concurrency // workers + (i < concurrency % workers) for i in range(workers)]
        # Leave time for every worker to connect and send its checking call, so that all
        # start together (one worker just starts after its checking call).
        start_at = time.time() + (0.3 if workers > 1 else 0.0)
        specs = [
            LoadSpec(
                target,
                rpc,
                request,
                items,
                share,
                warmup_s,
                duration_s,
                max(1, max_requests * share // concurrency),
                start_at,
                timeout_s,
                max(1, min_requests * share // concurrency),
                min(self.channels, share),
            )
            for share in shares
        ]
        # Bounded even if a worker dies (the pool would replace it and wait forever).
        limit = 10 + warmup_s + 3 * duration_s + 2 * timeout_s
        results = self._pool.map_async(run_load, specs, chunksize=1).get(limit)
        latencies = [x for r in results for x in r.latencies_s]
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r.errors)
        start = min(r.window_start for r in results)
        end = max(r.window_end for r in results)
        if not latencies:
            start = end = 0.0
        return Aggregate(
            latencies,
            dict(errors),
            max(end - start, 0.0),
            [r.problem for r in results if r.problem],
        )
