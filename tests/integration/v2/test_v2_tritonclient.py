"""The Open Inference Protocol with the ecosystem's own client: tritonclient (gRPC and HTTP)
calls every v2 model of the shipped models on a real server on 127.0.0.1.

Outputs must equal onnxruntime run here on the same graphs (tolerance: atol 1e-5; the
server may batch rows with others, which can change float rounding in the last bits), and
the sampler's must equal latentserve.sampling's draws decoded by onnxruntime. Metadata
must match the graphs. Bad inputs must get the right status and a message.
tritonclient runs in its own venv (tests/fixtures/tritonclient_env.py): it pins protobuf
< 7, so these calls also show that a protobuf-6 client interoperates with the server.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fixtures.servers import InProcessServer, free_port
from fixtures.tritonclient_env import run_calls, tritonclient_python

from latentserve.manifest import load_model_folder
from latentserve.sampling import generator, prior_from_manifest

ROOT = Path(__file__).resolve().parents[3]
MODELS_DIR = ROOT / "models"
MODELS = ("mnist-ae", "mnist-vae", "mnist-vae-16")
ATOL = 1e-5
MAX_SAMPLES = 64  # the test server's max_samples_per_request, so "oversize" is cheap
TOKEN = "v2-test-token"


def graph(model: str, which: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODELS_DIR / model / f"{which}.onnx"))


def latent_dim(model: str) -> int:
    return load_model_folder(MODELS_DIR / model).latent_dim


def arrays_and_cases() -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    cases: list[dict[str, Any]] = []
    for model in MODELS:
        d = latent_dim(model)
        arrays[f"{model}/images"] = rng.uniform(0, 1, (5, 1, 28, 28)).astype(np.float32)
        arrays[f"{model}/latents"] = rng.normal(0, 1, (5, d)).astype(np.float32)
        cases.append(
            {
                "id": f"{model}/encode",
                "model": f"{model}-encoder",
                "inputs": [{"name": "images", "datatype": "FP32", "key": f"{model}/images"}],
                "outputs": None,
            }
        )
        cases.append(
            {
                "id": f"{model}/decode",
                "model": f"{model}-decoder",
                "inputs": [{"name": "latents", "datatype": "FP32", "key": f"{model}/latents"}],
                "outputs": None,
            }
        )
        # JSON tensors both ways (HTTP; over gRPC the same case is raw contents again).
        cases.append(
            {
                "id": f"{model}/decode-json",
                "model": f"{model}-decoder",
                "inputs": [
                    {
                        "name": "latents",
                        "datatype": "FP32",
                        "key": f"{model}/latents",
                        "binary": False,
                    }
                ],
                "outputs": ["images"],
                "binary_outputs": False,
            }
        )
        cases.append(
            {
                "id": f"{model}/sample",
                "model": f"{model}-sampler",
                "inputs": [
                    {"name": "count", "datatype": "INT64", "key": "count6"},
                    {"name": "seed", "datatype": "UINT64", "key": "seed11"},
                    {"name": "prior", "datatype": "BYTES", "key": "prior_fitted"},
                    {"name": "temperature", "datatype": "FP32", "key": "t08"},
                ],
                "outputs": None,
            }
        )
        cases.append(
            {
                "id": f"{model}/sample-no-seed",
                "model": f"{model}-sampler",
                "inputs": [{"name": "count", "datatype": "INT32", "key": "count3_i32"}],
                "outputs": None,
            }
        )
    arrays["count6"] = np.array([6], dtype=np.int64)
    arrays["count3_i32"] = np.array([3], dtype=np.int32)
    arrays["seed11"] = np.array([11], dtype=np.uint64)
    arrays["prior_fitted"] = np.array([b"fitted_gaussian"], dtype=np.object_)
    arrays["t08"] = np.array([0.8], dtype=np.float32)
    # Requested outputs are honoured: only log_var.
    cases.append(
        {
            "id": "only-log-var",
            "model": "mnist-vae-encoder",
            "inputs": [{"name": "images", "datatype": "FP32", "key": "mnist-vae/images"}],
            "outputs": ["log_var"],
        }
    )
    # Bad inputs.
    arrays["latents_fp64"] = np.zeros((2, 2), dtype=np.float64)
    arrays["latents_nan"] = np.array([[0.0, np.nan]], dtype=np.float32)
    arrays["latents_1x2"] = np.zeros((1, 2), dtype=np.float32)
    arrays["latents_many"] = np.zeros((MAX_SAMPLES + 1, 2), dtype=np.float32)
    bad = {
        "bad/datatype": ("mnist-vae-decoder", "FP64", "latents_fp64", None),
        "bad/nan": ("mnist-vae-decoder", "FP32", "latents_nan", None),
        "bad/shape-bytes": ("mnist-vae-decoder", "FP32", "latents_1x2", [1, 3]),
        "bad/unknown-model": ("nope-decoder", "FP32", "latents_1x2", None),
        "bad/oversize": ("mnist-vae-decoder", "FP32", "latents_many", None),
    }
    for case_id, (model, datatype, key, shape) in bad.items():
        tensor: dict[str, Any] = {"name": "latents", "datatype": datatype, "key": key}
        if shape is not None:
            tensor["shape"] = shape
        cases.append({"id": case_id, "model": model, "inputs": [tensor], "outputs": None})
    return arrays, cases


@pytest.fixture(scope="module")
def triton_python() -> Path:
    python = tritonclient_python()
    if isinstance(python, str):
        pytest.skip(python)
    return python


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[InProcessServer]:
    with InProcessServer(
        MODELS_DIR, http_port=free_port(), max_samples_per_request=MAX_SAMPLES
    ) as running:
        yield running


@pytest.fixture(scope="module", params=["grpc", "http"])
def run(
    request: pytest.FixtureRequest,
    triton_python: Path,
    shipped_server: InProcessServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One tritonclient run over every case: its report and the arrays it received."""
    protocol = request.param
    work = tmp_path_factory.mktemp(f"triton-{protocol}")
    arrays, cases = arrays_and_cases()
    np.savez(work / "in.npz", **arrays)
    port = shipped_server.server.port if protocol == "grpc" else shipped_server.server.http.port
    spec = {
        "protocol": protocol,
        "url": f"127.0.0.1:{port}",
        "models": [f"{m}-{role}" for m in MODELS for role in ("encoder", "decoder", "sampler")],
        "inputs": str(work / "in.npz"),
        "outputs": str(work / "out.npz"),
        "cases": cases,
    }
    report = run_calls(triton_python, spec, work)
    received = dict(np.load(work / "out.npz", allow_pickle=True))
    return {"protocol": protocol, "report": report, "arrays": arrays, "received": received}


