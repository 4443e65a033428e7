"""h2load (Debian's nghttp2-client) as a gRPC load generator: a C HTTP/2 client that costs
the machine's cores almost nothing, so what the server spends is what gets measured.

A gRPC call is a POST with ``content-type: application/grpc``, ``te: trailers`` and a body
of 1 flag byte + a 4-byte big-endian length + the serialized request. h2load cannot read
gRPC trailers: its 2xx count is not a count of gRPC OKs, so callers count errors from the
server's own metrics.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

RATE = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
DONE = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded")


def available() -> bool:
    return shutil.which("h2load") is not None


@dataclass(frozen=True)
class H2loadResult:
    calls_per_s: float  # over the measured duration, warm-up excluded
    succeeded: int  # HTTP/2 responses with a 2xx status (not the same as gRPC OK)


def run(
    target: str,
    method: str,
    message: bytes,
    *,
    streams: int,
    connections: int,
    warmup_s: float,
    duration_s: float,
) -> H2loadResult:
    """`streams` concurrent calls of `method` (a path like "/grpc.health.v1.Health/Check")
    on `target` (host:port), spread over `connections`, for `duration_s` after `warmup_s`."""
    connections = max(1, min(connections, streams))
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        body.write(b"\0" + struct.pack(">I", len(message)) + message)
        body.flush()
        command = [
            "h2load",
            "-c", str(connections),
            "-m", str(max(1, streams // connections)),
            # h2load takes whole numbers with a unit.
            "-D", f"{round(duration_s * 1000)}ms",
            "--warm-up-time", f"{round(warmup_s * 1000)}ms",
            "-d", body.name,
            "-H", "content-type: application/grpc",
            "-H", "te: trailers",
            f"http://{target}{method}",
        ]  # fmt: skip
        ran = subprocess.run(
            command, capture_output=True, text=True, timeout=warmup_s + duration_s + 60
        )
    rate, done = RATE.search(ran.stdout), DONE.search(ran.stdout)
    if rate is None or done is None:
        raise RuntimeError(f"unexpected h2load output:\n{ran.stdout}\n{ran.stderr}")
    return H2loadResult(float(rate.group(1)), int(done.group(2)))
