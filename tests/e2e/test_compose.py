"""The docker-compose deployment, end to end in a real Docker daemon.

Builds the service image through docker-compose.yml, starts the stack with the host-network
override on fresh ports, waits for Docker's HEALTHCHECK (gRPC health) to say healthy, calls
Encode, Decode and SampleRandom from the host with the real client and compares them with
in-process onnxruntime on the same model folders, opens the explorer page and calls v2 REST on
the HTTP port, reads the Prometheus endpoint, stops the service with `compose stop` (SIGTERM)
and checks its clean exit. Stacks are always torn down.

These stacks run on the host network (no bridge network here), so the server's own ports are
the host's; which ports the default (bridge) setup publishes is checked against the server's
ports by tests/unit/test_docs_deploy_commands.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from docker_stack import REPO, SERVICE, ComposeStack, StackFactory, run, scrape
from fixtures.reference import Reference
from prometheus_client.parser import text_string_to_metric_families

from latentserve.client import LatentClient, LatentServeError, TlsConfig
from latentserve.manifest import MANIFEST_FILE

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

# Same onnxruntime build on both sides; the margin covers thread-count dependent summation.
ATOL = 1e-5
STOP_GRACE_S = 30  # stop_grace_period in docker-compose.yml: Docker kills after this


def shipped_models() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "models").glob(f"*/{MANIFEST_FILE}"))


def readable_copy(source: Path, dest: Path) -> Path:
    """Copy a folder for bind-mounting: the container runs as a non-root uid."""
    shutil.copytree(source, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """cert.pem / key.pem for localhost and 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(mode=0o755)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for path in (cert_file, key_file):
        path.chmod(0o644)  # read by the container's uid 10001; a throwaway test key
    return cert_file, key_file


