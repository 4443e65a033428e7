"""Client-side scale-out, observed on real servers: an `ipv4:` target balanced round robin
over replicas on 127.0.0.1/.2/.3, K channels that open K connections (seen from the server
side in /proc/net/tcp), and gRPC retries on UNAVAILABLE (a replica that refuses, as it does
while it drains), bounded in attempts, for unary calls and a stream before its first chunk.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.servers import InProcessServer

from latentserve.channels import RETRIED_METHODS, RetryPolicy, service_config
from latentserve.client import AsyncLatentClient, LatentClient, LatentServeError

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
LATENTS = np.zeros((1, 2), np.float32)


def address(running: InProcessServer) -> str:
    return f"{running.settings.host}:{running.server.port}"


def metric(running: InProcessServer, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for family in running.server.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def served(running: InProcessServer, method: str) -> float:
    return metric(running, "latentserve_requests_total", method=method) - refused(running, method)


def refused(running: InProcessServer, method: str) -> float:
    return metric(running, "latentserve_request_errors_total", method=method, code="UNAVAILABLE")


def refuse_calls(running: InProcessServer) -> None:
    """From now on the server answers every RPC UNAVAILABLE, as while it drains."""
    running.server.calls.draining = True


def server_connections(running: InProcessServer) -> set[int]:
    """Peer ports of the server's established TCP connections, from /proc/net/tcp and tcp6
    (gRPC listens on a dual-stack socket: IPv4 peers show there as ::ffff:a.b.c.d)."""
    host = bytes(reversed([int(x) for x in running.settings.host.split(".")])).hex().upper()
    ends = (f"{host}:{running.server.port:04X}",)  # tcp: 0100007F:PORT; tcp6: ...0100007F:PORT
    peers = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(ends) and fields[3] == "01":  # 01: ESTABLISHED
                peers.add(int(fields[2].split(":")[1], 16))
    return peers


@pytest.fixture
def replicas(tiny_models_dir: Path) -> Iterator[list[InProcessServer]]:
    servers = [
        InProcessServer(tiny_models_dir, host=host, default_model="tiny-vae") for host in HOSTS
    ]
    started: list[InProcessServer] = []
    try:
        for running in servers:
            started.append(running.start())
        yield started
    finally:
        for running in started:
            running.stop()


@pytest.fixture
def one_server(tiny_models_dir: Path) -> Iterator[InProcessServer]:
    with InProcessServer(tiny_models_dir, default_model="tiny-vae") as running:
        yield running


def ipv4_target(servers: list[InProcessServer]) -> str:
    return "ipv4:" + ",".join(address(s) for s in servers)


def connect_all(client: LatentClient, replicas: int) -> None:
    # round_robin sends calls only over connections that are up: health checks (which
    # every replica answers) until each replica has had a call.
    for _ in range(4 * replicas):
        assert client.health() == "SERVING"


def test_service_config_is_round_robin_with_retries_on_unrun_calls_only():
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method["name"]}
    assert names == set(RETRIED_METHODS)
    assert ("grpc.health.v1.Health", "Check") in names
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    assert method["retryPolicy"]["maxAttempts"] == 3
    assert "methodConfig" not in json.loads(service_config(retry=None))
    with pytest.raises(ValueError, match="round_robin"):
        service_config(load_balancing="least_request")
    with pytest.raises(ValueError, match=r"2\.\.5"):
        RetryPolicy(max_attempts=9)


@pytest.mark.slow
def test_ipv4_target_spreads_calls_over_every_replica(replicas):
    with LatentClient(ipv4_target(replicas), timeout=10) as client:
        connect_all(client, len(replicas))
        for _ in range(30):
            client.decode(LATENTS, model="tiny-vae")
    counts = [served(r, "Decode") for r in replicas]
    assert sum(counts) == 30 and min(counts) >= 1, counts


@pytest.mark.slow
async def test_async_client_spreads_calls_over_every_replica(replicas):
    async with AsyncLatentClient(ipv4_target(replicas), timeout=10) as client:
        for _ in range(4 * len(replicas)):
            assert await client.health() == "SERVING"
        await asyncio.gather(*(client.decode(LATENTS, model="tiny-vae") for _ in range(30)))
    counts = [served(r, "Decode") for r in replicas]
    assert sum(counts) == 30 and min(counts) >= 1, counts


def test_k_channels_open_k_connections(one_server):
    target = one_server.target
    # Channels with the same arguments share gRPC's global subchannel pool: one connection.
    with LatentClient(target) as first, LatentClient(target) as second:
        first.health(), second.health()
        assert len(server_connections(one_server)) == 1
    with LatentClient(target, channels=4) as client:
        for _ in range(8):
            client.health()
        assert len(server_connections(one_server)) == 4
        # Unary calls and encode's split batches go round the channels too.
        for _ in range(8):
            client.decode(LATENTS, model="tiny-vae")
        assert len(server_connections(one_server)) == 4


async def test_async_k_channels_open_k_connections(one_server):
    async with AsyncLatentClient(one_server.target, channels=3) as client:
        for _ in range(6):
            await client.health()
        assert len(server_connections(one_server)) == 3


def test_channels_must_be_positive(one_server):
    with pytest.raises(ValueError, match="channels must be >= 1"):
        LatentClient(one_server.target, channels=0)


@pytest.mark.slow
def test_unavailable_from_a_refusing_replica_is_retried_on_another(replicas):
    refusing, healthy = replicas[0], replicas[1:]
    refuse_calls(refusing)
    with LatentClient(ipv4_target(replicas), timeout=10) as client:
        connect_all(client, len(replicas))
        for _ in range(20):
            assert client.decode(LATENTS, model="tiny-vae").images.shape == (1, 1, 28, 28)
        # A stream refused before its first chunk is retried too.
        stream = LatentClient(ipv4_target(replicas), timeout=10, max_unary_samples=2)
        with stream:
            connect_all(stream, len(replicas))
            for _ in range(6):
                assert stream.sample(5, model="tiny-vae", seed=1).images.shape[0] == 5
    assert refused(refusing, "Decode") >= 1, "round robin sent some attempts to the refusing one"
    assert refused(refusing, "SampleRandomStream") >= 1
    assert served(refusing, "Decode") == 0
    assert sum(served(r, "Decode") for r in healthy) == 20


@pytest.mark.slow
def test_without_retries_the_refusals_reach_the_caller(replicas):
    refuse_calls(replicas[0])
    failures = 0
    with LatentClient(ipv4_target(replicas), timeout=10, retry=None) as client:
        connect_all(client, len(replicas))
        for _ in range(12):
            try:
                client.decode(LATENTS, model="tiny-vae")
            except LatentServeError as e:
                assert e.code is grpc.StatusCode.UNAVAILABLE
                failures += 1
    assert failures == refused(replicas[0], "Decode") >= 1


@pytest.mark.parametrize("attempts", [2, 3])
def test_attempts_are_bounded(one_server, attempts):
    refuse_calls(one_server)
    retry = RetryPolicy(max_attempts=attempts, initial_backoff_s=0.01, max_backoff_s=0.02)
    with (
        LatentClient(one_server.target, timeout=10, retry=retry) as client,
        pytest.raises(LatentServeError) as info,
    ):
        client.decode(LATENTS, model="tiny-vae")
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert refused(one_server, "Decode") == attempts


def test_other_errors_are_not_retried(one_server):
    with (
        LatentClient(one_server.target, timeout=10) as client,
        pytest.raises(LatentServeError) as info,
    ):
        client.decode(np.zeros((1, 5), np.float32), model="tiny-vae")
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    errors = metric(one_server, "latentserve_request_errors_total", method="Decode")
    assert errors == 1


def set_health(running: InProcessServer, status: str) -> None:
    from latentserve._proto.grpc_health.v1 import health_pb2

    running.run(
        running.server.health.set("", health_pb2.HealthCheckResponse.ServingStatus.Value(status))
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"not within {timeout}s: {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_health_checked_client_skips_a_not_serving_replica(replicas):
    quiet = replicas[0]
    with LatentClient(ipv4_target(replicas), timeout=10, health_check=True) as client:
        connect_all(client, len(replicas))
        set_health(quiet, "NOT_SERVING")
        # The client learns it from its health watch; until then calls may still go there.
        wait_until(
            lambda: _decode_spread(client, replicas, 6)[0] == 0,
            "the NOT_SERVING replica left the rotation",
        )
        before = served(quiet, "Decode")
        _decode_spread(client, replicas, 12)
        assert served(quiet, "Decode") == before, "a NOT_SERVING replica got calls"
        set_health(quiet, "SERVING")
        wait_until(
            lambda: _decode_spread(client, replicas, 3)[0] > 0, "the replica is back in rotation"
        )


def _decode_spread(
    client: LatentClient, replicas: list[InProcessServer], calls: int
) -> list[float]:
    """Make `calls` Decode calls; how many each replica served of them."""
    before = [served(r, "Decode") for r in replicas]
    for _ in range(calls):
        client.decode(LATENTS, model="tiny-vae")
    return [served(r, "Decode") - b for r, b in zip(replicas, before, strict=True)]


@pytest.mark.slow
def test_draining_replica_under_load_fails_no_call(tiny_models_dir):
    """One of three replicas stops (NOT_SERVING, drain delay, refuse, close) while 8
    threads call: the health-checked client moves off it, and retries cover the rest."""
    servers = [
        InProcessServer(tiny_models_dir, host=h, default_model="tiny-vae", drain_delay_s=0.5)
        for h in HOSTS
    ]
    for running in servers:
        running.start()
    failures: list[str] = []
    done = threading.Event()
    calls = [0]
    try:
        with LatentClient(ipv4_target(servers), timeout=10, health_check=True) as client:
            connect_all(client, len(servers))

            def caller() -> None:
                for _ in range(2_000):
                    if done.is_set():
                        return
                    try:
                        client.decode(LATENTS, model="tiny-vae")
                        calls[0] += 1
                    except LatentServeError as e:
                        failures.append(f"{e.code.name}: {e.message}")

            threads = [threading.Thread(target=caller) for _ in range(8)]
            for t in threads:
                t.start()
            wait_until(lambda: calls[0] >= 100, "load is running")
            servers[0].stop()  # returns once drained and closed
            after_stop = calls[0]
            wait_until(lambda: calls[0] >= after_stop + 100, "load goes on without it")
            done.set()
            for t in threads:
                t.join(30)
    finally:
        done.set()
        for running in servers[1:]:
            running.stop()
    assert failures == []


def test_load_generator_spreads_over_k_connections(one_server):
    from latentbench.loadgen import LoadSpec, run_load
    from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
    from latentserve.tensors import array_to_tensor

    request = pb.DecodeRequest(model="tiny-vae", latents=array_to_tensor(LATENTS))
    spec = LoadSpec(
        target=one_server.target,
        rpc="Decode",
        request=request.SerializeToString(),
        items=1,
        concurrency=3,
        warmup_s=0.0,
        duration_s=2.0,
        max_requests=100_000,
        start_at=time.time(),
        channels=3,
    )
    results = []
    worker = threading.Thread(target=lambda: results.append(run_load(spec)))
    worker.start()
    wait_until(lambda: len(server_connections(one_server)) == 3, "3 connections while it runs")
    worker.join(30)
    (result,) = results
    assert result.errors == {} and result.problem == ""
    assert len(result.latencies_s) > 0