def ok_case(run: dict[str, Any], case_id: str) -> dict[str, Any]:
    case = run["report"]["cases"][case_id]
    assert "outputs" in case, f"{run['protocol']} {case_id} failed: {case}"
    return case


def test_server_is_live_ready_and_names_itself(run: dict[str, Any]) -> None:
    report = run["report"]
    assert report["live"] is True and report["ready"] is True
    meta = report["server_metadata"]
    assert meta["name"] == "latentserve"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("model", MODELS)
def test_metadata_matches_the_graphs(run: dict[str, Any], model: str) -> None:
    d = latent_dim(model)
    for role in ("encoder", "decoder"):
        entry = run["report"]["models"][f"{model}-{role}"]
        assert entry["ready"] is True
        meta = entry["metadata"]
        session = graph(model, role)
        assert meta["name"] == f"{model}-{role}" and meta["platform"] == "onnxruntime_onnx"

        def tensors(items: list[Any]) -> list[tuple[str, str, list[int]]]:
            return [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in items]

        def graph_tensors(items: list[Any]) -> list[tuple[str, str, list[int]]]:
            assert all(t.type == "tensor(float)" for t in items)
            return [
                (t.name, "FP32", [s if isinstance(s, int) else -1 for s in t.shape]) for t in items
            ]

        assert tensors(meta["inputs"]) == graph_tensors(session.get_inputs())
        assert tensors(meta["outputs"]) == graph_tensors(session.get_outputs())
        assert all(t[2][0] == -1 for t in tensors(meta["inputs"]) + tensors(meta["outputs"]))
    sampler = run["report"]["models"][f"{model}-sampler"]["metadata"]
    assert [(t["name"], t["datatype"]) for t in sampler["inputs"]] == [
        ("count", "INT64"),
        ("seed", "UINT64"),
        ("prior", "BYTES"),
        ("temperature", "FP32"),
    ]
    assert [(t["name"], [int(s) for s in t["shape"]]) for t in sampler["outputs"]] == [
        ("images", [-1, 1, 28, 28]),
        ("latents", [-1, d]),
        ("seed", [1]),
    ]


