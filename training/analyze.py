"""Analysis: redraw and measure the walkthrough's claims about AE and VAE latent spaces.

For one model folder (run through onnxruntime, so it measures what is served) this writes
PNGs and analysis.json into the folder:

- ``latent_scatter.png``: test-set latents coloured by digit (D > 2: PCA plane of the means,
  stated on the figure), with the default prior's region drawn on top;
- ``latent_grid.png``: images decoded on a grid over that plane;
- ``samples.png``: random samples from the default prior, each labelled by the classifier;
- ``sample_mix.png``: the digit mix of random samples under every prior;
- ``latent_sample.json``: a stratified sample of test digits with their latents, for the
  latent-space explorer page (see :mod:`training.latent_sample`).

Random samples are drawn by ``latentserve.sampling``, the sampler SampleRandom serves from:
the latents measured for prior P and seed S are exactly those SampleRandom returns for
(P, S, temperature 1).

Numbers: (1) extent and asymmetry of the latent cloud; (2) each digit's share of the occupied
latent area and the digit mix of random samples (entropy relative to the uniform mix);
(3) the fraction of samples the classifier calls with confidence >= 0.9 ("well formed"), and
the Fréchet distance between samples and real test images in the classifier's 128-d feature
space (an MNIST analogue of FID), next to the same distance for real images and for
reconstructions as a floor. The sample measures are repeated for draws with consecutive
seeds, so the noise of one draw of 1,000 is on record beside them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Rectangle
from scipy import linalg, stats

from latentserve.manifest import ModelManifest
from latentserve.priors import PRIOR_NAMES, PriorName
from latentserve.sampling import draw_latents
from training.classifier import ClassifierGraph
from training.data import Mnist, to_float
from training.graphs import ModelGraphs
from training.latent_sample import latent_sample, write_latent_sample
from training.plane import Plane

WELL_FORMED = 0.9
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
AREA_GRID = 100
SPREAD_MEASURES = ("digits_present", "entropy_ratio", "well_formed_fraction", "frechet_distance")
DIGIT_COLORS = ListedColormap([f"C{i}" for i in range(10)])  # tab10, one colour per digit
DIGIT_NORM = BoundaryNorm(np.arange(-0.5, 10.5), 10)


def prior_samples(manifest: ModelManifest, count: int, seed: int) -> dict[PriorName, np.ndarray]:
    """count x D float32 latents per prior: what SampleRandom(count, prior, seed) returns."""
    return {prior: draw_latents(manifest, prior, count, seed) for prior in PRIOR_NAMES}


def judge_samples(
    images: np.ndarray, classifier: ClassifierGraph, real_features: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The sample measures of decoded images (N x 1 x 28 x 28) against the test set's
    classifier features, with each image's digit and confidence (N each)."""
    probs, features = classifier.run(images)
    digits, confidence = probs.argmax(1), probs.max(1)
    shares = np.bincount(digits, minlength=10) / len(digits)
    numbers = {
        "digit_share": shares.tolist(),
        "digits_present": int((shares > 0).sum()),
        "entropy_ratio": entropy_ratio(shares),
        "well_formed_fraction": float((confidence >= WELL_FORMED).mean()),
        "well_formed_digit_share": (
            np.bincount(digits[confidence >= WELL_FORMED], minlength=10) / len(digits)
        ).tolist(),
        "frechet_distance": frechet_distance(features, real_features),
    }
    return numbers, digits, confidence


