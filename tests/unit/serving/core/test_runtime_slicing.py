"""GraphSession on CPU runs large batches in slices of max_run_rows: same results, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.models import build_model_folder

from serving.core.runtime import CPU, GraphSession


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("m"), "slice-vae", kind="vae", latent_dim=3)


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 200])
def test_sliced_runs_equal_one_run(folder: Path, rows: int) -> None:
    sliced = GraphSession(folder / "encoder.onnx", [CPU], max_run_rows=64)
    whole = GraphSession(folder / "encoder.onnx", [CPU], max_run_rows=1 << 20)
    images = np.random.default_rng(rows).random((rows, 1, 28, 28), dtype=np.float32)
    got, want = sliced.run(images), whole.run(images)
    assert [o.shape for o in got] == [(rows, 3), (rows, 3)]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_slices_keep_row_order(folder: Path) -> None:
    decoder = GraphSession(folder / "decoder.onnx", [CPU], max_run_rows=4)
    latents = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    (images,) = decoder.run(latents)
    assert images.shape == (10, 1, 28, 28)
    for i in range(10):  # each row alone gives the same image as its place in the batch
        (alone,) = decoder.run(latents[i : i + 1])
        np.testing.assert_allclose(images[i], alone[0], rtol=1e-5, atol=1e-6)


def test_run_slices_shrink_for_large_images():
    from serving.core.runtime import CPU_RUN_ROWS, cpu_run_rows

    assert cpu_run_rows(1 * 28 * 28) == CPU_RUN_ROWS
    assert cpu_run_rows(3 * 64 * 64) == CPU_RUN_ROWS
    assert cpu_run_rows(3 * 512 * 512) == 5
    assert cpu_run_rows(3 * 4096 * 4096) == 1
