"""Docker harness for the end-to-end tests: find a daemon and a compose command, and drive a
compose project on the host network through the real `docker` and `docker compose` (v2) or
`docker-compose` (v1) command lines. The fixtures using it are in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.host.yml")
LOCAL_BASE_IMAGE = "local/python:3.11-slim"
SERVICE = "latentserve"
IMAGE_NAME = "latentserve"
IMAGE_TAG = "e2e"
IMAGE = f"{IMAGE_NAME}:{IMAGE_TAG}"
UP_TIMEOUT_S = 120


def run(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`{' '.join(args)}` exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def docker_unavailable_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        return f"no Docker daemon reachable (`docker info`: {info.stderr.strip()[:200]})"
    return None


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if present, else `docker-compose` (v1), else None."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def offline_build() -> bool:
    forced = os.environ.get("LATENTSERVE_E2E_OFFLINE")
    if forced in ("0", "1"):
        return forced == "1"
    probe = subprocess.run(
        ["docker", "image", "inspect", LOCAL_BASE_IMAGE], capture_output=True, text=True
    )
    return probe.returncode == 0


@dataclass
class ComposeStack:
    """One compose project (unique name) on the host network, with its own ports."""

    compose: list[str]
    project: str
    env: dict[str, str]
    files: Sequence[str] = COMPOSE_FILES
    log: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        flags = [f for name in self.files for f in ("-f", name)]
        cmd = [*self.compose, *flags, "-p", self.project, *args]
        self.log.append(" ".join(cmd))
        return run(cmd, env=self.env, timeout=timeout, check=check)

    @property
    def port(self) -> int:
        return int(self.env["LATENTSERVE_PORT"])

    @property
    def http_port(self) -> int:
        return int(self.env["LATENTSERVE_HTTP_PORT"])

    @property
    def metrics_port(self) -> int:
        return int(self.env["LATENTSERVE_METRICS_PORT"])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def container_id(self) -> str:
        ids = self("ps", "-q", SERVICE).stdout.split()
        assert len(ids) == 1, f"expected one {SERVICE} container, got {ids}"
        return ids[0]

    def state(self) -> dict[str, object]:
        out = run(["docker", "inspect", "--format", "{{json .State}}", self.container_id()])
        state: dict[str, object] = json.loads(out.stdout)
        return state

    def logs(self) -> str:
        proc = self("logs", "--no-color", SERVICE, check=False, timeout=60)
        return proc.stdout + proc.stderr

    def up(self) -> None:
        self("up", "-d", "--no-build", SERVICE, timeout=UP_TIMEOUT_S)

    def wait_healthy(self, timeout: float = UP_TIMEOUT_S) -> float:
        """Seconds until Docker's HEALTHCHECK (gRPC health) reports healthy."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = self.state()
            health = state.get("Health") or {}
            status = health.get("Status") if isinstance(health, dict) else None
            if status == "healthy":
                return time.monotonic() - started
            if status == "unhealthy" or state.get("Status") in ("exited", "dead"):
                break
            time.sleep(0.5)
        raise AssertionError(
            f"{SERVICE} not healthy after {time.monotonic() - started:.0f}s "
            f"(state {json.dumps(self.state())[:1500]})\nlogs:\n{self.logs()[-4000:]}"
        )

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "-t", "30", timeout=120, check=False)


def scrape(url: str, timeout: float = 10, data: bytes | None = None) -> str:
    """The body of a GET (or, with `data`, a POST) to `url`; raises on an HTTP error."""
    with urllib.request.urlopen(url, data=data, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()


# What the stack_factory fixture returns: make(**environment overrides) -> ComposeStack.
StackFactory = Callable[..., ComposeStack]