def over_seeds(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean, sd, min and max of the headline sample measures over draws with several seeds."""
    spread: dict[str, Any] = {"seeds": seeds}
    for measure in SPREAD_MEASURES:
        values = np.array([run[measure] for run in runs], dtype=np.float64)
        spread[measure] = {
            "mean": float(values.mean()),
            "sd": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return spread


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N x F each)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # Dead ReLU units make feature covariances singular; the offset below handles that.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def entropy_ratio(shares: np.ndarray) -> float:
    """Shannon entropy of a digit mix divided by log(10): 1 means all ten equally often."""
    p = shares[shares > 0]
    return float(-(p * np.log(p)).sum() / math.log(10))


def latent_stats(points: np.ndarray) -> dict[str, Any]:
    """Extent and asymmetry of the latent cloud, per axis (points N x D)."""
    pct = np.percentile(points, PERCENTILES, axis=0)
    return {
        "min": points.min(0).tolist(),
        "max": points.max(0).tolist(),
        "mean": points.mean(0).tolist(),
        "std": points.std(0).tolist(),
        "percentiles": {f"p{p}": row.tolist() for p, row in zip(PERCENTILES, pct, strict=True)},
        "skew": stats.skew(points, axis=0).tolist(),
        # How far the middle of the cloud sits from the middle of its 1-99% range, in units of
        # that range: 0 for a symmetric cloud.
        "median_offset": ((pct[3] - (pct[0] + pct[-1]) / 2) / (pct[-1] - pct[0])).tolist(),
        "extent_p1_p99": (pct[-1] - pct[0]).tolist(),
    }


def area_shares(
    xy: np.ndarray, labels: np.ndarray, bins: int = AREA_GRID
) -> tuple[np.ndarray, int]:
    """Each digit's share of the occupied area: grid cells (bins x bins over the cloud's box)
    holding at least one test latent, assigned to their majority digit."""
    lo, hi = xy.min(0), xy.max(0)
    cells = np.clip(((xy - lo) / (hi - lo) * bins).astype(int), 0, bins - 1)
    counts = np.zeros((bins, bins, 10), dtype=np.int64)
    np.add.at(counts, (cells[:, 0], cells[:, 1], labels), 1)
    occupied = counts.sum(-1) > 0
    majority = counts.argmax(-1)[occupied]
    n = int(occupied.sum())
    return np.bincount(majority, minlength=10) / n, n


def montage(images: np.ndarray, rows: int, cols: int, gap: int = 2) -> np.ndarray:
    """Tile images (N x 1 x 28 x 28) into one grey picture with white gaps."""
    h = w = images.shape[-1]
    canvas = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap), dtype=np.float32)
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = 1 - img[0]
    return canvas


class Measurement:
    """Everything analysis computes for one model folder (arrays kept for figures)."""

    def __init__(
        self,
        folder: Path,
        data: Mnist,
        classifier: ClassifierGraph,
        samples: int,
        seed: int,
        spread_seeds: int = 1,
    ) -> None:
        self.graphs = ModelGraphs(folder)
        manifest = self.graphs.manifest
        self.manifest = manifest
        self.test_images = to_float(data.test_images)
        self.test_labels = data.test_labels.astype(np.int64)
        self.points = self.graphs.encode_points(self.test_images).astype(np.float64)
        self.plane = Plane(self.points)
        self.xy = self.plane.project(self.points)
        self.default_prior = manifest.prior.default
        rng = np.random.default_rng(seed)

        real_probs, real_features = classifier.run(self.test_images)
        half = rng.permutation(len(self.test_images))[:samples]
        recon = self.graphs.decode(self.points[half].astype(np.float32))
        _, recon_features = classifier.run(recon)
        self.reference = {
            "real_vs_test_fd": frechet_distance(real_features[half], real_features),
            "reconstructions_vs_test_fd": frechet_distance(recon_features, real_features),
            "real_well_formed_fraction": float((real_probs.max(1) >= WELL_FORMED).mean()),
        }

        self.samples: dict[PriorName, dict[str, Any]] = {}
        for prior, z in prior_samples(manifest, samples, seed).items():
            images = self.graphs.decode(z)
            numbers, digits, confidence = judge_samples(images, classifier, real_features)
            self.samples[prior] = {
                "latents": z,
                "images": images,
                "digits": digits,
                "confidence": confidence,
                "numbers": {"count": samples, "seed": seed, "temperature": 1.0, **numbers},
            }
        if spread_seeds > 1:
            self._measure_spread(classifier, real_features, range(seed, seed + spread_seeds))
        self.area_share, self.occupied_cells = area_shares(self.xy, self.test_labels)

    def _measure_spread(
        self, classifier: ClassifierGraph, real_features: np.ndarray, seeds: range
    ) -> None:
        """One draw of 1,000 moves the sample measures by about a point: record their spread
        over draws with consecutive seeds (the first is the draw already measured)."""
        count = self.samples[self.default_prior]["numbers"]["count"]
        runs = {prior: [s["numbers"]] for prior, s in self.samples.items()}
        for seed in seeds[1:]:
            for prior, z in prior_samples(self.manifest, count, seed).items():
                numbers, _, _ = judge_samples(self.graphs.decode(z), classifier, real_features)
                runs[prior].append(numbers)
        for prior, measured in runs.items():
            self.samples[prior]["numbers"]["over_seeds"] = over_seeds(measured, list(seeds))

    def numbers(self, classifier: ClassifierGraph) -> dict[str, Any]:
        m = self.manifest
        return {
            "model": m.name,
            "kind": m.kind,
            "latent_dim": m.latent_dim,
            "default_prior": self.default_prior,
            "plane": self.plane.label(),
            "test_images": len(self.test_images),
            "reconstruction": {k: v for k, v in m.metrics.items() if k.startswith("test_")},
            "latent_cloud": latent_stats(self.points),
            "latent_cloud_note": "test-set latents"
            + (" (VAE: encoder means)" if m.kind == "vae" else ""),
            "area_share_by_digit": self.area_share.tolist(),
            "area_share_note": f"share of the {self.occupied_cells} occupied cells of a {AREA_GRID}x{AREA_GRID} "
            f"grid over the test latents' box in the {self.plane.label()}, each cell assigned its majority digit",
            "test_share_by_digit": (
                np.bincount(self.test_labels, minlength=10) / len(self.test_labels)
            ).tolist(),
            "samples": {prior: s["numbers"] for prior, s in self.samples.items()},
            "reference": self.reference,
            "classifier": {
                "file": classifier.path.name,
                "sha256": classifier.record.get("sha256"),
                "test_accuracy": classifier.record.get("test_accuracy"),
                "well_formed_threshold": WELL_FORMED,
                "fd_features": "classifier penultimate layer (128-d)",
            },
        }


def _draw_prior_region(ax: Axes, m: Measurement) -> None:
    """Outline where the default prior puts its mass (in the plotted plane)."""
    prior = m.default_prior
    if prior == "bounding_box_uniform" or (m.plane.is_projection and prior != "standard_normal"):
        if not m.plane.is_projection:
            b = m.manifest.prior.bounding_box
            ax.add_patch(
                Rectangle(
                    (b.low[0], b.low[1]),
                    b.high[0] - b.low[0],
                    b.high[1] - b.low[1],
                    fill=False,
                    ls="--",
                    lw=1.2,
                    color="k",
                    label="bounding box prior",
                )
            )
        return
    if prior == "standard_normal":
        mean, cov = np.zeros(m.plane.dim), np.eye(m.plane.dim)
        name = "N(0, I)"
    else:
        g = m.manifest.prior.fitted_gaussian
        mean, cov = np.array(g.mean), np.array(g.covariance)
        name = "fitted Gaussian"
    center = m.plane.project(mean[None])[0]
    cov2 = m.plane.axes.T @ cov @ m.plane.axes
    vals, vecs = np.linalg.eigh(cov2)
    angle = math.degrees(math.atan2(vecs[1, -1], vecs[0, -1]))
    for k in (1, 2, 3):
        ax.add_patch(
            Ellipse(
                center,
                2 * k * math.sqrt(vals[-1]),
                2 * k * math.sqrt(vals[0]),
                angle=angle,
                fill=False,
                ls="--",
                lw=1.0,
                color="k",
                alpha=0.8,
                label=f"{name} prior: 1, 2, 3 sigma" if k == 1 else None,
            )
        )


def draw_scatter(ax: Axes, m: Measurement, *, colorbar: bool = True) -> None:
    order = np.random.default_rng(0).permutation(len(m.xy))  # no digit painted last on top
    sc = ax.scatter(
        m.xy[order, 0],
        m.xy[order, 1],
        c=m.test_labels[order],
        cmap=DIGIT_COLORS,
        norm=DIGIT_NORM,
        s=2,
        alpha=0.6,
        linewidths=0,
    )
    _draw_prior_region(ax, m)
    names = m.plane.axis_names()
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(f"{m.manifest.name}: test latents by digit\n{m.plane.label()}", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    if colorbar:
        cbar = plt.colorbar(sc, ax=ax, ticks=range(10))
        cbar.set_label("digit (true label)")
        if cbar.solids is not None:
            cbar.solids.set_alpha(1)  # legible colours although the dots are translucent


def draw_samples(ax: Axes, m: Measurement, rows: int = 10, cols: int = 10) -> None:
    s = m.samples[m.default_prior]
    ax.imshow(montage(s["images"], rows, cols), cmap="gray", vmin=0, vmax=1)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        good = s["confidence"][i] >= WELL_FORMED
        ax.text(
            c * 30 + 1,
            r * 30 + 6,
            str(s["digits"][i]),
            fontsize=6,
            color="tab:blue" if good else "tab:red",
            fontweight="bold",
        )
    n = s["numbers"]
    ax.set_title(
        f"{m.manifest.name}: random samples, {m.default_prior} prior\n"
        f"label = classifier digit (red: confidence < {WELL_FORMED}); "
        f"{100 * n['well_formed_fraction']:.0f}% well formed of {n['count']}",
        fontsize=9,
    )
    ax.axis("off")


def draw_mix(ax: Axes, m: Measurement) -> None:
    width = 0.8 / len(PRIOR_NAMES)
    for i, prior in enumerate(PRIOR_NAMES):
        n = m.samples[prior]["numbers"]
        mark = " (default)" if prior == m.default_prior else ""
        ax.bar(
            np.arange(10) + (i - 1) * width,
            n["digit_share"],
            width,
            label=f"{prior}{mark}: H/Hmax {n['entropy_ratio']:.3f}, FD {n['frechet_distance']:.1f}",
        )
    ax.bar(
        np.arange(10),
        m.area_share,
        0.9,
        fill=False,
        edgecolor="k",
        lw=0.8,
        label="share of latent area",
    )
    ax.axhline(0.1, color="gray", ls=":", lw=1, label="uniform mix (10%)")
    ax.set_xticks(range(10))
    ax.set_xlabel("digit (samples: classifier's call; area: true label)")
    ax.set_ylabel("share")
    ax.set_title(
        f"{m.manifest.name}: digit mix of {m.samples[PRIOR_NAMES[0]]['numbers']['count']} random samples per prior",
        fontsize=10,
    )
    # Head-room above the tallest bar keeps the legend off the bars.
    ax.set_ylim(0, 1.55 * max(ax.get_ylim()[1], 0.12))
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def draw_grid(ax: Axes, m: Measurement, steps: int = 20) -> None:
    lo, hi = np.percentile(m.xy, 1, axis=0), np.percentile(m.xy, 99, axis=0)
    xs, ys = np.linspace(lo[0], hi[0], steps), np.linspace(lo[1], hi[1], steps)
    plane = np.array([(x, y) for y in ys[::-1] for x in xs])  # top row = largest y
    images = m.graphs.decode(m.plane.lift(plane))
    ax.imshow(
        1 - montage(1 - images, steps, steps, gap=0),
        cmap="gray",
        extent=(lo[0], hi[0], lo[1], hi[1]),
        aspect="auto",
    )
    names = m.plane.axis_names()
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(
        f"{m.manifest.name}: decoded {steps}x{steps} grid over the 1-99% box of test latents\n{m.plane.label()}",
        fontsize=10,
    )


def _save(fig: Figure, path: Path, dpi: int = 110) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path.name


# Each model folder's figures: file, what draws it, size in inches.
FIGURES: tuple[tuple[str, Callable[[Axes, Measurement], None], tuple[float, float]], ...] = (
    ("latent_scatter.png", draw_scatter, (7, 6)),
    ("latent_grid.png", draw_grid, (7, 7)),
    ("samples.png", draw_samples, (7, 7.4)),
    ("sample_mix.png", draw_mix, (9, 5)),
)


def analyze_model(
    folder: Path,
    data: Mnist,
    *,
    classifier: Path,
    samples: int = 1000,
    seed: int = 0,
    spread_seeds: int = 8,
) -> dict[str, Any]:
    """Write the figures, latent_sample.json and analysis.json into the model folder; returns
    the numbers. Samples are also drawn under spread_seeds consecutive seeds from `seed`."""
    clf = ClassifierGraph(classifier)
    m = Measurement(folder, data, clf, samples, seed, spread_seeds)
    files = []
    for name, draw, size in FIGURES:
        fig, ax = plt.subplots(figsize=size)
        draw(ax, m)
        files.append(_save(fig, folder / name))
    explorer = latent_sample(m.manifest, m.points, m.test_labels, m.plane, seed=seed)
    files.append(write_latent_sample(folder, explorer))
    numbers = m.numbers(clf)
    numbers["files"] = [*files, "analysis.json"]
    (folder / "analysis.json").write_text(json.dumps(numbers, indent=2) + "\n")
    return numbers


def compare_models(
    folders: list[Path],
    data: Mnist,
    out: Path,
    *,
    classifier: Path,
    samples: int = 1000,
    seed: int = 0,
) -> Path:
    """One figure, a row per model: latent scatter, random samples, digit mix."""
    clf = ClassifierGraph(classifier)
    measured = [Measurement(f, data, clf, samples, seed) for f in folders]
    fig, axes = plt.subplots(
        len(measured),
        3,
        figsize=(20, 6.2 * len(measured)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.15, 1, 1.3]},
    )
    for row, m in zip(axes, measured, strict=True):
        draw_scatter(row[0], m)
        draw_samples(row[1], m)
        draw_mix(row[2], m)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, out, dpi=80)  # a big multi-panel figure: keep the file small
    return out


def summary_table(folders: list[Path]) -> str:
    """A markdown table of the headline numbers from each folder's model.json and analysis.json."""
    rows = [
        "| model | test MSE/pixel | test BCE/image | ELBO/image | prior | digits present | mix entropy / max | well formed (conf >= 0.9) | FD to test set |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for folder in folders:
        manifest = ModelGraphs(folder).manifest
        analysis = json.loads((folder / "analysis.json").read_text())
        metrics = manifest.metrics
        elbo = (
            f"{metrics['test_elbo_per_image']:.1f}" if "test_elbo_per_image" in metrics else "n/a"
        )
        for prior, n in analysis["samples"].items():
            mark = " (default)" if prior == manifest.prior.default else ""
            rows.append(
                f"| {manifest.name} | {metrics['test_mse_per_pixel']:.4f} | {metrics['test_bce_per_image']:.1f} | {elbo} "
                f"| {prior}{mark} | {n['digits_present']} | {n['entropy_ratio']:.3f} "
                f"| {100 * n['well_formed_fraction']:.1f}% | {n['frechet_distance']:.1f} |"
            )
    return "\n".join(rows)
