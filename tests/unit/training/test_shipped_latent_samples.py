"""The shipped models' latent_sample.json (the explorer page's data) is complete, consistent
with its own PCA plane and small: up to 200 test images per class (MNIST: 200 of each digit),
under 300 kB per model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latentserve.manifest import load_model_folder

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
FOLDERS = sorted(p for p in MODELS_DIR.glob("*") if (p / "model.json").is_file())


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_shipped_latent_sample(folder: Path) -> None:
    path = folder / "latent_sample.json"
    assert path.stat().st_size < 300_000
    manifest = load_model_folder(folder)
    sample = json.loads(path.read_text())
    assert (sample["model"], sample["latent_dim"]) == (manifest.name, manifest.latent_dim)
    per_class = np.bincount(sample["labels"])
    count = sample["count"]
    assert count == len(set(sample["test_index"])) == per_class.sum() and per_class.max() <= 200
    if "classes" in sample:  # an image folder's model: its class names label the points
        assert len(sample["classes"]) >= len(per_class) and count >= 300
    else:  # MNIST: 200 of each digit
        assert per_class.tolist() == [200] * 10
    latents = np.array(sample["latents"])
    assert latents.shape == (count, manifest.latent_dim)
    if manifest.latent_dim == 2:
        assert sample["pca"] is None
        return
    pca = sample["pca"]
    projected = (latents - np.array(pca["mean"])) @ np.array(pca["components"]).T
    np.testing.assert_allclose(np.array(pca["points"]), projected, atol=1e-3)
