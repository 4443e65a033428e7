"""deploy/kubernetes (kustomize) renders, every object validates strictly against the
Kubernetes schemas offline, and the manifests agree with the server they run: every
LATENTSERVE_* variable and every flag is a real setting (built through the server's own
parser, so a renamed flag or setting fails here), probes ask the real health service on the
real port, and the shutdown timings fit inside terminationGracePeriodSeconds.

No cluster runs here: rendering needs `kubectl` (skips with the reason where it is absent),
validation needs PyPI's kubernetes-validate (dev extra).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from latentbench.envoyproc import cluster, envoy_binary, load_config
from serving.process.server import SERVICE_NAME
from serving.process.settings import ENV_PREFIX, ServerSettings, flag_name, parse_settings

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = {"base": KUBE / "base", "gpu": KUBE / "overlays" / "gpu"}


def render(folder: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize folders")
    out = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(OVERLAYS[request.param])


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"].startswith(name):
            return obj
    raise AssertionError(
        f"no {kind} {name} in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    )


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment", "latentserve")["spec"]["template"]["spec"]
    container: dict[str, Any] = next(c for c in pod["containers"] if c["name"] == "latentserve")
    return container


def test_every_object_validates_strictly(objects):
    version = kubernetes_validate.latest_version()
    kinds = set()
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
        kinds.add(obj["kind"])
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    } <= kinds


def test_env_and_args_are_real_settings(objects, monkeypatch):
    container = server_container(objects)
    env = {e["name"]: e["value"] for e in container["env"]}
    for name in env:
        assert name.startswith(ENV_PREFIX), name
        field = name.removeprefix(ENV_PREFIX).lower()
        assert field in ServerSettings.model_fields, f"{name} is not a server setting"
    flags = [a for a in container.get("args", []) if a.startswith("--")]
    known = {flag_name(f) for f in ServerSettings.model_fields}
    assert set(flags) <= known, f"unknown flags {set(flags) - known}"
    # The server's own parser and validation, with the manifest's environment.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = parse_settings(container.get("args", []))
    assert settings.host == "0.0.0.0"
    assert settings.drain_delay_s > 0, "behind balancers the drain needs a delay"


def test_ports_and_probes_match_the_server(objects, monkeypatch):
    container = server_container(objects)
    env = {e["name"]: e["value"] for e in container["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = parse_settings(container.get("args", []))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": settings.port,
        "metrics": settings.metrics_port,
        "http": settings.http_port,
    }
    assert settings.workers == 1, "scale with pods: one server process per pod"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == settings.port, probe
        assert grpc_probe.get("service", "") in ("", SERVICE_NAME), probe
    # Readiness follows the drain: the service name the server turns NOT_SERVING.
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "warm-up takes time"


def test_shutdown_fits_the_grace_period(objects, monkeypatch):
    pod = find(objects, "Deployment", "latentserve")["spec"]["template"]["spec"]
    container = server_container(objects)
    for e in container["env"]:
        monkeypatch.setenv(e["name"], e["value"])
    settings = parse_settings(container.get("args", []))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + settings.drain_delay_s + settings.grace_period_s
    assert pod["terminationGracePeriodSeconds"] > needed


def test_runs_unprivileged_on_a_read_only_root(objects):
    pod = find(objects, "Deployment", "latentserve")["spec"]["template"]["spec"]
    container = server_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    assert container["resources"]["requests"]["cpu"], "the HPA needs a CPU request"


def test_services_select_the_pods(objects):
    labels = find(objects, "Deployment", "latentserve")["spec"]["template"]["metadata"]["labels"]
    headless = find(objects, "Service", "latentserve-headless")["spec"]
    assert headless["clusterIP"] == "None"
    plain = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "latentserve"
    )["spec"]
    for spec in (headless, plain):
        assert spec["selector"].items() <= labels.items()
        grpc_port = next(p for p in spec["ports"] if p["name"] == "grpc")
        assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    hpa = find(objects, "HorizontalPodAutoscaler", "latentserve")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "latentserve"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    pdb = find(objects, "PodDisruptionBudget", "latentserve")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_envoy_config_is_the_shipped_one_routed_to_the_headless_service(objects, tmp_path):
    configmap = find(objects, "ConfigMap", "latentserve-envoy")
    in_cluster = yaml.safe_load(configmap["data"]["envoy.yaml"])
    shipped = load_config()
    endpoints = cluster(in_cluster)["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == [
        {"address": "latentserve-headless", "port_value": 50051}
    ]
    assert cluster(in_cluster)["type"] == "STRICT_DNS"
    for config in (in_cluster, shipped):
        del cluster(config)["load_assignment"]
    assert in_cluster == shipped, "deploy/kubernetes/base/envoy-config.yaml drifted"
    envoy = find(objects, "Deployment", "latentserve-envoy")["spec"]["template"]["spec"]
    volume = next(v for v in envoy["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    binary = envoy_binary()
    if binary is not None:
        path = tmp_path / "envoy.yaml"
        path.write_text(configmap["data"]["envoy.yaml"], encoding="utf-8")
        check = subprocess.run(
            [binary, "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_gpu_overlay_asks_for_a_gpu_and_cuda():
    objects = render(OVERLAYS["gpu"])
    container = server_container(objects)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LATENTSERVE_DEVICE"] == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].startswith("latentserve-gpu")
