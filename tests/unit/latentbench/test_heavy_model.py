"""The compute-heavy scenario's generated model is a valid RGB 3 x 64 x 64 VAE folder that the
registry's checks accept, and its report renders what the scenario measured."""

from __future__ import annotations

import numpy as np

from latentbench.heavy import BATCH, CALLERS, build_heavy_model, markdown
from latentserve.manifest import load_model_folder
from serving.core.runtime import CPU, GraphSession


def test_heavy_model_is_a_served_rgb_vae(tmp_path):
    folder = build_heavy_model(tmp_path)
    manifest = load_model_folder(folder)
    assert manifest.image_shape == (3, 64, 64) and manifest.latent_shape == (64,)
    encoder = GraphSession(folder / "encoder.onnx", [CPU])
    decoder = GraphSession(folder / "decoder.onnx", [CPU])
    mean, log_var = encoder.run(np.random.default_rng(0).random((2, 3, 64, 64), np.float32))
    assert mean.shape == log_var.shape == (2, 64) and np.isfinite(mean).all()
    (images,) = decoder.run(mean)
    assert images.shape == (2, 3, 64, 64) and 0.0 <= images.min() <= images.max() <= 1.0


def test_report_has_one_row_per_setting():
    data = {
        "machine": {"load_average": [1.0, 1.0, 1.0]},
        "settings": {
            "1 process, 1 intra-op thread": {
                f"Encode_b{BATCH}": {"grpc_over_inprocess": 0.97, "grpc_img_s": 900.0},
                f"batching_c{CALLERS}": {"on_img_s": 800.0, "off_img_s": 400.0, "gain": 2.0},
            }
        },
    }
    text = markdown(data, "latent-bench --heavy")
    assert "| 1 process, 1 intra-op thread | 0.97 | - | - | 900.0 | 800.0 / 400.0 (2.0x) |" in text
