"""Start-up checks: a configuration the server cannot run with stops it before anything else
starts, with one log line that says what is wrong and how to fix it, and exit code 2.

The checks run in the process that `latent-serve` started, before any gRPC object, model or
worker exists:

- the models folder exists (an explicit `--models-dir` that is not there is a typo, not an
  empty server);
- every port the server will listen on (gRPC, metrics, HTTP) is free. grpc turns
  SO_REUSEPORT on by default, so binding the gRPC port itself would silently share it with
  another server already on it; the check is a plain bind with SO_REUSEADDR only, which fails
  on any socket listening there (or bound there without SO_REUSEADDR, like the supervisor's
  port reservation) and passes over connections left in TIME_WAIT by a previous run.

A models folder with no servable model is refused too, but only once the models have been
loaded (the hashes and graphs are checked then): see `NO_MODEL_FIX`.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from serving.process.settings import ServerSettings, flag_name

EXIT_STARTUP_ERROR = 2

NO_MODEL_FIX = (
    "pass --models-dir (LATENTSERVE_MODELS_DIR) a folder holding at least one valid model "
    "folder (model.json, encoder.onnx, decoder.onnx, as latent-train export writes them), or "
    "leave it unset to serve the shipped models; each refused folder is logged above with "
    "its reason"
)


class StartupError(Exception):
    """The server cannot start with this configuration; the message names the fix."""


def check_startup(settings: ServerSettings) -> None:
    """Raise StartupError for the first thing that would keep the server from starting."""
    check_models_dir(settings.models_dir)
    for field, what in listening_ports(settings):
        check_port_free(settings.host, getattr(settings, field), what, flag_name(field))


def listening_ports(settings: ServerSettings) -> list[tuple[str, str]]:
    """(settings field, what it is) for each port the server listens on; 0 = off or any."""
    candidates = [("port", "gRPC"), ("metrics_port", "metrics"), ("http_port", "HTTP")]
    return [(f, what) for f, what in candidates if getattr(settings, f, 0)]


def check_models_dir(folder: Path) -> None:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise StartupError(
            f"models folder {folder} {what}: pass --models-dir (LATENTSERVE_MODELS_DIR) a "
            "folder holding one folder per model, or leave it unset to serve the shipped models"
        )


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """StartupError unless a plain bind (no SO_REUSEPORT) to host:port would succeed."""
    env = "LATENTSERVE_" + flag.removeprefix("--").replace("-", "_").upper()
    for family, address in bind_addresses(host, port):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"{what} port {port} on {host} is already in use by another process "
                        f"(another latent-serve?): stop it, or pass {flag} ({env}) a free port"
                    ) from None
                if e.errno == errno.EACCES:
                    raise StartupError(
                        f"{what} port {port} on {host}: permission denied (ports below 1024 "
                        f"need privileges): pass {flag} ({env}) a port above 1023"
                    ) from None
                if e.errno == errno.EADDRNOTAVAIL:
                    continue  # e.g. ::1 on a host without IPv6; grpc skips it too
                raise StartupError(
                    f"cannot bind {what} port {port} on {host} ({e.strerror}): check --host "
                    f"(LATENTSERVE_HOST) and {flag} ({env})"
                ) from None


def bind_addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    """The (family, sockaddr) pairs a server bound to host:port listens on."""
    name = host.strip("[]") or None
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError(
            f"cannot resolve host {host!r} ({e.strerror}): pass --host (LATENTSERVE_HOST) an "
            "address of this machine, e.g. 0.0.0.0 or 127.0.0.1"
        ) from None
    seen: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
    for family, _, _, _, sockaddr in infos:
        pair = (family, (str(sockaddr[0]), int(sockaddr[1])))
        if pair not in seen:
            seen.append(pair)
    return seen
