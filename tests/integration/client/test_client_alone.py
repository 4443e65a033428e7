"""`pip install latentserve` with no extra is a working client, on the oldest protobuf and
grpcio it claims (pyproject.toml's lower bounds), against a real server from the main venv.

The slow tests build the project's wheel, install it into a fresh venv with those oldest
versions pinned by a constraints file (pip's cache makes repeat runs quick), check that no
server dependency came along, and run client_alone_calls.py and `latent-client` there. The
fast test imports the client in this venv with every server-only module blocked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
CALLS = Path(__file__).with_name("client_alone_calls.py")
SERVER_ONLY = (
    "onnxruntime",
    "PIL",
    "pydantic",
    "pydantic_settings",
    "grpc_health",
    "prometheus_client",
)


def oldest_supported() -> dict[str, str]:
    """The lower bounds of the base dependencies on protobuf and grpcio, from pyproject."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        match = re.match(r"(protobuf|grpcio)\s*>=\s*([\w.]+)", dep)
        if match:
            found[match.group(1)] = match.group(2)
    assert set(found) == {"protobuf", "grpcio"}, deps
    return found


def test_client_modules_import_without_server_dependencies():
    # A finder that refuses server-only packages, first on sys.meta_path: importing the
    # client or its CLI must not need any of them (nor serving/ or the manifest).
    code = f"""
import sys
BLOCKED = {(*SERVER_ONLY, "serving", "training")!r}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name == "latentserve.manifest":
            raise ImportError(f"client imported server-only module {{name}}")
sys.meta_path.insert(0, Refuse())
import latentserve.client, latentserve.cli
latentserve.cli.build_parser()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("client-alone")
    pip = [sys.executable, "-m", "pip"]
    # This venv's setuptools builds the wheel (no isolated build env to download).
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = work.glob("latentserve-*.whl")
    constraints = work / "oldest.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in oldest_supported().items()))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)],
        check=True,
        timeout=600,
    )
    yield venv


def venv_run(venv: Path, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LATENTSERVE_TARGET")}
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=venv.parent,
        check=check,
    )


@pytest.mark.slow
def test_client_venv_has_only_numpy_grpcio_protobuf(client_venv):
    code = f"""
import importlib.metadata as md, importlib.util, json
print(json.dumps({{n: md.version(n) for n in ("protobuf", "grpcio")}}))
print(json.dumps(sorted(n for n in {SERVER_ONLY!r} if importlib.util.find_spec(n) is not None)))
"""
    out = venv_run(client_venv, client_venv / "bin" / "python", "-c", code).stdout.splitlines()
    versions, present = (json.loads(line) for line in out)
    assert versions == oldest_supported()
    assert present == [], f"server dependencies installed with the client: {present}"


@pytest.mark.slow
def test_client_library_alone(client_venv, server):
    result = venv_run(
        client_venv, client_venv / "bin" / "python", CALLS, server.target, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "client alone OK" in result.stdout


@pytest.mark.slow
def test_latent_client_alone(client_venv, server, tmp_path):
    cli = client_venv / "bin" / "latent-client"

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return venv_run(client_venv, cli, "--target", server.target, *argv, check=False)

    assert run("health").stdout == "SERVING\n"
    models = run("models")
    assert models.returncode == 0 and "tiny-vae" in models.stdout
    npy = tmp_path / "s.npy"
    assert run("sample", "--count", "4", "--seed", "2", "--out", npy).returncode == 0
    assert np.load(npy).shape == (4, 1, 28, 28)
    digit = tmp_path / "digit.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(digit)
    encoded = run("encode", "--model", "tiny-ae", digit)
    assert encoded.returncode == 0 and "latents [" in encoded.stdout, encoded.stderr
    # Writing a PNG grid needs Pillow: a clear message naming the extra, before any call.
    png = run("sample", "--count", "4", "--out", tmp_path / "grid.png")
    assert png.returncode == 2 and 'pip install "latentserve[png]"' in png.stderr
    assert "Traceback" not in png.stderr and not (tmp_path / "grid.png").exists()
