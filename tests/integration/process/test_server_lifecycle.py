"""The server around the RPCs: broken model folders, provider fallback, health, reflection,
metrics, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.request

import grpc
import numpy as np
import pytest
from fixtures.models import build_model_folder, corrupt_hash
from fixtures.servers import InProcessServer, SubprocessServer, free_port
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.client import LatentClient, LatentServeError


@pytest.fixture(scope="module")
def mixed_models_dir(tmp_path_factory):
    """Two good models beside four broken folders."""
    root = tmp_path_factory.mktemp("mixed")
    build_model_folder(root, "good-ae", kind="ae", latent_dim=2, seed=1)
    build_model_folder(root, "good-vae", kind="vae", latent_dim=4, seed=2)
    corrupt_hash(build_model_folder(root, "bad-hash", kind="vae", seed=3))
    build_model_folder(root, "bad-dim", kind="vae", latent_dim=3, graph_latent_dim=5, seed=4)
    (root / "bad-json").mkdir()
    (root / "bad-json" / "model.json").write_text("{not json")
    missing = build_model_folder(root, "missing-graph", kind="ae", seed=5)
    (missing / "encoder.onnx").unlink()
    return root


def test_broken_folders_are_refused_while_good_ones_serve(mixed_models_dir, caplog):
    caplog.set_level(logging.ERROR, logger="serving.core.registry")
    with (
        InProcessServer(mixed_models_dir, default_model="good-vae") as running,
        LatentClient(running.target) as client,
    ):
        models = {m.name: m for m in client.list_models()}
        assert {n for n, m in models.items() if m.state == "READY"} == {"good-ae", "good-vae"}
        failed = {n: m.error for n, m in models.items() if m.state == "FAILED"}
        assert set(failed) == {"bad-hash", "bad-dim", "bad-json", "missing-graph"}
        assert "sha256" in failed["bad-hash"] and "decoder" in failed["bad-hash"]
        assert "latent_dim 3" in failed["bad-dim"] and "[N, 3]" in failed["bad-dim"]
        assert "not valid JSON" in failed["bad-json"]
        assert "encoder graph 'encoder.onnx' is missing" in failed["missing-graph"]
        # Every refusal is logged with its reason.
        for name in failed:
            assert any(
                name in r.getMessage() and "refused" in r.getMessage() for r in caplog.records
            )
        with pytest.raises(LatentServeError) as info:
            client.sample(1, model="bad-hash")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "sha256" in info.value.message
        assert client.get_model("bad-dim").state == "FAILED"
        assert client.health() == "SERVING"
        assert client.health("good-vae") == "SERVING"
        assert client.health("bad-hash") == "NOT_SERVING"
        assert client.sample(3, model="good-ae", seed=1).images.shape == (3, 1, 28, 28)
        assert client.sample(3, seed=1).model == "good-vae"


def test_default_model_falls_back_to_first_ready_alphabetically(mixed_models_dir, caplog):
    caplog.set_level(logging.WARNING)
    with (
        InProcessServer(mixed_models_dir, default_model="absent") as running,
        LatentClient(running.target) as client,
    ):
        assert client.sample(1, seed=1).model == "good-ae"
        assert client.default_model() == "good-ae"
    assert any(
        "'absent' is not available; using 'good-ae'" in r.getMessage() for r in caplog.records
    )


def test_no_models_means_not_serving(tmp_path):
    with InProcessServer(tmp_path) as running, LatentClient(running.target) as client:
        assert client.health() == "NOT_SERVING"
        with pytest.raises(LatentServeError) as info:
            client.sample(1)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_cuda_requested_but_absent_falls_back_to_cpu(tiny_models_dir, caplog):
    caplog.set_level(logging.WARNING, logger="serving.core.runtime")
    with (
        InProcessServer(tiny_models_dir, device="cuda") as running,
        LatentClient(running.target) as client,
    ):
        assert client.get_model("tiny-vae").providers == ("CPUExecutionProvider",)
        assert client.sample(2, model="tiny-vae", seed=1).images.shape == (2, 1, 28, 28)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "CUDA requested but not available" in r.getMessage()
        and "falling back to CPU" in r.getMessage()
        for r in warnings
    )


def test_health_is_serving_only_after_loading_and_warm_up(tiny_models_dir):
    running = InProcessServer(tiny_models_dir, default_model="tiny-vae", warmup_runs=3)
    running.start(load=False)
    try:
        with LatentClient(running.target) as client:
            # Listening, but models are not loaded or warmed up yet.
            assert client.health() == "NOT_SERVING"
            assert client.health("latentserve.v1.Autoencoder") == "NOT_SERVING"
            assert client.health("tiny-vae") == "NOT_SERVING"
            with pytest.raises(LatentServeError) as info:
                client.sample(1, model="tiny-vae")
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "loading" in info.value.message
            running.run(running.server.load_models())
            assert client.health() == "SERVING"
            assert client.health("latentserve.v1.Autoencoder") == "SERVING"
            assert client.health("tiny-vae") == "SERVING"
            assert client.health("no-such-model") == "SERVICE_UNKNOWN"
    finally:
        running.stop()


def test_health_watch_streams_the_transition(tiny_models_dir):
    running = InProcessServer(tiny_models_dir)
    running.start(load=False)
    try:
        channel = grpc.insecure_channel(running.target)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="tiny-ae"), timeout=30
        )
        first = next(watch)
        assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
        running.run(running.server.load_models())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        channel.close()
    finally:
        running.stop()


def test_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"latentserve.v1.Autoencoder", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("latentserve.v1.Autoencoder")
        assert {m.name for m in service.methods} == {
            "Encode",
            "Decode",
            "SampleRandom",
            "SampleRandomStream",
            "ListModels",
            "GetModel",
        }
        assert pool.FindMessageTypeByName("latentserve.v1.Tensor").fields_by_name["raw_data"]


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_value(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_endpoint_counts_requests_errors_batches(tiny_models_dir):
    port = free_port()
    with (
        InProcessServer(tiny_models_dir, metrics_port=port) as running,
        LatentClient(running.target) as client,
    ):
        for _ in range(3):
            client.decode(np.zeros((5, 2), np.float32), model="tiny-vae")
        with pytest.raises(LatentServeError):
            client.decode(np.zeros((5, 3), np.float32), model="tiny-vae")
        with pytest.raises(LatentServeError):
            client.sample(1, model="nope")
        text = scrape(port)
    assert metric_value(text, "latentserve_requests_total", model="tiny-vae", method="Decode") == 4
    assert (
        metric_value(
            text,
            "latentserve_request_errors_total",
            model="tiny-vae",
            method="Decode",
            code="INVALID_ARGUMENT",
        )
        == 1
    )
    assert (
        metric_value(text, "latentserve_request_errors_total", model="<unknown>", code="NOT_FOUND")
        == 1
    )
    assert metric_value(text, "latentserve_samples_total", model="tiny-vae", method="Decode") == 15
    assert (
        metric_value(
            text, "latentserve_request_latency_seconds_count", model="tiny-vae", method="Decode"
        )
        == 4
    )
    assert metric_value(text, "latentserve_batch_rows_sum", model="tiny-vae", graph="decoder") == 15
    assert (
        metric_value(text, "latentserve_batch_rows_count", model="tiny-vae", graph="decoder") == 3
    )
    assert metric_value(text, "latentserve_queue_depth", model="tiny-vae", graph="decoder") == 0
    assert metric_value(text, "latentserve_model_ready", model="tiny-vae") == 1
    assert "latentserve_inference_seconds_bucket" in text


def test_sigterm_drains_in_flight_calls_and_exits_zero(tiny_models_dir):
    """A stream that is mid-way when SIGTERM arrives is delivered in full; new calls are
    refused with UNAVAILABLE; the process exits 0.

    The stream is held in flight by reading it slowly: gRPC flow control keeps the server
    from running ahead of the reader, so the call is still open when the signal lands.
    """
    proc = SubprocessServer(
        tiny_models_dir, ["--grace-period-s", "10", "--log-format", "json"]
    ).start()
    try:
        proc.wait_for_log(r'"message": "ready: serving')
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.AutoencoderStub(channel)
            request = pb.SampleRequest(model="tiny-vae", count=8000, seed=5, chunk_size=100)
            expected = np.concatenate(
                [np.frombuffer(r.images.raw_data, "<f4") for r in stub.SampleRandomStream(request)]
            )
            stream = stub.SampleRandomStream(request, timeout=60)
            chunks = [next(stream)]
            started = time.monotonic()
            proc.terminate()
            proc.wait_for_log("shutting down")
            with (
                LatentClient(proc.target, timeout=5) as late,
                pytest.raises(LatentServeError) as info,
            ):
                late.list_models()
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            time.sleep(0.3)  # the server is draining; the stream is still open
            assert proc.proc.poll() is None
            chunks += list(stream)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 10
        received = np.concatenate([np.frombuffer(r.images.raw_data, "<f4") for r in chunks])
        assert [r.offset for r in chunks] == list(range(0, 8000, 100))
        np.testing.assert_array_equal(received, expected)
        records = [json.loads(line) for line in proc.lines if line.startswith("{")]
        messages = [r["message"] for r in records]
        assert messages.index(
            next(m for m in messages if m.startswith("shutting down"))
        ) < messages.index("stopped")
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    finally:
        proc.stop()


def test_python_m_serving_reads_env_defaults(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "tiny-ae", models / "tiny-ae")
    proc = SubprocessServer(
        models,
        env={"LATENTSERVE_DEFAULT_MODEL": "tiny-ae", "LATENTSERVE_MAX_SAMPLES_PER_REQUEST": "3"},
    ).start()
    try:
        proc.wait_for_log("ready: serving tiny-ae")
        with LatentClient(proc.target, max_unary_samples=100) as client:
            assert client.default_model() == "tiny-ae"
            with pytest.raises(LatentServeError) as info:
                client.sample(4)
            assert "(3)" in info.value.message
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        proc.stop()
