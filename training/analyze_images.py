"""Analysis of a model trained on an image folder (RGB or grey, any size, flat or spatial latent).

MNIST models get the walkthrough's measured claims (:mod:`training.analyze`, with its digit
classifier). A model trained with ``--images`` or ``--emoji`` has no classifier to judge its
samples, so this writes what a reader can look at, through the shipped graphs in onnxruntime:

- ``reconstructions.png``: test images, each above its Encode -> Decode reconstruction;
- ``samples.png``: random samples from the default prior, the latents SampleRandom serves for
  the same seed (flat latents; a spatial latent is drawn from N(0, I) over the whole map);
- flat latents only: ``latent_scatter.png``, the test and train latents in the plane (the
  latent itself when 2-D, else its PCA plane) coloured by class, ``latent_grid.png``, images
  decoded over that plane, and ``latent_sample.json`` for the explorer, with the class names;
- ``analysis.json``: the test metrics, the latent cloud's extent, how close samples from each
  prior come to a real test image (flat latents; no classifier judges them) and the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from latentserve.manifest import MANIFEST_FILE, describe_shape
from latentserve.priors import PRIOR_NAMES
from latentserve.sampling import draw_latents, generator
from training.analyze import latent_stats
from training.data import to_float
from training.graphs import ModelGraphs
from training.images import KIND, ImageFolderData
from training.latent_sample import latent_sample, write_latent_sample
from training.plane import Plane

COLUMNS = 12


def trained_on_images(folder: Path) -> dict[str, Any] | None:
    """The data record of a model trained on an image folder, or None (MNIST)."""
    try:
        record = json.loads((folder / MANIFEST_FILE).read_text())["provenance"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) and record.get("kind") == KIND else None


def display_names(data: ImageFolderData) -> list[str]:
    """Class names for figures and the explorer: the folder names, or the names a SOURCE.json
    gives them (the emoji set: 'smileys-emotion' -> 'Smileys & Emotion')."""
    names = data.source.get("category_names", {})
    return [str(names.get(c, c)) for c in data.class_names]


def montage(images: np.ndarray, rows: int, cols: int, gap: int = 2) -> np.ndarray:
    """Images N x C x H x W in [0, 1] tiled into one H' x W' x 3 picture with white gaps."""
    n, c, h, w = images.shape
    rgb = np.repeat(images, 3, axis=1) if c == 1 else images
    canvas = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), dtype=np.float32)
    for i in range(min(n, rows * cols)):
        r, col = divmod(i, cols)
        y, x = r * (h + gap), col * (w + gap)
        canvas[y : y + h, x : x + w] = np.clip(rgb[i].transpose(1, 2, 0), 0, 1)
    return canvas


def _picture(ax: Axes, picture: np.ndarray, title: str) -> None:
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _class_colors(count: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def draw_scatter(
    ax: Axes, name: str, plane: Plane, points: np.ndarray, labels: np.ndarray, classes: list[str]
) -> None:
    xy = plane.project(points)
    colors = np.array(_class_colors(len(classes)))
    order = np.random.default_rng(0).permutation(len(xy))  # no class painted last on top
    ax.scatter(xy[order, 0], xy[order, 1], c=colors[labels[order]], s=4, alpha=0.7, linewidths=0)
    handles = [
        Line2D([], [], marker="o", ls="", color=colors[i], label=f"{c} ({(labels == i).sum()})")
        for i, c in enumerate(classes)
    ]
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
    x_name, y_name = plane.axis_names()
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(f"{name}: latents by category\n{plane.label()}", fontsize=10)


def draw_grid(ax: Axes, graphs: ModelGraphs, plane: Plane, points: np.ndarray, steps: int) -> None:
    xy = plane.project(points)
    lo, hi = np.percentile(xy, 1, axis=0), np.percentile(xy, 99, axis=0)
    xs, ys = np.linspace(lo[0], hi[0], steps), np.linspace(lo[1], hi[1], steps)
    grid = np.array([(x, y) for y in ys[::-1] for x in xs])  # top row = largest y
    images = graphs.decode(plane.lift(grid))
    ax.imshow(montage(images, steps, steps, gap=0), extent=(lo[0], hi[0], lo[1], hi[1]))
    x_name, y_name = plane.axis_names()
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_title(
        f"{graphs.name}: decoded {steps}x{steps} grid over the 1-99% box of latents\n"
        f"{plane.label()}",
        fontsize=10,
    )


def _save(fig: Any, path: Path, dpi: int = 110) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path.name


def sample_latents(graphs: ModelGraphs, count: int, seed: int) -> np.ndarray:
    """The default prior's draws for a flat latent (what SampleRandom serves for this seed);
    N(0, I) over the whole map for a spatial one."""
    m = graphs.manifest
    if m.is_spatial:
        z: np.ndarray = generator(seed).standard_normal((count, *m.latent_shape))
        return z.astype(np.float32)
    return draw_latents(m, m.prior.default, count, seed)


def nearest_real_mse(images: np.ndarray, real: np.ndarray) -> float:
    """Mean over images of the per-value squared error to the closest real image: how far
    samples fall from anything in the data (lower is closer; reconstructions are a floor)."""
    a = images.reshape(len(images), -1).astype(np.float64)
    b = real.reshape(len(real), -1).astype(np.float64)
    squared = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None, :]
    return float(np.clip(squared.min(1), 0, None).mean() / a.shape[1])


def prior_distances(graphs: ModelGraphs, test: np.ndarray, count: int, seed: int) -> dict[str, Any]:
    """nearest_real_mse of count samples from each prior (flat latents), and of the test
    images' reconstructions for reference."""
    m = graphs.manifest
    recon = graphs.decode(graphs.encode_points(test))
    distances: dict[str, Any] = {"reconstructions": nearest_real_mse(recon, test)}
    for prior in PRIOR_NAMES:
        images = graphs.decode(draw_latents(m, prior, count, seed))
        distances[prior] = nearest_real_mse(images, test)
    return {"count": count, "seed": seed, "nearest_test_mse": distances}


