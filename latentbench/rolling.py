"""A rolling restart under load, as an operator runs one: replicas started the way the docs
say (the `latent-serve` console script, no flags beyond host and ports), callers sending
single-image Decode calls, one replica SIGKILLed, another SIGTERMed a few seconds later,
then both restarted; every call's outcome counted.

Two ways to reach the replicas: through Envoy running the shipped deploy/envoy/envoy.yaml
(callers on a plain gRPC channel with no retry policy of their own, as grpcurl or
tritonclient would be), or with the client's own balancing (`LatentClient` on an `ipv4:`
list, round robin, the library's default retry policy). With `workers=2` each replica runs
two worker processes and the first victim is one *worker*, not the whole replica.

Used by tests/integration/scale/test_envoy_rolling.py, tests/integration/client/test_client_rolling.py
and latent-bench `replicas` (failed calls next to Envoy's overhead).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from latentbench.replicas import REPLICA_HOSTS, Replica, pick_port, start_all

WORKER_PIDS = re.compile(r"on \d+ workers \(pids ([\d, ]+)\)")
WORKER_UP = re.compile(r'^latentserve_worker_up\{pid="(\d+)",worker="(\d+)"\} 1', re.M)
WORKER_CALLS = re.compile(r'^latentserve_worker_requests_total\{worker="(\d+)"\} (\S+)', re.M)


def console_script(name: str = "latent-serve") -> str:
    """The installed console script beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"no {name} console script: pip install '.[serve]'")
    return found


class DocsReplica(Replica):
    """`latent-serve --host H --port P --metrics-port M --http-port Q [extra]`: what the docs
    tell a user to run, with the shipped models unless `models_dir` is given."""

    def __init__(
        self, host: str, models_dir: Path | None = None, extra: Sequence[str] = ()
    ) -> None:
        super().__init__(models_dir or Path("."), host)
        taken = {self.port, self.metrics_port}
        self.http_port = pick_port(host, taken)
        self.command = [
            console_script(),
            "--host",
            host,
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--http-port",
            str(self.http_port),
            *(["--models-dir", str(models_dir)] if models_dir is not None else []),
            *extra,
        ]

    def worker_pids(self) -> list[int]:
        """The worker processes the supervisor named in its last `ready` line."""
        for line in reversed(self.lines):
            match = WORKER_PIDS.search(line)
            if match:
                return [int(p) for p in match.group(1).split(",")]
        return []

    def busiest_worker(self) -> int:
        """The pid of the live worker that has received the most calls: the one holding the
        balancer's connection, whose death the balancer must then cover."""
        text = self.metrics_text()
        pids = {worker: int(pid) for pid, worker in WORKER_UP.findall(text)}
        calls = {worker: float(n) for worker, n in WORKER_CALLS.findall(text)}
        return pids[max(pids, key=lambda w: calls.get(w, 0.0))]

    def live_workers(self) -> int:
        return len(WORKER_UP.findall(self.metrics_text()))

    def metrics_text(self) -> str:
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def start_docs_replicas(
    models_dir: Path | None = None,
    extra: Sequence[str] = (),
    hosts: Sequence[str] = REPLICA_HOSTS,
    timeout: float = 120.0,
) -> list[DocsReplica]:
    return start_all([DocsReplica(host, models_dir, extra) for host in hosts], timeout)


class CallerLoad:
    """`callers` asyncio callers of single-image Decode in a thread of their own, until
    `stop()` (or `max_calls`); every outcome counted by status code."""

    def __init__(
        self,
        target: str,
        callers: int = 16,
        client: str = "raw",
        max_calls: int = 500_000,
        timeout_s: float = 10.0,
    ) -> None:
        if client not in ("raw", "latentclient"):
            raise ValueError(f"client must be 'raw' or 'latentclient', got {client!r}")
        self.target = target
        self.callers = callers
        self.client = client
        self.max_calls = max_calls
        self.timeout_s = timeout_s
        self.outcomes: Counter[str] = Counter()
        self.failures: list[tuple[float, str]] = []
        self._started = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.calls - self.outcomes["OK"]

    async def _main(self) -> None:
        call = await self._open()
        try:
            await asyncio.gather(*(self._caller(call) for _ in range(self.callers)))
        finally:
            await self._close()

    async def _open(self) -> Callable[[], Any]:
        latents = np.zeros((1, 2), np.float32)
        if self.client == "latentclient":
            from latentserve.client import AsyncLatentClient

            self._client = AsyncLatentClient(self.target, timeout=self.timeout_s)
            return lambda: self._client.decode(latents)
        from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
        from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
        from latentserve.tensors import array_to_tensor

        self._channel = grpc.aio.insecure_channel(self.target)
        stub = pb_grpc.AutoencoderStub(self._channel)
        request = pb.DecodeRequest(latents=array_to_tensor(latents))
        return lambda: stub.Decode(request, timeout=self.timeout_s)

    async def _close(self) -> None:
        if self.client == "latentclient":
            await self._client.close()
        else:
            await self._channel.close(None)

    async def _caller(self, call: Callable[[], Any]) -> None:
        from latentserve.client import LatentServeError

        while not self._stop.is_set() and self._started < self.max_calls:
            self._started += 1
            try:
                await call()
                self.outcomes["OK"] += 1
            except (grpc.aio.AioRpcError, LatentServeError) as e:
                code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else e.code.name
                self.outcomes[code] += 1
                if len(self.failures) < 50:
                    self.failures.append((time.monotonic(), f"{code}: {e}"[:300]))

    def start(self) -> CallerLoad:
        self._thread.start()
        return self

    def wait_calls(self, total: int, timeout: float = 120.0) -> None:
        """Block until `total` calls have finished in all (or the load ended)."""
        end = time.monotonic() + timeout
        while self.calls < total and self._thread.is_alive() and time.monotonic() < end:
            time.sleep(0.02)

    def stop(self) -> CallerLoad:
        self._stop.set()
        self._thread.join(60)
        return self


