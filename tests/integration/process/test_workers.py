"""`latent-serve --workers 2`: real supervisor and worker processes on 127.0.0.1.

Calls from separate channels (local subchannel pools, so each has its own connection) reach
both workers; the one /metrics endpoint shows both, with their pids; a SIGKILLed worker is
replaced while the server keeps answering, and a client with a retry policy on UNAVAILABLE
sees at most one failure per channel; SIGTERM under load loses no accepted call and exits 0;
a second server on the same port is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.servers import SubprocessServer, free_port
from fixtures.slow_model import build_slow_model_folder
from prometheus_client.parser import text_string_to_metric_families

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.channels import ChannelOption, channel_options
from latentserve.tensors import array_to_tensor
from serving.process.settings import ServerSettings

pytestmark = pytest.mark.slow

CLIENTS = 16
HTTP_OFF = ("--http-port", "0") if "http_port" in ServerSettings.model_fields else ()
DECODE = pb.DecodeRequest(
    model="tiny-vae", latents=array_to_tensor(np.zeros((1, 2), dtype=np.float32))
)


def options_for(retry: bool) -> list[ChannelOption]:
    # A local subchannel pool gives each channel its own connection, which SO_REUSEPORT
    # places on one worker; channels sharing grpc's global pool would share one connection.
    local: list[ChannelOption] = [("grpc.use_local_subchannel_pool", 1)]
    if not retry:
        return local
    # The client library's own channel arguments, as LatentClient(target, channels=K) sets
    # on each channel: its retry policy (UNAVAILABLE, 3 attempts) for the idempotent RPCs
    # and its short reconnect backoff (latentserve/channels.py says why).
    return channel_options(max_message_bytes=64 << 20, extra=local)


@dataclass
class Outcome:
    client: int
    started: float
    ended: float
    code: str


@dataclass
class Load:
    """`CLIENTS` threads, one channel each, sending Decode until stopped (bounded)."""

    target: str
    retry: bool = False
    requests: list[pb.DecodeRequest] = field(default_factory=lambda: [DECODE])
    max_calls_per_client: int = 20_000
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def _client(self, i: int) -> None:
        with grpc.insecure_channel(self.target, options=options_for(self.retry)) as ch:
            stub = pb_grpc.AutoencoderStub(ch)
            request = self.requests[i % len(self.requests)]
            for _ in range(self.max_calls_per_client):
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    stub.Decode(request, timeout=30)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                self.outcomes.append(Outcome(i, started, time.monotonic(), code))

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def calls_since(self, moment: float) -> Counter[int]:
        return Counter(o.client for o in self.outcomes if o.started > moment and o.code == "OK")

    def join(self) -> None:
        for t in self._threads:
            t.join(60)

    def stop(self) -> None:
        self._stop.set()
        self.join()


def failures_by_code(load: Load) -> Counter[str]:
    return Counter(o.code for o in load.outcomes if o.code != "OK")


def metric_samples(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def worker_pids(port: int) -> dict[str, int]:
    """worker index -> pid of the live worker process, from the metrics endpoint."""
    return {
        labels["worker"]: int(labels["pid"])
        for name, labels, value in metric_samples(port)
        if name == "latentserve_worker_up" and value == 1
    }


def worker_requests(port: int) -> dict[str, float]:
    return {
        labels["worker"]: value
        for name, labels, value in metric_samples(port)
        if name == "latentserve_worker_requests_total"
    }


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def start_workers(models: Path, *flags: str) -> tuple[SubprocessServer, int]:
    metrics_port = free_port()
    proc = SubprocessServer(
        models,
        ["--workers", "2", "--metrics-port", str(metrics_port), "--grace-period-s", "5", *flags],
    ).start()
    proc.wait_for_log("ready: serving")
    return proc, metrics_port


def test_calls_from_16_clients_reach_both_workers(tiny_models_dir):
    proc, metrics_port = start_workers(tiny_models_dir)
    try:
        pids = worker_pids(metrics_port)
        assert set(pids) == {"0", "1"}
        # The pids the endpoint reports are the supervisor's own worker processes.
        assert set(pids.values()) <= children(proc.pid)
        load = Load(proc.target, max_calls_per_client=25).start()
        load.join()
        assert Counter(o.code for o in load.outcomes) == {"OK": CLIENTS * 25}
        counts = worker_requests(metrics_port)
        assert counts["0"] > 0 and counts["1"] > 0, counts
        assert sum(counts.values()) == CLIENTS * 25
        # The aggregate series sum over both workers.
        total = sum(
            value
            for name, labels, value in metric_samples(metrics_port)
            if name == "latentserve_requests_total" and labels["method"] == "Decode"
        )
        assert total == CLIENTS * 25
    finally:
        proc.stop()
    assert proc.proc.returncode == 0


def test_sigkill_of_a_worker_is_replaced_and_retried_calls_fail_at_most_once(tiny_models_dir):
    proc, metrics_port = start_workers(tiny_models_dir)
    load = Load(proc.target, retry=True)
    try:
        before = worker_pids(metrics_port)
        load.start()
        while len(load.outcomes) < 200:
            time.sleep(0.01)
        killed_at = time.monotonic()
        os.kill(before["1"], signal.SIGKILL)  # a child of the server this test started
        proc.wait_for_log("worker 1 .* is back and serving", timeout=60)
        back_at = time.monotonic()
        # Keep going until every client has had calls answered after the replacement.
        end = time.monotonic() + 60  # a bound for a stuck client, not a timing claim
        while min(load.calls_since(back_at).get(i, 0) for i in range(CLIENTS)) < 5:
            assert time.monotonic() < end, (load.calls_since(back_at), failures_by_code(load))
            time.sleep(0.05)
        load.stop()
        failures = Counter(o.client for o in load.outcomes if o.code != "OK")
        assert all(n <= 1 for n in failures.values()), (failures, failures_by_code(load))
        assert all(o.ended >= killed_at for o in load.outcomes if o.code != "OK")
        after = worker_pids(metrics_port)
        assert after["0"] == before["0"]
        assert after["1"] != before["1"] and after["1"] in children(proc.pid)
        restarted = f"worker 1 (pid {before['1']}) was killed by SIGKILL; restarting it"
        assert restarted in "\n".join(proc.lines)
    finally:
        load.stop()
        proc.stop()
    assert proc.proc.returncode == 0


def test_sigterm_under_load_loses_no_accepted_call_and_exits_0(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    build_slow_model_folder(models, "slow", matmuls=20)
    for name in ("tiny-vae",):
        (models / name).symlink_to(tiny_models_dir / name)
    slow = pb.DecodeRequest(
        model="slow", latents=array_to_tensor(np.zeros((200, 2), dtype=np.float32))
    )
    proc, _ = start_workers(models, "--default-model", "tiny-vae")
    load = Load(proc.target, requests=[DECODE, slow]).start()
    try:
        while len(load.outcomes) < 100:
            time.sleep(0.01)
        sigterm_at = time.monotonic()
        proc.terminate()
        code = proc.wait(30)
    finally:
        load.stop()
        proc.stop()
    assert code == 0
    # A call either got its answer or was refused (UNAVAILABLE while draining, CANCELLED for
    # one arriving as a listener closes); a refusal before SIGTERM would be a lost call.
    codes = Counter(o.code for o in load.outcomes)
    assert set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes
    assert all(o.ended >= sigterm_at for o in load.outcomes if o.code != "OK")
    drained = [o for o in load.outcomes if o.code == "OK" and o.started < sigterm_at < o.ended]
    assert drained, "no call was in flight at SIGTERM; the test proved nothing"
    log = "\n".join(proc.lines)
    assert log.count("shutting down: draining") == 2
    assert "cancelling them" not in log


@pytest.mark.parametrize("second_workers", ["1", "2"])
def test_a_second_server_on_the_same_port_is_refused(tiny_models_dir, second_workers):
    port = free_port()
    proc, _ = start_workers(tiny_models_dir, "--port", str(port))
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "serving",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                "0",
                "--models-dir",
                str(tiny_models_dir),
                "--workers",
                second_workers,
                *HTTP_OFF,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"gRPC port {port} on 127.0.0.1 is already in use" in lines[0]
        assert "--port (LATENTSERVE_PORT)" in lines[0]
        # The first server never noticed.
        with grpc.insecure_channel(proc.target) as ch:
            pb_grpc.AutoencoderStub(ch).Decode(DECODE, timeout=10)
    finally:
        proc.stop()


def test_a_crash_loop_is_reported_and_the_server_exits_1(tiny_models_dir):
    """Five deaths within 60 s: the supervisor says so, stops the other worker, exits 1."""
    proc, metrics_port = start_workers(tiny_models_dir)
    try:
        for death in range(1, 6):
            pid = worker_pids(metrics_port)["1"]
            returned = log_count(proc, "is back and serving")
            os.kill(pid, signal.SIGKILL)  # a child of the server this test started
            if death == 5:
                break
            end = time.monotonic() + 60  # a bound for a stuck restart, not a timing claim
            while log_count(proc, "is back and serving") == returned:
                assert time.monotonic() < end, "\n".join(proc.lines)
                time.sleep(0.05)
            assert worker_pids(metrics_port)["1"] != pid
        code = proc.wait(30)
    finally:
        proc.stop()
    assert code == 1
    log = "\n".join(proc.lines)
    assert "crash loop: workers died 5 times within 60 s" in log
    assert log.count("restarting it in") == 4
    assert "Traceback" not in log


def log_count(proc: SubprocessServer, text: str) -> int:
    return sum(text in line for line in list(proc.lines))


async def test_a_worker_listens_only_when_warm_and_serves_only_when_told(tiny_models_dir):
    """A worker's side of readiness (LatentServer.start_warm): by the time it listens its
    models are loaded, yet the server's health stays NOT_SERVING until announce_ready (the
    supervisor's SIGUSR1, sent once every worker is warm)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving.process.server import LatentServer

    settings = ServerSettings(
        host="127.0.0.1", port=0, models_dir=tiny_models_dir, metrics_port=0, http_port=0
    )
    server = LatentServer(settings, shared_port=True, worker=0)
    await server.start_warm()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str) -> str:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

            assert await status("") == "NOT_SERVING"
            assert await status("latentserve.v1.Autoencoder") == "NOT_SERVING"
            assert await status("tiny-vae") == "SERVING"  # loaded and warm already
            await pb_grpc.AutoencoderStub(channel).Decode(DECODE, timeout=10)
            await server.announce_ready()
            assert await status("") == "SERVING"
            assert await status("latentserve.v1.Autoencoder") == "SERVING"
    finally:
        await server.stop(0)


def test_workers_share_the_http_port_and_a_second_server_cannot_take_it(tiny_models_dir):
    """The HTTP port (v2 REST) is shared among our workers only, like the gRPC port."""
    http_port = free_port()
    proc, _ = start_workers(tiny_models_dir, "--http-port", str(http_port))
    try:
        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        for _ in range(8):  # a fresh connection each, placed by the kernel on either worker
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
        second = subprocess.run(
            [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--http-port", str(http_port),
             "--models-dir", str(tiny_models_dir), "--workers", "2"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"HTTP port {http_port} on 127.0.0.1 is already in use" in second.stderr
        assert "--http-port (LATENTSERVE_HTTP_PORT)" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.stop()
    assert proc.proc.returncode == 0


def test_sigint_drains_every_worker_and_exits_0(tiny_models_dir):
    proc, _ = start_workers(tiny_models_dir)
    try:
        proc.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the supervisor
        assert proc.wait(30) == 0
    finally:
        proc.stop()
    log = "\n".join(proc.lines)
    assert "received SIGINT: stopping 2 workers" in log
    assert log.count("shutting down: draining") == 2
    assert "stopped: every worker drained and exited" in log
