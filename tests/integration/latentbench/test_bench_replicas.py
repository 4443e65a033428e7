"""latent-bench's `replicas` scenario runs end to end in seconds (tiny model, short windows):
every configuration measured, no errors, the summary and the Markdown table written."""

from __future__ import annotations

import json

import pytest

from latentbench.envoyproc import envoy_binary
from latentbench.replicas import main

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="no Envoy binary (envoy extra)")


def test_replicas_scenario_smoke(tiny_models_dir, tmp_path):
    code = main(
        [
            "--models-dir", str(tiny_models_dir), "--model", "tiny-vae",
            "--duration", "0.2", "--warmup", "0.05", "--rounds", "1",
            "--client-processes", "1", "--results-dir", str(tmp_path), "--rolling-calls", "3000",
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads((tmp_path / "replicas.json").read_text())
    paths = {(r["path"], r["replicas"], r["concurrency"]) for r in data["rows"]}
    assert paths == {
        ("direct", 1, 1),
        ("envoy", 1, 1),
        ("direct", 1, 64),
        ("envoy", 1, 64),
        ("envoy", 3, 64),
    }
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in data["rows"])
    assert data["rows"][-1]["envoy_calls"] > 0
    assert "envoy_added_p50_ms_c1" in data["summary"]
    assert "| envoy | 3 | 64 |" in (tmp_path / "replicas.md").read_text()
    rolling = data["summary"]["rolling_restart"]
    assert [r["path"] for r in rolling] == ["envoy", "client"]
    assert all(r["calls"] >= 3000 and r["failed"] == 0 for r in rolling), rolling
    assert "| Envoy (shipped config) |" in (tmp_path / "replicas.md").read_text()
