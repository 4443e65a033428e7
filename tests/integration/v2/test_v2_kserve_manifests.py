"""deploy/kserve checked offline, as far as that goes without a cluster: the YAML parses and
kustomize renders it; the runtime speaks v2 and grpc-v2; its container args are real
latent-serve flags with valid values (parsed by latent-serve's own parser); the probes, the
gRPC h2c port and KServe's /mnt/models mount agree with those flags; the InferenceServices
use the runtime's model format and protocols; the image is the one docker-compose builds.
(The fields were also checked once against KServe's CRD OpenAPI schemas, strict on unknown
fields; see docs/serving.md, "KServe". Those schemas are not vendored, so this test cannot.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from serving.process.settings import parse_settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[3]
KSERVE = ROOT / "deploy" / "kserve"
STORAGE_MOUNT = Path("/mnt/models")  # where KServe's storage initializer puts storageUri


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in sorted(KSERVE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_kustomize_renders_every_manifest() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; kustomize rendering not checked")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KSERVE)], capture_output=True, text=True, check=True
    ).stdout
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered))
    assert kinds == sorted(documents())


def test_runtime_args_are_real_flags_and_ports_agree() -> None:
    docs = documents()
    runtime = docs[("ServingRuntime", "latentserve")]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    assert container["image"].split(":")[0] == "latentserve"  # docker-compose's image
    settings = parse_settings(container["args"])  # refuses unknown flags and bad values
    assert settings.models_dir == STORAGE_MOUNT
    assert settings.http_port == 8080  # KServe's default container port for REST
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == settings.http_port
        assert container[probe]["httpGet"]["path"].startswith("/v2/health/")
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(settings.metrics_port)
    grpc_service = docs[("InferenceService", "latentserve-grpc")]
    (port,) = grpc_service["spec"]["predictor"]["model"]["ports"]
    assert (port["name"], port["containerPort"]) == ("h2c", settings.port)


def test_inference_services_use_the_runtime() -> None:
    docs = documents()
    runtime = docs[("ServingRuntime", "latentserve")]["spec"]
    formats = {(f["name"], f["version"]) for f in runtime["supportedModelFormats"]}
    services = [d for (kind, _), d in docs.items() if kind == "InferenceService"]
    assert {s["spec"]["predictor"]["model"]["protocolVersion"] for s in services} == {
        "v2",
        "grpc-v2",
    }
    for service in services:
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == "latentserve"
        assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
        assert model["protocolVersion"] in runtime["protocolVersions"]
        assert model["storageUri"]
