"""Regenerate the committed gRPC/protobuf Python code in latentserve/_proto from protos/.

protoc writes absolute imports (``from latentserve.v1 import autoencoder_pb2``) that would
resolve to the wrong top-level package here, so they are rewritten to relative ones.
Usage: python scripts/generate_proto.py [OUT_DIR]   (default: latentserve/_proto)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTOS = ["latentserve/v1/autoencoder.proto", "inference/grpc_predict_v2.proto"]
# The proto packages above, as the dotted module paths protoc writes in absolute imports.
PACKAGES = r"(?:latentserve\.v1|inference)"


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in sorted(out_dir.rglob("*.py*")):
        text = path.read_text()
        fixed = re.sub(rf"^from {PACKAGES} import", "from . import", text, flags=re.M)
        fixed = re.sub(rf"^import {PACKAGES}\.(\w+)", r"from . import \1", fixed, flags=re.M)
        path.write_text(fixed)
    for pkg in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (pkg / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "latentserve" / "_proto")
