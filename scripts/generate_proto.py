"""Regenerate the committed gRPC/protobuf Python code in latentserve/_proto from protos/.

Every .proto under protos/ is compiled (ours and the vendored grpc_health/v1/health.proto).
protoc writes absolute imports (``from latentserve.v1 import autoencoder_pb2``) that would
resolve to the wrong top-level package here, so imports of a generated package are
rewritten to relative ones.

The generator's version decides which protobuf and grpcio the stubs run on, so it is pinned
in the dev extra (see pyproject.toml for the range verified). Needs grpcio-tools and
mypy-protobuf (protoc-gen-mypy on PATH).
Usage: python scripts/generate_proto.py [OUT_DIR]   (default: latentserve/_proto)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


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


def generate(out_dir: Path) -> None:
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


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "latentserve" / "_proto")
