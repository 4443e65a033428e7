"""max_connection_age (gRFC A9) rebalances connections, and a long call outlives it: after
the GOAWAY, a SampleRandomStream still running finishes on its old connection. (With a
fixed 10 s grace, a stream of 100,000 samples, about 30 s at this machine's 3,000 samples/s,
was cut off with UNAVAILABLE "max connection age" whenever it ran past age + grace; the
README's `client.sample(100_000, seed=7)` did on a busy machine.)"""

from __future__ import annotations

import time

import grpc
import pytest
from fixtures.servers import InProcessServer

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from serving.process.settings import ServerSettings

pytestmark = pytest.mark.slow

AGE_MS = 300


def test_the_default_grace_waits_for_calls_in_flight():
    assert ServerSettings.model_fields["max_connection_age_grace_ms"].default == 0


def test_a_stream_outlives_the_connection_age(tiny_models_dir):
    with InProcessServer(tiny_models_dir, max_connection_age_ms=AGE_MS) as server:
        assert server.settings.max_connection_age_grace_ms == 0
        with grpc.insecure_channel(server.target) as channel:
            stream = pb_grpc.AutoencoderStub(channel).SampleRandomStream(
                pb.SampleRequest(model="tiny-vae", count=2000, seed=1, chunk_size=50),
                timeout=60,
            )
            started, received = time.monotonic(), 0
            for chunk in stream:
                received += chunk.images.shape[0]
                # Read slowly, so the call is still in flight long after the GOAWAY.
                time.sleep(0.05)
            took = time.monotonic() - started
    assert received == 2000
    assert took > 5 * AGE_MS / 1000, f"the stream took only {took:.2f}s: not past the age"
