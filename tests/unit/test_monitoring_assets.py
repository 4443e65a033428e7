"""The shipped Grafana dashboard has the panels operators look for, each importable with its
data source chosen at import. (That every query returns data from a real Prometheus is
tests/integration/process/test_prometheus.py.)"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "latentserve-dashboard.json").read_text())


def panel(word: str) -> dict:
    (found,) = [p for p in DASHBOARD["panels"] if word.lower() in p["title"].lower()]
    return found


def test_the_panels_operators_need() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in DASHBOARD["panels"]}
    assert "latentserve_requests_total" in exprs[panel("throughput")["title"]]
    assert "by (code)" in exprs[panel("errors by code")["title"]]
    latency = exprs[panel("latency p50")["title"]]
    assert "histogram_quantile(0.5" in latency and "histogram_quantile(0.99" in latency
    assert "latentserve_queue_wait_seconds_bucket" in exprs[panel("queue wait")["title"]]
    assert "latentserve_batch_rows" in exprs[panel("batch size")["title"]]
    assert "by (instance, worker)" in exprs[panel("per-worker")["title"]]


def test_importable_with_a_chosen_data_source() -> None:
    (source,) = DASHBOARD["__inputs"]
    assert source["pluginId"] == "prometheus"
    uid = "${" + source["name"] + "}"
    for p in DASHBOARD["panels"]:
        assert p["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in p["targets"])
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
