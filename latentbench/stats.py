"""Latency and throughput summaries: one :class:`Measurement` per benchmarked configuration.

Percentiles are taken over per-call latencies; throughput is images (or latents) completed
per second of wall time over the measured window, so it counts every concurrent caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Measurement:
    """One row of the results: what was run and what it achieved."""

    scenario: str  # e.g. "batch_sweep", "concurrency", "torch_vs_ort"
    path: str  # "inprocess", "grpc", "torch", ...
    rpc: str  # "Encode", "Decode", "SampleRandom"
    batch: int  # images (latents) per call
    concurrency: int = 1
    batching: bool | None = None
    requests: int = 0
    errors: int = 0
    images_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    error_codes: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(
    base: Measurement,
    latencies_s: Sequence[float],
    window_s: float,
    error_codes: dict[str, int] | None = None,
) -> Measurement:
    """Fill `base` from per-call latencies (seconds) measured over `window_s` of wall time."""
    lat = np.asarray(latencies_s, dtype=np.float64) * 1e3
    base.requests = int(lat.size)
    base.error_codes = dict(error_codes or {})
    base.errors = sum(base.error_codes.values())
    if lat.size:
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        base.p50_ms, base.p95_ms, base.p99_ms = float(p50), float(p95), float(p99)
        base.mean_ms = float(lat.mean())
    if window_s > 0:
        base.images_per_s = lat.size * base.batch / window_s
    return base
