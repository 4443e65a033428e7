"""`latent-bench --smoke`: the whole benchmark suite in seconds, against real servers it
starts on 127.0.0.1 with the tiny test models. Asserts that every scenario produced
numbers and that no call failed, not any speed (the CI machine is shared and noisy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentbench.cli import main

pytestmark = pytest.mark.timeout(180)


def test_smoke_run_measures_every_scenario_without_errors(
    tiny_models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "smoke.json"
    code = main(
        ["--smoke", "--models-dir", str(tiny_models_dir), "--model", "tiny-vae", "--json", str(out)]
    )
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["measurements"]

    def row(**match: object) -> dict:
        found = [r for r in rows if all(r[k] == v for k, v in match.items())]
        assert len(found) == 1, f"expected one measurement for {match}, found {len(found)}"
        return found[0]

    measured = [
        *(
            row(scenario="batch_sweep", path=p, rpc=rpc, batch=b)
            for p in ("inprocess", "grpc")
            for rpc in ("Encode", "Decode", "SampleRandom")
            for b in (1, 256)
        ),
        *(row(scenario="floor", rpc="HealthCheck", concurrency=c) for c in (1, 64)),
        *(
            row(scenario="concurrency", concurrency=c, batching=on)
            for c in (1, 8, 64)
            for on in (True, False)
        ),
        *(
            row(scenario="wire", path=p, batch=b)
            for p in ("raw_bytes", "repeated_float")
            for b in (1, 16)
        ),
    ]
    for r in measured:
        assert r["errors"] == 0, r
        assert r["requests"] >= 1 and r["images_per_s"] > 0, r
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"], r
    # The tiny graphs are not the training package's network: the torch scenario says so
    # instead of timing a different model.
    assert any(n.startswith("torch_vs_ort skipped") for n in data["notes"])
    assert data["grpc_vs_inprocess_batch256"] > 0
    assert data["batching_gain_c64"] > 0
    # What the report puts beside the batching gain.
    assert data["summary"]["batching_gain_bound"] > 0
    assert data["summary"]["inprocess_encode_batched_vs_single"] > 0
    assert data["summary"]["health_check_c64_calls_per_s"] > 0
    assert set(data["summary"]["grpc_vs_inprocess_batch256_by_rpc"]) == {
        "Encode",
        "Decode",
        "SampleRandom",
    }
    memory = data["memory"]
    assert 0 < memory["idle_before_mib"] <= memory["peak_under_load_mib"]
    assert memory["idle_after_mib"] > 0
    assert data["summary"]["errors"] == 0
