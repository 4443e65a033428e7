"""What the explorer page needs to know about each served model, as JSON-ready dicts.

For every READY model: its kind, latent size, priors (with the parameters model.json gives:
standard normal, the fitted Gaussian, the bounding box) and default prior, the v2 model
names the page calls, and from the model folder's own files the test-set scatter
(``latent_sample.json``: labels and latents, or for D > 2 the PCA plane and the projected
points; with the class names the labels index where the file has them, as image-folder
models such as emoji-vae do, while MNIST's files have none and are keyed by digit) and the
classifier's digit mix of each prior's samples (``analysis.json``). The plane is always
given as ``z = mean + u * components[0] + v * components[1]``, so the page treats a 2-D
latent (identity plane) and a PCA plane alike. Files are read once per folder and cached;
a missing or unreadable file gives an empty scatter or no mix, not an error.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from latentserve.manifest import ModelManifest
from serving.core.registry import ModelState
from serving.core.repository import ModelRepository
from serving.protocols.v2.models import Role, v2_name

log = logging.getLogger(__name__)

LATENT_SAMPLE_FILE = "latent_sample.json"
ANALYSIS_FILE = "analysis.json"
# Slider range for D > 2: the standard normal's +-4 sigma, widened to the fitted Gaussian's.
SLIDER_SIGMAS = 4.0

Json = dict[str, Any]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("explorer: cannot read %s (%s); the page goes without it", path, e)
        return None


def priors(manifest: ModelManifest) -> Json:
    """Every prior the sampler offers, with the parameters the page draws it from (D long
    for a flat latent, C long, per channel, for a spatial one)."""
    d = manifest.prior_dim
    identity = [[1.0 if i == j else 0.0 for j in range(d)] for i in range(d)]
    fitted = manifest.prior.fitted_gaussian
    box = manifest.prior.bounding_box
    return {
        "standard_normal": {"mean": [0.0] * d, "covariance": identity},
        "fitted_gaussian": {"mean": fitted.mean, "covariance": fitted.covariance},
        "bounding_box_uniform": {
            "mean": [(lo + hi) / 2 for lo, hi in zip(box.low, box.high, strict=True)],
            "low": box.low,
            "high": box.high,
        },
    }


def plane_and_scatter(manifest: ModelManifest, sample: Any) -> tuple[Json, Json]:
    """The page's plane (mean, two components) and the scatter drawn on it."""
    d = manifest.latent_dim
    ok = (
        isinstance(sample, dict)
        and isinstance(sample.get("labels"), list)
        and isinstance(sample.get("latents"), list)
        and len(sample["labels"]) == len(sample["latents"])
        and all(isinstance(row, list) and len(row) == d for row in sample["latents"])
    )
    if isinstance(sample, dict) and not ok:
        log.warning(
            "explorer: %s of %s is malformed; no scatter", LATENT_SAMPLE_FILE, manifest.name
        )
    labels: list[int] = sample["labels"] if ok else []
    pca = sample.get("pca") if ok else None
    if pca is not None and not (
        isinstance(pca, dict)
        and len(pca.get("components", ())) == 2
        and len(pca.get("mean", ())) == d
        and len(pca.get("points", ())) == len(labels)
    ):
        log.warning("explorer: the pca of %s's %s is malformed", manifest.name, LATENT_SAMPLE_FILE)
        pca = None
    if d == 2:
        plane = {
            "mean": [0.0, 0.0],
            "components": [[1.0, 0.0], [0.0, 1.0]],
            "explained_variance_ratio": 1.0,
            "axis_labels": ["z1", "z2"],
        }
        points = sample["latents"] if ok else []
    elif pca:
        plane = {
            "mean": pca["mean"],
            "components": pca["components"],
            "explained_variance_ratio": pca.get("explained_variance_ratio", 0.0),
            "axis_labels": ["PC1", "PC2"],
        }
        points = pca["points"]
    else:
        # No shipped PCA: the first two latent axes through the origin.
        plane = {
            "mean": [0.0] * d,
            "components": [[1.0 if j == i else 0.0 for j in range(d)] for i in (0, 1)],
            "explained_variance_ratio": 0.0,
            "axis_labels": ["z1", "z2"],
        }
        points = [row[:2] for row in sample["latents"]] if ok else []
    classes = class_names(sample, labels) if ok else None
    if not ok:
        source = f"no {LATENT_SAMPLE_FILE} in the model folder"
    elif classes is None:
        source = f"{sample.get('latent', 'latents')} of {len(labels)} MNIST test digits, {LATENT_SAMPLE_FILE}"
    else:
        source = f"{sample.get('latent', 'latents')}, {LATENT_SAMPLE_FILE}"
    return plane, {"labels": labels, "points": points, "classes": classes, "source": source}


