"""latent-bench's reload scenario runs end to end on a tiny model in seconds: calls are
answered by the published versions with no failure, and the report renders (no timing is
asserted)."""

from __future__ import annotations

from pathlib import Path

from latentbench.reload import ReloadResult, render_markdown, run_cycles, run_poll


def test_reload_scenario_smoke(tiny_models_dir: Path) -> None:
    source = tiny_models_dir / "tiny-vae"
    run = run_poll(source, "tiny-vae", 2, workers=1, steady_s=0.5, publishing_s=2.5, log=print)
    assert run.failed == 0 and run.calls > 0
    assert run.publishes >= 2 and run.versions_answered == run.publishes
    assert all(0 < s < 30 for s in run.publish_to_first_call_s)
    cycles = run_cycles(source, "tiny-vae", 5, log=print)
    assert cycles["cycles"] == 5 and cycles["rss_start_mib"] > 0
    text = render_markdown(ReloadResult("tiny-vae", [run], cycles), "latent-bench --reload")
    assert "| 1 |" in text and "unload/load cycles" in text
