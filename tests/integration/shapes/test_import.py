"""`latent-models import` end to end (issue 20): a pair of ONNX graphs "exported by another
tool" (its own file and tensor names, 3 x 32 x 32 images in [-1, 1], a 4 x 8 x 8 latent, no
model.json) is imported, served, and answers on every protocol as onnxruntime does
in-process. A pair that does not fit is refused in one line with both shapes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.models import Names, build_shaped_model_folder
from fixtures.servers import InProcessServer, free_port
from fixtures.shaped import Reference, assert_close, v2_grpc_infer, v2_rest_infer
from PIL import Image

from latentserve.cli import main as client_main
from latentserve.client import LatentClient
from latentserve.manifest import load_model_folder
from serving.process.models_cli import main as models_main

THEIR_NAMES = Names("sample", ("latent_dist_mean", "latent_dist_logvar"), "z", "reconstruction")
LATENT_MODELS = Path(sys.executable).with_name("latent-models")


def exported_pair(root: Path, name: str, **kwargs) -> tuple[Path, Path]:
    """Graphs as another tool leaves them: its own file names, no model.json."""
    folder = build_shaped_model_folder(root / "build", name, **kwargs)
    out = root / f"{name}-export"
    out.mkdir()
    shutil.copyfile(folder / "encoder.onnx", out / "vae_encoder.onnx")
    shutil.copyfile(folder / "decoder.onnx", out / "vae_decoder.onnx")
    return out / "vae_encoder.onnx", out / "vae_decoder.onnx"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return exported_pair(
        tmp_path_factory.mktemp("other-tool"),
        "theirs",
        kind="vae",
        image_shape=(3, 32, 32),
        latent_shape=(4, 8, 8),
        value_range=(-1.0, 1.0),
        names=THEIR_NAMES,
        seed=21,
    )


@pytest.fixture(scope="module")
def fit_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("fit")
    pixels = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        (folder / ("a" if i % 2 else "b")).mkdir(exist_ok=True)
        Image.fromarray(p).save(folder / ("a" if i % 2 else "b") / f"{i}.png")
    return folder, pixels


@pytest.fixture(scope="module")
def imported(pair, fit_images, tmp_path_factory) -> Path:
    """The pair imported with the console script (a real subprocess)."""
    models = tmp_path_factory.mktemp("models")
    encoder, decoder = pair
    result = subprocess.run(
        [str(LATENT_MODELS), "import", "--name", "theirs-vae", "--encoder", str(encoder),
         "--decoder", str(decoder), "--out", str(models / "theirs-vae"),
         "--value-range=-1,1", "--fit-images", str(fit_images[0])],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "images 3 x 32 x 32 -> latent 4 x 8 x 8" in result.stdout
    return models


def test_model_json_records_their_names_shapes_hashes_and_fitted_prior(imported, fit_images):
    folder = imported / "theirs-vae"
    manifest = load_model_folder(folder)  # checks both sha256
    assert manifest.schema_version == 2 and manifest.kind == "vae"
    assert manifest.image_shape == (3, 32, 32) and manifest.latent_shape == (4, 8, 8)
    assert manifest.image.value_range == (-1.0, 1.0)
    assert manifest.encoder_input == "sample"
    assert manifest.encoder_outputs == ("latent_dist_mean", "latent_dist_logvar")
    assert (manifest.decoder_input, manifest.decoder_output) == ("z", "reconstruction")
    # The priors are per channel, fitted on the images' latent means.
    ref = Reference(folder)
    means = ref.encode(fit_images[1].transpose(0, 3, 1, 2) / np.float32(255))[0]
    per_channel = means.transpose(0, 2, 3, 1).reshape(-1, 4)
    fitted = manifest.prior.fitted_gaussian
    np.testing.assert_allclose(fitted.mean, per_channel.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        fitted.covariance, np.cov(per_channel.astype(np.float64), rowvar=False), atol=1e-5
    )
    np.testing.assert_allclose(manifest.prior.bounding_box.low, per_channel.min(axis=0), atol=1e-5)
    assert manifest.prior.default == "standard_normal"
    assert json.loads((folder / "model.json").read_text())["provenance"]["fit_count"] == 6


def test_the_imported_model_is_served_on_every_protocol(imported, tmp_path, capsys):
    ref = Reference(imported / "theirs-vae")
    m = ref.manifest
    images = ref.images(3, seed=8)
    expected = ref.encode(images)
    with InProcessServer(imported, http_port=free_port(), default_model="theirs-vae") as server:
        with LatentClient(server.target) as client:
            encoded = client.encode(images, model="theirs-vae")
            assert_close(encoded.latents, expected[0], "native encode")
            assert encoded.log_var is not None
            assert_close(encoded.log_var, expected[1], "native log_var")
            decoded = client.decode(encoded.latents, model="theirs-vae", return_png=True)
            assert_close(decoded.images, ref.decode(encoded.latents), "native decode")
            assert Image.open(io.BytesIO(decoded.png[0])).mode == "RGB"
            sampled = client.sample(4, seed=1, return_latents=True, prior="fitted_gaussian")
            assert sampled.latents is not None and sampled.latents.shape == (4, 4, 8, 8)
            assert_close(sampled.images, ref.decode(sampled.latents), "native sample")
        assert server.server.http is not None
        http_port = server.server.http.port
        for infer in (
            lambda model, inputs: v2_grpc_infer(server.target, model, inputs),
            lambda model, inputs: v2_rest_infer(http_port, model, inputs),
        ):
            outputs = infer("theirs-vae-encoder", {"sample": images})
            assert list(outputs) == ["latent_dist_mean", "latent_dist_logvar"]
            assert_close(outputs["latent_dist_mean"], expected[0], "v2 encoder")
            back = infer("theirs-vae-decoder", {"z": expected[0]})
            assert_close(back["reconstruction"], ref.decode(expected[0]), "v2 decoder")
        np.save(tmp_path / "x.npy", images)
        target = ["--target", server.target]
        assert client_main([*target, "encode", str(tmp_path / "x.npy"),
                            "--out", str(tmp_path / "z.npy")]) == 0  # fmt: skip
        assert_close(np.load(tmp_path / "z.npy"), expected[0], "latent-client")
        assert m.name == "theirs-vae"
    capsys.readouterr()


def test_without_fit_images_the_prior_is_standard_normal(pair, tmp_path, capsys):
    encoder, decoder = pair
    out = tmp_path / "plain"
    code = models_main(["import", "--name", "plain", "--encoder", str(encoder),
                        "--decoder", str(decoder), "--out", str(out)])  # fmt: skip
    assert code == 0
    manifest = load_model_folder(out)
    assert manifest.prior.default == "standard_normal"
    assert manifest.prior.fitted_gaussian.mean == [0.0] * 4
    assert "latent 4 x 8 x 8" in capsys.readouterr().out


def test_a_pair_that_does_not_fit_is_one_line_naming_both_shapes(pair, tmp_path):
    other_encoder, _ = exported_pair(
        tmp_path, "other", kind="ae", image_shape=(3, 32, 32), latent_shape=(2, 8, 8), seed=4
    )
    _, decoder = pair
    result = subprocess.run(
        [str(LATENT_MODELS), "import", "--name", "mixed", "--encoder", str(other_encoder),
         "--decoder", str(decoder), "--out", str(tmp_path / "mixed")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "N x 2 x 8 x 8" in lines[0] and "N x 4 x 8 x 8" in lines[0]
    assert not (tmp_path / "mixed" / "model.json").exists()


def test_graph_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    code = models_main(["import", "--name", "x", "--encoder", str(bad), "--decoder", str(bad),
                        "--out", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "encoder graph" in err and "cannot be loaded" in err
    assert len(err.strip().splitlines()) == 1


def test_float16_and_dynamic_pairs_import_and_serve(tmp_path, capsys):
    from latentserve.manifest import DynamicSize

    half_enc, half_dec = exported_pair(
        tmp_path, "half", kind="ae", image_shape=(3, 16, 16), latent_shape=(4,), float16=True
    )
    dyn_enc, dyn_dec = exported_pair(
        tmp_path, "dyn", kind="ae", image_shape=(1, 16, 16), latent_shape=(2, 4, 4),
        dynamic=DynamicSize(multiple=4, min=8, max=64),
    )  # fmt: skip
    models = tmp_path / "models"
    assert models_main(["import", "--name", "half", "--encoder", str(half_enc), "--decoder",
                        str(half_dec), "--out", str(models / "half")]) == 0  # fmt: skip
    # Free height and width: the nominal size is needed, and given.
    args = ["import", "--name", "dyn", "--encoder", str(dyn_enc), "--decoder", str(dyn_dec),
            "--out", str(models / "dyn")]  # fmt: skip
    assert models_main(args) == 2
    assert "--image-size HxW" in capsys.readouterr().err
    assert models_main([*args, "--image-size", "16x16"]) == 0
    half = load_model_folder(models / "half")
    assert half.image.dtype == "float16" and half.latent_shape == (4,)
    dyn = load_model_folder(models / "dyn")
    assert dyn.image.dynamic == DynamicSize(multiple=4, min=4, max=64)
    assert dyn.latent_shape == (2, 4, 4)
    with InProcessServer(models) as server, LatentClient(server.target) as client:
        for name, images in (("half", Reference(models / "half").images(2)),
                             ("dyn", Reference(models / "dyn").images(2, size=(24, 40)))):  # fmt: skip
            got = client.encode(images, model=name).latents
            assert_close(got, Reference(models / name).encode(images)[0], name)
    capsys.readouterr()


def test_a_pair_exported_with_a_batch_of_one_is_served_row_by_row(tmp_path, capsys):
    encoder, decoder = exported_pair(
        tmp_path, "one", kind="vae", image_shape=(3, 32, 32), latent_shape=(4, 8, 8), batch=1,
        names=THEIR_NAMES,
    )  # fmt: skip
    models = tmp_path / "models"
    assert models_main(["import", "--name", "one", "--encoder", str(encoder), "--decoder",
                        str(decoder), "--out", str(models / "one")]) == 0  # fmt: skip
    two_enc, two_dec = exported_pair(
        tmp_path, "two", kind="ae", image_shape=(3, 32, 32), latent_shape=(4, 8, 8), batch=2
    )
    assert models_main(["import", "--name", "two", "--encoder", str(two_enc), "--decoder",
                        str(two_dec), "--out", str(tmp_path / "two")]) == 2  # fmt: skip
    assert "fixed batch of 2" in capsys.readouterr().err
    ref = Reference(models / "one")
    images = ref.images(5, seed=1)
    with InProcessServer(models) as server, LatentClient(server.target) as client:
        encoded = client.encode(images, model="one")
        assert_close(encoded.latents, np.concatenate([ref.encode(i[None])[0] for i in images]))
        assert_close(client.decode(encoded.latents, model="one").images,
                     np.concatenate([ref.decode(z[None]) for z in encoded.latents]))  # fmt: skip
