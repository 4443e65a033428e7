"""Models trained on a folder of images, end to end on tiny generated pictures: `latent-train
fit --images`, `export` (reloading the folder from the checkpoint's provenance) and `analyze`
for a flat RGB VAE; the fully convolutional AE with a spatial latent and per-channel priors;
the network's depth following the image size; one line instead of a traceback for user
mistakes and for a missing train extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentserve.manifest import load_model_folder
from latentserve.priors import PRIOR_NAMES
from training import cli
from training.analyze_images import analyze_image_model, nearest_real_mse, trained_on_images
from training.data import to_float
from training.export import export_model
from training.graphs import ModelGraphs
from training.images import load_image_folder
from training.models import Kind, ModelConfig, build_model
from training.train import FitConfig, fit

SIZE = 16


def write_shapes(root: Path, count: int = 24) -> Path:
    """root/{discs,bars}/<i>.png: RGBA pictures, a red disc or a blue bar, on transparency."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for name in ("bars", "discs"):
        (root / name).mkdir(parents=True)
        for i in range(count):
            rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
            c = rng.integers(5, SIZE - 5, 2)
            if name == "discs":
                rgba[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= 12] = (220, 30, 30, 255)
            else:
                rgba[:, c[1] - 2 : c[1] + 2] = (30, 30, 220, 255)
            Image.fromarray(rgba, "RGBA").save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def cli_vae(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fit -> export -> analyze through the command line, as docs/training.md runs them."""
    root = tmp_path_factory.mktemp("cli")
    fit_args = ["fit", "--images", str(shapes), "--image-size", str(SIZE), "--epochs", "2"]
    fit_args += ["--batch-size", "16", "--threads", "1", "--out", str(root / "run")]
    assert cli.main([*fit_args, "--no-progress"]) == 0
    folder = root / "shapes-vae"
    assert cli.main(["export", str(root / "run"), "--out", str(folder)]) == 0
    assert cli.main(["analyze", str(folder)]) == 0
    return folder


def test_exported_rgb_model_follows_the_images(cli_vae: Path) -> None:
    manifest = load_model_folder(cli_vae)
    assert manifest.schema_version == 2 and manifest.kind == "vae"
    assert manifest.image_shape == (3, SIZE, SIZE) and manifest.latent_shape == (2,)
    assert manifest.image.dynamic is None and manifest.latent.is_identity
    export = manifest.provenance["export"]
    assert export["encoder_max_abs_diff"] <= 1e-4 and export["decoder_max_abs_diff"] <= 1e-4
    data = manifest.provenance["data"]
    assert data["kind"] == "image folder" and data["classes"] == {"bars": 24, "discs": 24}
    assert (data["train_count"], data["test_count"]) == (44, 4)
    assert manifest.metrics["test_images"] == 4 and 0 < manifest.metrics["test_mse_per_pixel"] < 1
    graphs = ModelGraphs(cli_vae)
    decoded = graphs.decode(np.zeros((3, 2), np.float32))
    assert decoded.shape == (3, 3, SIZE, SIZE)


def test_analysis_of_an_image_model(cli_vae: Path) -> None:
    analysis = json.loads((cli_vae / "analysis.json").read_text())
    assert analysis["classes"] == ["bars", "discs"] and analysis["plane"] == "2-D latent"
    for name in ("reconstructions.png", "samples.png", "latent_scatter.png", "latent_grid.png"):
        assert name in analysis["files"]
        with Image.open(cli_vae / name) as figure:
            assert figure.width > 300 and figure.mode == "RGBA"
    distances = analysis["samples"]["nearest_test_mse"]
    assert set(distances) == {"reconstructions", *PRIOR_NAMES}
    assert all(0 < d < 1 for d in distances.values())
    sample = json.loads((cli_vae / "latent_sample.json").read_text())
    assert sample["classes"] == ["bars", "discs"] and sample["count"] == 4
    assert set(sample["labels"]) == {0, 1} and len(sample["latents"][0]) == 2


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_spatial_models_have_per_channel_priors(shapes: Path, tmp_path: Path, kind: Kind) -> None:
    data = load_image_folder(shapes, size=(SIZE, SIZE), channels=3, test_fraction=0.1)
    model = ModelConfig(kind=kind, channels=3, height=SIZE, width=SIZE, latent_channels=2)
    config = FitConfig(model=model, epochs=1, batch_size=16, val_size=4, threads=1)
    fit(data, config, tmp_path / "run", progress=False)
    folder = tmp_path / f"shapes-{kind}"
    export_model(tmp_path / "run" / "checkpoint.pt", folder, data, name=f"shapes-{kind}")
    manifest = load_model_folder(folder)
    assert manifest.is_spatial and manifest.latent_shape == (2, 8, 8) and manifest.prior_dim == 2
    assert manifest.prior.default == {"ae": "fitted_gaussian", "vae": "standard_normal"}[kind]
    if kind == "vae":  # the KL term sums over the whole 2 x 8 x 8 map
        assert manifest.metrics["test_kl_per_image"] > 0
        assert manifest.metrics["test_elbo_per_image"] < -manifest.metrics["test_kl_per_image"]
    g = manifest.prior.fitted_gaussian
    assert len(g.mean) == 2 and np.array(g.covariance).shape == (2, 2)
    latents = ModelGraphs(folder).encode_points(to_float(data.test_images))
    assert latents.shape == (len(data.test_images), 2, 8, 8)
    # Fully convolutional: any even size within the recorded range, checked at export.
    dynamic = manifest.image.dynamic
    assert dynamic is not None and (dynamic.multiple, dynamic.min) == (2, 4)
    assert manifest.provenance["export"]["other_size"] == [18, 20]
    assert manifest.provenance["export"]["other_size_max_abs_diff"] <= 1e-4
    graphs = ModelGraphs(folder)
    wide = graphs.encode_points(np.random.default_rng(0).random((2, 3, 24, 40), np.float32))
    assert wide.shape == (2, 2, 12, 20) == (2, *manifest.latent_shape_for(24, 40))
    assert graphs.decode(wide).shape == (2, 3, 24, 40)
    assert trained_on_images(folder) is not None
    result = analyze_image_model(folder, data)
    assert result["files"] == ["reconstructions.png", "samples.png", "analysis.json"]


@pytest.mark.parametrize(
    ("shape", "halvings", "latent"),
    [((1, 28, 28), 2, (7, 7)), ((3, 32, 32), 2, (8, 8)), ((3, 64, 64), 3, (8, 8))],
)
def test_depth_follows_the_image(
    shape: tuple[int, int, int], halvings: int, latent: tuple[int, int]
) -> None:
    c, h, w = shape
    config = ModelConfig(channels=c, height=h, width=w, latent_channels=4)
    assert config.halvings == halvings and config.latent_shape == (4, *latent)
    net = build_model(config)
    recon, mean, _ = net(torch.rand(2, *shape))
    assert recon.shape == (2, *shape) and mean.shape == (2, 4, *latent)


def test_mnist_network_is_the_walkthroughs() -> None:
    net = build_model(ModelConfig(kind="ae", latent_dim=2))
    convs = [m for m in net.features.body if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.stride[0]) for m in convs] == [(32, 1), (64, 2), (64, 2), (64, 1)]
    assert net.to_latent.in_features == 64 * 7 * 7


def test_non_square_grey_images() -> None:
    net = build_model(ModelConfig(kind="vae", latent_dim=3, channels=1, height=20, width=36))
    recon, mean, _ = net(torch.rand(2, 1, 20, 36))
    assert recon.shape == (2, 1, 20, 36) and mean.shape == (2, 3)


def test_user_mistakes_are_one_line(shapes: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["data", "--images", str(tmp_path / "nowhere")]) == 2
    assert cli.main(["data", "--images", str(shapes), "--image-size", "big"]) == 2
    assert cli.main(["data", "--images", str(shapes), "--emoji"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("latent-train: ") for line in lines)
    assert "not a folder" in lines[0] and "give S or HxW" in lines[1] and "not both" in lines[2]
    assert cli.main(["data", "--images", str(shapes), "--image-size", "8"]) == 0
    assert "train: 44  test: 4  (bars:24, discs:24)" in capsys.readouterr().out


def test_without_the_train_extra_fit_says_which_extra(shapes: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
        "from training.cli import main\n"
        f"sys.exit(main(['fit', '--images', {str(shapes)!r}, '--out', {str(tmp_path)!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        'latent-train fit needs PyTorch (the train extra): pip install "latentserve[train]"'
    )


def test_nearest_real_mse() -> None:
    real = np.random.default_rng(0).random((5, 3, 4, 4)).astype(np.float32)
    assert nearest_real_mse(real, real) == pytest.approx(0, abs=1e-9)
    assert nearest_real_mse(real[:2] + 0.1, real) == pytest.approx(0.01, rel=1e-4)


def test_a_model_trained_on_a_folder_of_pngs_is_served(cli_vae: Path, shapes: Path) -> None:
    """The issue's end to end: fit --images -> export -> latent-serve, a PNG of the folder
    encoded over gRPC and decoded, both equal to onnxruntime in-process."""
    from fixtures.reference import Reference
    from fixtures.servers import InProcessServer

    from latentserve.client import LatentClient

    png = (shapes / "discs" / "0.png").read_bytes()
    reference = Reference(cli_vae)
    with InProcessServer(cli_vae.parent) as running, LatentClient(running.target) as client:
        assert client.get_model(cli_vae.name).state == "READY"
        encoded = client.encode([png], model=cli_vae.name)
        decoded = client.decode(encoded.latents, model=cli_vae.name)
    assert encoded.latents.shape == (1, 2)
    np.testing.assert_allclose(decoded.images, reference.decode(encoded.latents), atol=1e-6, rtol=0)
    assert decoded.images.shape == (1, 3, SIZE, SIZE)