@pytest.mark.parametrize("model", MODELS)
def test_encoder_and_decoder_equal_onnxruntime(run: dict[str, Any], model: str) -> None:
    arrays, received = run["arrays"], run["received"]
    images, latents = arrays[f"{model}/images"], arrays[f"{model}/latents"]
    encoder = graph(model, "encoder")
    expected = dict(
        zip(
            [o.name for o in encoder.get_outputs()],
            encoder.run(None, {"images": images}),
            strict=True,
        )
    )
    case = ok_case(run, f"{model}/encode")
    assert sorted(case["outputs"]) == sorted(expected)
    for name, value in expected.items():
        got = received[f"{model}/encode/{name}"]
        assert got.dtype == np.float32 and got.shape == value.shape
        np.testing.assert_allclose(got, value, rtol=0, atol=ATOL)
    (decoded,) = graph(model, "decoder").run(None, {"latents": latents})
    for case_id in (f"{model}/decode", f"{model}/decode-json"):
        ok_case(run, case_id)
        got = received[f"{case_id}/images"]
        assert got.dtype == np.float32 and got.shape == (5, 1, 28, 28)
        np.testing.assert_allclose(got, decoded, rtol=0, atol=ATOL)


@pytest.mark.parametrize("model", MODELS)
def test_sampler_equals_the_seeded_prior_decoded_by_onnxruntime(
    run: dict[str, Any], model: str
) -> None:
    manifest = load_model_folder(MODELS_DIR / model)
    decoder = graph(model, "decoder")
    received = run["received"]
    for case_id, count, prior, temperature in (
        (f"{model}/sample", 6, "fitted_gaussian", 0.8),
        (f"{model}/sample-no-seed", 3, manifest.prior.default, 1.0),
    ):
        case = ok_case(run, case_id)
        assert case["outputs"] == ["images", "latents", "seed"]
        assert case["datatypes"] == {"images": "FP32", "latents": "FP32", "seed": "UINT64"}
        seed = int(received[f"{case_id}/seed"][0])
        if case_id.endswith("/sample"):
            assert seed == 11
        latents = prior_from_manifest(manifest, prior).draw(generator(seed), count, temperature)
        # Drawn again here, the fitted Gaussian's latents differed from the server's in the
        # last bit (1.2e-7; the cause is not pinned down, possibly numpy's SIMD paths), so
        # within 1e-6. Against native SampleRandom the v2 sampler is bit for bit equal
        # (test_v2_protocol.py).
        np.testing.assert_allclose(received[f"{case_id}/latents"], latents, rtol=0, atol=1e-6)
        (images,) = decoder.run(None, {"latents": latents})
        np.testing.assert_allclose(received[f"{case_id}/images"], images, rtol=0, atol=ATOL)


def test_requested_outputs_are_honoured(run: dict[str, Any]) -> None:
    case = ok_case(run, "only-log-var")
    assert case["outputs"] == ["log_var"]
    assert "only-log-var/mean" not in run["received"]


