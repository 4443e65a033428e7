"""The suite's summary: ratios and bounds computed from the measurements of one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentbench.stats import Measurement
from latentbench.suite import SuiteConfig, SuiteResult, summarise_suite


def _rate(m: Measurement, images_per_s: float) -> Measurement:
    m.images_per_s = images_per_s
    m.requests = 10
    return m


def _run(*, encode_b1: float, encode_b256: float, health_c64: float, on: float, off: float):
    result = SuiteResult(config={}, machine={}, memory={"growth_ratio": 1.0})
    for rpc in ("Encode", "Decode", "SampleRandom"):
        for b, ip in ((1, encode_b1), (256, encode_b256)):
            result.measurements.append(_rate(Measurement("batch_sweep", "inprocess", rpc, b), ip))
            result.measurements.append(
                _rate(Measurement("batch_sweep", "grpc", rpc, b, 1, True), 0.9 * ip)
            )
    result.measurements += [
        _rate(Measurement("floor", "grpc", "HealthCheck", 1, 1, True), 2000.0),
        _rate(Measurement("floor", "grpc", "HealthCheck", 1, 64, True), health_c64),
        _rate(Measurement("concurrency", "grpc", "Encode", 1, 64, True), on),
        _rate(Measurement("concurrency", "grpc", "Encode", 1, 64, False), off),
    ]
    return summarise_suite(result, SuiteConfig(models_dir=Path("models")))


def test_gain_its_bound_and_the_model_saving() -> None:
    s = _run(encode_b1=5000, encode_b256=5900, health_c64=3400, on=1600, off=1500)
    assert s["grpc_vs_inprocess_batch256"] == pytest.approx(0.9)
    assert s["batching_gain_c64"] == pytest.approx(1600 / 1500, abs=1e-3)
    assert s["batching_gain_bound"] == pytest.approx(3400 / 1500, abs=1e-3)
    assert s["inprocess_encode_batched_vs_single"] == pytest.approx(1.18)
    assert not s["targets_met"]["batching_gain_c64 >= 4"]


def test_a_model_that_batches_well_leaves_room_for_the_target() -> None:
    # A model whose batch-1 run is ten times slower per image than a batched one (a GPU,
    # say): Encode with batching off is far below the transport's rate.
    s = _run(encode_b1=500, encode_b256=5000, health_c64=3000, on=2500, off=500)
    assert s["inprocess_encode_batched_vs_single"] == pytest.approx(10.0)
    assert s["batching_gain_bound"] == pytest.approx(6.0)
    assert s["targets_met"]["batching_gain_c64 >= 4"]
