"""The explorer's model data from model folders: the plane, the scatter, priors, digit mix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fixtures.models import build_model_folder

from latentserve.manifest import read_manifest
from serving.protocols.explorer.data import model_data
from serving.protocols.explorer.pages import ExplorerPages

SHIPPED = Path(__file__).resolve().parents[4] / "models"


def test_two_d_model_plane_is_the_latent_itself(tmp_path: Path) -> None:
    folder = build_model_folder(tmp_path, "tiny-ae", kind="ae", latent_dim=2)
    sample = {"labels": [3, 7], "latents": [[0.5, -1.0], [2.0, 0.25]], "pca": None}
    (folder / "latent_sample.json").write_text(json.dumps(sample))
    data = model_data(read_manifest(folder), folder)
    assert data["plane"]["components"] == [[1.0, 0.0], [0.0, 1.0]]
    assert data["scatter"]["points"] == sample["latents"]
    assert data["scatter"]["labels"] == [3, 7]
    assert data["v2"] == {
        "encoder": "tiny-ae-encoder",
        "decoder": "tiny-ae-decoder",
        "sampler": "tiny-ae-sampler",
    }
    assert data["default_prior"] == "fitted_gaussian"
    assert set(data["priors"]) == {"standard_normal", "fitted_gaussian", "bounding_box_uniform"}


def test_folder_without_explorer_files_still_gives_a_plane(tmp_path: Path) -> None:
    folder = build_model_folder(tmp_path, "tiny-vae-8", kind="vae", latent_dim=8)
    data = model_data(read_manifest(folder), folder)
    assert data["scatter"]["points"] == [] and "no latent_sample.json" in data["scatter"]["source"]
    assert data["digit_mix"] is None
    assert np.asarray(data["plane"]["components"]).shape == (2, 8)
    assert data["slider_range"][0] <= -4 and data["slider_range"][1] >= 4


def test_shipped_sixteen_d_model_uses_its_pca_plane() -> None:
    folder = SHIPPED / "mnist-vae-16"
    data = model_data(read_manifest(folder), folder)
    sample = json.loads((folder / "latent_sample.json").read_text())
    components = np.asarray(data["plane"]["components"])
    assert components.shape == (2, 16)
    # The shipped points are the latents projected onto that plane (to the file's rounding).
    latents = np.asarray(sample["latents"])
    projected = (latents - np.asarray(data["plane"]["mean"])) @ components.T
    assert np.allclose(projected, data["scatter"]["points"], atol=2e-3)
    analysis = json.loads((folder / "analysis.json").read_text())
    mix = data["digit_mix"]["standard_normal"]
    assert mix["digit_share"] == analysis["samples"]["standard_normal"]["digit_share"]


def test_static_files_have_javascript_types_and_unknown_files_are_404() -> None:
    pages = ExplorerPages(data=None)  # type: ignore[arg-type]  # static files need no data
    main = pages.static("main.js")
    assert main.status == 200 and main.content_type.startswith("text/javascript")
    assert pages.page().content_type.startswith("text/html")
    assert pages.static("main.js", if_none_match=main.headers["ETag"]).status == 304
    missing = pages.static("../settings.py")
    assert missing.status == 404 and json.loads(missing.body)["error"]


def test_malformed_latent_sample_gives_an_empty_scatter(tmp_path: Path) -> None:
    folder = build_model_folder(tmp_path, "tiny-vae", kind="vae", latent_dim=2)
    (folder / "latent_sample.json").write_text(json.dumps({"labels": 3, "latents": [[1.0]]}))
    data = model_data(read_manifest(folder), folder)
    assert data["scatter"]["points"] == [] and data["scatter"]["labels"] == []
    (folder / "latent_sample.json").write_text("{not json")
    assert model_data(read_manifest(folder), folder)["scatter"]["points"] == []


def test_shipped_emoji_model_names_its_classes_on_its_pca_plane() -> None:
    folder = SHIPPED / "emoji-vae"
    data = model_data(read_manifest(folder), folder)
    sample = json.loads((folder / "latent_sample.json").read_text())
    scatter = data["scatter"]
    assert scatter["classes"] == sample["classes"] and "Smileys & Emotion" in scatter["classes"]
    assert len(scatter["points"]) == len(scatter["labels"]) == 352
    assert max(scatter["labels"]) < len(scatter["classes"])
    assert "MNIST" not in scatter["source"]
    components = np.asarray(data["plane"]["components"])
    assert components.shape == (2, 8) and data["plane"]["axis_labels"] == ["PC1", "PC2"]
    # Orthonormal axes: the page's z = mean + u c0 + v c1 projects back to (u, v).
    assert np.allclose(components @ components.T, np.eye(2), atol=1e-5)
    projected = (np.asarray(sample["latents"]) - np.asarray(data["plane"]["mean"])) @ components.T
    assert np.allclose(projected, scatter["points"], atol=2e-3)


def test_mnist_scatter_has_no_class_names() -> None:
    folder = SHIPPED / "mnist-vae"
    scatter = model_data(read_manifest(folder), folder)["scatter"]
    assert scatter["classes"] is None
    assert scatter["source"] == "encoder mean of 2000 MNIST test digits, latent_sample.json"


def test_class_names_that_do_not_fit_the_labels_are_dropped(tmp_path: Path) -> None:
    folder = build_model_folder(tmp_path, "tiny-ae", kind="ae", latent_dim=2)
    sample = {"labels": [0, 2], "latents": [[0.5, -1.0], [2.0, 0.25]], "classes": ["a", "b"]}
    (folder / "latent_sample.json").write_text(json.dumps(sample))
    data = model_data(read_manifest(folder), folder)
    assert data["scatter"]["classes"] is None and len(data["scatter"]["points"]) == 2
    sample["classes"] = ["a", "b", "c"]
    (folder / "latent_sample.json").write_text(json.dumps(sample))
    assert model_data(read_manifest(folder), folder)["scatter"]["classes"] == ["a", "b", "c"]
