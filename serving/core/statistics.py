"""Per-model inference statistics, in the shape of Triton's statistics extension.

One :class:`GraphStatistics` per (model, version, role), where the role is ``encoder``,
``decoder`` (a graph each) or ``sampler`` (SampleRandom: draws, then the decoder graph).
The model (serving.core.model) records each request that reached it: success or failure with
its duration there, and on success the request's :class:`RequestTiming` as the batcher
filled it in (queue wait, input preparation, the onnxruntime run, handing out the output
rows; a request batched with others gets its batch's figures, as in Triton). The batcher
records each execution of its graph by batch size (rows per run).

Everything is plain integers (nanoseconds, counts) touched on the event-loop thread only,
so recording costs a few additions per request. :class:`StatisticsBook` holds a server's
figures; `snapshot()` flattens them into one dict per key and adds what `peers` returns
(the process layer gives worker processes the other workers' figures that way).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# (model, version, role)
StatKey = tuple[str, str, str]
# One key's figures: "success.count", "queue.ns", "inference_count", "last_inference" (ms
# since the epoch), "batch.<rows>.compute_infer.ns", ...
Counts = dict[str, int]
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")
ROLES = ("encoder", "decoder", "sampler")


@dataclass(slots=True)
class RequestTiming:
    """One request's time in the batcher, in nanoseconds, filled in as it runs (a sampled
    request adds up its chunks). `trace` is an opaque handle for the tracing hooks."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    trace: object = None


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass(slots=True)
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class GraphStatistics:
    """Cumulative figures of one (model, version, role) since the process started."""

    __slots__ = (
        "compute_infer",
        "compute_input",
        "compute_output",
        "execution_count",
        "fail",
        "inference_count",
        "last_inference_ms",
        "queue",
        "sizes",
        "success",
    )

    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0  # rows answered by successful requests
        self.execution_count = 0  # graph runs (one per batch)
        self.last_inference_ms = 0
        self.sizes: dict[int, BatchDurations] = {}

    def succeeded(self, rows: int, total_ns: int, timing: RequestTiming) -> None:
        self.success.add(total_ns)
        self.queue.add(timing.queue_ns)
        self.compute_input.add(timing.input_ns)
        self.compute_infer.add(timing.infer_ns)
        self.compute_output.add(timing.output_ns)
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def failed(self, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def executed(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.execution_count += 1
        size = self.sizes.get(rows)
        if size is None:
            size = self.sizes[rows] = BatchDurations()
        size.compute_input.add(input_ns)
        size.compute_infer.add(infer_ns)
        size.compute_output.add(output_ns)

    def chunk_ran(self) -> None:
        """A sampler's decode of one chunk (its executions are the decoder graph's)."""
        self.execution_count += 1

    def counts(self) -> Counts:
        out: Counts = {
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "last_inference": self.last_inference_ms,
        }
        for name in DURATIONS:
            duration: Duration = getattr(self, name)
            out[f"{name}.count"] = duration.count
            out[f"{name}.ns"] = duration.ns
        for rows, size in self.sizes.items():
            for name in BATCH_DURATIONS:
                duration = getattr(size, name)
                out[f"batch.{rows}.{name}.count"] = duration.count
                out[f"batch.{rows}.{name}.ns"] = duration.ns
        return out


def merge(into: dict[StatKey, Counts], more: Iterable[tuple[StatKey, Counts]]) -> None:
    """Add `more` to `into`: sums, except the latest last_inference."""
    for key, counts in more:
        mine = into.setdefault(key, {})
        for name, value in counts.items():
            if name == "last_inference":
                mine[name] = max(mine.get(name, 0), value)
            else:
                mine[name] = mine.get(name, 0) + value


class StatisticsBook:
    """A server's statistics, one :class:`GraphStatistics` per (model, version, role)."""

    def __init__(self) -> None:
        self._graphs: dict[StatKey, GraphStatistics] = {}
        # Other processes' figures to add to this one's (set by the process layer).
        self.peers: Callable[[], Iterable[tuple[StatKey, Counts]]] | None = None

    def graph(self, model: str, version: str, role: str) -> GraphStatistics:
        key = (model, version, role)
        stats = self._graphs.get(key)
        if stats is None:
            stats = self._graphs[key] = GraphStatistics()
        return stats

    def own(self) -> list[tuple[StatKey, Counts]]:
        """This process's figures."""
        return [(key, stats.counts()) for key, stats in self._graphs.items()]

    def snapshot(self) -> dict[StatKey, Counts]:
        """Every figure so far, this process's plus its peers'."""
        merged: dict[StatKey, Counts] = {}
        merge(merged, self.own())
        if self.peers is not None:
            merge(merged, self.peers())
        return merged
