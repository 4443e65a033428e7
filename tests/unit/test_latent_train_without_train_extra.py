"""`latent-train fit|export|analyze` in an install without the train extra (a serve-only
install: no torch, onnx, matplotlib, ...) print one line naming the extra and the command to
install it, with the CPU wheel index, and exit 2: no ModuleNotFoundError traceback.

The missing packages are made missing for real: a sitecustomize on PYTHONPATH makes every
import of them fail in the `latent-train` process, as in an environment without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import TRAIN_EXTRA_MODULES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "latent-train"

BLOCKER = f"""
import importlib.abc, sys

class TrainExtraMissing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {sorted(TRAIN_EXTRA_MODULES)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, TrainExtraMissing())
"""


def latent_train(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    env.pop("LATENTSERVE_DATA_DIR", None)
    return subprocess.run(
        [str(SCRIPT), *argv], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )


def test_the_blocker_really_hides_torch(tmp_path):
    site = tmp_path / "site"
    latent_train(tmp_path, "--help")
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env
    )
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("fit", "--kind", "vae", "--out", "runs/my-vae"),
        ("export", "runs/my-vae", "--out", "models/my-vae"),
        ("analyze", str(ROOT / "models" / "mnist-vae")),
    ],
    ids=lambda argv: argv[0],
)
def test_training_commands_name_the_extra_in_one_line(tmp_path, argv):
    result = latent_train(tmp_path, *argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"latent-train {argv[0]} needs "), line
    assert 'pip install "latentserve[train]"' in line
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in line
    if argv[0] == "fit":
        assert "needs PyTorch" in line
    assert result.stdout == ""


def test_data_works_without_the_extra(tmp_path):
    """`latent-train data` needs numpy only: its own error (no data here), not the extra's."""
    result = latent_train(tmp_path, "data", "--offline")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--data-dir" in result.stderr and "train extra" not in result.stderr
