"""The registry checks graphs against model.json for any shape: channels, size, dynamic
sizes, latent shape and float type; a mismatch refuses the folder with both shapes named."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fixtures.models import build_shaped_model_folder

from latentserve.manifest import DynamicSize
from serving.core.registry import ModelState
from serving.core.repository import ModelRepository
from serving.process.settings import ServerSettings


def edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / "model.json"
    raw = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = raw
        for p in parents:
            target = target[p]
        target[last] = value
    path.write_text(json.dumps(raw))


async def states(root: Path) -> dict[str, tuple[ModelState, str]]:
    settings = ServerSettings(models_dir=root, metrics_port=0, warmup_runs=1)
    with ThreadPoolExecutor(1) as executor:
        registry = ModelRepository(settings, executor)
        registry.scan()
        await registry.load_all()
        result = {e.name: (e.state, e.error) for e in registry.entries}
        await registry.close()
    return result


async def test_graphs_that_disagree_with_the_spec_are_refused(tmp_path):
    build_shaped_model_folder(tmp_path, "ok", image_shape=(3, 32, 32), latent_shape=(4, 8, 8))
    grey = build_shaped_model_folder(tmp_path, "grey", image_shape=(3, 32, 32), latent_shape=(4,))
    edit_manifest(grey, image__channels=1)
    small = build_shaped_model_folder(tmp_path, "small", image_shape=(1, 20, 36), latent_shape=(3,))
    edit_manifest(small, image__width=20)
    spatial = build_shaped_model_folder(
        tmp_path, "spatial", image_shape=(3, 32, 32), latent_shape=(4, 8, 8)
    )
    edit_manifest(spatial, latent__shape=[2, 8, 8], prior__fitted_gaussian__mean=[0.0, 0.0],
                  prior__fitted_gaussian__covariance=[[1.0, 0.0], [0.0, 1.0]],
                  prior__bounding_box__low=[-1.0, -1.0], prior__bounding_box__high=[1.0, 1.0])  # fmt: skip
    half = build_shaped_model_folder(
        tmp_path, "half", image_shape=(1, 8, 8), latent_shape=(2,), float16=True
    )
    edit_manifest(half, image__dtype="float32")
    fixed = build_shaped_model_folder(
        tmp_path, "fixed", image_shape=(1, 16, 16), latent_shape=(2, 4, 4)
    )
    edit_manifest(fixed, image__dynamic={"multiple": 4, "min": 8, "max": 64})
    found = await states(tmp_path)
    assert found["ok"][0] is ModelState.READY, found["ok"]
    for name, fragments in {
        "grey": ["[N, 1, 32, 32]", "'N', 3, 32, 32"],
        "small": ["[N, 1, 20, 20]", "image 1 x 20 x 20"],
        "spatial": ["latent 2 x 8 x 8", "[N, 2, 8, 8]"],
        "half": ["float16", "image.dtype 'float32'"],
        "fixed": ["[N, 1, ?, ?]", "multiples of 4"],
    }.items():
        state, error = found[name]
        assert state is ModelState.FAILED, name
        for fragment in fragments:
            assert fragment in error, (name, error)


async def test_dynamic_and_float16_graphs_that_agree_are_served(tmp_path):
    build_shaped_model_folder(
        tmp_path, "dyn", image_shape=(1, 16, 16), latent_shape=(2, 4, 4),
        dynamic=DynamicSize(multiple=4, min=8, max=64),
    )  # fmt: skip
    build_shaped_model_folder(
        tmp_path, "half", image_shape=(3, 8, 8), latent_shape=(2,), float16=True
    )
    found = await states(tmp_path)
    assert {n: s for n, (s, _) in found.items()} == {
        "dyn": ModelState.READY,
        "half": ModelState.READY,
    }


async def test_a_fixed_batch_of_one_runs_row_by_row_and_other_fixed_batches_are_refused(tmp_path):
    import numpy as np

    from serving.core.runtime import CPU, GraphSession

    one = build_shaped_model_folder(
        tmp_path, "one", image_shape=(3, 16, 16), latent_shape=(2, 4, 4), batch=1
    )
    build_shaped_model_folder(
        tmp_path, "two", image_shape=(3, 16, 16), latent_shape=(2, 4, 4), batch=2
    )
    found = await states(tmp_path)
    assert found["one"][0] is ModelState.READY, found["one"]
    assert found["two"][0] is ModelState.FAILED
    assert "fixed batch of 2" in found["two"][1]
    session = GraphSession(one / "encoder.onnx", [CPU])
    assert session.max_run_rows == 1
    x = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    rows = np.concatenate([session.run(x[i : i + 1])[0] for i in range(3)])
    np.testing.assert_array_equal(session.run(x)[0], rows)


async def test_large_images_get_smaller_run_slices_and_batches(tmp_path):
    build_shaped_model_folder(tmp_path, "big", image_shape=(3, 512, 512), latent_shape=(2, 64, 64))
    settings = ServerSettings(models_dir=tmp_path, metrics_port=0, warmup_runs=1)
    with ThreadPoolExecutor(1) as executor:
        registry = ModelRepository(settings, executor)
        registry.scan()
        await registry.load_all()
        model = registry.resolve("big")
        assert model.encoder.max_run_rows == model.decoder.max_run_rows == 5
        assert model._encoder_batcher.max_batch_size == 21
        await registry.close()
