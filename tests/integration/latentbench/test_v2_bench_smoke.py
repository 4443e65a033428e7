"""latent-bench's v2 scenario runs end to end on a tiny model in seconds: every path answers
the checked number of rows with no error, and the summary holds the ratios the report
reads (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

from latentbench.v2 import CONFIGS, PATHS, V2Config, markdown, run_v2_scenario


def test_v2_scenario_smoke(tiny_models_dir: Path) -> None:
    config = V2Config(
        models_dir=tiny_models_dir,
        model="tiny-vae",
        rounds=1,
        warmup_s=0.05,
        duration_s=0.2,
        server_flags=("--default-model", "tiny-vae"),
    )
    result = run_v2_scenario(config, log=lambda line: None)
    assert result["problems"] == []
    measurements = result["measurements"]
    assert {(m["path"], m["batch"], m["concurrency"]) for m in measurements} == {
        (path, rows, callers) for path in PATHS for rows, callers in CONFIGS
    }
    assert all(m["requests"] > 0 and m["errors"] == 0 for m in measurements)
    summary = result["summary"]
    assert summary["errors"] == 0
    assert summary["v2_grpc_vs_native_batch256"] is not None
    assert set(result["server_cpu_ms_per_image"]) == {
        f"{path} batch{rows} c{callers}" for path in PATHS for rows, callers in CONFIGS
    }
    assert "v2 gRPC / native at batch 256" in markdown(result, "latent-bench --v2")