def class_names(sample: Json, labels: list[int]) -> list[str] | None:
    """The sample's class names (what its labels index), or None for MNIST's digits, whose
    files have no names: the page then keys the scatter by digit as before."""
    names = sample.get("classes")
    if names is None:
        return None
    if not (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) for n in names)
        and all(isinstance(i, int) and 0 <= i < len(names) for i in labels)
    ):
        log.warning(
            "explorer: the classes of %s's %s are malformed; points keyed by label",
            sample.get("model"),
            LATENT_SAMPLE_FILE,
        )
        return None
    return names


def digit_mix(analysis: Any) -> Json | None:
    """Per prior: the classifier's digit shares of the analysis's samples (temperature 1)."""
    samples = analysis.get("samples") if isinstance(analysis, dict) else None
    if not isinstance(samples, dict):
        return None
    mix = {}
    for prior, numbers in samples.items():
        if isinstance(numbers, dict) and len(numbers.get("digit_share", ())) == 10:
            mix[prior] = {
                "digit_share": numbers["digit_share"],
                "count": numbers.get("count"),
                "well_formed_fraction": numbers.get("well_formed_fraction"),
            }
    return mix or None


def slider_range(manifest: ModelManifest) -> list[float]:
    fitted = manifest.prior.fitted_gaussian
    lo, hi = -SLIDER_SIGMAS, SLIDER_SIGMAS
    for i, m in enumerate(fitted.mean):
        sd = math.sqrt(max(fitted.covariance[i][i], 0.0))
        lo, hi = min(lo, m - SLIDER_SIGMAS * sd), max(hi, m + SLIDER_SIGMAS * sd)
    return [math.floor(lo), math.ceil(hi)]


def summary(manifest: ModelManifest) -> Json:
    return {
        "name": manifest.name,
        "kind": manifest.kind,
        "latent_dim": manifest.latent_dim,
        "image_shape": list(manifest.image_shape),
        "latent_shape": list(manifest.latent_shape),
        "spatial": manifest.is_spatial,
        "description": manifest.description,
        "default_prior": manifest.prior.default,
    }


def model_data(manifest: ModelManifest, folder: Path) -> Json:
    """Everything the page shows for one model (reads the folder's JSON files). A spatial
    latent (C x h x w) has no plane: `plane` and `scatter` are null."""
    plane: Json | None = None
    scatter: Json | None = None
    if not manifest.is_spatial:
        plane, scatter = plane_and_scatter(manifest, _read_json(folder / LATENT_SAMPLE_FILE))
    return {
        **summary(manifest),
        "priors": priors(manifest),
        "plane": plane,
        "scatter": scatter,
        "digit_mix": digit_mix(_read_json(folder / ANALYSIS_FILE)),
        "slider_range": slider_range(manifest),
        "v2": {role.value: v2_name(manifest.name, role) for role in Role},
        # The graphs' own tensor names, which the v2 encoder and decoder models use.
        "tensors": {
            "encoder_input": manifest.encoder_input,
            "encoder_outputs": list(manifest.encoder_outputs),
            "decoder_input": manifest.decoder_input,
            "decoder_output": manifest.decoder_output,
        },
    }


class ExplorerData:
    """The page's model data for one registry; each folder's files are read once."""

    def __init__(self, registry: ModelRepository) -> None:
        self._registry = registry
        self._cache: dict[str, tuple[Path, bytes]] = {}

    def listing(self) -> Json:
        """The READY models, each with the version it serves by default (the newest) and
        every version it serves; the page polls this to follow the repository."""
        ready = [e for e in self._registry.entries if e.state is ModelState.READY and e.manifest]
        return {
            "default_model": self._registry.default_model,
            "models": [
                {**summary(e.manifest), **self._versions(e.name)}
                for e in ready
                if e.manifest is not None
            ],
        }

    def _versions(self, name: str) -> Json:
        slot = self._registry.slot(name)
        served = [str(v) for v in slot.ready_versions()] if slot is not None else []
        return {"version": served[0] if served else "", "versions": served}

    def model(self, name: str) -> bytes | None:
        """The model's data as JSON bytes, or None if no READY model has that name."""
        entry = next((e for e in self._registry.entries if e.name == name), None)
        if entry is None or entry.state is not ModelState.READY or entry.manifest is None:
            return None
        cached = self._cache.get(entry.name)
        if cached is None or cached[0] != entry.folder:
            # One entry per model: a new version's folder replaces the retired one's data.
            body = json.dumps(model_data(entry.manifest, entry.folder), separators=(",", ":"))
            cached = self._cache[entry.name] = (entry.folder, body.encode("utf-8"))
        return cached[1]

    def ready_names(self) -> list[str]:
        return self._registry.ready_names
