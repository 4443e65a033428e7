"""The committed gRPC stubs are exactly what scripts/generate_proto.py produces from protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "latentserve" / "_proto"


def test_regenerating_the_stubs_changes_nothing(tmp_path):
    env = dict(os.environ)
    # protoc finds the mypy-protobuf plugins (protoc-gen-mypy) on PATH, beside this Python.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), str(tmp_path)],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=300,  # the first run creates the generator venv (scripts/generate_proto.py)
    )

    def files(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): p.read_text()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }

    generated, committed = files(tmp_path), files(COMMITTED)
    assert sorted(generated) == sorted(committed)
    changed = [name for name in generated if generated[name] != committed[name]]
    assert not changed, f"stale generated code, run scripts/generate_proto.py: {changed}"


def test_vendored_health_proto_is_the_one_grpcio_health_checking_registers():
    # Both register grpc_health/v1/health.proto in protobuf's default pool: identical
    # files are accepted twice, differing ones would fail to import in a process that
    # loads the server (grpcio-health-checking) and the client (the vendored copy).
    grpc_health = pytest.importorskip("grpc_health.v1.health_pb2")
    from latentserve._proto.grpc_health.v1 import health_pb2 as vendored

    assert vendored.DESCRIPTOR.name == grpc_health.DESCRIPTOR.name
    assert vendored.DESCRIPTOR.serialized_pb == grpc_health.DESCRIPTOR.serialized_pb
    assert vendored.HealthCheckRequest is grpc_health.HealthCheckRequest
