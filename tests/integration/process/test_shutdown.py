"""SIGTERM under load: health turns NOT_SERVING first and keeps answering while the calls
already accepted finish (each with its correct result); new calls get UNAVAILABLE; the
process exits 0 within the grace period. Nothing accepted is lost.

(test_server_lifecycle.py checks the simplest drain; this is the same under mixed load.)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from fixtures.models import build_model_folder
from fixtures.reference import Reference
from fixtures.servers import InProcessServer, SubprocessServer
from fixtures.slow_model import build_slow_model_folder
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentserve.client import LatentClient, LatentServeError

GRACE_S = 8.0
WORKERS = 8


@dataclass
class Outcome:
    kind: str  # decode | sample | stream
    started: float
    ended: float
    code: str  # OK or the status name
    correct: bool = True


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("shutdown-models")
    build_slow_model_folder(root, "slow", matmuls=20)
    build_model_folder(root, "tiny-vae", kind="vae", latent_dim=2, seed=2)
    return root


def test_sigterm_under_load(models):
    proc = SubprocessServer(
        models,
        [
            "--grace-period-s",
            str(GRACE_S),
            "--default-model",
            "tiny-vae",
            "--intra-op-threads",
            "1",
            "--max-samples-per-request",
            "100000",
        ],
    ).start()
    try:
        proc.wait_for_log("ready: serving")
        latents = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
        expected_decode = Reference(models / "slow").decode(latents)
        with LatentClient(proc.target) as probe:
            expected_sample = probe.sample(5, seed=11).images
            expected_stream = probe.sample(300, seed=12).images
        outcomes: list[Outcome] = []
        health: list[tuple[float, str]] = []
        stop = threading.Event()

        def work(i: int) -> None:
            with LatentClient(proc.target, timeout=30, max_unary_samples=100, chunk_size=50) as c:
                n = 0
                while not stop.is_set():
                    kind = ("decode", "sample", "stream")[(i + n) % 3]
                    n += 1
                    started = time.monotonic()
                    try:
                        if kind == "decode":
                            got = c.decode(latents, model="slow").images
                            ok = np.allclose(got, expected_decode, atol=1e-6)
                        elif kind == "sample":
                            ok = np.array_equal(c.sample(5, seed=11).images, expected_sample)
                        else:
                            ok = np.array_equal(c.sample(300, seed=12).images, expected_stream)
                        outcomes.append(Outcome(kind, started, time.monotonic(), "OK", ok))
                    except LatentServeError as e:
                        outcomes.append(Outcome(kind, started, time.monotonic(), e.code.name))
                        if e.code is grpc.StatusCode.UNAVAILABLE:
                            return

        def watch_health() -> None:
            with grpc.insecure_channel(proc.target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while not stop.is_set():
                    try:
                        status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        health.append(
                            (
                                time.monotonic(),
                                health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                            )
                        )
                    except grpc.RpcError as e:
                        health.append((time.monotonic(), e.code().name))
                    time.sleep(0.005)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
        threads.append(threading.Thread(target=watch_health))
        for t in threads:
            t.start()
        time.sleep(1.5)  # load is flowing
        sigterm_at = time.monotonic()
        proc.terminate()
        code = proc.wait(GRACE_S + 10)
        exited_at = time.monotonic()
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(30)

        assert code == 0
        assert exited_at - sigterm_at < GRACE_S, "drained within the grace period"

        # Every call either finished with the right answer, or was refused: UNAVAILABLE from
        # the draining server, or CANCELLED by gRPC core for a call still arriving while the
        # listener closes. Such a call was never accepted, so it must have been sent after
        # SIGTERM; a call sent before it and not answered OK would be a lost call.
        codes = {o.code for o in outcomes}
        assert codes <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes
        refused_late = [o for o in outcomes if o.code == "CANCELLED"]
        assert all(o.started > sigterm_at for o in refused_late), [
            (o.kind, round(o.started - sigterm_at, 3)) for o in refused_late
        ]
        assert all(o.correct for o in outcomes if o.code == "OK")
        # Calls in flight at SIGTERM completed after it...
        drained = [o for o in outcomes if o.code == "OK" and o.started < sigterm_at < o.ended]
        assert drained, "no call was in flight at SIGTERM; the test proved nothing"
        # ...and every worker that kept calling was refused: new calls are not accepted.
        refused = [o for o in outcomes if o.code == "UNAVAILABLE"]
        assert len(refused) == WORKERS
        assert all(o.ended >= sigterm_at for o in refused), "refused only once draining"

        # Health: SERVING until SIGTERM, then NOT_SERVING, then unreachable; never back.
        after = [s for t, s in health if t >= sigterm_at]
        before = [s for t, s in health if t < sigterm_at]
        assert before and set(before) == {"SERVING"}
        assert "NOT_SERVING" in after, after[:20]
        first_not_serving = after.index("NOT_SERVING")
        assert set(after[:first_not_serving]) <= {"SERVING"}
        assert "SERVING" not in after[first_not_serving:]
        assert after[-1] == "UNAVAILABLE"
        messages = "\n".join(proc.lines)
        assert "shutting down: draining" in messages and "stopped" in messages
        assert "cancelling them" not in messages
    finally:
        proc.stop()


def test_draining_refusals_do_not_grow_metric_labels(tiny_models_dir):
    """While draining, calls are refused before their model name is checked; arbitrary
    names must not become Prometheus label values (unbounded series)."""
    with InProcessServer(tiny_models_dir) as running, LatentClient(running.target) as client:
        running.server.calls.draining = True
        for i in range(20):
            with pytest.raises(LatentServeError) as info:
                client.sample(1, model=f"made-up-{i}")
            assert info.value.code is grpc.StatusCode.UNAVAILABLE
        labels = {
            sample.labels.get("model")
            for metric in running.server.metrics.registry.collect()
            for sample in metric.samples
        }
        assert not any(str(label).startswith("made-up") for label in labels)
        running.server.calls.draining = False
