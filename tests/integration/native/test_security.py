"""Optional TLS, mutual TLS and bearer-token auth, with certificates generated in the test.

Each part is checked from both sides: the right credentials work (and give the same images
as ever), every wrong or missing one is refused with the status a client can act on, and
health stays open to probes without a token.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fixtures.servers import InProcessServer, SubprocessServer
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from pydantic import ValidationError

from latentserve.client import LatentClient, LatentServeError, TlsConfig
from serving.process.settings import ServerSettings

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
TOKEN = "s3cret-token-for-tests"


# -- a throwaway PKI ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: bytes  # PEM
    key: bytes  # PEM

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A CA that issues server and client certificates, valid for one hour."""

    def __init__(self, name: str) -> None:
        self.key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = Authority("latentserve test CA"), Authority("somebody else's CA")
    server_cert, server_key = ca.issue("localhost", server=True).write(folder, "server")
    (folder / "ca.pem").write_bytes(ca.pem)
    return {
        "folder": folder,
        "ca": ca,
        "rogue": rogue,
        "server_cert": server_cert,
        "server_key": server_key,
        "client": ca.issue("good client", server=False),
        "rogue_client": rogue.issue("rogue client", server=False),
    }


def expect_refused(code: grpc.StatusCode, client: LatentClient, fragment: str = "") -> str:
    with pytest.raises(LatentServeError) as info:
        client.sample(2, seed=1)
    assert info.value.code == code, info.value
    assert fragment in info.value.message, info.value.message
    return info.value.message


def sample_ok(client: LatentClient) -> np.ndarray:
    images = client.sample(3, seed=42, model="tiny-vae").images
    assert images.shape == (3, 1, 28, 28)
    return images


# -- TLS ----------------------------------------------------------------------------------------


def test_tls_server(tiny_models_dir, pki):
    with InProcessServer(
        tiny_models_dir, tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"]
    ) as running:
        target = running.target
        with LatentClient(target, tls=TlsConfig(root_certificates=pki["ca"].pem)) as good:
            images = sample_ok(good)
            assert good.health() == "SERVING"
        # The name checked can be overridden (e.g. connecting through an IP or a tunnel).
        named = TlsConfig.from_files(ca=pki["folder"] / "ca.pem", server_name="localhost")
        with LatentClient(target, tls=named) as good_by_name:
            np.testing.assert_array_equal(sample_ok(good_by_name), images)
        # Plaintext to a TLS port, or TLS trusting another CA: no connection at all.
        with LatentClient(target, timeout=5) as plaintext:
            expect_refused(UNAVAILABLE, plaintext)
        with LatentClient(
            target, timeout=5, tls=TlsConfig(root_certificates=pki["rogue"].pem)
        ) as untrusting:
            expect_refused(UNAVAILABLE, untrusting)


def test_mutual_tls(tiny_models_dir, pki):
    with InProcessServer(
        tiny_models_dir,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["folder"] / "ca.pem",
    ) as running:
        ca = pki["ca"].pem
        client, rogue = pki["client"], pki["rogue_client"]
        with LatentClient(
            running.target, tls=TlsConfig(ca, client.cert, client.key)
        ) as with_certificate:
            sample_ok(with_certificate)
        for tls in (
            TlsConfig(ca),  # no client certificate
            TlsConfig(ca, rogue.cert, rogue.key),  # signed by a CA the server does not trust
        ):
            with LatentClient(running.target, timeout=5, tls=tls) as refused:
                expect_refused(UNAVAILABLE, refused)


# -- token auth -----------------------------------------------------------------------------------


