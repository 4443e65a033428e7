"""A short soak (latentbench/soak.py, ~13 s): 32 concurrent clients on loopback, every RPC
including streams, every response checked against its golden (itself checked against
onnxruntime), zero errors, server RSS growth under 10% after warm-up, p99 reported.
`python -m latentbench.soak` is the long version (60 s by default).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from fixtures.servers import SubprocessServer

from latentbench.soak import MIX, SoakConfig, soak

CONFIG = SoakConfig(duration_s=10.0, warmup_s=3.0, clients=32, goldens_per_rpc=8)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_short_soak(tiny_models_dir, capsys):
    proc = SubprocessServer(tiny_models_dir, ["--default-model", "tiny-vae"]).start()
    try:
        proc.wait_for_log("ready: serving")
        report = asyncio.run(soak(proc.target, CONFIG, proc.proc.pid, tiny_models_dir))
        with capsys.disabled():
            print("\n" + report.to_text())
        assert report.error_count == 0, report.errors[:10]
        assert report.goldens_checked_against_onnxruntime > 0
        assert set(report.calls) == set(MIX), "every RPC was exercised"
        assert report.checked == report.total_calls
        assert report.total_calls > 200
        assert math.isfinite(report.latency_ms["all"]["p99"])
        assert report.rss_baseline_mib > 0
        assert report.rss_growth < CONFIG.max_rss_growth, report.to_text()
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        proc.stop()
