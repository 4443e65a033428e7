"""The server's layers, read from the code: serving/ runs without torch, the core knows no
protocol, and no server module reaches into the benchmarks (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVING = ROOT / "serving"
# What only a protocol edge may import: the gRPC server API, the HTTP stack, the wire types.
PROTOCOL_ONLY = ("grpc.aio", "aiohttp", "latentserve._proto", "serving.protocols")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import; the layers use absolute ones"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_core_imports_no_protocol():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            n for n in imported_modules(path) if any(_under(n, p) for p in PROTOCOL_ONLY)
        )
        for path in sorted((SERVING / "core").rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_server_module_imports_the_benchmarks_or_training():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            n
            for n in imported_modules(path)
            if _under(n, "latentbench") or _under(n, "training") or _under(n, "torch")
        )
        for path in sorted(SERVING.rglob("*.py"))
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_serving_runs_without_torch():
    code = (
        "import sys, serving.process.server, serving.process.cli, serving.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'training', 'latentbench'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_serve_extra_has_no_torch():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not [d for d in extras["serve"] if d.lower().startswith("torch")]
