"""Faults: broken model folders are refused with a reason while the others serve, and work
nobody waits for any more (deadline passed, stream cancelled) is dropped, not done.

test_server_lifecycle.py covers a hash mismatch, a missing graph, bad JSON and a latent size
that disagrees with the graph at the ListModels level; here every broken kind is also
checked through GetModel, per-model health and the RPCs, including graphs whose hash is
right but whose bytes are no ONNX model. "Dropped" is observed in the server's own metrics:
the decoder's batch counter does not move.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from fixtures.models import build_model_folder, corrupt_hash
from fixtures.servers import InProcessServer
from fixtures.slow_model import build_slow_model_folder

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.client import AsyncLatentClient, LatentClient, LatentServeError
from latentserve.manifest import read_manifest, sha256_of, write_manifest


def rehash(folder) -> None:
    """Make model.json's sha256 entries match the graph files as they now are."""
    manifest = read_manifest(folder)
    manifest = manifest.model_copy(
        update={
            "encoder": manifest.encoder.model_copy(
                update={"sha256": sha256_of(folder / manifest.encoder.file)}
            ),
            "decoder": manifest.decoder.model_copy(
                update={"sha256": sha256_of(folder / manifest.decoder.file)}
            ),
        }
    )
    write_manifest(folder, manifest)


