"""--model-control explicit against real servers on 127.0.0.1: the repository API over v2
REST and gRPC (with the bearer token the server requires), unload draining the calls in
flight, concurrent loads loading once, the index, readiness and infer agreeing throughout,
and memory coming back over load/unload cycles."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.models import build_model_folder, corrupt_hash
from fixtures.repository import http_json, index, wait_for
from fixtures.servers import InProcessServer, SubprocessServer, free_port
from fixtures.slow_model import build_slow_model_folder

from latentbench.serverproc import rss_bytes
from latentserve._proto.inference import grpc_predict_v2_pb2 as pb
from latentserve._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from latentserve.client import LatentClient, LatentServeError

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    build_model_folder(root, "tiny-ae", kind="ae", seed=1)
    build_model_folder(root, "tiny-vae", kind="vae", seed=2)
    build_slow_model_folder(root, "slow", matmuls=60)
    corrupt_hash(build_model_folder(root, "broken", seed=3))
    return root


@pytest.fixture(scope="module")
def explicit(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(
        repo,
        model_control="explicit",
        http_port=free_port(),
        auth_token=TOKEN,
        default_model="tiny-ae",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(explicit: InProcessServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(explicit.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def base(running: InProcessServer) -> str:
    assert running.server.http is not None
    return f"http://127.0.0.1:{running.server.http.port}"


def rest(running: InProcessServer, path: str, token: str = TOKEN) -> tuple[int, object]:
    return http_json(base(running), path, {}, token)


def test_rest_loads_and_unloads_with_the_token_only(explicit):
    assert rest(explicit, "/v2/repository/models/tiny-vae/unload", token="")[0] == 401
    assert rest(explicit, "/v2/repository/models/tiny-vae/unload", token="wrong")[0] == 401
    assert rest(explicit, "/v2/repository/index", token="")[0] == 401
    status, _ = rest(explicit, "/v2/repository/models/tiny-vae/unload")
    assert status == 200
    rows = index(base(explicit), TOKEN)
    assert rows[("tiny-vae", "1")] == {
        "name": "tiny-vae",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }
    status, ready = http_json(base(explicit), "/v2/models/tiny-vae-decoder/ready", token=TOKEN)
    assert status == 503 and ready == {"name": "tiny-vae-decoder", "ready": False}
    status, _ = rest(explicit, "/v2/models/tiny-vae-decoder/infer")
    assert status == 404 or status == 400  # an empty body never reaches the model
    with LatentClient(explicit.target, token=TOKEN) as client:
        with pytest.raises(LatentServeError) as refused:
            client.decode(np.zeros((1, 2), np.float32), model="tiny-vae")
        assert refused.value.code is grpc.StatusCode.NOT_FOUND
        assert (
            "not loaded" in refused.value.message
            and "available models: slow, tiny-ae" in refused.value.message
        )
        status, _ = rest(explicit, "/v2/repository/models/tiny-vae/load")
        assert status == 200
        assert client.decode(np.zeros((1, 2), np.float32), model="tiny-vae").model_version == "1"
    assert index(base(explicit), TOKEN)[("tiny-vae", "1")]["state"] == "READY"


def test_grpc_loads_unloads_and_lists_with_the_token_only(explicit, stub):
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny-ae"))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny-ae"), metadata=AUTH)
    answer = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=AUTH)
    states = {(m.name, m.version): m.state for m in answer.models}
    assert states[("tiny-ae", "1")] == "UNAVAILABLE"
    ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=AUTH)
    assert ("tiny-ae", "1") not in {(m.name, m.version) for m in ready.models}
    assert not stub.ModelReady(pb.ModelReadyRequest(name="tiny-ae-encoder"), metadata=AUTH).ready
    loaded = stub.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(model_name="tiny-ae"), metadata=AUTH
    )
    assert loaded.isLoaded
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny-ae-encoder"), metadata=AUTH).ready


def test_a_failed_load_says_why_and_unknown_models_are_not_found(explicit, stub):
    status, error = rest(explicit, "/v2/repository/models/broken/load")
    assert status == 400 and "sha256" in error["error"]  # type: ignore[index]
    row = index(base(explicit), TOKEN)[("broken", "1")]
    assert row["state"] == "UNAVAILABLE" and "sha256" in row["reason"]
    status, error = rest(explicit, "/v2/repository/models/nope/load")
    assert status == 404 and "tiny-vae" in error["error"]  # type: ignore[index]
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"), metadata=AUTH)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "sha256" in (refused.value.details() or "")


def test_unload_lets_calls_in_flight_finish_and_refuses_new_ones(explicit):
    latents = np.zeros((256, 2), np.float32)  # a slow run: about a second on the slow model
    results: list[object] = []

    def slow_call() -> None:
        with LatentClient(explicit.target, token=TOKEN) as client:
            try:
                results.append(client.decode(latents, model="slow").images.shape)
            except LatentServeError as e:
                results.append(e)

    callers = [threading.Thread(target=slow_call) for _ in range(3)]
    for t in callers:
        t.start()
    wait_for(lambda: explicit.server.calls.in_flight >= 3, what="three slow calls in flight")
    started = time.monotonic()
    status, _ = rest(explicit, "/v2/repository/models/slow/unload")
    took = time.monotonic() - started
    for t in callers:
        t.join(60)
    assert status == 200
    assert results == [(256, 1, 28, 28)] * 3  # every call in flight was answered
    assert took > 0.05  # the unload waited for them (their runs take far longer)
    with (
        LatentClient(explicit.target, token=TOKEN) as client,
        pytest.raises(LatentServeError) as refused,
    ):
        client.decode(latents[:1], model="slow")
    assert refused.value.code is grpc.StatusCode.NOT_FOUND
    assert "tiny-vae" in refused.value.message  # it names what is loaded
    assert explicit.server.registry.slot("slow").versions[1].model is None  # released
    assert rest(explicit, "/v2/repository/models/slow/load")[0] == 200


def test_two_loads_at_once_load_once(explicit):
    assert rest(explicit, "/v2/repository/models/tiny-vae/unload")[0] == 200
    before = explicit.server.registry.loads
    metrics = explicit.server.metrics.registry
    labels = {"model": "tiny-vae", "version": "1", "outcome": "ok"}
    counted = metrics.get_sample_value("latentserve_model_loads_total", labels) or 0.0
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(rest(explicit, "/v2/repository/models/tiny-vae/load")[0])
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200, 200]
    assert explicit.server.registry.loads == before + 1
    assert metrics.get_sample_value("latentserve_model_loads_total", labels) == counted + 1


def test_index_readiness_and_infer_agree_while_loading_and_unloading(explicit):
    """Sample (index, ready, infer) over and over while another thread loads and unloads:
    whenever no state changed during a sample (the repository's change count is the same
    before and after), readiness and infer agree with the index."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():  # pauses between the changes, for some quiet samples too
            rest(explicit, "/v2/repository/models/tiny-vae/unload")
            time.sleep(0.03)
            rest(explicit, "/v2/repository/models/tiny-vae/load")
            time.sleep(0.03)

    churner = threading.Thread(target=churn)
    churner.start()
    seen: set[tuple[str, bool, bool]] = set()
    try:
        with LatentClient(explicit.target, token=TOKEN) as client:
            end = time.monotonic() + 4.0
            while time.monotonic() < end:
                changes = explicit.server.registry.changes
                before = index(base(explicit), TOKEN)[("tiny-vae", "1")]["state"]
                status, _ = http_json(
                    base(explicit), "/v2/models/tiny-vae-decoder/versions/1/ready", token=TOKEN
                )
                try:
                    client.decode(np.zeros((1, 2), np.float32), model="tiny-vae", version=1)
                    served = True
                except LatentServeError:
                    served = False
                after = index(base(explicit), TOKEN)[("tiny-vae", "1")]["state"]
                if before == after and explicit.server.registry.changes == changes:
                    sample = (before, status == 200, served)
                    seen.add(sample)
                    assert sample in {("READY", True, True), ("UNAVAILABLE", False, False)}, sample
    finally:
        stop.set()
        churner.join(60)
    assert ("READY", True, True) in seen and ("UNAVAILABLE", False, False) in seen


def test_memory_comes_back_over_100_load_unload_cycles(repo):
    """A separate server process, so its RSS is its own: within 10% of the start after 100
    unload/load cycles of a model."""
    http_port = free_port()
    server = SubprocessServer(
        repo,
        [
            "--model-control",
            "explicit",
            "--http-port",
            str(http_port),
            "--metrics-port",
            "0",
            "--default-model",
            "tiny-vae",
        ],
    ).start()
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: http_json(url, "/v2/health/ready")[0] == 200, what="server ready")

        def cycles(n: int) -> None:
            for _ in range(n):
                assert http_json(url, "/v2/repository/models/tiny-ae/unload", {})[0] == 200
                assert http_json(url, "/v2/repository/models/tiny-ae/load", {})[0] == 200

        cycles(5)  # arenas, caches and import-time state settle first
        start = rss_bytes(server.pid)
        cycles(100)
        end = rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait()
    assert end <= start * 1.10, f"RSS {start / 2**20:.1f} MiB -> {end / 2**20:.1f} MiB"
