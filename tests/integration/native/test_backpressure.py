"""Backpressure: a flood far beyond capacity is turned away quickly and cheaply.

The queue stays within max_queue, excess calls get RESOURCE_EXHAUSTED within milliseconds
(not after waiting), accepted calls finish in bounded time with correct results, the
server's memory stays flat, and when the flood stops the server is back to normal by
itself. The stream and RPC concurrency limits refuse the same way.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.reference import Reference
from fixtures.servers import InProcessServer, SubprocessServer, free_port
from fixtures.slow_model import build_slow_model_folder

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.client import AsyncLatentClient, LatentClient, LatentServeError

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_QUEUE = 8
USERS = 64
FLOOD_S = 3.0
ROWS = 100


@pytest.fixture(scope="module")
def slow_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("backpressure")
    build_slow_model_folder(root, "slow", matmuls=20)
    return root


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def queue_depth(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("latentserve_queue_depth{") and 'graph="decoder"' in line:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no queue depth metric")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_flood_is_refused_fast_and_the_server_recovers(slow_dir):
    metrics_port = free_port()
    proc = SubprocessServer(
        slow_dir,
        [
            "--default-model",
            "slow",
            "--max-queue",
            str(MAX_QUEUE),
            "--max-batch-size",
            str(ROWS),  # one request per run: capacity is easy to reason about
            "--intra-op-threads",
            "1",
            "--metrics-port",
            str(metrics_port),
        ],
    ).start()
    try:
        proc.wait_for_log("ready: serving")
        latents = np.random.default_rng(1).standard_normal((ROWS, 2)).astype(np.float32)
        expected = Reference(slow_dir / "slow").decode(latents)
        with LatentClient(proc.target) as warm:
            np.testing.assert_allclose(warm.decode(latents).images, expected, atol=1e-6)
        rss_before = rss_mib(proc.proc.pid)

        async def flood() -> tuple[list[tuple[str, float]], list[float], float]:
            outcomes: list[tuple[str, float]] = []
            depths: list[float] = []
            peak_rss = 0.0
            end = time.monotonic() + FLOOD_S
            clients = [AsyncLatentClient(proc.target, timeout=30) for _ in range(8)]

            async def user(i: int) -> None:
                client = clients[i % len(clients)]
                while time.monotonic() < end:
                    started = time.monotonic()
                    try:
                        got = await client.decode(latents)
                        assert np.allclose(got.images, expected, atol=1e-6)
                        outcomes.append(("OK", time.monotonic() - started))
                    except LatentServeError as e:
                        outcomes.append((e.code.name, time.monotonic() - started))
                        if e.code is EXHAUSTED:
                            assert f"max_queue {MAX_QUEUE}" in e.message, e.message
                            await asyncio.sleep(0.02)  # a client backing off a little

            async def observe() -> None:
                nonlocal peak_rss
                while time.monotonic() < end:
                    depths.append(await asyncio.to_thread(queue_depth, metrics_port))
                    peak_rss = max(peak_rss, rss_mib(proc.proc.pid))
                    await asyncio.sleep(0.1)

            await asyncio.gather(observe(), *(user(i) for i in range(USERS)))
            for c in clients:
                await c.close()
            return outcomes, depths, peak_rss

        outcomes, depths, peak_rss = asyncio.run(flood())
        codes = {code for code, _ in outcomes}
        assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, codes
        ok = sorted(t for code, t in outcomes if code == "OK")
        refused = sorted(t for code, t in outcomes if code == "RESOURCE_EXHAUSTED")
        assert ok and len(refused) > len(ok), "the flood must exceed capacity"
        # Refusals are immediate: no waiting in a queue that was never joined.
        median_ok, median_refused = ok[len(ok) // 2], refused[len(refused) // 2]
        # Refusals come without waiting in a queue that was never joined: far sooner than an
        # accepted call's answer (on a busy 2-core machine both include client CPU time).
        assert median_refused < 0.5 and median_refused < median_ok / 3, (
            f"median refusal {median_refused:.3f}s vs accepted {median_ok:.3f}s"
        )
        # A bounded queue bounds the wait of accepted calls: at most the queue ahead of them.
        assert ok[-1] < 10.0, f"slowest accepted call {ok[-1]:.2f}s"
        assert max(depths) <= MAX_QUEUE
        assert peak_rss - rss_before < 150, f"RSS {rss_before:.0f} -> {peak_rss:.0f} MiB"

        # The flood is over: back to normal with nobody's help.
        time.sleep(0.5)
        assert queue_depth(metrics_port) == 0
        with LatentClient(proc.target, timeout=5) as after:
            assert after.health() == "SERVING"
            started = time.monotonic()
            np.testing.assert_allclose(after.decode(latents).images, expected, atol=1e-6)
            assert time.monotonic() - started < 2.0
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        proc.stop()


async def test_concurrent_streams_are_limited(slow_dir):
    with InProcessServer(slow_dir, default_model="slow", max_concurrent_streams=2) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.AutoencoderStub(channel)
            long = pb.SampleRequest(count=1_000_000, chunk_size=100, seed=1)
            first, second = stub.SampleRandomStream(long), stub.SampleRandomStream(long)
            assert (await first.read()).offset == 0
            assert (await second.read()).offset == 0
            started = time.monotonic()
            third = stub.SampleRandomStream(pb.SampleRequest(count=10, seed=1))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await third.read()
            assert info.value.code() == EXHAUSTED
            assert "max_concurrent_streams 2" in (info.value.details() or "")
            assert time.monotonic() - started < 1.0
            # Unary calls are not streams: they still go through.
            assert (await stub.SampleRandom(pb.SampleRequest(count=2, seed=1))).images.shape
            first.cancel()
            await asyncio.sleep(0.2)
            assert running.server.servicer.active_streams == 1
            fourth = [r async for r in stub.SampleRandomStream(pb.SampleRequest(count=10, seed=1))]
            assert sum(r.images.shape[0] for r in fourth) == 10
            second.cancel()


async def test_concurrent_rpc_limit(slow_dir):
    with InProcessServer(
        slow_dir,
        default_model="slow",
        max_concurrent_rpcs=4,
        inference_workers=1,
        intra_op_threads=1,
        max_samples_per_request=100_000,
    ) as running:
        async with AsyncLatentClient(running.target, batch_size=100_000) as client:
            latents = np.zeros((600, 2), np.float32)  # a long run each
            results = await asyncio.gather(
                *(client.decode(latents) for _ in range(12)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, LatentServeError)]
            assert refused and {r.code for r in refused} == {EXHAUSTED}
            assert len(refused) <= 12 - 4
            assert all(
                r.images.shape == (600, 1, 28, 28) for r in results if not isinstance(r, Exception)
            )
            assert await client.health() == "SERVING"
