"""The explorer's data file: a small stratified sample of test digits with their latents.

The serving install has neither torch nor MNIST, so the latent-space explorer page cannot
encode the test set itself. Analysis writes ``latent_sample.json`` into each model folder
instead: 200 test digits per class (seeded), their labels and latents (the AE latent or the
VAE encoder mean, from the shipped encoder graph through onnxruntime), and for D > 2 the PCA
plane the analysis figures use, so a page can draw the same scatter as latent_scatter.png.
Values are rounded to 4 decimals and written compactly to keep the file under 300 kB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.manifest import ModelManifest
from training.plane import Plane

FILE = "latent_sample.json"
PER_CLASS = 200
DECIMALS = 4
# The plane's axes and centre turn slider positions into latents: kept more precisely.
PLANE_DECIMALS = 6


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to per_class indices of each class (labels N int: a digit, or an image folder's class),
    shuffled so that no class comes last (a page that paints in file order would otherwise
    hide the others under it)."""
    rng = np.random.default_rng(seed)
    picks = []
    for digit in range(max(10, int(labels.max()) + 1)):
        pool = np.flatnonzero(labels == digit)
        picks.append(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
    return rng.permutation(np.concatenate(picks))


def _rounded(values: np.ndarray, decimals: int = DECIMALS) -> list[Any]:
    rounded: list[Any] = np.round(values.astype(np.float64), decimals).tolist()
    return rounded


def latent_sample(
    manifest: ModelManifest,
    points: np.ndarray,
    labels: np.ndarray,
    plane: Plane,
    *,
    seed: int,
    per_class: int = PER_CLASS,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """The file's contents for test latents points (N x D) with their labels (N). `classes`:
    the label names of an image folder (the file then names them; MNIST's labels are digits)."""
    picked = stratified_indices(labels, per_class, seed)
    latent = "encoder mean" if manifest.kind == "vae" else "encoder output"
    pca = None
    if plane.is_projection:
        pca = {
            "components": _rounded(plane.axes.T, PLANE_DECIMALS),
            "mean": _rounded(plane.center, PLANE_DECIMALS),
            "explained_variance_ratio": round(plane.explained, 4),
            "points": _rounded(plane.project(points[picked])),
        }
    what, item = (
        ("the MNIST test set", "digit") if classes is None else ("the test images", "image")
    )
    contents = {
        "description": (
            f"A stratified sample of {what} for the latent-space explorer: up to "
            f"{per_class} {item}s per class (seed {seed}, shuffled), each with its true label and "
            f"its {manifest.latent_dim}-D latent ({latent}, from this folder's encoder.onnx), "
            f"rounded to {DECIMALS} decimals. test_index is each {item}'s position in the test "
            f"set the analysis ran on ({len(labels)} images)."
            + ("" if classes is None else " labels index classes, the image folder's class names.")
            + (
                " pca is the plane of latent_scatter.png: the top two principal axes of all "
                "test latents, points = (latents - mean) @ components.T."
                if pca
                else " The latent is 2-D, so it is its own plane (pca is null)."
            )
        ),
        "model": manifest.name,
        "kind": manifest.kind,
        "latent_dim": manifest.latent_dim,
        "latent": latent,
        "seed": seed,
        "per_class": per_class,
        "count": len(picked),
        "test_index": picked.tolist(),
        "labels": labels[picked].tolist(),
        "latents": _rounded(points[picked]),
        "pca": pca,
    }
    if classes is not None:
        contents["classes"] = classes
    return contents


def write_latent_sample(folder: Path, contents: dict[str, Any]) -> str:
    """Write folder/latent_sample.json (compact: it is data for a page, not for reading)."""
    (folder / FILE).write_text(json.dumps(contents, separators=(",", ":")) + "\n")
    return FILE
