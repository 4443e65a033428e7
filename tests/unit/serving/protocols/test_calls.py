"""The call tracker every front end shares: drain, metrics labels, and which status a
failure is answered with (protocol-neutral core, no gRPC server involved)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from latentserve.tensors import TensorError
from serving.core.errors import not_found
from serving.process.metrics import Metrics
from serving.protocols.calls import UNKNOWN_MODEL_LABEL, CallTracker, Refused, bounded


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def tracker(metrics: Metrics) -> CallTracker:
    return CallTracker(metrics, lambda: "default-model")


def count(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels` (any version)."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_an_answered_call_is_counted_under_its_resolved_model(tracker, metrics):
    call = tracker.begin("Encode", "")
    assert call.model == "default-model" and tracker.in_flight == 1
    call.model, call.samples = "tiny-vae", 3
    assert tracker.end(call) is None
    assert tracker.in_flight == 0
    labels = {"model": "tiny-vae", "method": "Encode"}
    assert count(metrics, "latentserve_requests_total", **labels) == 1
    assert count(metrics, "latentserve_samples_total", **labels) == 3


def test_failures_map_to_statuses_and_bounded_labels(tracker, metrics):
    call = tracker.begin("Decode", "no-such-model")
    status = tracker.end(call, not_found("unknown model 'no-such-model'"))
    assert status is not None and status.code is grpc.StatusCode.NOT_FOUND
    # An unknown name never becomes a label value.
    assert count(
        metrics,
        "latentserve_request_errors_total",
        model=UNKNOWN_MODEL_LABEL,
        method="Decode",
        code="NOT_FOUND",
    )
    status = tracker.end(tracker.begin("Encode", "m"), TensorError("images: bad bytes"))
    assert status is not None and status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.message == "images: bad bytes"
    status = tracker.end(tracker.begin("Encode", "m"), ZeroDivisionError("boom"))
    assert status is not None and status.code is grpc.StatusCode.INTERNAL
    assert status.message == "internal error: ZeroDivisionError: boom"
    assert tracker.in_flight == 0


def test_a_cancel_near_the_deadline_counts_as_deadline_exceeded(tracker, metrics):
    near, far = tracker.begin("SampleRandom", "m"), tracker.begin("SampleRandom", "m")
    assert tracker.end(near, asyncio.CancelledError(), time_remaining=0.01) is None
    assert tracker.end(far, asyncio.CancelledError(), time_remaining=30.0) is None
    errors = "latentserve_request_errors_total"
    labels = {"model": "m", "method": "SampleRandom"}
    assert count(metrics, errors, code="DEADLINE_EXCEEDED", **labels) == 1
    assert count(metrics, errors, code="CANCELLED", **labels) == 1


async def test_drain_waits_for_accepted_calls_then_refuses_new_ones(tracker, metrics):
    call = tracker.begin("Encode", "m")
    draining = asyncio.create_task(tracker.drain(timeout=5.0))
    await asyncio.sleep(0.01)
    assert not draining.done()
    with pytest.raises(Refused) as refused:
        tracker.begin("Encode", "made-up-name")
    assert refused.value.status.code is grpc.StatusCode.UNAVAILABLE
    tracker.end(call)
    assert await draining is True
    labels = {"model": UNKNOWN_MODEL_LABEL, "method": "Encode", "code": "UNAVAILABLE"}
    assert count(metrics, "latentserve_request_errors_total", **labels) == 1


async def test_drain_with_nothing_in_flight_is_done_even_with_no_time(tracker):
    # A server stopping with no grace (e.g. one that found no model) has nothing to wait for.
    assert await tracker.drain(timeout=0) is True
    assert tracker.draining


async def test_drain_gives_up_after_its_timeout(tracker):
    tracker.begin("Encode", "m")
    assert await tracker.drain(timeout=0.01) is False


def test_long_messages_keep_both_ends_within_the_limit():
    message = "unknown model 'x" + "x" * 100_000 + "'; available models: a, b"
    cut = bounded(message, limit=200)
    assert len(cut.encode()) < 260
    assert cut.startswith("unknown model") and cut.endswith("available models: a, b")
    assert bounded("short") == "short"


async def test_settled_waits_for_the_calls_admitted_before_it_only(tracker):
    first = tracker.begin("Encode", "m")
    settled = asyncio.ensure_future(tracker.settled())
    await asyncio.sleep(0)
    later = tracker.begin("Encode", "m")  # admitted after: settled does not wait for it
    assert not settled.done()
    tracker.end(first)
    await asyncio.wait_for(settled, 1.0)
    assert tracker.in_flight == 1
    tracker.end(later)
    await asyncio.wait_for(tracker.settled(), 1.0)  # nothing in flight: at once
