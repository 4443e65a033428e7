"""A latentserve server in a subprocess on 127.0.0.1: start it on port 0, read the bound
port from its "listening on" log line, wait for readiness, sample its memory, stop it.

Only the process started here is ever signalled (by its own PID).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
READY = re.compile(r"ready: serving")


def cpu_seconds(*pids: int) -> float:
    """User + system CPU-seconds so far of every process in `pids` (all their threads), from
    /proc (Linux); a process already gone counts 0."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                # Fields after the command name (which may hold spaces) follow the last ')'.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` from /proc (Linux), 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ServerProcess:
    """`python -m serving` with the given flags; use as a context manager."""

    def __init__(
        self,
        models_dir: Path,
        flags: Sequence[str] = (),
        name: str = "server",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.command = [
            sys.executable,
            "-m",
            "serving",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--models-dir",
            str(models_dir),
            "--metrics-port",
            "0",
            "--http-port",
            "0",
            # No balancer in front of a test or benchmark server: stop at once. Tests of the
            # drain delay pass their own (a later flag wins).
            "--drain-delay-s",
            "0",
            *flags,
        ]
        self.port = 0
        self.lines: list[str] = []
        # The child's stdin: a file descriptor (e.g. a pty, for "run in a terminal" tests).
        self.stdin: int | None = subprocess.DEVNULL
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Launch without waiting (see `wait_ready`), so several servers can start at once."""
        self._proc = subprocess.Popen(
            self.command,
            stdin=self.stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                match = pattern.search(line)
                if match:
                    return match
            if self._proc is not None and self._proc.poll() is not None:
                time.sleep(0.2)  # let the reader collect the last lines
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode} before logging "
                    f"{pattern.pattern!r}:\n" + "\n".join(self.lines[-20:])
                )
            time.sleep(0.02)
        raise TimeoutError(f"{self.name}: no {pattern.pattern!r} within {timeout}s")

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        """Block until the port is known and the server's health check says SERVING."""
        self.port = int(self._wait_for(LISTENING, timeout).group(1))
        self._wait_for(READY, timeout)
        with grpc.insecure_channel(self.target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        if status.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"{self.name} is up but not SERVING:\n" + "\n".join(self.lines))
        return self

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM our own child and wait; SIGKILL only if it ignores that."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RssSampler:
    """Samples a process's RSS in a background thread; `peak` is the largest seen."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
