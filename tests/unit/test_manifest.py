"""model.json schema version 2: version 1 files load as the same in-memory model; flat, spatial
and dynamic specs validate; inconsistent ones are refused with a message naming the field; the
latent scaling is a pure, invertible function."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from latentserve.manifest import (
    ManifestError,
    ModelManifest,
    describe_shape,
    parse_manifest,
    read_manifest,
    to_graph_latents,
    to_served_latents,
    to_served_log_var,
    write_manifest,
)

SHA = "ab" * 32


def _prior(p: int) -> dict[str, Any]:
    return {
        "default": "standard_normal",
        "fitted_gaussian": {"mean": [0.0] * p, "covariance": np.eye(p).tolist()},
        "bounding_box": {"low": [-1.0] * p, "high": [1.0] * p},
    }


def _graph(inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    return {"file": "g.onnx", "sha256": SHA, "inputs": inputs, "outputs": outputs, "opset": 20}


V1_VAE: dict[str, Any] = {
    "schema_version": 1,
    "name": "old-vae",
    "version": "1",
    "kind": "vae",
    "description": "a version 1 file",
    "latent_dim": 2,
    "image": {"shape": [1, 28, 28], "dtype": "float32", "value_range": [0.0, 1.0]},
    "encoder": _graph(["images"], ["mean", "log_var"]),
    "decoder": _graph(["latents"], ["images"]),
    "prior": _prior(2),
    "provenance": {"seed": 1},
    "metrics": {"test_mse_per_pixel": 0.04},
}


def v2(**changes: Any) -> dict[str, Any]:
    """A valid version 2 spatial VAE (3 x 32 x 32 -> 4 x 8 x 8), with `changes` merged in."""
    raw: dict[str, Any] = {
        "schema_version": 2,
        "name": "sd-like",
        "kind": "vae",
        "image": {"channels": 3, "height": 32, "width": 32, "value_range": [-1.0, 1.0]},
        "latent": {"shape": [4, 8, 8], "scaling": 0.18215},
        "encoder": _graph(["sample"], ["latent_mean", "latent_logvar"]),
        "decoder": _graph(["z"], ["sample"]),
        "prior": _prior(4),
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def test_version_1_file_loads_as_version_2(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps(V1_VAE))
    m = read_manifest(tmp_path)
    assert m.schema_version == 2
    assert m.image_shape == (1, 28, 28) and m.image.shape == (1, 28, 28)
    assert m.latent_shape == (2,) and m.latent_dim == 2 and m.prior_dim == 2
    assert not m.is_spatial and m.image.dynamic is None and m.latent.is_identity
    assert (m.encoder_input, m.encoder_outputs) == ("images", ("mean", "log_var"))
    assert (m.decoder_input, m.decoder_output) == ("latents", "images")
    assert m.metrics == {"test_mse_per_pixel": 0.04}
    # Written back, it is a version 2 file that reads as the same model.
    write_manifest(tmp_path, m)
    written = json.loads((tmp_path / "model.json").read_text())
    assert written["schema_version"] == 2 and "latent_dim" not in written
    assert written["latent"]["shape"] == [2] and written["image"]["channels"] == 1
    assert read_manifest(tmp_path) == m


def test_version_1_keywords_build_the_same_model() -> None:
    # Code written for version 1 (ModelManifest(latent_dim=...)) keeps working.
    fields = {k: v for k, v in V1_VAE.items() if k not in ("schema_version", "image")}
    assert ModelManifest(**fields) == parse_manifest(V1_VAE)


def test_flat_rgb_version_2() -> None:
    raw = v2(
        image={"height": 20, "width": 36},
        latent={"shape": [8], "scaling": 1.0},
        prior=_prior(8),
        kind="ae",
        encoder=_graph(["x"], ["z"]),
    )
    m = parse_manifest(raw)
    assert m.image_shape == (3, 20, 36) and m.latent_shape == (8,) and m.latent_dim == 8
    assert m.encoder_outputs == ("z",) and m.encoder_input == "x"
    assert m.image.accepts(20, 36) and not m.image.accepts(36, 20)
    assert m.image.allowed_sizes() == "20 x 36"


def test_spatial_version_2_has_a_per_channel_prior() -> None:
    m = parse_manifest(v2())
    assert m.is_spatial and m.latent_shape == (4, 8, 8)
    assert m.latent_dim == 256 and m.prior_dim == 4
    assert (m.encoder_input, m.decoder_input, m.decoder_output) == ("sample", "z", "sample")
    assert m.image.value_range == (-1.0, 1.0) and m.image.dtype == "float32"


def test_dynamic_sizes() -> None:
    m = parse_manifest(
        v2(image={"dynamic": {"multiple": 8, "min": 16, "max": 512}, "dtype": "float16"})
    )
    assert m.image.dtype == "float16"
    assert m.image.accepts(64, 128) and m.image.accepts(16, 512)
    assert not m.image.accepts(60, 64) and not m.image.accepts(8, 64)
    assert not m.image.accepts(64, 520)
    assert m.latent_shape_for(64, 128) == (4, 16, 32)
    assert m.latent_shape_for(32, 32) == (4, 8, 8)
    assert "multiples of 8 within [16, 512]" in m.image.allowed_sizes()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (v2(prior=_prior(3)), "prior.fitted_gaussian.mean has 3 values, must be 4"),
        (
            v2(latent={"shape": [16]}),
            "prior.fitted_gaussian.mean has 4 values, must be 16 (latent.shape 16: D)",
        ),
        (
            {**V1_VAE, "prior": {**_prior(2), "bounding_box": {"low": [0.0], "high": [1.0]}}},
            "prior.bounding_box low and high have 1 and 1 values, must be 2",
        ),
        (v2(latent={"shape": [4, 8]}), "latent.shape: must be [D] or [C, h, w]"),
        (v2(image={"channels": 2}), "image.channels: Input should be 1 or 3"),
        (v2(image={"value_range": [1.0, 0.0]}), "value_range must be two finite numbers lo < hi"),
        (v2(latent={"scaling": 0.0}), "scaling must be finite and non-zero"),
        (v2(image={"dtype": "bfloat16"}), "image.dtype: Input should be 'float32' or 'float16'"),
        (
            v2(encoder=_graph(["x"], ["z"])),
            "encoder.outputs: a vae encoder gives [mean, log_var] (any names, in that order)",
        ),
        (v2(decoder=_graph(["z", "t"], ["x"])), "the decoder takes one input (latents)"),
        (
            v2(image={"dynamic": {"multiple": 8, "min": 16, "max": 64}, "height": 20}),
            "nominal height 20 is outside dynamic",
        ),
        (
            v2(
                image={"dynamic": {"multiple": 8, "min": 16, "max": 64}},
                latent={"shape": [4]},
                prior=_prior(4),
            ),
            "image.dynamic needs a spatial latent",
        ),
        ({**V1_VAE, "schema_version": 3}, "schema_version: Input should be 2"),
    ],
)
def test_inconsistent_specs_are_refused_naming_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match="invalid manifest") as refused:
        parse_manifest(copy.deepcopy(raw), "m/model.json")
    assert message in str(refused.value)
    assert str(refused.value).startswith("m/model.json: ")


def test_latent_scaling_round_trips_and_is_identity_by_default() -> None:
    z = np.random.default_rng(0).standard_normal((5, 4, 2, 2)).astype(np.float32)
    assert to_served_latents(z, 1.0, 0.0) is z and to_graph_latents(z, 1.0, 0.0) is z
    served = to_served_latents(z, 0.3611, 0.1159)
    assert served.dtype == np.float32
    np.testing.assert_allclose(served, (z - 0.1159) * 0.3611, rtol=1e-6)
    np.testing.assert_allclose(to_graph_latents(served, 0.3611, 0.1159), z, rtol=1e-5, atol=1e-6)
    log_var = np.zeros((2, 3), np.float32)
    np.testing.assert_allclose(to_served_log_var(log_var, 0.5), np.log(0.25), rtol=1e-6)
    m = parse_manifest(v2())
    np.testing.assert_allclose(m.to_served_latents(z), z * np.float32(0.18215), rtol=1e-6)


def test_describe_shape() -> None:
    assert describe_shape((3, 64, 64)) == "3 x 64 x 64"
    assert describe_shape(["N", 8]) == "N x 8"
