"""`latent-bench --overhead` end to end in seconds with the tiny models: a real server,
h2load (or the Python load generator) and /proc. Asserts that both kinds of call were
measured, without errors, and that the figures are consistent, not any speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentbench.cli import main

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc"),
]


def test_overhead_run_measures_health_and_encode(tiny_models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    argv = ["--overhead", "--models-dir", str(tiny_models_dir), "--model", "tiny-vae"]
    code = main([*argv, "--duration", "0.5", "--warmup", "0.2", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    for kind in ("health", "encode"):
        run = data[kind]
        assert run["calls"] > 0 and run["calls_per_s"] > 0, run
        assert run["cpu_ms_per_call"] > 0 and run["errors"] == {}, run
        assert len(run["rounds_ms"]) == 3
    assert data["encode"]["requests_per_batch"] >= 1
    expected = (
        data["encode"]["cpu_ms_per_call"]
        - data["health"]["cpu_ms_per_call"]
        - data["model_cpu_ms_per_image"]
    )
    assert data["overhead_ms"] == pytest.approx(expected, abs=1e-3)
    assert data["met"] == (data["overhead_ms"] <= data["target_ms"])
