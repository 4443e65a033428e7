"""Every port the server listens on: resolving the host, checking a port is free, reserving
a port for the workers, binding a listening socket, and the one error text for each failure.

grpc turns SO_REUSEPORT on by default, so binding the gRPC port itself would silently share
it with another server already on it. The start-up check is a plain bind with SO_REUSEADDR
only, which fails on any socket listening there (or bound there without SO_REUSEADDR, like the
supervisor's reservation) and passes over connections left in TIME_WAIT by a previous run.
"""

from __future__ import annotations

import errno
import socket

from serving.process.settings import StartupError, flag_name

Address = tuple[socket.AddressFamily, tuple[str, int]]

# Which flag sets each port, and what a user calls it.
PORTS = {"port": "gRPC", "metrics_port": "metrics", "http_port": "HTTP"}


def port_error(field: str, host: str, port: int, error: OSError | None = None) -> StartupError:
    """The one message for a port the server cannot listen on, naming the flag to change."""
    what, flag = PORTS[field], flag_name(field)
    env = "LATENTSERVE_" + field.upper()
    code = error.errno if error is not None else errno.EADDRINUSE
    if code == errno.EACCES:
        return StartupError(
            f"{what} port {port} on {host}: permission denied (ports below 1024 need "
            f"privileges): pass {flag} ({env}) a port above 1023"
        )
    if code == errno.EADDRINUSE:
        off = "" if field == "port" else ", or 0 to turn it off"
        return StartupError(
            f"{what} port {port} on {host} is already in use by another process (another "
            f"latent-serve?): stop it, or pass {flag} ({env}) a free port{off}"
        )
    reason = f" ({error.strerror})" if error is not None else ""
    return StartupError(
        f"cannot bind {what} port {port} on {host}{reason}: check --host (LATENTSERVE_HOST) "
        f"and {flag} ({env})"
    )


def bind_addresses(host: str, port: int) -> list[Address]:
    """The (family, sockaddr) pairs a server bound to host:port listens on."""
    name = host.strip("[]") or None
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError(
            f"cannot resolve host {host!r} ({e.strerror}): pass --host (LATENTSERVE_HOST) an "
            "address of this machine, e.g. 0.0.0.0 or 127.0.0.1"
        ) from None
    seen: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        pair = (family, (str(sockaddr[0]), int(sockaddr[1])))
        if pair not in seen:
            seen.append(pair)
    return seen


def check_port_free(host: str, port: int, field: str) -> None:
    """StartupError unless a plain bind (no SO_REUSEPORT) to host:port would succeed."""
    for family, address in bind_addresses(host, port):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    continue  # e.g. ::1 on a host without IPv6; grpc skips it too
                raise port_error(field, host, port, e) from None


def reserve_port(host: str, port: int, field: str) -> socket.socket:
    """A socket bound (not listening) to host:port with SO_REUSEPORT only: our workers join
    the port, a plain bind by anyone else fails; with port 0 it picks the shared port."""
    family, address = bind_addresses(host, port)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise port_error(field, host, port, e) from None
    return sock


def listening_socket(host: str, port: int, field: str, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket on host:port (0 = any free port). With
    `reuse_port`, worker processes of one server share the port (the kernel spreads
    connections); without it a port already in use is a StartupError."""
    family, address = bind_addresses(host, port)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise port_error(field, host, port, e) from None
    return sock