def images(n: int, seed: int, shape: tuple[int, ...] = (1, 28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def check_rpcs_match_onnxruntime(client: LatentClient, name: str, reference: Reference) -> None:
    """Encode, Decode and SampleRandom once each for one model, against onnxruntime."""
    shape = reference.manifest.image_shape
    batch = images(5, seed=len(name), shape=shape)
    encoded = client.encode(batch, model=name)
    expected = reference.encode(batch)
    assert encoded.model == name
    if reference.manifest.kind == "vae":
        assert encoded.log_var is not None
        np.testing.assert_allclose(encoded.latents, expected["mean"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(encoded.log_var, expected["log_var"], atol=ATOL, rtol=0)
    else:
        np.testing.assert_allclose(encoded.latents, expected["latents"], atol=ATOL, rtol=0)

    decoded = client.decode(encoded.latents, model=name)
    assert decoded.images.shape == (5, *shape)
    np.testing.assert_allclose(decoded.images, reference.decode(encoded.latents), atol=ATOL, rtol=0)

    sampled = client.sample(6, model=name, seed=1234, return_latents=True)
    assert sampled.seed == 1234 and sampled.latents is not None
    assert sampled.latents.shape == (6, *reference.manifest.latent_shape)
    np.testing.assert_allclose(sampled.images, reference.decode(sampled.latents), atol=ATOL, rtol=0)


def metric_values(text: str, family: str) -> dict[tuple[str, str], float]:
    """{(model, method): value} of one labelled counter in a Prometheus text exposition
    (summed over its other labels, such as the model version)."""
    values: dict[tuple[str, str], float] = {}
    for metrics in text_string_to_metric_families(text):
        for sample in metrics.samples:
            if sample.name == family:
                key = (sample.labels["model"], sample.labels["method"])
                values[key] = values.get(key, 0.0) + sample.value
    return values


def check_http_port(stack: ComposeStack, model: str, reference: Reference) -> None:
    """The explorer page and v2 REST answer from the host on the stack's HTTP port."""
    base = f"http://127.0.0.1:{stack.http_port}"
    page = scrape(f"{base}/")
    assert "<html" in page.lower() and "explorer" in page.lower(), page[:500]
    assert json.loads(scrape(f"{base}/v2"))["name"], "v2 server metadata"
    latents = [[0.5, -1.0]] if reference.manifest.latent_dim == 2 else None
    if latents is None:
        latents = [[0.1] * reference.manifest.latent_dim]
    body = {
        "inputs": [
            {
                "name": "latents",
                "datatype": "FP32",
                "shape": [1, len(latents[0])],
                "data": latents[0],
            }
        ]
    }
    answer = json.loads(
        scrape(f"{base}/v2/models/{model}-decoder/infer", data=json.dumps(body).encode())
    )
    (output,) = answer["outputs"]
    assert output["shape"] == [1, 1, 28, 28], output["shape"]
    expected = reference.decode(np.asarray(latents, np.float32))
    got = np.asarray(output["data"], np.float32).reshape(1, 1, 28, 28)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def stop_and_check_clean_exit(stack: ComposeStack) -> None:
    container = stack.container_id()
    started = time.monotonic()
    stack("stop", SERVICE, timeout=STOP_GRACE_S + 60)
    took = time.monotonic() - started
    state = json.loads(run(["docker", "inspect", "--format", "{{json .State}}", container]).stdout)
    logs = stack.logs()
    assert state["Status"] == "exited", state
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}\n{logs[-3000:]}"
    assert not state["OOMKilled"]
    # Exit code 0 well inside the grace period: the server drained on SIGTERM, not SIGKILL.
    assert took < STOP_GRACE_S, f"`compose stop` took {took:.1f}s"
    assert "shutting down" in logs and "stopped" in logs, logs[-3000:]


def test_service_image_has_no_torch_and_runs_as_non_root(service_image: str) -> None:
    def in_image(*cmd: str) -> tuple[int, str]:
        proc = run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "host",
                "--entrypoint",
                cmd[0],
                service_image,
                *cmd[1:],
            ],
            check=False,
        )
        return proc.returncode, proc.stdout + proc.stderr

    code, out = in_image("python", "-c", "import torch")
    assert code != 0 and "No module named 'torch'" in out, out
    # The failure above is torch's absence, not a broken interpreter: serving imports fine.
    code, out = in_image("python", "-c", "import onnxruntime, grpc, serving.process.server")
    assert code == 0, out
    code, out = in_image("id", "-u")
    assert code == 0 and out.strip() not in ("", "0"), f"runs as uid {out.strip()!r}"


@pytest.mark.skipif(not shipped_models(), reason="no shipped model folders in models/ yet")
def test_compose_stack_serves_the_shipped_models(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.up()
    stack.wait_healthy()
    container = stack.container_id()
    policy = run(
        ["docker", "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", container]
    ).stdout.strip()
    assert policy == "unless-stopped"

    names = shipped_models()
    with LatentClient(stack.target, timeout=60) as client:
        assert client.health() == "SERVING"
        served = {m.name: m.state for m in client.list_models()}
        assert served == dict.fromkeys(names, "READY")
        if "mnist-vae" in names:
            assert client.default_model() == "mnist-vae"
        for name in names:
            check_rpcs_match_onnxruntime(client, name, Reference(REPO / "models" / name))
    default_name = "mnist-vae" if "mnist-vae" in names else names[0]
    check_http_port(stack, default_name, Reference(REPO / "models" / default_name))

    sampled = stack(
        "exec",
        "-T",
        SERVICE,
        "latent-client",
        "sample",
        "--count",
        "16",
        "--seed",
        "0",
        "--out",
        "/tmp/samples.png",
    ).stdout
    assert "sampled 16 images" in sampled and "wrote a grid of 16 images" in sampled, sampled

    text = scrape(f"http://127.0.0.1:{stack.metrics_port}/metrics")
    requests = metric_values(text, "latentserve_requests_total")
    default = names[0] if "mnist-vae" not in names else "mnist-vae"
    for name in names:
        for method in ("Encode", "Decode", "SampleRandom"):
            # The in-container `latent-client sample` above used the default model.
            calls = 2.0 if (name, method) == (default, "SampleRandom") else 1.0
            assert requests.get((name, method)) == calls, (name, method, requests)

    stop_and_check_clean_exit(stack)


def test_mounted_models_folder_replaces_the_baked_in_ones(
    stack_factory: StackFactory, tiny_models_dir: Path, tmp_path: Path
) -> None:
    mounted = readable_copy(tiny_models_dir, tmp_path / "my-models")

    stack = stack_factory(LATENTSERVE_MODELS=str(mounted), LATENTSERVE_DEFAULT_MODEL="tiny-vae")
    stack.up()
    stack.wait_healthy()
    with LatentClient(stack.target, timeout=60) as client:
        assert sorted(m.name for m in client.list_models()) == sorted(
            p.name for p in tiny_models_dir.iterdir()
        )
        assert client.default_model() == "tiny-vae"
        for name in ("tiny-ae", "tiny-vae"):
            check_rpcs_match_onnxruntime(client, name, Reference(mounted / name))
    check_http_port(stack, "tiny-vae", Reference(mounted / "tiny-vae"))

    # The documented in-container client call (docs/deployment.md) reaches the server.
    listed = stack("exec", "-T", SERVICE, "latent-client", "models").stdout
    assert "tiny-vae" in listed and "READY" in listed, listed

    # The models volume is mounted read-only.
    probe = run(["docker", "exec", stack.container_id(), "touch", "/models/probe"], check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr
    assert not (mounted / "probe").exists()

    stop_and_check_clean_exit(stack)


def test_tls_and_token_deployment(
    stack_factory: StackFactory, tiny_models_dir: Path, tmp_path: Path
) -> None:
    """TLS and a bearer token switched on through a compose override: the HEALTHCHECK still
    gets through (TLS-aware probe; health needs no token), clients need both."""
    models = readable_copy(tiny_models_dir, tmp_path / "models")
    cert, _ = self_signed_certificate(tmp_path / "certs")
    token = secrets.token_hex(16)
    override = tmp_path / "tls.yml"
    override.write_text(
        "services:\n"
        "  latentserve:\n"
        "    environment:\n"
        "      LATENTSERVE_TLS_CERT_FILE: /certs/cert.pem\n"
        "      LATENTSERVE_TLS_KEY_FILE: /certs/key.pem\n"
        f"      LATENTSERVE_AUTH_TOKEN: {token}\n"
        "    volumes:\n"
        f"      - {tmp_path / 'certs'}:/certs:ro\n"
    )
    stack = stack_factory(LATENTSERVE_MODELS=str(models))
    stack.files = (*stack.files, str(override))
    stack.up()
    stack.wait_healthy()

    tls = TlsConfig.from_files(ca=cert)
    reference = Reference(models / "tiny-vae")
    with LatentClient(stack.target, timeout=60, tls=tls, token=token) as client:
        sampled = client.sample(4, model="tiny-vae", seed=3, return_latents=True)
        assert sampled.latents is not None
        np.testing.assert_allclose(
            sampled.images, reference.decode(sampled.latents), atol=ATOL, rtol=0
        )
    with LatentClient(stack.target, timeout=10, tls=tls) as no_token:
        with pytest.raises(LatentServeError) as refused:
            no_token.sample(1, model="tiny-vae")
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    with LatentClient(stack.target, timeout=5) as plaintext:
        with pytest.raises(LatentServeError) as refused:
            plaintext.health()
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE

    # Inside the container the client finds the token in LATENTSERVE_AUTH_TOKEN.
    listed = stack(
        "exec", "-T", SERVICE, "latent-client", "--tls-ca", "/certs/cert.pem", "models"
    ).stdout
    assert "tiny-vae" in listed and "READY" in listed, listed

    stop_and_check_clean_exit(stack)
