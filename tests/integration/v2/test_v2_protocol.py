"""The Open Inference Protocol's wire details on a real server (tiny models, 127.0.0.1):
REST JSON and the binary extension, gRPC typed and raw contents, and every refusal's status
and message, from raw HTTP requests and our own v2 stubs (tritonclient cannot send most of
these malformed requests; test_v2_tritonclient.py covers the well-formed ones).
"""

from __future__ import annotations

import json
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fixtures.servers import InProcessServer, free_port
from fixtures.slow_model import build_slow_model_folder

from latentserve._proto.inference import grpc_predict_v2_pb2 as pb
from latentserve._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from latentserve.client import LatentClient

MAX_SAMPLES = 16
MAX_MESSAGE = 4 << 20  # the smallest max_message_bytes allowed
Tensor = pb.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def v2_server(tiny_models_dir: Path) -> Iterator[InProcessServer]:
    with InProcessServer(
        tiny_models_dir,
        http_port=free_port(),
        default_model="tiny-vae",
        max_samples_per_request=MAX_SAMPLES,
        max_message_bytes=MAX_MESSAGE,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(v2_server: InProcessServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(v2_server.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def http(
    server: InProcessServer,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    assert server.server.http is not None
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http.port}{path}",
        data=data,
        headers=headers or {},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def error_of(status: int, body: bytes) -> str:
    answer = json.loads(body)
    assert set(answer) == {"error"}, answer
    return str(answer["error"])


def latents_json(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    tensor = {"name": "latents", "datatype": "FP32", "shape": [len(rows), len(rows[0])]}
    return {"inputs": [{**tensor, "data": rows, **extra}]}


def decode_natively(server: InProcessServer, latents: np.ndarray, model: str) -> np.ndarray:
    with LatentClient(server.target) as client:
        return client.decode(latents, model=model).images


# -- REST ---------------------------------------------------------------------------------


def test_rest_json_decode_equals_native_decode(v2_server: InProcessServer) -> None:
    rows = [[0.5, -1.0], [0.0, 0.25]]
    status, headers, body = http(v2_server, "/v2/models/tiny-vae-decoder/infer", latents_json(rows))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["model_name"] == "tiny-vae-decoder" and answer["model_version"] == "1"
    (out,) = answer["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("images", "FP32", [2, 1, 28, 28])
    images = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    expected = decode_natively(v2_server, np.asarray(rows, dtype=np.float32), "tiny-vae")
    np.testing.assert_array_equal(images, expected)  # float32 JSON round-trips exactly


def test_rest_binary_extension_both_ways(v2_server: InProcessServer) -> None:
    latents = np.array([[0.5, -1.0], [0.0, 0.25], [1.0, 1.0]], dtype=np.float32)
    header = json.dumps(
        {
            "id": "req-7",
            "inputs": [
                {
                    "name": "latents",
                    "datatype": "FP32",
                    "shape": [3, 2],
                    "parameters": {"binary_data_size": latents.nbytes},
                }
            ],
            "outputs": [{"name": "images", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, body = http(
        v2_server,
        "/v2/models/tiny-vae-decoder/infer",
        header + latents.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    n = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:n])
    assert answer["id"] == "req-7"
    (out,) = answer["outputs"]
    size = out["parameters"]["binary_data_size"]
    assert size == len(body) - n == 3 * 784 * 4
    images = np.frombuffer(body[n:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_array_equal(images, decode_natively(v2_server, latents, "tiny-vae"))


def test_rest_health_metadata_and_readiness(v2_server: InProcessServer) -> None:
    assert http(v2_server, "/v2/health/live")[0] == 200
    status, _, body = http(v2_server, "/v2/health/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, _, body = http(v2_server, "/v2")
    assert status == 200 and json.loads(body)["name"] == "latentserve"
    status, _, body = http(v2_server, "/v2/models/tiny-vae-8-encoder")
    meta = json.loads(body)
    assert status == 200 and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["mean", "log_var"]
    assert all(o["shape"] == [-1, 8] for o in meta["outputs"])
    status, _, body = http(v2_server, "/v2/models/tiny-ae-encoder/versions/1/ready")
    assert (status, json.loads(body)) == (200, {"name": "tiny-ae-encoder", "ready": True})
    status, _, body = http(v2_server, "/v2/models/tiny-ae-sampler/versions/9")
    assert status == 404 and "version" in error_of(status, body)


def json_request(inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"inputs": inputs, **extra}


BINARY_HEAD = json.dumps(
    {
        "inputs": [
            {
                "name": "latents",
                "datatype": "FP32",
                "shape": [1, 2],
                "parameters": {"binary_data_size": 8},
            }
        ]
    }
).encode()
LATENT = {"name": "latents", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 0.0]}
COUNT = {"name": "count", "datatype": "INT64", "shape": [1], "data": [2]}

REST_BAD = {
    # id: (path, body, headers, status, words in the message)
    "not json": ("tiny-vae-decoder", b"{", None, 400, ["not valid JSON"]),
    "no inputs": ("tiny-vae-decoder", {"inputs": []}, None, 400, ["inputs"]),
    "unknown datatype": (
        "tiny-vae-decoder",
        json_request([{**LATENT, "datatype": "FP33"}]),
        None,
        400,
        ["FP33", "FP32"],
    ),
    "wrong datatype": (
        "tiny-vae-decoder",
        json_request([{**LATENT, "datatype": "INT32", "data": [0, 0]}]),
        None,
        400,
        ["INT32", "takes FP32"],
    ),
    "value count": (
        "tiny-vae-decoder",
        json_request([{**LATENT, "shape": [2, 2]}]),
        None,
        400,
        ["2 values", "needs 4"],
    ),
    "strings for floats": (
        "tiny-vae-decoder",
        json_request([{**LATENT, "data": ["a", "b"]}]),
        None,
        400,
        ["numbers"],
    ),
    "wrong shape": (
        "tiny-vae-decoder",
        json_request([{**LATENT, "shape": [1, 1, 2]}]),
        None,
        400,
        ["[1, 1, 2]", "N x 2"],
    ),
    "unknown input": (
        "tiny-vae-decoder",
        json_request([{**LATENT, "name": "z"}]),
        None,
        400,
        ["'z'", "latents FP32 [-1, 2]"],
    ),
    "unknown output": (
        "tiny-vae-decoder",
        json_request([LATENT], outputs=[{"name": "png"}]),
        None,
        400,
        ["'png'", "images"],
    ),
    "unknown model": ("nope-decoder", json_request([LATENT]), None, 404, ["tiny-vae-decoder"]),
    "model without role": ("tiny-vae", json_request([LATENT]), None, 404, ["-decoder"]),
    "pixels out of range": (
        "tiny-vae-encoder",
        json_request(
            [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [255.0] * 784}]
        ),
        None,
        400,
        ["[0, 1]", "255"],
    ),
    "too many rows": (
        "tiny-vae-decoder",
        latents_json([[0.0, 0.0]] * (MAX_SAMPLES + 1)),
        None,
        413,
        ["max_samples_per_request", str(MAX_SAMPLES)],
    ),
    "count zero": (
        "tiny-vae-sampler",
        json_request([{**COUNT, "data": [0]}]),
        None,
        400,
        ["count", "at least 1"],
    ),
    "count above limit": (
        "tiny-vae-sampler",
        json_request([{**COUNT, "data": [MAX_SAMPLES + 1]}]),
        None,
        400,
        ["count", str(MAX_SAMPLES)],
    ),
    "count not scalar": (
        "tiny-vae-sampler",
        json_request([{**COUNT, "shape": [2], "data": [1, 2]}]),
        None,
        400,
        ["exactly one"],
    ),
    "no count": (
        "tiny-vae-sampler",
        json_request([{"name": "seed", "datatype": "UINT64", "shape": [1], "data": [1]}]),
        None,
        400,
        ["missing input 'count'"],
    ),
    "unknown prior": (
        "tiny-vae-sampler",
        json_request([COUNT, {"name": "prior", "datatype": "BYTES", "shape": [1], "data": ["x"]}]),
        None,
        400,
        ["standard_normal", "fitted_gaussian", "bounding_box_uniform"],
    ),
    "temperature zero": (
        "tiny-vae-sampler",
        json_request(
            [
                COUNT,
                {"name": "temperature", "datatype": "FP32", "shape": [1], "data": [0.0]},
            ]
        ),
        None,
        400,
        ["temperature", "0 < t"],
    ),
    "negative seed": (
        "tiny-vae-sampler",
        json_request([COUNT, {"name": "seed", "datatype": "INT64", "shape": [1], "data": [-1]}]),
        None,
        400,
        ["seed", "2^64"],
    ),
    "header longer than body": (
        "tiny-vae-decoder",
        json.dumps(latents_json([[0.0, 0.0]])).encode(),
        {"Inference-Header-Content-Length": "100000"},
        400,
        ["Inference-Header-Content-Length"],
    ),
    "binary size beyond body": (
        "tiny-vae-decoder",
        BINARY_HEAD + b"\0" * 4,
        {"Inference-Header-Content-Length": str(len(BINARY_HEAD))},
        400,
        ["binary_data_size"],
    ),
}


@pytest.mark.parametrize("case", sorted(REST_BAD))
def test_rest_bad_requests_get_status_and_message(v2_server: InProcessServer, case: str) -> None:
    model, body, headers, expected, words = REST_BAD[case]
    status, _, answer = http(v2_server, f"/v2/models/{model}/infer", body, headers)
    assert status == expected, answer
    message = error_of(status, answer)
    for word in words:
        assert word in message, message
    # The server is fine afterwards.
    assert http(v2_server, "/v2/health/ready")[0] == 200


def test_rest_nan_in_binary_latents_is_refused(v2_server: InProcessServer) -> None:
    latents = np.array([[np.nan, 0.0]], dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "latents",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    status, _, body = http(
        v2_server,
        "/v2/models/tiny-vae-decoder/infer",
        header + latents.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and "NaN" in error_of(status, body)


def test_rest_body_over_max_message_bytes_is_413(v2_server: InProcessServer) -> None:
    status, _, body = http(v2_server, "/v2/models/tiny-vae-decoder/infer", b" " * (MAX_MESSAGE + 1))
    assert status == 413 and "max_message_bytes" in error_of(status, body)


def test_rest_unknown_path_and_method_answer_json(v2_server: InProcessServer) -> None:
    status, _, body = http(v2_server, "/v2/nothing")
    assert status == 404 and "no such path '/v2/nothing'" in error_of(status, body)
    assert "POST /v2/models/{name}/infer" in error_of(status, body)
    status, headers, body = http(v2_server, "/v2/models/tiny-vae-decoder/infer")
    assert status == 405 and "POST" in headers["Allow"]
    assert "GET is not allowed" in error_of(status, body) and "POST" in error_of(status, body)


# -- gRPC ---------------------------------------------------------------------------------


def infer_request(model: str, *tensors: Tensor, raw: list[bytes] | None = None) -> Any:
    return pb.ModelInferRequest(model_name=model, inputs=list(tensors), raw_input_contents=raw)


def test_grpc_typed_contents_equal_raw_contents(
    v2_server: InProcessServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    latents = np.array([[0.5, -1.0], [0.0, 0.25]], dtype=np.float32)
    typed = stub.ModelInfer(
        infer_request(
            "tiny-ae-decoder",
            Tensor(
                name="latents",
                datatype="FP32",
                shape=[2, 2],
                contents=pb.InferTensorContents(fp32_contents=latents.ravel().tolist()),
            ),
        )
    )
    raw = stub.ModelInfer(
        infer_request(
            "tiny-ae-decoder",
            Tensor(name="latents", datatype="FP32", shape=[2, 2]),
            raw=[latents.tobytes()],
        )
    )
    assert typed.raw_output_contents == raw.raw_output_contents
    images = np.frombuffer(raw.raw_output_contents[0], "<f4").reshape(list(raw.outputs[0].shape))
    np.testing.assert_array_equal(images, decode_natively(v2_server, latents, "tiny-ae"))


def test_grpc_sampler_takes_typed_integers_and_replays_by_seed(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    def sample(seed: int | None) -> Any:
        tensors = [
            Tensor(
                name="count",
                datatype="INT32",
                shape=[1],
                contents=pb.InferTensorContents(int_contents=[4]),
            )
        ]
        if seed is not None:
            tensors.append(
                Tensor(
                    name="seed",
                    datatype="UINT64",
                    shape=[1],
                    contents=pb.InferTensorContents(uint64_contents=[seed]),
                )
            )
        return stub.ModelInfer(infer_request("tiny-vae-sampler", *tensors))

    first = sample(None)
    assert [o.name for o in first.outputs] == ["images", "latents", "seed"]
    assert list(first.outputs[0].shape) == [4, 1, 28, 28]
    seed = int(np.frombuffer(first.raw_output_contents[2], "<u8")[0])
    again = sample(seed)
    assert again.raw_output_contents == first.raw_output_contents


GRPC_BAD = {
    "raw count": (
        infer_request(
            "tiny-vae-decoder",
            Tensor(name="latents", datatype="FP32", shape=[1, 2]),
            raw=[b"\0" * 8, b"\0" * 8],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["2 entries for 1 inputs"],
    ),
    "raw and typed": (
        infer_request(
            "tiny-vae-decoder",
            Tensor(
                name="latents",
                datatype="FP32",
                shape=[1, 2],
                contents=pb.InferTensorContents(fp32_contents=[0, 0]),
            ),
            raw=[b"\0" * 8],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["both set"],
    ),
    "typed field for another datatype": (
        infer_request(
            "tiny-vae-decoder",
            Tensor(
                name="latents",
                datatype="FP32",
                shape=[1, 2],
                contents=pb.InferTensorContents(fp64_contents=[0, 0]),
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["fp32_contents", "fp64_contents"],
    ),
    "raw byte count": (
        infer_request(
            "tiny-vae-decoder",
            Tensor(name="latents", datatype="FP32", shape=[1, 2]),
            raw=[b"\0" * 7],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["7 bytes", "needs 8"],
    ),
    "negative dimension": (
        infer_request(
            "tiny-vae-decoder",
            Tensor(name="latents", datatype="FP32", shape=[-1, 2]),
            raw=[b""],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["negative"],
    ),
    "malformed BYTES": (
        infer_request(
            "tiny-vae-sampler",
            Tensor(name="count", datatype="INT64", shape=[1]),
            Tensor(name="prior", datatype="BYTES", shape=[1]),
            raw=[struct.pack("<q", 1), struct.pack("<I", 99) + b"abc"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["BYTES", "99 bytes"],
    ),
    "unknown model": (
        infer_request("tiny-vae-16-decoder"),
        grpc.StatusCode.NOT_FOUND,
        ["tiny-vae-decoder"],
    ),
    "wrong version": (
        pb.ModelInferRequest(model_name="tiny-vae-decoder", model_version="2"),
        grpc.StatusCode.NOT_FOUND,
        ["version '1'"],
    ),
}


@pytest.mark.parametrize("case", sorted(GRPC_BAD))
def test_grpc_bad_requests_get_status_and_message(
    stub: pb_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    request, code, words = GRPC_BAD[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request)
    assert raised.value.code() is code, raised.value.details()
    for word in words:
        assert word in raised.value.details()
    assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_grpc_model_ready_and_metadata_refusals(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny-vae-8-sampler")).ready
    for call, request in (
        (stub.ModelReady, pb.ModelReadyRequest(name="nope-encoder")),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="nope-encoder")),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call(request)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_v2_calls_are_counted_in_the_metrics(
    v2_server: InProcessServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    registry = v2_server.server.metrics.registry

    def count(method: str, model: str) -> float:
        labels = {"method": method, "model": model, "version": "1"}
        return registry.get_sample_value("latentserve_requests_total", labels) or 0.0

    before = count("ModelInfer", "tiny-ae-decoder"), count("RestInfer", "tiny-ae-decoder")
    stub.ModelInfer(
        infer_request(
            "tiny-ae-decoder",
            Tensor(name="latents", datatype="FP32", shape=[1, 2]),
            raw=[b"\0" * 8],
        )
    )
    http(v2_server, "/v2/models/tiny-ae-decoder/infer", latents_json([[0.0, 0.0]]))
    after = count("ModelInfer", "tiny-ae-decoder"), count("RestInfer", "tiny-ae-decoder")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


# -- shared batching and drain --------------------------------------------------------------


def test_v2_and_native_calls_to_one_graph_share_a_batch(tmp_path: Path) -> None:
    """While a slow decode of 256 rows runs, a native Decode and a v2 ModelInfer queue behind it; the
    batcher gathers both into its next run: two runs, three requests."""
    build_slow_model_folder(tmp_path, "slow", matmuls=100)
    with InProcessServer(tmp_path, http_port=0, max_batch_delay_ms=500.0) as server:
        latents = np.zeros((1, 2), dtype=np.float32)
        registry = server.server.metrics.registry
        labels = {"model": "slow", "graph": "decoder", "version": "1"}

        def runs() -> tuple[float, float]:
            count = registry.get_sample_value("latentserve_batch_requests_count", labels) or 0.0
            total = registry.get_sample_value("latentserve_batch_requests_sum", labels) or 0.0
            return count, total

        start = runs()
        with LatentClient(server.target) as client, grpc.insecure_channel(server.target) as ch:
            v2 = pb_grpc.GRPCInferenceServiceStub(ch)
            first = threading.Thread(
                target=client.decode,
                args=(np.zeros((256, 2), np.float32),),
                kwargs={"model": "slow"},
            )
            first.start()
            # Wait until the first run holds the graph (its request left the queue).
            while server.server.calls.in_flight == 0:
                threading.Event().wait(0.005)
            threading.Event().wait(0.05)
            results: dict[str, Any] = {}
            native = threading.Thread(
                target=lambda: results.update(native=client.decode(latents, model="slow"))
            )
            native.start()
            results["v2"] = v2.ModelInfer(
                infer_request(
                    "slow-decoder",
                    Tensor(name="latents", datatype="FP32", shape=[1, 2]),
                    raw=[latents.tobytes()],
                )
            )
            native.join(60)
            first.join(60)
        count, total = (a - b for a, b in zip(runs(), start, strict=True))
        assert (count, total) == (2, 3)
        np.testing.assert_array_equal(
            np.frombuffer(results["v2"].raw_output_contents[0], "<f4").reshape(1, 1, 28, 28),
            results["native"].images,
        )


def test_draining_refuses_v2_calls_and_reports_not_ready(tiny_models_dir: Path) -> None:
    with InProcessServer(tiny_models_dir, http_port=free_port()) as server:
        assert server.run(server.server.calls.drain(0.1))  # as on SIGTERM, before the ports close
        status, _, body = http(server, "/v2/health/ready")
        assert (status, json.loads(body)) == (503, {"ready": False})
        status, _, body = http(server, "/v2/models/tiny-vae-decoder/infer", latents_json([[0, 0]]))
        assert status == 503 and "shutting down" in error_of(status, body)
        with grpc.insecure_channel(server.target) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            assert not v2.ServerReady(pb.ServerReadyRequest()).ready
            assert v2.ServerLive(pb.ServerLiveRequest()).live
            with pytest.raises(grpc.RpcError) as raised:
                v2.ModelInfer(infer_request("tiny-vae-decoder"))
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_v2_sampler_equals_native_sample_random(
    v2_server: InProcessServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Same seed, prior and temperature: the same latents and images as SampleRandom."""
    response = stub.ModelInfer(
        infer_request(
            "tiny-vae-8-sampler",
            Tensor(name="count", datatype="INT64", shape=[1]),
            Tensor(name="seed", datatype="UINT64", shape=[1]),
            Tensor(name="prior", datatype="BYTES", shape=[1]),
            Tensor(name="temperature", datatype="FP32", shape=[1]),
            raw=[
                struct.pack("<q", 5),
                struct.pack("<Q", 2**63 + 5),
                struct.pack("<I", 15) + b"fitted_gaussian",
                struct.pack("<f", 0.5),
            ],
        )
    )
    shapes = {o.name: list(o.shape) for o in response.outputs}
    images, latents = response.raw_output_contents[0], response.raw_output_contents[1]
    with LatentClient(v2_server.target) as client:
        native = client.sample(
            5,
            model="tiny-vae-8",
            seed=2**63 + 5,
            prior="fitted_gaussian",
            temperature=0.5,
            return_latents=True,
        )
    assert shapes["images"] == [5, 1, 28, 28] and shapes["latents"] == [5, 8]
    np.testing.assert_array_equal(np.frombuffer(latents, "<f4").reshape(5, 8), native.latents)
    np.testing.assert_array_equal(np.frombuffer(images, "<f4").reshape(5, 1, 28, 28), native.images)


def test_grpc_deadline_is_honoured(tmp_path: Path) -> None:
    build_slow_model_folder(tmp_path, "slow", matmuls=300)
    with (
        InProcessServer(tmp_path, http_port=0) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        request = infer_request(
            "slow-decoder",
            Tensor(name="latents", datatype="FP32", shape=[256, 2]),
            raw=[bytes(256 * 2 * 4)],
        )
        with pytest.raises(grpc.RpcError) as raised:
            v2.ModelInfer(request, timeout=0.05)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert v2.ServerReady(pb.ServerReadyRequest()).ready


def test_grpc_repository_control_needs_explicit_mode(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """model_control none (the default): load and unload are refused with what to do."""
    for call, request in (
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="tiny-vae-encoder")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="x")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--model-control explicit" in (info.value.details() or "")
