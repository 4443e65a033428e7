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
    d = manifest.latent_dim
    for spec in (manifest.encoder, manifest.decoder):
        proto = onnx.load(str(folder / spec.file), load_external_data=False)
        assert not [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert spec.opset in {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}

    encoder = ort.InferenceSession(str(folder / manifest.encoder.file), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(folder / manifest.decoder.file), providers=["CPUExecutionProvider"])
    assert [i.name for i in encoder.get_inputs()] == manifest.encoder.inputs
    assert [o.name for o in encoder.get_outputs()] == manifest.encoder.outputs
    assert [i.name for i in decoder.get_inputs()] == manifest.decoder.inputs
    assert [o.name for o in decoder.get_outputs()] == manifest.decoder.outputs
    assert _shape(encoder.get_inputs()[0])[1:] == [1, 28, 28]
    assert all(_shape(o)[1:] == [d] for o in encoder.get_outputs())
    assert _shape(decoder.get_inputs()[0])[1:] == [d]
    assert _shape(decoder.get_outputs()[0])[1:] == [1, 28, 28]
    assert all(isinstance(_shape(x)[0], str) for x in (*encoder.get_inputs(), *decoder.get_inputs()))

    for n in (1, 5):
        images = np.random.default_rng(n).random((n, 1, 28, 28), dtype=np.float32)
        outputs = encoder.run(None, {"images": images})
        assert all(o.shape == (n, d) and np.isfinite(o).all() for o in outputs)
        decoded = decoder.run(None, {"latents": outputs[0]})[0]
        assert decoded.shape == (n, 1, 28, 28) and decoded.min() >= 0 and decoded.max() <= 1


# Targets of issue 3 that the shipped models do not meet yet; listed so the miss stays visible
# in every test run (xfail) instead of failing CI for everything else.
KNOWN_MISSES: dict[str, str] = {}  # name -> why; empty since mnist-ae reached 0.0408 at 30 epochs


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param(f, marks=pytest.mark.xfail(reason=KNOWN_MISSES[f.name], strict=False))
        if f.name in KNOWN_MISSES
        else f
        for f in FOLDERS
    ],
    ids=[f.name for f in FOLDERS],
)
def test_recorded_metrics_meet_targets(folder: Path) -> None:
    manifest = load_model_folder(folder)
    assert manifest.metrics["test_images"] == 10000, "metrics must come from the official test set"
    if folder.name in MSE_TARGETS:
        assert manifest.metrics["test_mse_per_pixel"] <= MSE_TARGETS[folder.name]


def test_shipped_classifier_matches_its_record() -> None:
    record = json.loads(CLASSIFIER.with_suffix(".json").read_text())
    assert sha256_of(CLASSIFIER) == record["sha256"]
    assert record["test_accuracy"] >= 0.98 and record["test_images"] == 10000
    session = ort.InferenceSession(str(CLASSIFIER), providers=["CPUExecutionProvider"])
    logits, features = session.run(["logits", "features"], {"images": np.zeros((2, 1, 28, 28), np.float32)})
    assert logits.shape == (2, 10) and features.shape == (2, 128)