BAD = {
    # case: (gRPC status, HTTP status, words the message must hold)
    "bad/datatype": ("INVALID_ARGUMENT", 400, ["FP64", "FP32"]),
    "bad/nan": ("INVALID_ARGUMENT", 400, ["NaN"]),
    "bad/shape-bytes": ("INVALID_ARGUMENT", 400, ["8 bytes", "needs 12"]),
    "bad/unknown-model": ("NOT_FOUND", 404, ["nope-decoder", "mnist-vae-decoder"]),
    "bad/oversize": ("RESOURCE_EXHAUSTED", 413, [f"{MAX_SAMPLES + 1} items", str(MAX_SAMPLES)]),
}


@pytest.mark.parametrize("case_id", sorted(BAD))
def test_bad_inputs_get_the_right_status_and_a_message(run: dict[str, Any], case_id: str) -> None:
    grpc_code, http_status, words = BAD[case_id]
    case = run["report"]["cases"][case_id]
    assert "status" in case, f"{case_id} succeeded: {case}"
    expected = f"StatusCode.{grpc_code}" if run["protocol"] == "grpc" else str(http_status)
    assert str(case["status"]) == expected, case
    for word in words:
        assert word in case["message"], case


def test_bearer_token_is_required_except_for_health(triton_python: Path, tmp_path: Path) -> None:
    """With a token configured, tritonclient gets 401 / UNAUTHENTICATED without it, answers
    with it, and liveness/readiness stay open for probes."""
    with InProcessServer(MODELS_DIR, http_port=free_port(), auth_token=TOKEN) as server:
        for protocol, port in (("grpc", server.server.port), ("http", server.server.http.port)):
            outcomes = {}
            for name, headers in (("none", {}), ("token", {"authorization": f"Bearer {TOKEN}"})):
                work = tmp_path / f"{protocol}-{name}"
                work.mkdir()
                np.savez(work / "in.npz", latents=np.zeros((1, 2), dtype=np.float32))
                spec = {
                    "protocol": protocol,
                    "url": f"127.0.0.1:{port}",
                    "headers": headers,
                    "inputs": str(work / "in.npz"),
                    "outputs": str(work / "out.npz"),
                    "cases": [
                        {
                            "id": "decode",
                            "model": "mnist-vae-decoder",
                            "inputs": [{"name": "latents", "datatype": "FP32", "key": "latents"}],
                            "outputs": None,
                        }
                    ],
                }
                report = run_calls(triton_python, spec, work)
                assert report["live"] is True and report["ready"] is True
                outcomes[name] = report["cases"]["decode"]
            denied = "StatusCode.UNAUTHENTICATED" if protocol == "grpc" else "401"
            assert str(outcomes["none"]["status"]) == denied, outcomes
            assert "Bearer" in outcomes["none"]["message"]
            assert outcomes["token"]["outputs"] == ["images"], outcomes


OUR_STUBS_ON_PROTOBUF_6 = """
import sys
sys.path.insert(0, sys.argv[1])
import grpc, google.protobuf
from latentserve._proto.inference import grpc_predict_v2_pb2 as pb
from latentserve._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
assert google.protobuf.__version__.startswith("6."), google.protobuf.__version__
with grpc.insecure_channel(sys.argv[2]) as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    tensor = pb.ModelInferRequest.InferInputTensor(name="latents", datatype="FP32", shape=[1, 2])
    request = pb.ModelInferRequest(
        model_name="mnist-vae-decoder", inputs=[tensor], raw_input_contents=[bytes(8)]
    )
    response = stub.ModelInfer(request)
    assert list(response.outputs[0].shape) == [1, 1, 28, 28]
    assert len(response.raw_output_contents[0]) == 784 * 4
print(google.protobuf.__version__)
"""


def test_our_v2_stubs_work_on_protobuf_6(
    triton_python: Path, shipped_server: InProcessServer
) -> None:
    """The committed inference.* stubs, imported on the tritonclient venv's protobuf 6 (in a
    process of their own: they and tritonclient define the same messages), call the server."""
    done = subprocess.run(
        [str(triton_python), "-c", OUR_STUBS_ON_PROTOBUF_6, str(ROOT), shipped_server.target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("6.")
