"""The pipeline on generated data: one-epoch fit, resume, ONNX export with parity and manifest, analysis."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import training
from latentserve.manifest import load_model_folder
from training.analyze import analyze_model, compare_models, entropy_ratio, frechet_distance
from training.classifier import ClassifierGraph
from training.data import Mnist, to_float
from training.export import STACK_TRACE_KEY, ExportError, check_parity, export_model
from training.graphs import ModelGraphs
from training.models import ModelConfig
from training.train import FitConfig, fit, load_checkpoint

TINY = FitConfig(
    model=ModelConfig(kind="vae", latent_dim=2), epochs=1, batch_size=64, val_size=64, threads=1
)


@pytest.fixture(scope="module")
def vae_run(tiny_data: Mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    fit(tiny_data, TINY, run, progress=False)
    return run


@pytest.fixture(scope="module")
def vae_folder(vae_run: Path, tiny_data: Mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-vae"
    export_model(vae_run / "checkpoint.pt", folder, tiny_data, name="tiny-vae")
    return folder


def test_one_epoch_fit_records_history(vae_run: Path) -> None:
    _, state = load_checkpoint(vae_run / "checkpoint.pt")
    (record,) = state["history"]
    assert record["epoch"] == 1 and state["epoch"] == 1
    assert np.isfinite(record["train_loss"]) and record["val_kl"] > 0
    assert record["val_loss"] == pytest.approx(record["val_recon"] + record["val_kl"])
    assert state["data"]["train_count"] == 320


def test_resume_continues_exactly(tiny_data: Mnist, tmp_path: Path) -> None:
    config = replace(TINY, model=ModelConfig(kind="ae", latent_dim=2), epochs=2)
    fit(tiny_data, config, tmp_path / "straight", progress=False)
    fit(tiny_data, replace(config, epochs=1), tmp_path / "resumed", progress=False)
    fit(tiny_data, config, tmp_path / "resumed", resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b, state = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert state["epoch"] == 2
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="cannot resume"):
        fit(tiny_data, replace(config, seed=5), tmp_path / "resumed", resume=True, progress=False)


def test_stop_after_keeps_the_schedule_and_resume_finishes_it(
    tiny_data: Mnist, tmp_path: Path
) -> None:
    config = replace(TINY, model=ModelConfig(kind="ae", latent_dim=2), epochs=2)
    fit(tiny_data, config, tmp_path / "straight", progress=False)
    fit(tiny_data, config, tmp_path / "stopped", progress=False, stop_after=1)
    _, state = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["fit_config"]["epochs"] == 2
    fit(tiny_data, config, tmp_path / "stopped", resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b, _ = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_export_writes_a_valid_self_contained_model_folder(
    vae_folder: Path, tiny_data: Mnist
) -> None:
    manifest = load_model_folder(vae_folder)  # validates the schema and the sha256 of both graphs
    assert sorted(p.name for p in vae_folder.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "model.json",
    ]
    assert manifest.kind == "vae" and manifest.latent_dim == 2
    assert manifest.encoder.outputs == ["mean", "log_var"] and manifest.encoder.opset >= 18
    assert manifest.prior.default == "standard_normal"
    export = manifest.provenance["export"]
    assert export["encoder_max_abs_diff"] <= 1e-4 and export["decoder_max_abs_diff"] <= 1e-4
    assert manifest.provenance["data"]["test_count"] == 120
    for key in (
        "test_mse_per_pixel",
        "test_bce_per_image",
        "test_kl_per_image",
        "test_elbo_per_image",
    ):
        assert np.isfinite(manifest.metrics[key])
    # The dynamic batch axis works and the fitted prior describes the training latents.
    graphs = ModelGraphs(vae_folder)
    for n in (1, 3, 130):
        assert graphs.decode(np.zeros((n, 2), np.float32)).shape == (n, 1, 28, 28)
    points = graphs.encode_points(to_float(tiny_data.train_images))
    np.testing.assert_allclose(manifest.prior.fitted_gaussian.mean, points.mean(0), atol=1e-4)
    np.testing.assert_allclose(manifest.prior.bounding_box.low, points.min(0), atol=1e-4)


def test_exported_graphs_carry_no_build_paths(vae_folder: Path, classifier: Path) -> None:
    # The exporter's per-node stack traces name the checkout and the virtualenv.
    checkout = str(Path(training.__file__).resolve().parent.parent).encode()
    venv = str(Path(torch.__file__).resolve().parent).encode()
    for graph in (vae_folder / "encoder.onnx", vae_folder / "decoder.onnx", classifier):
        data = graph.read_bytes()
        assert checkout not in data and venv not in data, graph.name
        assert STACK_TRACE_KEY.encode() not in data, graph.name


def test_parity_check_rejects_a_graph_that_differs(
    vae_run: Path, vae_folder: Path, tiny_data: Mnist
) -> None:
    model, _ = load_checkpoint(vae_run / "checkpoint.pt")
    with torch.no_grad():
        model.decoder.dense.bias += 0.01  # the exported decoder no longer matches this module
    images = to_float(tiny_data.test_images[:72])
    latents = model.encode(torch.from_numpy(images))[0].detach().numpy()
    with pytest.raises(ExportError, match="onnxruntime differs from torch"):
        check_parity(model.decode, vae_folder / "decoder.onnx", latents)


def test_classifier_export_and_record(classifier: Path, tiny_data: Mnist) -> None:
    record = json.loads(classifier.with_suffix(".json").read_text())
    assert record["outputs"] == ["logits", "features"] and 0 <= record["test_accuracy"] <= 1
    probs, features = ClassifierGraph(classifier).run(to_float(tiny_data.test_images[:5]))
    assert probs.shape == (5, 10) and features.shape == (5, 128)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)


def test_analysis_writes_figures_and_numbers(
    vae_folder: Path, classifier: Path, tiny_data: Mnist, tmp_path: Path
) -> None:
    numbers = analyze_model(vae_folder, tiny_data, classifier=classifier, samples=200)
    for name in numbers["files"]:
        path = vae_folder / name
        assert path.stat().st_size > 1000, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((vae_folder / "analysis.json").read_text())
    assert set(saved["samples"]) == {"standard_normal", "fitted_gaussian", "bounding_box_uniform"}
    mix = saved["samples"]["standard_normal"]
    assert sum(mix["digit_share"]) == pytest.approx(1) and 0 <= mix["entropy_ratio"] <= 1
    assert 0 <= mix["well_formed_fraction"] <= 1 and mix["frechet_distance"] >= 0
    # The same measures over eight seeds, the first being the draw above.
    spread = mix["over_seeds"]
    assert spread["seeds"] == list(range(8))
    for measure in ("well_formed_fraction", "entropy_ratio", "frechet_distance"):
        s = spread[measure]
        assert s["min"] <= mix[measure] <= s["max"] and s["min"] <= s["mean"] <= s["max"]
        assert s["sd"] >= 0
    assert sum(saved["area_share_by_digit"]) == pytest.approx(1)
    assert len(saved["latent_cloud"]["skew"]) == 2
    load_model_folder(vae_folder)  # extra files do not break the model folder
    out = compare_models(
        [vae_folder], tiny_data, tmp_path / "cmp.png", classifier=classifier, samples=100
    )
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_measures_on_known_inputs() -> None:
    assert entropy_ratio(np.full(10, 0.1)) == pytest.approx(1)
    assert entropy_ratio(np.eye(10)[3]) == pytest.approx(0)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # Shifting every feature by 1 adds |shift|^2 = 4.
    assert frechet_distance(a, a + 1) == pytest.approx(4, abs=1e-6)


def test_export_to_a_repository_publishes_the_next_version(
    vae_run: Path, write_dataset: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`latent-train export RUN --repository DIR --name NAME` writes DIR/NAME/1, then 2, each
    complete (a polling server sees only whole version folders), and leaves nothing else."""
    from training.cli import main

    data_dir = write_dataset(tmp_path / "idx")
    repo = tmp_path / "repo"
    flags = ["--data-dir", str(data_dir), "--offline", "--repository", str(repo)]
    for expected in ("1", "2"):
        assert main(["export", str(vae_run), *flags, "--name", "tiny"]) == 0
        assert f"published {repo / 'tiny' / expected}" in capsys.readouterr().out
        manifest = load_model_folder(repo / "tiny" / expected)
        assert (manifest.name, manifest.version) == ("tiny", expected)
    assert sorted(p.name for p in repo.iterdir()) == ["tiny"]
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "2"]


def test_export_to_a_repository_needs_a_name(
    vae_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    assert main(["export", str(vae_run), "--repository", str(tmp_path)]) == 2
    assert "--repository needs --name" in capsys.readouterr().err
