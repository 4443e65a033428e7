"""docs/operations.md's metrics table lists exactly the series the server exports, with
their types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from serving.process.metrics import Metrics

DOC = Path(__file__).resolve().parents[4] / "docs" / "operations.md"
# Served by the supervisor itself (serving/process/supervisor.py), not by Metrics.
SUPERVISOR_SERIES = {"latentserve_worker_restarts_total": ("counter", ())}
# Labels the multiprocess collector adds ("liveall" gauges get the worker's pid).
ADDED_LABELS = {"latentserve_worker_up": {"pid"}}


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    text = DOC.read_text()
    table = text[text.index("| series | type | labels | meaning |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        name, kind, labels = (cell.strip() for cell in line.strip("|").split("|")[:3])
        label_names = tuple(x.strip() for x in labels.split(",") if x.strip())
        rows[name.strip("`")] = (kind, label_names)
    return rows


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    metrics = Metrics(worker=0)
    series = dict(SUPERVISOR_SERIES)
    for value in vars(metrics).values():
        if isinstance(value, (Counter, Gauge, Histogram)):
            kind = type(value).__name__.lower()
            name = value._name + ("_total" if kind == "counter" else "")
            # Per-worker series are children with the label already set: read the family.
            series[name] = (kind, tuple(value._labelnames))
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        if name not in series:
            labels = {k for s in family.samples for k in s.labels}
            series[name] = (family.type, tuple(sorted(labels - {"le"})))
    return series


def test_the_table_matches_the_exported_series() -> None:
    doc, code = documented(), exported()
    assert sorted(doc) == sorted(code)
    for name, (kind, labels) in code.items():
        assert doc[name][0] == kind, name
        assert set(doc[name][1]) == set(labels) | ADDED_LABELS.get(name, set()), name


def test_names_follow_prometheus_conventions() -> None:
    for name, (kind, _) in documented().items():
        assert re.fullmatch(r"latentserve_[a-z_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram" and "seconds" not in name:
            assert name.endswith(("_rows", "_requests")), name  # counts, not times
