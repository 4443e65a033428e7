"""The drain delay for load balancers: on stop, health turns NOT_SERVING at once, but new
calls are still served for `drain_delay_s`; only after it are new calls refused
(UNAVAILABLE). The default delay outlasts the shipped Envoy config's health check; a second
signal, or Ctrl-C at a terminal, skips it (generous bounds only).
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest
from fixtures.servers import InProcessServer, SubprocessServer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentserve.client import LatentClient, LatentServeError
from serving.process.settings import ServerSettings

DELAY_S = 1.5


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return int(reply.status)


def test_not_serving_first_then_refuse_after_the_delay(tiny_models_dir):
    server = InProcessServer(
        tiny_models_dir, default_model="tiny-vae", drain_delay_s=DELAY_S
    ).start()
    latents = np.zeros((1, 2), np.float32)
    stopping = threading.Thread(target=server.run, args=(server.server.stop(2.0),))
    try:
        with LatentClient(server.target, timeout=5) as client:
            client.decode(latents)
            assert _health(server.target) == health_pb2.HealthCheckResponse.SERVING
            stopping.start()
            # Inside the delay: health already says NOT_SERVING, calls still succeed.
            while _health(server.target) != health_pb2.HealthCheckResponse.NOT_SERVING:
                pass
            assert client.decode(latents).images.shape == (1, 1, 28, 28)
            # After it: refused, never a hang or a wrong result.
            with pytest.raises(LatentServeError) as refused:
                for _ in range(10_000):
                    client.decode(latents)
                    time.sleep(0.01)
            assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        stopping.join(15)
        server.loop.call_soon_threadsafe(server.loop.stop)


def test_default_delay_outlasts_the_shipped_envoy_health_check():
    """With no flag, a replica behind the shipped Envoy config keeps serving until Envoy has
    seen it NOT_SERVING: interval x unhealthy threshold + timeout (+ jitter)."""
    from latentbench.envoyproc import cluster, health_check_timing, load_config

    config = load_config()
    interval, threshold, timeout = health_check_timing(config)
    jitter = float(cluster(config)["health_checks"][0].get("interval_jitter", "0s")[:-1])
    detection = (interval + jitter) * threshold + timeout
    default = ServerSettings.model_fields["drain_delay_s"].default
    assert default > detection, (default, detection)
    assert cluster(config)["common_lb_config"]["healthy_panic_threshold"] == {"value": 1}


def _drain_timing(
    tiny_models_dir, send, *, tty: bool = False, workers: int = 1
) -> tuple[float, str]:
    """Seconds from the first signal to the exit of a server with a 30 s drain delay, and
    its log; `send(proc)` signals it."""
    import os
    import pty

    flags = ["--default-model", "tiny-vae", "--drain-delay-s", "30", "--workers", str(workers)]
    server = SubprocessServer(tiny_models_dir, flags)
    if tty:
        master, slave = pty.openpty()
        server.stdin = slave
    try:
        server.start()
        server.wait_ready()
        started = time.monotonic()
        send(server.proc)
        assert server.wait(20) == 0
        return time.monotonic() - started, "\n".join(server.lines)
    finally:
        server.stop()
        if tty:
            os.close(master)
            os.close(slave)


def test_a_second_signal_skips_the_rest_of_the_drain(tiny_models_dir):
    def twice(proc) -> None:
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)

    seconds, log = _drain_timing(tiny_models_dir, twice)
    assert "still serving for drain_delay_s=30.0s" in log
    assert "skipping the rest of the drain" in log
    assert seconds < 15, seconds


def test_a_second_signal_hurries_every_worker(tiny_models_dir):
    def twice(proc) -> None:
        proc.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)

    seconds, log = _drain_timing(tiny_models_dir, twice, workers=2)
    assert log.count("still serving for drain_delay_s=30.0s") == 2, log
    assert "skipping the rest of the drain" in log
    assert seconds < 20, seconds


def test_ctrl_c_at_a_terminal_skips_the_delay(tiny_models_dir):
    seconds, log = _drain_timing(
        tiny_models_dir, lambda proc: proc.send_signal(signal.SIGINT), tty=True
    )
    assert "still serving for drain_delay_s" not in log
    assert seconds < 15, seconds


def test_sigterm_keeps_the_delay_even_at_a_terminal(tiny_models_dir):
    """Docker, Kubernetes and systemd send SIGTERM: it always gets the full delay (stopped
    here by a second signal once the delay is seen to have started)."""

    def term_then_check(proc) -> None:
        proc.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        assert proc.poll() is None, "exited inside its drain delay"
        proc.send_signal(signal.SIGTERM)

    _, log = _drain_timing(tiny_models_dir, term_then_check, tty=True)
    assert "still serving for drain_delay_s=30.0s" in log
