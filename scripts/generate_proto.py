"""Regenerate the committed gRPC/protobuf Python code in latentserve/_proto from protos/.

Every .proto under protos/ is compiled (ours, the vendored Open Inference Protocol and
grpc_health/v1/health.proto). protoc writes absolute imports (``from latentserve.v1 import
autoencoder_pb2``) that would resolve to the wrong top-level package here, so imports of a
generated package are rewritten to relative ones.

The generator's version decides which protobuf and grpcio the stubs run on. GENERATOR pins
the oldest grpcio-tools whose output imports and round-trips on protobuf 5.26.1, 6.x and
7.x (tried in throwaway venvs; docs/serving.md has the table): 1.63.0, whose protoc writes
5.26.1 gencode without a runtime-version check, and whose _pb2_grpc.py wants grpcio >=
1.63.0. That grpcio-tools needs protobuf < 6, which the server's grpcio-health-checking
refuses, so it cannot sit in the dev venv: this script runs itself in a venv of its own
(created once under ~/.cache/latentserve/, reused after) unless the running Python already
has exactly GENERATOR.
Usage: python scripts/generate_proto.py [OUT_DIR]   (default: latentserve/_proto)
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GENERATOR = {
    "grpcio-tools": "1.63.0",
    "grpcio": "1.63.0",
    "protobuf": "5.26.1",
    "mypy-protobuf": "3.6.0",
}


def proto_files() -> list[str]:
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))


def _relative_imports(text: str, package: tuple[str, ...], generated: set[str]) -> str:
    """`from a.b import x` / `import a.b.x` of a generated package -> relative imports."""

    def relative(target: str) -> str:
        if tuple(target.split(".")) == package:
            return "."
        return "." * (len(package) + 1) + target  # up to OUT_DIR, then down

    def from_import(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.split(".")[0] not in generated:
            return match.group(0)
        return f"from {relative(target)} import"

    def plain_import(match: re.Match[str]) -> str:
        target, name = match.group(1), match.group(2)
        if target.split(".")[0] not in generated:
            return match.group(0)
        return f"from {relative(target)} import {name}"

    text = re.sub(r"^from ([\w.]+) import", from_import, text, flags=re.M)
    return re.sub(r"^import ([\w.]+)\.(\w+_pb2\w*)$", plain_import, text, flags=re.M)


def _has_generator() -> bool:
    try:
        return all(importlib.metadata.version(n) == v for n, v in GENERATOR.items())
    except importlib.metadata.PackageNotFoundError:
        return False


def _generator_python() -> Path:
    """The Python of a venv holding exactly GENERATOR, made on first use."""
    pins = [f"{n}=={v}" for n, v in sorted(GENERATOR.items())]
    key = hashlib.sha256(" ".join(pins).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env_dir = cache / "latentserve" / f"generate-proto-{key}"
    python = env_dir / "bin" / "python"
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    # Tests may run this twice at once: one creates the venv while the other waits.
    with open(env_dir.parent / f".{env_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (env_dir / "complete").exists():
            print(f"generate_proto: creating {env_dir} with {' '.join(pins)}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", "--clear", env_dir], check=True)
            subprocess.run([python, "-m", "pip", "install", "-q", *pins], check=True)
            (env_dir / "complete").touch()
    return python


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    protos = proto_files()
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = {p.split("/")[0] for p in protos}
    for path in sorted(p for p in out_dir.rglob("*.py*") if "__pycache__" not in p.parts):
        package = path.parent.relative_to(out_dir).parts
        text = path.read_text()
        path.write_text(_relative_imports(text, package, generated))
    for pkg in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (pkg / "__init__.py").touch()


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "latentserve" / "_proto"
    if _has_generator():
        generate(out_dir.resolve())
        return
    python = _generator_python()
    env = dict(os.environ)
    # protoc finds the mypy-protobuf plugins (protoc-gen-mypy) on PATH, beside that Python.
    env["PATH"] = str(python.parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    subprocess.run([python, __file__, str(out_dir.resolve())], check=True, env=env)


if __name__ == "__main__":
    main()