@dataclass
class RollingResult:
    """One rolling restart: calls and failures by code, and when things happened (s after
    the load started)."""

    path: str
    workers: int
    calls: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    sigterm_exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        events = ", ".join(f"{k} {v:.1f}s" for k, v in self.events.items())
        return (
            f"{self.path} workers={self.workers}: {self.failed} failed of {self.calls:,} calls "
            f"in {self.seconds:.1f}s ({dict(self.outcomes)}); {events}"
        )


def rolling_restart(
    replicas: Sequence[DocsReplica],
    load: CallerLoad,
    *,
    path: str,
    min_calls: int = 20_000,
    kill_to_term_s: float = 3.0,
    wait_ready: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = print,
) -> RollingResult:
    """Under `load` (started here): SIGKILL replicas[0] (with workers: one of its workers),
    `kill_to_term_s` later SIGTERM replicas[1], wait for it to exit, restart both, then keep
    the load on until `min_calls` calls have finished in all. `wait_ready` is called once
    both are back (e.g. until Envoy sees them healthy)."""
    killed, drained = replicas[0], replicas[1]
    workers = len(killed.worker_pids()) or 1
    result = RollingResult(path=path, workers=workers)
    start = time.monotonic()

    def mark(event: str) -> None:
        result.events[event] = time.monotonic() - start

    load.start()
    try:
        load.wait_calls(min(2_000, min_calls // 4))
        mark("sigkill")
        if workers > 1:
            os.kill(killed.busiest_worker(), signal.SIGKILL)
        else:
            killed.kill()
        time.sleep(kill_to_term_s)
        mark("sigterm")
        drained.terminate()
        result.sigterm_exit_code = drained.wait(120)
        mark("exited")
        if workers == 1:
            killed.restart()
        drained.restart()
        for replica in (killed, drained):
            replica.wait_ready(120)
        if workers > 1:  # the supervisor replaces the killed worker after its backoff
            deadline = time.monotonic() + 60
            while killed.live_workers() < workers and time.monotonic() < deadline:
                time.sleep(0.1)
        wait_ready()
        mark("restarted")
        load.wait_calls(max(min_calls, load.calls + 1_000), timeout=300)
    finally:
        load.stop()
    result.seconds = time.monotonic() - start
    result.calls, result.failed = load.calls, load.failed
    result.outcomes = dict(load.outcomes)
    result.failures = [f"{t - start:.2f}s {text}" for t, text in load.failures]
    log(result.line())
    return result


def start_envoy(replicas: Sequence[Replica], workdir: Path, concurrency: int = 1) -> Any:
    """A real Envoy running the shipped config in front of `replicas`, all healthy in it."""
    from latentbench.envoyproc import EnvoyProcess, render_config

    config = render_config(
        [r.address for r in replicas],
        listen=("127.0.0.1", pick_port("127.0.0.1")),
        admin=("127.0.0.1", pick_port("127.0.0.1")),
    )
    envoy = EnvoyProcess(config, workdir, concurrency=concurrency).start()
    try:
        envoy.wait_hosts({r.address for r in replicas}, timeout=60)
    except BaseException:
        envoy.stop()
        raise
    return envoy


def ipv4_target(replicas: Sequence[Replica]) -> str:
    """gRPC's fixed address list for client-side balancing."""
    return "ipv4:" + ",".join(r.target for r in replicas)
