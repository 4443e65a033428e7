"""The committed gRPC stubs are exactly what scripts/generate_proto.py produces from protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        timeout=120,
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
