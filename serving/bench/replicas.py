"""Replicas for scale-out tests and the `replicas` benchmark: `python -m serving` processes,
each on its own loopback address (127.0.0.2, 127.0.0.3, ... act as separate hosts without
any setup) and a port picked at random in 20000-40000, so it can restart on the same
address after a SIGKILL; each counts its calls in its own Prometheus metrics.
"""

from __future__ import annotations

import random
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .serverproc import READY, ServerProcess

REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PORT_RANGE = (20000, 40000)


def pick_port(host: str, taken: set[int] | None = None) -> int:
    """A port in PORT_RANGE that is free on `host` right now (TCP bind test)."""
    taken = taken if taken is not None else set()
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE} on {host}")


class Replica(ServerProcess):
    """One server on (host, port) with its metrics on (host, metrics_port)."""

    def __init__(
        self,
        models_dir: Path,
        host: str,
        flags: Sequence[str] = (),
        port: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        taken: set[int] = set()
        self.host = host
        chosen = port if port is not None else pick_port(host, taken)
        self.metrics_port = metrics_port if metrics_port is not None else pick_port(host, taken)
        # Later flags win in argparse: these replace ServerProcess's 127.0.0.1 / port 0.
        super().__init__(
            models_dir,
            [
                *flags,
                "--host",
                host,
                "--port",
                str(chosen),
                "--metrics-port",
                str(self.metrics_port),
            ],
            name=f"replica {host}:{chosen}",
        )
        self.port = chosen
        self._listening = re.compile(rf"listening on {re.escape(host)}:(\d+)")

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def wait_ready(self, timeout: float = 60.0) -> Replica:
        self._wait_for(self._listening, timeout)
        self._wait_for(READY, timeout)
        with grpc.insecure_channel(self.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"{self.name} is up but not SERVING")
        return self

    def restart(self) -> Replica:
        """A new process on the same address (after kill or stop); call wait_ready after."""
        self.lines = []
        self.start()
        return self

    def kill(self) -> None:
        """SIGKILL our own child: a crash, nothing drained."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM our own child (the server drains); see `wait`."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout)

    def requests(self, method: str) -> int:
        """latentserve_requests_total for `method` (all models), from this replica's metrics.
        0 once the process is gone."""
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0
        pattern = re.compile(
            r'^latentserve_requests_total\{[^}]*method="' + re.escape(method) + r'"[^}]*\} (\S+)$',
            re.M,
        )
        return int(sum(float(v) for v in pattern.findall(text)))


def start_replicas(
    models_dir: Path,
    flags: Sequence[str] = (),
    hosts: Sequence[str] = REPLICA_HOSTS,
    timeout: float = 90.0,
) -> list[Replica]:
    """Start one replica per host at once, wait for all; stop them all on any failure."""
    replicas = [Replica(models_dir, host, flags) for host in hosts]
    try:
        for replica in replicas:
            replica.start()
        end = time.monotonic() + timeout
        for replica in replicas:
            replica.wait_ready(max(1.0, end - time.monotonic()))
    except BaseException:
        stop_all(replicas)
        raise
    return replicas


def stop_all(replicas: Sequence[ServerProcess]) -> None:
    for replica in replicas:
        replica.stop()