@pytest.fixture(scope="module")
def faulty_models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    build_model_folder(root, "good", kind="vae", latent_dim=2, seed=1)
    # Right hash, wrong bytes: onnxruntime must refuse them, not the checksum.
    corrupt = build_model_folder(root, "corrupt-onnx", kind="vae", seed=2)
    (corrupt / "decoder.onnx").write_bytes(b"this is not an ONNX protobuf at all" * 10)
    rehash(corrupt)
    truncated = build_model_folder(root, "truncated-onnx", kind="ae", seed=3)
    data = (truncated / "encoder.onnx").read_bytes()
    (truncated / "encoder.onnx").write_bytes(data[: len(data) // 2])
    rehash(truncated)
    corrupt_hash(build_model_folder(root, "hash-mismatch", kind="vae", seed=4))
    missing = build_model_folder(root, "missing-graph", kind="vae", seed=5)
    (missing / "decoder.onnx").unlink()
    build_model_folder(root, "latent-size-lie", kind="vae", latent_dim=4, graph_latent_dim=2)
    swapped = build_model_folder(root, "swapped-graphs", kind="ae", seed=6)
    enc, dec = (swapped / "encoder.onnx").read_bytes(), (swapped / "decoder.onnx").read_bytes()
    (swapped / "encoder.onnx").write_bytes(dec)
    (swapped / "decoder.onnx").write_bytes(enc)
    rehash(swapped)
    return root


BROKEN = {
    # name: fragments GetModel's error must contain
    "corrupt-onnx": ["decoder.onnx", "cannot load graph"],
    "truncated-onnx": ["encoder.onnx", "cannot load graph"],
    "hash-mismatch": ["sha256", "decoder"],
    "missing-graph": ["decoder graph", "missing"],
    "latent-size-lie": ["latent_dim 4", "[N, 4]"],
    "swapped-graphs": ["encoder graph"],
}


@pytest.fixture(scope="module")
def faulty(faulty_models_dir):
    with InProcessServer(faulty_models_dir, default_model="good") as running:
        yield running


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_model_is_refused_with_its_reason(faulty, name):
    with LatentClient(faulty.target, timeout=10) as client:
        info = client.get_model(name)
        assert info.state == "FAILED"
        for fragment in BROKEN[name]:
            assert fragment in info.error, info.error
        assert client.health(name) == "NOT_SERVING"
        for call in (
            lambda: client.sample(1, model=name),
            lambda: client.decode(np.zeros((1, 2), np.float32), model=name),
            lambda: client.encode(np.zeros((1, 28, 28), np.float32), model=name),
        ):
            with pytest.raises(LatentServeError) as refused:
                call()
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert f"model {name!r} is not served" in refused.value.message
            assert BROKEN[name][0] in refused.value.message
        # ...while the good model next to it serves.
        assert client.health() == "SERVING"
        assert client.health("good") == "SERVING"
        assert client.sample(2, seed=1).images.shape == (2, 1, 28, 28)


def test_list_models_shows_every_folder(faulty):
    with LatentClient(faulty.target) as client:
        states = {m.name: m.state for m in client.list_models()}
    assert states == {"good": "READY", **dict.fromkeys(BROKEN, "FAILED")}


# -- work nobody waits for ---------------------------------------------------------------------


def decoder_runs(running: InProcessServer, model: str) -> tuple[float, float]:
    """(onnxruntime runs, rows run) of `model`'s decoder so far, from the server's metrics."""
    registry = running.server.metrics.registry
    labels = {"model": model, "graph": "decoder", "version": "1"}
    count = registry.get_sample_value("latentserve_batch_rows_count", labels) or 0.0
    rows = registry.get_sample_value("latentserve_batch_rows_sum", labels) or 0.0
    return count, rows


def error_count(running: InProcessServer, model: str, method: str, code: str) -> float:
    labels = {"model": model, "method": method, "code": code, "version": "1"}
    value = running.server.metrics.registry.get_sample_value(
        "latentserve_request_errors_total", labels
    )
    return value or 0.0


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """A server whose only model has a slow decoder, one run at a time on one thread."""
    root = tmp_path_factory.mktemp("slow")
    build_slow_model_folder(root, "slow", matmuls=20)
    with InProcessServer(
        root,
        default_model="slow",
        intra_op_threads=1,
        inference_workers=1,
        batch_concurrency=1,
        max_samples_per_request=100_000,
    ) as running:
        yield running


def rows_taking(seconds: float, client: LatentClient) -> int:
    """How many rows one decoder run needs to take at least about `seconds` here. The
    fastest of three timings: other work on the machine only makes the real run longer."""
    per_row = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        client.decode(np.zeros((300, 2), np.float32))
        per_row = min(per_row, (time.perf_counter() - started) / 300)
    return max(300, int(seconds / per_row))


def test_deadline_shorter_than_the_work_is_dropped_unrun(slow):
    """While a long run holds the decoder, a call with a 100 ms deadline waits in the queue:
    it gets DEADLINE_EXCEEDED at its deadline, and its rows never reach onnxruntime."""
    with (
        LatentClient(slow.target, timeout=30, batch_size=100_000) as patient,
        LatentClient(slow.target, timeout=0.1) as hurried,
    ):
        n = rows_taking(1.5, patient)
        before = decoder_runs(slow, "slow")
        blocker = threading.Thread(target=patient.decode, args=(np.zeros((n, 2), np.float32),))
        blocker.start()
        time.sleep(0.15)  # the long run has started
        started = time.monotonic()
        with pytest.raises(LatentServeError) as info:
            hurried.decode(np.ones((7, 2), np.float32))
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 0.5, "the client is told when its deadline passes"
        blocker.join(30)
        time.sleep(0.2)
        # Exactly the long run happened; the 7 rows of the expired call were never run.
        assert decoder_runs(slow, "slow") == (before[0] + 1, before[1] + n)
        assert error_count(slow, "slow", "Decode", "DEADLINE_EXCEEDED") == 1
        assert patient.decode(np.zeros((3, 2), np.float32)).images.shape == (3, 1, 28, 28)


def test_stream_deadline_stops_generation(slow):
    """A stream whose deadline passes mid-way ends with DEADLINE_EXCEEDED and generates
    nothing more."""
    with LatentClient(slow.target, timeout=30) as calibrating:
        count = rows_taking(3.0, calibrating)  # the whole stream would take ~3 s
    request = pb.SampleRequest(count=count, chunk_size=50, seed=1)
    with grpc.insecure_channel(slow.target) as channel:
        stream = pb_grpc.AutoencoderStub(channel).SampleRandomStream(request, timeout=0.3)
        received = 0
        with pytest.raises(grpc.RpcError) as info:
            for response in stream:
                received += response.images.shape[0]
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0 < received < count
        time.sleep(0.2)
        settled = decoder_runs(slow, "slow")
        time.sleep(0.5)
        assert decoder_runs(slow, "slow") == settled, "generation went on after the deadline"
        assert slow.server.servicer.active_streams == 0


async def test_cancelled_stream_stops_generating(tiny_models_dir):
    running = InProcessServer(tiny_models_dir, warmup_runs=0).start()
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.AutoencoderStub(channel)
            # 1000 chunks of 1000 images (3 MB each): far more than flow control buffers.
            call = stub.SampleRandomStream(
                pb.SampleRequest(model="tiny-vae", count=1_000_000, chunk_size=1000, seed=1)
            )
            first = await call.read()
            assert first.offset == 0 and first.images.shape[0] == 1000
            assert running.server.servicer.active_streams == 1
            call.cancel()
            await asyncio.sleep(0.3)
            settled = decoder_runs(running, "tiny-vae")
            await asyncio.sleep(0.5)
            assert decoder_runs(running, "tiny-vae") == settled, "generation went on"
            assert settled[1] <= 20_000, f"{settled[1]:.0f} rows generated for 1 chunk read"
            assert running.server.servicer.active_streams == 0
        assert error_count(running, "tiny-vae", "SampleRandomStream", "CANCELLED") == 1
        async with AsyncLatentClient(running.target) as client:
            assert await client.health() == "SERVING"
            assert (await client.sample(3, model="tiny-vae", seed=1)).images.shape[0] == 3
    finally:
        running.stop()