def test_bearer_token(tiny_models_dir, tmp_path):
    token_file = tmp_path / "tokens"
    # Two tokens: rotation means adding the new one before removing the old.
    token_file.write_text("# accepted tokens\nold-token\n\n  new-token  \n")
    with InProcessServer(tiny_models_dir, auth_token=TOKEN, auth_token_file=token_file) as running:
        target = running.target
        for token in (TOKEN, "old-token", "new-token"):
            with LatentClient(target, token=token) as allowed:
                sample_ok(allowed)
                assert allowed.get_model("tiny-vae").state == "READY"
        with LatentClient(target) as anonymous:
            message = expect_refused(UNAUTHENTICATED, anonymous, "authorization: Bearer")
            assert "missing" in message
            # Health is exempt: probes carry no token.
            assert anonymous.health() == "SERVING"
            assert anonymous.health("tiny-vae") == "SERVING"
            with pytest.raises(LatentServeError) as info:
                anonymous.list_models()
            assert info.value.code == UNAUTHENTICATED
        for wrong in ("s3cret", TOKEN + "x", "# accepted tokens", " "):
            with LatentClient(target, token=wrong) as impostor:
                expect_refused(UNAUTHENTICATED, impostor)
        with grpc.insecure_channel(target) as channel:
            # Not a bearer token, and a garbage body: refused before the body is parsed.
            call = channel.unary_unary("/latentserve.v1.Autoencoder/Decode")
            for metadata in ((("authorization", f"Basic {TOKEN}"),), None):
                with pytest.raises(grpc.RpcError) as raw:
                    call(b"\xff garbage", timeout=5, metadata=metadata)
                assert raw.value.code() == UNAUTHENTICATED
            # Reflection describes the API, so it needs the token too.
            with pytest.raises(grpc.RpcError) as raw:
                ProtoReflectionDescriptorDatabase(channel).get_services()
            assert raw.value.code() == UNAUTHENTICATED
            stream = channel.unary_stream("/latentserve.v1.Autoencoder/SampleRandomStream")
            with pytest.raises(grpc.RpcError) as raw:
                list(stream(b"\x10\x05", timeout=5))
            assert raw.value.code() == UNAUTHENTICATED


def test_settings_refuse_half_configured_security(tmp_path, pki):
    base = {"models_dir": tmp_path}
    with pytest.raises(ValidationError, match="given together"):
        ServerSettings(**base, tls_cert_file=pki["server_cert"])
    with pytest.raises(ValidationError, match="needs tls_cert_file"):
        ServerSettings(**base, tls_client_ca_file=pki["folder"] / "ca.pem")
    with pytest.raises(ValidationError, match="tls_cert_file"):
        ServerSettings(**base, tls_cert_file=tmp_path / "absent.pem", tls_key_file=tmp_path)
    empty = tmp_path / "tokens"
    empty.write_text("# nothing here yet\n\n")
    with pytest.raises(ValidationError, match="holds no token"):
        ServerSettings(**base, auth_token_file=empty)
    with pytest.raises(ValueError, match="needs its key"):
        TlsConfig.from_files(ca=pki["folder"] / "ca.pem", cert=pki["server_cert"])


def test_latent_serve_with_tls_flags_and_token_from_environment(tiny_models_dir, pki):
    """The real command line: TLS from flags, the token from LATENTSERVE_AUTH_TOKEN."""
    proc = SubprocessServer(
        tiny_models_dir,
        [
            "--tls-cert-file",
            str(pki["server_cert"]),
            "--tls-key-file",
            str(pki["server_key"]),
        ],
        env={"LATENTSERVE_AUTH_TOKEN": TOKEN},
    ).start()
    try:
        line = proc.wait_for_log("listening on")
        assert "TLS" in line and "bearer token auth on" in line and TOKEN not in line
        proc.wait_for_log("ready: serving")
        tls = TlsConfig(root_certificates=pki["ca"].pem)
        with LatentClient(proc.target, tls=tls, token=TOKEN) as client:
            sample_ok(client)
        with LatentClient(proc.target, tls=tls) as anonymous:
            expect_refused(UNAUTHENTICATED, anonymous)
            assert anonymous.health() == "SERVING"
        proc.terminate()
        assert proc.wait(30) == 0
        assert not any(TOKEN in line for line in proc.lines), "the token must never be logged"
    finally:
        proc.stop()


def test_latent_client_tls_and_token_options(tiny_models_dir, pki, tmp_path, monkeypatch, capsys):
    from latentserve.cli import main as client_main

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    client = pki["client"]
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    cert.write_bytes(client.cert)
    key.write_bytes(client.key)
    with InProcessServer(
        tiny_models_dir,
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["folder"] / "ca.pem",
        auth_token=TOKEN,
    ) as running:
        tls = [
            "--target",
            running.target,
            "--tls-ca",
            str(pki["folder"] / "ca.pem"),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ]
        monkeypatch.delenv("LATENTSERVE_AUTH_TOKEN", raising=False)
        assert client_main([*tls, "health"]) == 0  # health needs no token
        assert client_main([*tls, "models"]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert client_main([*tls, "--token-file", str(token_file), "models"]) == 0
        assert "tiny-vae" in capsys.readouterr().out
        monkeypatch.setenv("LATENTSERVE_AUTH_TOKEN", TOKEN)
        assert client_main([*tls, "sample", "--count", "2", "--seed", "1"]) == 0
        assert "sampled 2 images" in capsys.readouterr().out
        # Without the client certificate the TLS handshake fails: UNAVAILABLE, exit 1.
        assert client_main([*tls[:4], "--timeout", "5", "models"]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err
