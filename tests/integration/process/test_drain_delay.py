"""The drain delay for load balancers: on stop, health turns NOT_SERVING at once, but new
calls are still served for `drain_delay_s`; only after it are new calls refused
(UNAVAILABLE). Order of events only, no timing assertions.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from fixtures.servers import InProcessServer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentserve.client import LatentClient, LatentServeError

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
