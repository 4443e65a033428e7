"""Fixtures for the end-to-end tests: skip without a Docker daemon (with the reason), build the
service image once per session, and hand out compose stacks that are always torn down.

On machines like our CI (no registry, no bridge network; detected by the local base image
local/python:3.11-slim, or forced with LATENTSERVE_E2E_OFFLINE=1|0) the image is built from
that base with an offline wheelhouse downloaded on the host (cached in wheelhouse/serve/).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from docker_stack import (
    IMAGE,
    IMAGE_NAME,
    IMAGE_TAG,
    LOCAL_BASE_IMAGE,
    SERVICE,
    ComposeStack,
    StackFactory,
    compose_command,
    docker_unavailable_reason,
    offline_build,
    run,
)

BUILD_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def compose() -> list[str]:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(f"e2e: {reason}")
    command = compose_command()
    if command is None:
        pytest.skip("e2e: neither `docker compose` (v2) nor `docker-compose` (v1) is installed")
    return command


@pytest.fixture(scope="session")
def build_env(compose: list[str]) -> dict[str, str]:
    """Environment for compose: build args for this machine (offline wheelhouse or PyPI)."""
    env = {
        **os.environ,
        "LATENTSERVE_IMAGE": IMAGE_NAME,
        "LATENTSERVE_TAG": IMAGE_TAG,
        # Docker runs the first health probe one interval after start: keep that short.
        "LATENTSERVE_HEALTH_INTERVAL": "1s",
        "LATENTSERVE_HOST": "127.0.0.1",
    }
    if offline_build():
        run(
            ["bash", "scripts/docker-wheelhouse.sh", "serve"],
            env={**os.environ, "PYTHON": sys.executable},
            timeout=600,
        )
        env.update(BASE_IMAGE=LOCAL_BASE_IMAGE, USE_WHEELHOUSE="1")
    return env


@pytest.fixture(scope="session")
def service_image(compose: list[str], build_env: dict[str, str]) -> str:
    """Build the service image once through the compose file (layer cache makes reruns fast)."""
    stack = ComposeStack(compose, "latentserve-e2e-build", build_env)
    stack("build", SERVICE, timeout=BUILD_TIMEOUT_S)
    return IMAGE


@pytest.fixture
def stack_factory(
    compose: list[str], build_env: dict[str, str], service_image: str
) -> Iterator[StackFactory]:
    """Make stacks on fresh free ports; every stack made is torn down (volumes too) at the end,
    pass or fail."""
    from fixtures.servers import free_port

    made: list[ComposeStack] = []

    def make(**env: str) -> ComposeStack:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        grpc_port, http_port, metrics_port = sorted(ports)
        stack = ComposeStack(
            compose,
            f"latentserve-e2e-{os.getpid()}-{len(made)}",
            {
                **build_env,
                "LATENTSERVE_PORT": str(grpc_port),
                "LATENTSERVE_HTTP_PORT": str(http_port),
                "LATENTSERVE_METRICS_PORT": str(metrics_port),
                **env,
            },
        )
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.down()
