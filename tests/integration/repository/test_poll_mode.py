"""--model-control poll against a real server on 127.0.0.1, under load from native and v2
REST callers: new versions take over with no failed call, broken and half-written versions
leave what serves untouched, removed versions go, and a policy of several versions serves
each of them without ever mixing them in one batch."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.models import build_model_folder
from fixtures.repository import (
    Load,
    http_json,
    index,
    infer_rest,
    place_broken,
    publish_tiny,
    wait_for,
)
from fixtures.servers import InProcessServer, free_port
from fixtures.slow_model import build_slow_model_folder

from latentserve.client import LatentClient, LatentServeError
from latentserve.publish import publish

POLL_S = 0.2
NAME = "tiny-vae"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    build_model_folder(root, NAME, seed=1)  # flat: version 1
    return root


@pytest.fixture
def polling(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(
        repo,
        model_control="poll",
        poll_interval_s=POLL_S,
        http_port=free_port(),
        default_model=NAME,
    ) as running:
        yield running


def state(base: str, version: int) -> str:
    """The index's state for NAME at `version` ("" while not listed)."""
    return str(index(base).get((NAME, str(version)), {}).get("state", ""))


def http_base(running: InProcessServer) -> str:
    assert running.server.http is not None
    return f"http://127.0.0.1:{running.server.http.port}"


def served_model(running: InProcessServer, version: int) -> object:
    slot = running.server.registry.slot(NAME)
    assert slot is not None
    model = slot.versions[version].model
    assert model is not None
    return model


def test_a_published_version_takes_over_under_load_with_no_failed_call(polling):
    base = http_base(polling)
    old = weakref.ref(served_model(polling, 1))
    with Load(polling.target, base, NAME) as load:
        wait_for(lambda: len(load.answers) > 20, what="calls answered by version 1")
        publish_tiny(polling.settings.models_dir, NAME, seed=2)
        first_new = wait_for(
            lambda: next((a for a in load.answers if a.version == "2"), None),
            what="a call answered by version 2",
        )
        time.sleep(0.5)
    assert not load.failures, load.failures[:5]
    assert load.versions() == {"1", "2"}
    # Once version 2 answered, it had been swapped in: no call started later got version 1.
    late_old = [a for a in load.answers if a.started > first_new.finished and a.version == "1"]
    assert not late_old
    rows = wait_for(
        lambda: (r := index(base))[(NAME, "1")]["state"] == "UNAVAILABLE" and r,
        what="version 1 retired",
    )
    assert rows[(NAME, "2")]["state"] == "READY"
    assert "version policy" in rows[(NAME, "1")]["reason"]
    # The old version's model (its sessions, batchers, arenas) is gone, not merely unused.
    gc.collect()
    assert old() is None


def test_a_broken_version_leaves_the_served_one_untouched(polling, caplog):
    caplog.set_level(logging.ERROR, logger="serving.core.repository")
    base, repo = http_base(polling), polling.settings.models_dir
    with Load(polling.target, base, NAME, native_callers=2, rest_callers=2) as load:
        place_broken(repo, NAME, 2, how="hash")
        rows = wait_for(
            lambda: (r := index(base)).get((NAME, "2"), {}).get("state") == "UNAVAILABLE" and r,
            what="version 2 refused",
        )
        assert "sha256" in rows[(NAME, "2")]["reason"]
        place_broken(repo, NAME, 3, how="shapes")
        rows = wait_for(
            lambda: (r := index(base)).get((NAME, "3"), {}).get("state") == "UNAVAILABLE" and r,
            what="version 3 refused",
        )
        assert "shape" in rows[(NAME, "3")]["reason"]
        time.sleep(3 * POLL_S)  # a few more polls: the refusals are not retried, nothing moves
    assert not load.failures, load.failures[:5]
    assert load.versions() == {"1"}
    assert rows[(NAME, "1")]["state"] == "READY"
    logged = caplog.text
    assert "version 2 refused" in logged and "sha256" in logged
    assert "version 3 refused" in logged
    # A good version after the broken ones is served: the refusals did not stick to the model.
    publish_tiny(repo, NAME, seed=4)
    wait_for(lambda: state(base, 4) == "READY", what="version 4 ready")
    with LatentClient(polling.target) as client:
        assert client.decode(np.zeros((1, 2), np.float32), model=NAME).model_version == "4"


def test_a_half_written_version_is_loaded_only_once_complete(polling, tmp_path):
    base, repo = http_base(polling), polling.settings.models_dir
    complete = build_model_folder(tmp_path / "elsewhere", NAME, seed=2)
    partial = repo / NAME / "2"
    partial.mkdir()
    shutil.copy(complete / "encoder.onnx", partial / "encoder.onnx")  # no model.json yet
    rows = wait_for(
        lambda: (r := index(base)).get((NAME, "2"), {}).get("state") == "UNAVAILABLE" and r,
        what="the partial version refused",
    )
    assert "model.json" in rows[(NAME, "2")]["reason"]
    assert rows[(NAME, "1")]["state"] == "READY"
    for name in ("decoder.onnx", "model.json"):
        shutil.copy(complete / name, partial / name)
    wait_for(lambda: state(base, 2) == "READY", what="version 2 complete")


def test_a_removed_version_folder_gives_way_to_the_one_before(polling):
    base, repo = http_base(polling), polling.settings.models_dir
    published = publish_tiny(repo, NAME, seed=2)
    wait_for(lambda: state(base, 2) == "READY", what="version 2 ready")
    os.rename(published, repo / NAME / ".removed-2")  # hidden: not a version any more
    wait_for(
        lambda: (
            (r := index(base)).get((NAME, "1"), {}).get("state") == "READY" and (NAME, "2") not in r
        ),
        what="version 1 back and version 2 gone",
    )
    with LatentClient(polling.target) as client:
        assert client.decode(np.zeros((1, 2), np.float32), model=NAME).model_version == "1"


