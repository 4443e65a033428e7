"""`latent-client` against a real server: every subcommand and its exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from latentserve.cli import main as client_main


@pytest.fixture
def run(server, capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = client_main(["--target", server.target, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_models_lists_state_kind_and_default(run):
    code, out, _ = run("models")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSIONS", "STATE", "KIND", "DIM", "PRIOR", "PROVIDERS"]
    assert any(line.startswith("*") and "tiny-vae " in line and "READY" in line for line in lines)
    # Every version and its state: the tiny models are flat folders, version 1.
    assert any("tiny-ae " in line and "1 READY" in line for line in lines)
    assert "default model: tiny-vae" in out


def test_health_exit_codes(run):
    assert run("health")[:2] == (0, "SERVING\n")
    assert run("health", "--model", "tiny-ae")[0] == 0
    code, out, _ = run("health", "--model", "nope")
    assert (code, out) == (1, "SERVICE_UNKNOWN\n")


def test_health_unreachable_server_exits_nonzero(capsys):
    code = client_main(["--target", "127.0.0.1:1", "--timeout", "2", "health"])
    assert code == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_sample_twice_gives_identical_npy(run, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for path in (a, b):
        code, out, _ = run(
            "sample", "--model", "tiny-vae", "--count", "512", "--seed", "7", "--out", str(path)
        )
        assert code == 0 and "seed 7" in out
    first, second = np.load(a), np.load(b)
    assert first.shape == (512, 1, 28, 28) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)


def test_sample_png_grid_prior_temperature_and_latents(run, tmp_path):
    grid, latents = tmp_path / "grid.png", tmp_path / "z.npy"
    code, out, _ = run(
        "sample",
        "--model",
        "tiny-ae",
        "--count",
        "10",
        "--seed",
        "1",
        "--prior",
        "bounding_box_uniform",
        "--temperature",
        "0.5",
        "--out",
        str(grid),
        "--latents-out",
        str(latents),
    )
    assert code == 0 and "bounding_box_uniform" in out
    image = Image.open(grid)
    assert image.mode == "L" and image.size == (4 * 30 + 2, 3 * 30 + 2)  # 4 x 3 grid, 2 px gaps
    assert np.load(latents).shape == (10, 2)


def test_encode_images_and_decode_round_trip(run, tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    out_npy = tmp_path / "latents.npy"
    code, out, _ = run("encode", "--model", "tiny-vae", *paths, "--out", str(out_npy))
    assert code == 0
    assert out.count("latents [") == 2 and "log_var [" in out
    latents = np.load(out_npy)
    assert latents.shape == (2, 2)
    images = tmp_path / "decoded.npy"
    code, out, _ = run(
        "decode", "--model", "tiny-vae", "--latents", str(out_npy), "--out", str(images)
    )
    assert code == 0 and np.load(images).shape == (2, 1, 28, 28)
    code, out, _ = run(
        "decode",
        "--model",
        "tiny-vae",
        "--latent",
        "0.5,-1",
        "--latent",
        "0,0",
        "--out",
        str(tmp_path / "d.png"),
    )
    assert code == 0 and "decoded 2 images" in out


def test_errors_are_friendly(run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, _, err = run("encode", str(bad))
    assert code == 1 and "INVALID_ARGUMENT" in err and "not a decodable PNG or JPEG" in err
    assert "object at 0x" not in err, err  # no internal object address in the message
    code, _, err = run("sample", "--model", "nope", "--count", "1")
    assert code == 1 and "NOT_FOUND" in err and "available models" in err
    code, _, err = run("decode", "--latent", "1,2,3")
    assert code == 1 and "N x 2" in err


def test_console_scripts_are_installed():
    # latent-client lives with the client library (installs without the server).
    for script, module in (
        ("latent-serve", "serving.process.cli:"),
        ("latent-client", "latentserve.cli:"),
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import importlib.metadata as m; print([e.value for e in m.entry_points(group='console_scripts') if e.name == '{script}'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert module in result.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "serving", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--max-batch-delay-ms" in help_text and "LATENTSERVE_PORT" in help_text


def test_encode_npy_arrays(run, tmp_path):
    path = tmp_path / "digits.npy"
    np.save(path, np.zeros((3, 1, 28, 28), np.float32))
    code, out, _ = run("encode", "--model", "tiny-ae", str(path))
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()] == [f"{path}[{i}]" for i in range(3)]


def test_one_sampled_image_is_a_bare_digit_that_encode_takes_back(run, tmp_path):
    """`sample --count 1 --out my-digit.png` writes the 28 x 28 image itself, not a padded
    grid, so `encode my-digit.png` takes it as it is."""
    digit = tmp_path / "my-digit.png"
    code, out, _ = run(
        "sample", "--model", "tiny-vae", "--count", "1", "--seed", "3", "--out", str(digit)
    )  # fmt: skip
    assert code == 0 and "sampled 1 image from tiny-vae" in out, out
    assert f"wrote one 28 x 28 image to {digit}\n" in out, out
    image = Image.open(digit)
    assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
    code, out, err = run("encode", "--model", "tiny-vae", str(digit))
    assert code == 0 and out.startswith(f"{digit}: latents ["), (out, err)


@pytest.mark.parametrize(
    ("name", "image_format"), [("x.jpg", "JPEG"), ("x.JPEG", "JPEG"), ("x.png", "PNG")]
)
def test_sample_writes_the_format_its_extension_names(run, tmp_path, name, image_format):
    path = tmp_path / name
    code, out, _ = run(
        "sample", "--model", "tiny-vae", "--count", "4", "--seed", "1", "--out", str(path)
    )  # fmt: skip
    assert code == 0 and f"wrote a grid of 4 images to {path}\n" in out, out
    assert Image.open(path).format == image_format
    assert [p.name for p in tmp_path.iterdir()] == [name]  # that file and no other


@pytest.mark.parametrize("name", ["a.npy", "A.NPY"])
def test_sample_npy_is_written_where_it_says(run, tmp_path, name):
    path, latents = tmp_path / name, tmp_path / f"z-{name}"
    code, out, _ = run(
        "sample", "--model", "tiny-vae", "--count", "3", "--out", str(path),
        "--latents-out", str(latents),
    )  # fmt: skip
    assert code == 0 and f"wrote 3 x 1 x 28 x 28 float32 to {path}\n" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, latents.name])
    assert np.load(path).shape == (3, 1, 28, 28) and np.load(latents).shape == (3, 2)


@pytest.mark.parametrize(
    "argv",
    [
        ("sample", "--count", "1", "--out", "x.gif"),
        ("sample", "--count", "1", "--out", "x"),
        ("decode", "--latent", "0,0", "--out", "x.bmp"),
        ("sample", "--count", "1", "--latents-out", "z.txt"),
        ("encode", "digit.png", "--out", "latents"),
    ],
)
def test_an_unknown_extension_is_refused_in_one_line_before_any_call(run, tmp_path, argv):
    argv = tuple(str(tmp_path / a) if "." in a or a in ("x", "latents") else a for a in argv)
    code, out, err = run(*argv)
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and ".npy" in err, err
    assert not list(tmp_path.iterdir())


def test_a_wrong_size_image_is_refused_naming_the_resize_flag(run, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(big)
    code, _, err = run("encode", "--model", "tiny-vae", str(big))
    assert code == 1 and "32 x 32" in err and "--resize" in err, err
    code, _, err = run("encode", "--model", "tiny-vae", "--resize", str(big))
    assert code == 0, err
