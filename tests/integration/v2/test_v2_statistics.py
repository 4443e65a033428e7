"""Triton's statistics extension, read by tritonclient's get_inference_statistics() over
gRPC and HTTP from a real server on 127.0.0.1 after a known set of calls.

After K calls a model's success count is K, its rows and batch sizes add up to the rows
sent, and the durations nest: queue + compute_input + compute_infer + compute_output is at
most the success time, which is at most what the client waited.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.servers import InProcessServer, free_port
from fixtures.tritonclient_env import run_calls, tritonclient_python

ROOT = Path(__file__).resolve().parents[3]
MODELS_DIR = ROOT / "models"
DECODES, DECODE_ROWS = 7, 3
ENCODES, ENCODE_ROWS = 4, 2
SAMPLES, SAMPLE_COUNT = 3, 6


@pytest.fixture(scope="module")
def triton_python() -> Path:
    python = tritonclient_python()
    if isinstance(python, str):
        pytest.skip(python)
    return python


@pytest.fixture(scope="module", params=["grpc", "http"])
def report(
    request: pytest.FixtureRequest, triton_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A fresh server, the calls, then the statistics tritonclient read."""
    protocol = request.param
    work = tmp_path_factory.mktemp(f"stats-{protocol}")
    rng = np.random.default_rng(0)
    arrays = {
        "latents": rng.normal(0, 1, (DECODE_ROWS, 2)).astype(np.float32),
        "images": rng.uniform(0, 1, (ENCODE_ROWS, 1, 28, 28)).astype(np.float32),
        "count": np.array([SAMPLE_COUNT], dtype=np.int64),
    }
    np.savez(work / "in.npz", **arrays)

    def case(case_id: str, model: str, name: str, datatype: str, repeat: int) -> dict[str, Any]:
        return {
            "id": case_id,
            "model": model,
            "inputs": [{"name": name, "datatype": datatype, "key": name}],
            "outputs": None,
            "repeat": repeat,
        }

    cases = [
        case("decode", "mnist-vae-decoder", "latents", "FP32", DECODES),
        case("encode", "mnist-vae-encoder", "images", "FP32", ENCODES),
        case("sample", "mnist-vae-sampler", "count", "INT64", SAMPLES),
    ]
    with InProcessServer(MODELS_DIR, http_port=free_port()) as running:
        port = running.server.port if protocol == "grpc" else running.server.http.port
        spec = {
            "protocol": protocol,
            "url": f"127.0.0.1:{port}",
            "inputs": str(work / "in.npz"),
            "outputs": str(work / "out.npz"),
            "cases": cases,
            "statistics": [
                ["mnist-vae-decoder", ""],
                ["mnist-vae-encoder", "1"],
                ["mnist-vae-sampler", ""],
                ["mnist-ae-decoder", ""],
                ["", ""],
                ["nope-decoder", ""],
                ["mnist-vae-decoder", "7"],
            ],
        }
        yield run_calls(triton_python, spec, work)


def n(stat: dict[str, Any], *path: str) -> int:
    """A figure from tritonclient's JSON (gRPC's omits zeros and writes uint64 as text)."""
    value: Any = stat
    for key in path:
        value = value.get(key, {} if key != path[-1] else 0)
    return int(value)


def only(report: dict[str, Any], key: str) -> dict[str, Any]:
    stats = report["statistics"][key]
    assert "model_stats" in stats, stats
    (model_stat,) = stats["model_stats"]
    return model_stat  # type: ignore[no-any-return]