def test_policy_all_serves_every_version_and_batches_never_mix(repo, tmp_path):
    (repo / NAME / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    publish_tiny(repo, NAME, seed=2)
    with InProcessServer(
        repo,
        model_control="poll",
        poll_interval_s=POLL_S,
        http_port=free_port(),
        max_batch_delay_ms=5.0,
    ) as running:
        base = http_base(running)
        rows = index(base)
        assert rows[(NAME, "1")]["state"] == rows[(NAME, "2")]["state"] == "READY"
        inputs = [np.full((1, 2), 0.05 * i, np.float32) for i in range(8)]
        with LatentClient(running.target) as client:
            reference = {
                (v, i): client.decode(x, model=NAME, version=v).images
                for v in (1, 2)
                for i, x in enumerate(inputs)
            }
            assert client.decode(inputs[0], model=NAME).model_version == "2"  # the newest
            info = client.get_model(NAME)
            assert [(v.version, v.state) for v in info.versions] == [(2, "READY"), (1, "READY")]
        assert not np.allclose(reference[(1, 0)], reference[(2, 0)])
        mismatches: list[tuple[int, int]] = []

        def caller(version: int, i: int) -> None:
            with LatentClient(running.target) as client:
                for _ in range(30):
                    got = client.decode(inputs[i], model=NAME, version=version)
                    if got.model_version != str(version) or not np.array_equal(
                        got.images, reference[(version, i)]
                    ):
                        mismatches.append((version, i))

        threads = [threading.Thread(target=caller, args=(v, i)) for v in (1, 2) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not mismatches
        # Every run of each version's decoder was that version's alone: its own batcher.
        registry = running.server.metrics.registry
        for version in ("1", "2"):
            labels = {"model": NAME, "graph": "decoder", "version": version}
            assert (registry.get_sample_value("latentserve_batch_requests_count", labels) or 0) > 0
        answer = infer_rest(base, f"{NAME}-decoder", inputs[1], version="1")
        assert answer["model_version"] == "1"
        status, meta = http_json(base, f"/v2/models/{NAME}-decoder")
        assert status == 200 and meta["versions"] == ["2", "1"]


def test_a_changed_version_folder_is_reloaded_with_no_failed_call(polling, tmp_path):
    """Files copied over a served version, one by one (not atomically): a poll may see them
    half copied and refuse them, the old files keep serving, and once the copy is complete
    the version is reloaded from the new files."""
    base, repo = http_base(polling), polling.settings.models_dir
    latents = np.full((1, 2), 0.3, np.float32)
    with LatentClient(polling.target) as client:
        before = client.decode(latents, model=NAME).images
    retrained = build_model_folder(tmp_path / "retrained", NAME, seed=9)
    with Load(polling.target, base, NAME, native_callers=2, rest_callers=2) as load:
        for name in ("decoder.onnx", "encoder.onnx", "model.json"):
            shutil.copy(retrained / name, repo / NAME / name)
            time.sleep(2 * POLL_S)  # a poll or two between the files
        wait_for(
            lambda: (
                state(base, 1) == "READY"
                and served_model(polling, 1).manifest.decoder.sha256  # type: ignore[attr-defined]
                == json.loads((retrained / "model.json").read_text())["decoder"]["sha256"]
            ),
            what="version 1 reloaded from the new files",
        )
    assert not load.failures, load.failures[:5]
    with LatentClient(polling.target) as client:
        after = client.decode(latents, model=NAME)
    assert after.model_version == "1" and not np.allclose(after.images, before)
    assert index(base)[(NAME, "1")]["reason"] == ""


def test_a_version_takes_no_call_while_it_loads_and_warms_up(repo, tmp_path):
    """A version with a slow warm-up: while it is LOADING, the index says so (naming the
    process), its readiness is false, a call naming it is told to retry, and calls naming
    no version are answered by the version before."""
    with InProcessServer(
        repo, model_control="poll", poll_interval_s=POLL_S, http_port=free_port(), warmup_runs=100
    ) as running:
        base = http_base(running)
        slow = build_slow_model_folder(tmp_path / "slow", NAME, matmuls=30, seed=2)
        publish(slow, repo)
        rows = wait_for(
            lambda: (r := index(base)).get((NAME, "2"), {}).get("state") == "LOADING" and r,
            timeout=20,
            what="version 2 loading",
        )
        assert "loading in pid" in rows[(NAME, "2")]["reason"]
        status, ready = http_json(base, f"/v2/models/{NAME}-decoder/versions/2/ready")
        with LatentClient(running.target) as client:
            latents = np.zeros((1, 2), np.float32)
            answered = client.decode(latents, model=NAME).model_version
            with pytest.raises(LatentServeError) as pinned:
                client.decode(latents, model=NAME, version=2)
        # Still loading after the checks (its warm-up takes seconds), so they saw LOADING.
        assert state(base, 2) == "LOADING"
        assert status == 503 and ready["ready"] is False
        assert answered == "1"
        assert pinned.value.code is grpc.StatusCode.UNAVAILABLE
        assert "loading" in pinned.value.message
        wait_for(lambda: state(base, 2) == "READY", timeout=60, what="version 2 ready")
        with LatentClient(running.target) as client:
            assert client.decode(np.zeros((1, 2), np.float32), model=NAME).model_version == "2"