def analyze_image_model(
    folder: Path, data: ImageFolderData, *, seed: int = 0, rows: int = 4
) -> dict[str, Any]:
    """Write the figures, latent_sample.json (flat latents) and analysis.json into folder."""
    graphs = ModelGraphs(folder)
    m = graphs.manifest
    test = to_float(data.test_images)
    if test.shape[1:] != m.image_shape:
        raise ValueError(
            f"{folder}: the model takes {describe_shape(m.image_shape)} images, the data are "
            f"{describe_shape(test.shape[1:])}"
        )
    shown = np.random.default_rng(seed).permutation(len(test))[: rows * COLUMNS]
    recon = graphs.decode(graphs.encode_points(test[shown]))
    files = [_reconstructions(folder, graphs, test[shown], recon, rows)]
    z = sample_latents(graphs, rows * 2 * COLUMNS, seed)
    files.append(_samples(folder, graphs, graphs.decode(z), seed))
    numbers: dict[str, Any] = {
        "model": m.name,
        "kind": m.kind,
        "image_shape": list(m.image_shape),
        "latent_shape": list(m.latent_shape),
        "default_prior": m.prior.default,
        "test_images": len(test),
        "reconstruction": {k: v for k, v in m.metrics.items() if k.startswith("test_")},
        "classes": display_names(data),
    }
    if not m.is_spatial:
        numbers["samples"] = prior_distances(graphs, test, 500, seed)
        files += _plane_figures(folder, graphs, data, test, seed, numbers)
    numbers["files"] = [*files, "analysis.json"]
    (folder / "analysis.json").write_text(json.dumps(numbers, indent=2) + "\n")
    return numbers


def _reconstructions(
    folder: Path, graphs: ModelGraphs, images: np.ndarray, recon: np.ndarray, rows: int
) -> str:
    """Rows of test images, each row followed by the row of their reconstructions."""
    cols = min(COLUMNS, len(images))
    rows = -(-len(images) // cols)
    blank = np.ones((rows * cols - len(images), *images.shape[1:]), np.float32)
    shape = (rows, 1, cols, *images.shape[1:])
    both = np.concatenate(
        [
            np.concatenate([images, blank]).reshape(shape),
            np.concatenate([recon, blank]).reshape(shape),
        ],
        axis=1,
    )
    fig, ax = plt.subplots(figsize=(cols * 0.75, 2 * rows * 0.8 + 0.4))
    _picture(
        ax,
        montage(both.reshape(-1, *images.shape[1:]), 2 * rows, cols),
        f"{graphs.name}: test images (odd rows) and their reconstructions (even rows)",
    )
    return _save(fig, folder / "reconstructions.png")


def _samples(folder: Path, graphs: ModelGraphs, images: np.ndarray, seed: int) -> str:
    rows = len(images) // COLUMNS
    fig, ax = plt.subplots(figsize=(COLUMNS * 0.75, rows * 0.8))
    prior = (
        "N(0, I) over the latent map"
        if graphs.manifest.is_spatial
        else graphs.manifest.prior.default
    )
    _picture(
        ax,
        montage(images, rows, COLUMNS),
        f"{graphs.name}: random samples, {prior} prior, seed {seed}",
    )
    return _save(fig, folder / "samples.png")


def _plane_figures(
    folder: Path,
    graphs: ModelGraphs,
    data: ImageFolderData,
    test: np.ndarray,
    seed: int,
    numbers: dict[str, Any],
) -> list[str]:
    # The test set of a small folder is small: the scatter also shows the training images.
    points = graphs.encode_points(np.concatenate([test, to_float(data.train_images)]))
    points = points.astype(np.float64)
    labels = np.concatenate([data.test_labels, data.train_labels])
    plane = Plane(points)
    numbers["plane"] = plane.label()
    numbers["latent_cloud"] = latent_stats(points)
    numbers["latent_cloud_note"] = "test and train latents" + (
        " (VAE: encoder means)" if graphs.kind == "vae" else ""
    )
    fig, ax = plt.subplots(figsize=(8, 6.5))
    draw_scatter(ax, graphs.name, plane, points, labels, display_names(data))
    files = [_save(fig, folder / "latent_scatter.png")]
    fig, ax = plt.subplots(figsize=(7, 7))
    draw_grid(ax, graphs, plane, points, steps=16)
    files.append(_save(fig, folder / "latent_grid.png"))
    explorer = latent_sample(
        graphs.manifest,
        points[: len(test)],
        data.test_labels,
        plane,
        seed=seed,
        classes=display_names(data),
    )
    files.append(write_latent_sample(folder, explorer))
    return files
