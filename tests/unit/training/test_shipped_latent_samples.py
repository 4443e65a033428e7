"""The shipped models' latent_sample.json (the explorer page's data) is complete, consistent
with its own PCA plane and small: 200 test digits per class, under 300 kB per model."""

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
    assert sample["count"] == 2000 and len(set(sample["test_index"])) == 2000
    assert np.bincount(sample["labels"], minlength=10).tolist() == [200] * 10
    latents = np.array(sample["latents"])
    assert latents.shape == (2000, manifest.latent_dim)
    if manifest.latent_dim == 2:
        assert sample["pca"] is None
        return
    pca = sample["pca"]
    projected = (latents - np.array(pca["mean"])) @ np.array(pca["components"]).T
    np.testing.assert_allclose(np.array(pca["points"]), projected, atol=1e-3)