def assert_durations_nest(stat: dict[str, Any], calls: int, client_ns: int) -> None:
    inference = stat["inference_stats"]
    assert n(inference, "success", "count") == calls
    assert n(inference, "fail", "count") == 0
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert n(inference, part, "count") == calls, part
    parts = sum(
        n(inference, part, "ns")
        for part in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    success_ns = n(inference, "success", "ns")
    assert n(inference, "compute_infer", "ns") > 0
    assert 0 < parts <= success_ns <= client_ns


def test_decoder_counts_each_call_and_its_time(report: dict[str, Any]) -> None:
    stat = only(report, "mnist-vae-decoder/")
    assert stat["name"] == "mnist-vae-decoder" and stat["version"] == "1"
    assert n(stat, "inference_count") == DECODES * DECODE_ROWS
    assert n(stat, "last_inference") > 0
    assert_durations_nest(stat, DECODES, report["cases"]["decode"]["client_ns"])


def test_decoder_batch_stats_hold_every_run_of_the_graph(report: dict[str, Any]) -> None:
    # The sampler's chunks run on the decoder graph too: its batches count here.
    stat = only(report, "mnist-vae-decoder/")
    batches = stat["batch_stats"]
    runs = sum(n(b, "compute_infer", "count") for b in batches)
    assert runs == n(stat, "execution_count")
    rows = sum(n(b, "batch_size") * n(b, "compute_infer", "count") for b in batches)
    assert rows == DECODES * DECODE_ROWS + SAMPLES * SAMPLE_COUNT


def test_encoder_by_version(report: dict[str, Any]) -> None:
    stat = only(report, "mnist-vae-encoder/1")
    assert n(stat, "inference_count") == ENCODES * ENCODE_ROWS
    assert_durations_nest(stat, ENCODES, report["cases"]["encode"]["client_ns"])
    rows = sum(n(b, "batch_size") * n(b, "compute_infer", "count") for b in stat["batch_stats"])
    assert rows == ENCODES * ENCODE_ROWS


def test_sampler_counts_its_chunks(report: dict[str, Any]) -> None:
    stat = only(report, "mnist-vae-sampler/")
    assert n(stat, "inference_count") == SAMPLES * SAMPLE_COUNT
    assert n(stat, "execution_count") == SAMPLES
    assert stat.get("batch_stats", []) == []
    assert_durations_nest(stat, SAMPLES, report["cases"]["sample"]["client_ns"])


def test_an_unused_model_reads_zero(report: dict[str, Any]) -> None:
    stat = only(report, "mnist-ae-decoder/")
    assert n(stat, "inference_stats", "success", "count") == 0
    assert n(stat, "execution_count") == 0


def test_every_v2_model_when_no_name_is_given(report: dict[str, Any]) -> None:
    stats = report["statistics"]["/"]["model_stats"]
    names = {s["name"] for s in stats}
    assert names == {
        f"{m}-{r}"
        for m in ("mnist-ae", "mnist-vae", "mnist-vae-16", "emoji-vae")
        for r in ("encoder", "decoder", "sampler")
    }


def test_unknown_model_or_version_is_not_found(report: dict[str, Any]) -> None:
    for key in ("nope-decoder/", "mnist-vae-decoder/7"):
        error = report["statistics"][key]
        assert "model_stats" not in error, key
        assert error["status"] in ("StatusCode.NOT_FOUND", "404"), error
        assert "version" in error["message"] or "unknown model" in error["message"]


def test_calls_that_fail_in_the_model_count_as_fail(tmp_path: Path) -> None:
    """Calls whose deadline passes while they wait behind a long run of the slow decoder:
    the model's failures, with their time."""
    import json
    import threading
    import time
    import urllib.request

    import grpc
    from fixtures.slow_model import build_slow_model_folder

    from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
    from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
    from latentserve.tensors import array_to_tensor

    build_slow_model_folder(tmp_path, "slow", matmuls=100)
    with InProcessServer(tmp_path, http_port=free_port()) as running:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.AutoencoderStub(channel)

            def decode(rows: int, timeout: float) -> str:
                latents = array_to_tensor(np.zeros((rows, 2), dtype=np.float32))
                try:
                    stub.Decode(pb.DecodeRequest(model="slow", latents=latents), timeout=timeout)
                except grpc.RpcError as e:
                    return str(e.code().name)
                return "OK"

            # 512 rows: a run of a second or so here (64 rows take 80 ms), in the executor.
            blocker = threading.Thread(target=decode, args=(512, 60.0))
            blocker.start()
            time.sleep(0.05)
            codes = [decode(1, 0.05) for _ in range(2)]  # queued behind it, then expired
            blocker.join(60)
        url = f"http://127.0.0.1:{running.server.http.port}/v2/models/slow-decoder/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            (stat,) = json.load(response)["model_stats"]
    inference = stat["inference_stats"]
    assert codes == ["DEADLINE_EXCEEDED"] * 2
    assert inference["success"]["count"] == 1  # the blocker
    assert inference["fail"]["count"] == 2
    assert inference["fail"]["ns"] > 0
    assert inference["queue"]["count"] == 1  # only successes add queue and compute times
    assert stat["inference_count"] == 512
