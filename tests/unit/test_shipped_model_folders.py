"""Every folder under models/ is a servable model: manifest valid, hashes match, graphs load in
onnxruntime with the I/O names and shapes model.json promises, and the recorded test metrics
meet the project's targets. Also checks the shipped evaluation classifier's record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from latentserve.manifest import load_model_folder, sha256_of

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "models"
FOLDERS = sorted(p for p in MODELS_DIR.iterdir() if p.is_dir()) if MODELS_DIR.is_dir() else []
CLASSIFIER = ROOT / "training" / "assets" / "mnist-classifier.onnx"
# Reconstruction MSE per pixel on the official 10k test set (issue 3).
MSE_TARGETS = {"mnist-ae": 0.041, "mnist-vae": 0.043, "mnist-vae-16": 0.010}


def _shape(value_info: ort.NodeArg) -> list[int | str]:
    return list(value_info.shape)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_model_folder_is_servable(folder: Path) -> None:
    manifest = load_model_folder(folder)  # schema + sha256 of both graphs
    assert manifest.name == folder.name
    image, latent = list(manifest.image_shape), list(manifest.latent_shape)
    for spec in (manifest.encoder, manifest.decoder):
        proto = onnx.load(str(folder / spec.file), load_external_data=False)
        assert not [
            t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        assert spec.opset in {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}

    encoder = ort.InferenceSession(
        str(folder / manifest.encoder.file), providers=["CPUExecutionProvider"]
    )
    decoder = ort.InferenceSession(
        str(folder / manifest.decoder.file), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in encoder.get_inputs()] == manifest.encoder.inputs
    assert [o.name for o in encoder.get_outputs()] == manifest.encoder.outputs
    assert [i.name for i in decoder.get_inputs()] == manifest.decoder.inputs
    assert [o.name for o in decoder.get_outputs()] == manifest.decoder.outputs
    assert _shape(encoder.get_inputs()[0])[1:] == image
    assert all(_shape(o)[1:] == latent for o in encoder.get_outputs())
    assert _shape(decoder.get_inputs()[0])[1:] == latent
    assert _shape(decoder.get_outputs()[0])[1:] == image
    assert all(
        isinstance(_shape(x)[0], str) for x in (*encoder.get_inputs(), *decoder.get_inputs())
    )

    for n in (1, 5):
        images = np.random.default_rng(n).random((n, *image), dtype=np.float32)
        outputs = encoder.run(None, {manifest.encoder_input: images})
        assert all(o.shape == (n, *latent) and np.isfinite(o).all() for o in outputs)
        decoded = decoder.run(None, {manifest.decoder_input: outputs[0]})[0]
        assert decoded.shape == (n, *image) and decoded.min() >= 0 and decoded.max() <= 1


# Random samples from each model's default prior, judged by the shipped classifier in its
# analysis.json (issue 3): digits present, class-mix entropy / log 10, share well formed.
SAMPLE_TARGETS = {
    "mnist-vae": {"digits_present": 10, "entropy_ratio": 0.92},
    "mnist-vae-16": {"entropy_ratio": 0.97, "well_formed_fraction": 0.5},
}
# Targets the shipped models do not meet yet, as (model, measure) -> why. Listed so the miss
# stays visible in every test run (strict xfail: meeting it fails the run until removed here)
# instead of failing CI for everything else.
KNOWN_MISSES: dict[tuple[str, str], str] = {}  # none since mnist-vae beta 0.25, vae-16 beta 1.5


def _target_cases() -> list[object]:
    cases: list[object] = []
    for f in FOLDERS:
        measures = [("test_mse_per_pixel", MSE_TARGETS[f.name])] if f.name in MSE_TARGETS else []
        measures += list(SAMPLE_TARGETS.get(f.name, {}).items())
        for measure, target in measures:
            why = KNOWN_MISSES.get((f.name, measure))
            marks = [pytest.mark.xfail(reason=why, strict=True)] if why else []
            cases.append(pytest.param(f, measure, target, marks=marks, id=f"{f.name}-{measure}"))
    return cases


@pytest.mark.parametrize(("folder", "measure", "target"), _target_cases())
def test_recorded_measures_meet_targets(folder: Path, measure: str, target: float) -> None:
    manifest = load_model_folder(folder)
    assert manifest.metrics["test_images"] == 10000, "metrics must come from the official test set"
    analysis = json.loads((folder / "analysis.json").read_text())
    # The analysis must describe these graphs: it repeats the manifest's test metrics.
    assert analysis["reconstruction"] == manifest.metrics
    if measure == "test_mse_per_pixel":
        assert manifest.metrics[measure] <= target
        return
    samples = analysis["samples"][analysis["default_prior"]]
    assert samples["count"] >= 1000
    assert samples[measure] >= target, f"{measure} {samples[measure]} < {target}"


def test_shipped_classifier_matches_its_record() -> None:
    record = json.loads(CLASSIFIER.with_suffix(".json").read_text())
    assert sha256_of(CLASSIFIER) == record["sha256"]
    assert record["test_accuracy"] >= 0.98 and record["test_images"] == 10000
    session = ort.InferenceSession(str(CLASSIFIER), providers=["CPUExecutionProvider"])
    logits, features = session.run(
        ["logits", "features"], {"images": np.zeros((2, 1, 28, 28), np.float32)}
    )
    assert logits.shape == (2, 10) and features.shape == (2, 128)
