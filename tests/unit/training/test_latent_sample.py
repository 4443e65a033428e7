"""latent_sample.json, the explorer page's data: a stratified, seeded sample of test digits
whose latents are the encoder's, whose PCA points lie on the analysis plane, and which stays
small enough to ship in every model folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from latentserve.manifest import LatentSpec, load_model_folder
from training.analyze import Plane
from training.data import Mnist, to_float
from training.graphs import ModelGraphs
from training.latent_sample import latent_sample, stratified_indices, write_latent_sample


def test_latents_are_the_encoders_and_pca_points_lie_on_the_plane(
    tiny_models_dir: Path, tiny_data: Mnist, tmp_path: Path
) -> None:
    graphs = ModelGraphs(tiny_models_dir / "tiny-vae-8")
    labels = tiny_data.test_labels.astype(np.int64)
    points = graphs.encode_points(to_float(tiny_data.test_images)).astype(np.float64)
    plane = Plane(points)
    contents = latent_sample(graphs.manifest, points, labels, plane, seed=0, per_class=5)
    saved = json.loads((tmp_path / write_latent_sample(tmp_path, contents)).read_text())

    index = np.array(saved["test_index"])
    assert saved["count"] == len(index) == len(set(index.tolist())) == 50
    assert np.bincount(saved["labels"], minlength=10).tolist() == [5] * 10
    assert saved["labels"] == labels[index].tolist()
    assert saved["latent"] == "encoder mean" and saved["latent_dim"] == 8
    latents = np.array(saved["latents"])
    np.testing.assert_allclose(latents, points[index], atol=5e-5, rtol=0)

    pca = saved["pca"]
    components, mean = np.array(pca["components"]), np.array(pca["mean"])
    assert components.shape == (2, 8) and 0 < pca["explained_variance_ratio"] <= 1
    np.testing.assert_allclose(np.array(pca["points"]), (latents - mean) @ components.T, atol=1e-3)
    np.testing.assert_allclose(np.array(pca["points"]), plane.project(points[index]), atol=5e-5)


def test_a_2d_latent_is_its_own_plane(tiny_models_dir: Path, tiny_data: Mnist) -> None:
    manifest = load_model_folder(tiny_models_dir / "tiny-ae")
    points = np.random.default_rng(0).standard_normal((120, 2))
    contents = latent_sample(manifest, points, tiny_data.test_labels, Plane(points), seed=0)
    assert contents["pca"] is None and contents["latent"] == "encoder output"
    # Fewer than 200 of a digit: all of them.
    assert contents["count"] == len(tiny_data.test_labels)


def test_same_seed_same_sample_and_no_digit_painted_last() -> None:
    labels = np.repeat(np.arange(10), 300)
    a, b = stratified_indices(labels, 200, seed=1), stratified_indices(labels, 200, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, stratified_indices(labels, 200, seed=2))
    assert len(set(labels[a[-200:]].tolist())) == 10  # shuffled, not grouped by digit


def test_a_16d_model_file_stays_under_300_kb(tiny_models_dir: Path, tmp_path: Path) -> None:
    manifest = load_model_folder(tiny_models_dir / "tiny-vae-8").model_copy(
        update={"latent": LatentSpec(shape=(16,))}
    )
    rng = np.random.default_rng(0)
    points = 1.5 * rng.standard_normal((10_000, 16))  # about the spread of a real VAE's means
    labels = rng.integers(0, 10, 10_000)
    contents = latent_sample(manifest, points, labels, Plane(points), seed=0)
    size = (tmp_path / write_latent_sample(tmp_path, contents)).stat().st_size
    assert contents["count"] == 2000 and size < 300_000, size
