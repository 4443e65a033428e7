"""The HTTP port's TLS, mutual TLS and queue-full answers, on a real server (127.0.0.1).

TLS uses the same --tls-* files as gRPC: HTTPS only, a client certificate required with a
client CA; a full graph queue answers 429 (retry later), not 413 (too large) or 500.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures.servers import InProcessServer, free_port
from fixtures.slow_model import build_slow_model_folder

READY = "/v2/health/ready"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue(
    folder: Path, name: str, issuer: tuple[x509.Certificate, Any] | None, ca: bool = False
) -> tuple[x509.Certificate, Any, Path, Path]:
    """A certificate for 127.0.0.1 (self-signed when `issuer` is None), written as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(signer_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem(key))
    return cert, key, cert_path, key_path


def get(url: str, context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_https_with_the_grpc_tls_files(tiny_models_dir: Path, tmp_path: Path) -> None:
    ca_cert, ca_key, ca_path, _ = issue(tmp_path, "ca", None, ca=True)
    _, _, cert, key = issue(tmp_path, "server", (ca_cert, ca_key))
    port = free_port()
    with InProcessServer(tiny_models_dir, http_port=port, tls_cert_file=cert, tls_key_file=key):
        trusting = ssl.create_default_context(cafile=str(ca_path))
        assert get(f"https://127.0.0.1:{port}{READY}", trusting) == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext
            get(f"http://127.0.0.1:{port}{READY}")
        with pytest.raises(urllib.error.URLError):  # an unknown CA is refused by the client
            get(f"https://127.0.0.1:{port}{READY}", ssl.create_default_context())


def test_mutual_tls_requires_a_client_certificate(tiny_models_dir: Path, tmp_path: Path) -> None:
    ca_cert, ca_key, ca_path, _ = issue(tmp_path, "ca", None, ca=True)
    _, _, cert, key = issue(tmp_path, "server", (ca_cert, ca_key))
    _, _, client_cert, client_key = issue(tmp_path, "client", (ca_cert, ca_key))
    port = free_port()
    with InProcessServer(
        tiny_models_dir,
        http_port=port,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_client_ca_file=ca_path,
    ):
        anonymous = ssl.create_default_context(cafile=str(ca_path))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(f"https://127.0.0.1:{port}{READY}", anonymous)
        known = ssl.create_default_context(cafile=str(ca_path))
        known.load_cert_chain(client_cert, client_key)
        assert get(f"https://127.0.0.1:{port}{READY}", known) == 200


def test_a_full_queue_answers_429(tmp_path: Path) -> None:
    """One slow 256-row decode holds the graph; with room for one waiting request, a burst
    of single-row requests behind it overflows the queue: some get 429 with a message, the
    rest are answered, none fails otherwise."""
    build_slow_model_folder(tmp_path, "slow", matmuls=100)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/slow-decoder/infer"

    def infer(rows: int) -> tuple[int, dict[str, Any]]:
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "latents",
                        "datatype": "FP32",
                        "shape": [rows, 2],
                        "data": [0.0] * 2 * rows,
                    }
                ]
            }
        ).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as r:
                return int(r.status), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), json.loads(e.read())

    with InProcessServer(tmp_path, http_port=port, max_queue=1) as server:
        answers: list[tuple[int, dict[str, Any]]] = []
        slow = threading.Thread(target=lambda: answers.append(infer(256)))
        slow.start()
        while server.server.calls.in_flight == 0:
            threading.Event().wait(0.005)
        threading.Event().wait(0.05)
        burst = [threading.Thread(target=lambda: answers.append(infer(1))) for _ in range(6)]
        for thread in burst:
            thread.start()
        for thread in [slow, *burst]:
            thread.join(120)
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) <= {200, 429} and 429 in statuses and statuses.count(200) >= 2, answers
    refused = [body["error"] for status, body in answers if status == 429]
    assert all("queue" in message for message in refused), refused
