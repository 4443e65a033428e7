"""RESULTS.md and the plots for a full run: tables per scenario, the summary against the
targets, the exact command and the machine. Plots need matplotlib (the train extra); without
it the report says so and keeps the tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from latentbench.stats import Measurement
from latentbench.suite import RPCS, WIRE_NOTE, SuiteResult

THROUGHPUT_PNG = "throughput_vs_batch.png"
LATENCY_PNG = "latency_vs_concurrency.png"


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _lat(m: Measurement) -> list[str]:
    return [_fmt(m.p50_ms), _fmt(m.p95_ms), _fmt(m.p99_ms)]


def plot(result: SuiteResult, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    return [_plot_throughput(result, folder), _plot_latency(result, folder)]


def _plot_throughput(result: SuiteResult, folder: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RPCS), figsize=(5 * len(RPCS), 4), sharey=True)
    for ax, rpc in zip(axes, RPCS, strict=True):
        for path, style in (("inprocess", "o-"), ("grpc", "s--")):
            ms = sorted(
                (
                    m
                    for m in result.measurements
                    if m.scenario == "batch_sweep" and m.rpc == rpc and m.path == path
                ),
                key=lambda m: m.batch,
            )
            label = "in-process onnxruntime" if path == "inprocess" else "gRPC (1 caller)"
            ax.plot([m.batch for m in ms], [m.images_per_s for m in ms], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(rpc)
        ax.set_xlabel("batch size (images per call)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("images / s")
    axes[0].legend()
    fig.suptitle(f"Throughput vs batch size ({result.config['model']})")
    fig.tight_layout()
    written = folder / THROUGHPUT_PNG
    fig.savefig(written, dpi=110)
    plt.close(fig)
    return written


def _plot_latency(result: SuiteResult, folder: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for batching, style, color in ((True, "o-", "C0"), (False, "s--", "C1")):
        ms = sorted(
            (
                m
                for m in result.measurements
                if m.scenario == "concurrency" and m.batching is batching
            ),
            key=lambda m: m.concurrency,
        )
        label = f"batching {'on' if batching else 'off'}"
        xs = [m.concurrency for m in ms]
        left.plot(xs, [m.p50_ms for m in ms], style, color=color, label=f"{label}, p50")
        left.plot(
            xs,
            [m.p99_ms for m in ms],
            ":",
            marker=style[0],
            color=color,
            alpha=0.6,
            label=f"{label}, p99",
        )
        right.plot(xs, [m.images_per_s for m in ms], style, color=color, label=label)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent single-image Encode callers")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    left.set_yscale("log")
    right.set_ylim(bottom=0)
    left.set_ylabel("latency (ms)")
    right.set_ylabel("images / s")
    fig.suptitle("Latency and throughput vs concurrency")
    fig.tight_layout()
    written = folder / LATENCY_PNG
    fig.savefig(written, dpi=110)
    plt.close(fig)
    return written


def render(result: SuiteResult, plots: bool) -> str:
    """RESULTS.md: the header, then one section per scenario, in the order the suite runs."""
    out = _section_header(result)
    out += _section_summary(result)
    out += _section_batch_sweep(result, plots)
    out += _section_concurrency(result, plots)
    out += _section_torch_vs_ort(result)
    out += _section_wire(result)
    out += _section_memory(result)
    out += _section_notes(result)
    return "\n".join(out) + "\n"


def _section_header(result: SuiteResult) -> list[str]:
    c, mach = result.config, result.machine
    return [
        "# latentserve benchmark results",
        "",
        f"Written by `latent-bench` on "
        f"{mach.get('finished_utc') or f'{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}'} UTC "
        f"in {result.seconds:.0f} s. Reproduce with:",
        "",
        "```",
        c.get("command", "latent-bench"),
        "```",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores; Python {mach['python']}, "
        f"onnxruntime {mach['onnxruntime']}, grpcio {mach['grpcio']}, numpy {mach['numpy']}. "
        f"Load average (1/5/15 min) {mach['load_average_at_start']} at the start and "
        f"{mach.get('load_average_at_end')} at the end: the machine is shared, so absolute "
        "numbers move between runs; the ratios compare configurations measured back to back "
        "in the same run.",
        "",
        f"Model `{c['model']}`; each configuration warmed up {c['warmup_s']} s, then measured "
        f"for {c['duration_s']} s (at least {c['min_requests']} calls), in-process and gRPC "
        f"(and batching on and off) alternating in {c.get('rounds', 1)} rounds. gRPC load comes from "
        f"{c['client_processes']} load-generator processes on 127.0.0.1.",
        "",
    ]


def _section_summary(result: SuiteResult) -> list[str]:
    s = result.summary
    top = max(result.config["concurrencies"])
    out = ["## Summary", ""]
    by_rpc = s.get("grpc_vs_inprocess_batch256_by_rpc", {})
    off = result.find(scenario="concurrency", concurrency=top, batching=False)
    off_rate = off.images_per_s if off else float("nan")
    rows = [
        [
            "gRPC / in-process throughput at batch 256 (lowest RPC)",
            f"{s.get('grpc_vs_inprocess_batch256')}"
            + (" (" + ", ".join(f"{k} {v}" for k, v in by_rpc.items()) + ")" if by_rpc else ""),
            ">= 0.8",
        ],
        [
            f"batching gain, {top} single-image Encode callers (on / off)",
            f"{s.get(f'batching_gain_c{top}')}",
            ">= 4",
        ],
        [
            "for reference: the most batching can gain here, health checks/s (no model) at "
            f"{top} callers / Encode calls/s with batching off",
            f"{s.get('batching_gain_bound')} "
            f"({_fmt(s.get(f'health_check_c{top}_calls_per_s', float('nan')))} / "
            f"{_fmt(off_rate)})",
            "",
        ],
        [
            "for reference: what batching saves in the model, in-process Encode img/s at the "
            "best batch size / at batch 1",
            f"{s.get('inprocess_encode_batched_vs_single')}",
            "",
        ],
        [
            f"p99 latency at {top} callers, batching on / off (ms)",
            f"{s.get(f'p99_ms_c{top}_batching_on')} / {s.get(f'p99_ms_c{top}_batching_off')}",
            "reported",
        ],
        [
            "single-image Encode p50 at 1 caller, batching on / off (ms)",
            f"{s.get('encode_c1_p50_ms')} / {s.get('encode_c1_p50_ms_batching_off')}",
            "< 1",
        ],
        [
            "for reference: health check p50 at 1 caller, the gRPC round-trip floor (ms)",
            f"{s.get('health_check_c1_p50_ms')}",
            "",
        ],
        [
            "server RSS idle after the run / after warm-up traffic",
            f"{s.get('rss_growth_ratio')}",
            "<= 1.1",
        ],
        ["failed calls", f"{s.get('errors')}", "0"],
    ]
    out += _table(["metric", "measured", "target"], rows)
    met = s.get("targets_met", {})
    out += ["", "Targets met: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in met.items())]
    return out


def _section_batch_sweep(result: SuiteResult, plots: bool) -> list[str]:
    out = ["", "## Batch size: in-process onnxruntime vs gRPC", ""]
    if plots:
        out += [f"![throughput vs batch size]({THROUGHPUT_PNG})", ""]
    rows = []
    for rpc in RPCS:
        for b in result.config["batch_sizes"]:
            ip = result.find(scenario="batch_sweep", path="inprocess", rpc=rpc, batch=b)
            g = result.find(scenario="batch_sweep", path="grpc", rpc=rpc, batch=b)
            if ip is None or g is None:
                continue
            ratio = g.images_per_s / ip.images_per_s if ip.images_per_s else float("nan")
            rows.append(
                [
                    rpc,
                    str(b),
                    _fmt(ip.images_per_s),
                    *_lat(ip),
                    _fmt(g.images_per_s),
                    *_lat(g),
                    f"{ratio:.2f}",
                    str(g.errors),
                ]
            )
    out += _table(
        [
            "RPC",
            "batch",
            "in-process img/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "gRPC img/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "gRPC / in-process",
            "errors",
        ],
        rows,
    )
    return out


def _section_concurrency(result: SuiteResult, plots: bool) -> list[str]:
    out = ["", "## Concurrency: single-image Encode, batching on vs off", ""]
    if plots:
        out += [f"![latency vs concurrency]({LATENCY_PNG})", ""]
    rows = []
    for m in sorted(
        (m for m in result.measurements if m.scenario == "concurrency"),
        key=lambda m: (m.concurrency, not m.batching),
    ):
        rows.append(
            [
                str(m.concurrency),
                "on" if m.batching else "off",
                _fmt(m.images_per_s),
                *_lat(m),
                str(m.requests),
                str(m.errors),
            ]
        )
    out += _table(
        ["callers", "batching", "img/s", "p50 ms", "p95 ms", "p99 ms", "calls", "errors"], rows
    )
    return out


def _section_torch_vs_ort(result: SuiteResult) -> list[str]:
    out = ["", "## onnxruntime vs PyTorch eager (in-process, one caller)", ""]
    tv = [m for m in result.measurements if m.scenario == "torch_vs_ort"]
    if tv:
        rows = []
        for rpc in ("Encode", "Decode"):
            for b in result.config["torch_batch_sizes"]:
                o = result.find(scenario="torch_vs_ort", path="onnxruntime", rpc=rpc, batch=b)
                t = result.find(scenario="torch_vs_ort", path="torch", rpc=rpc, batch=b)
                if o and t:
                    rows.append(
                        [
                            rpc,
                            str(b),
                            _fmt(o.images_per_s),
                            _fmt(o.p50_ms),
                            _fmt(t.images_per_s),
                            _fmt(t.p50_ms),
                            f"{o.images_per_s / t.images_per_s:.2f}",
                        ]
                    )
        out += _table(
            [
                "graph",
                "batch",
                "onnxruntime img/s",
                "p50 ms",
                "torch img/s",
                "p50 ms",
                "onnxruntime / torch",
            ],
            rows,
        )
    out += ["", *[f"- {n}" for n in result.notes if n.startswith("torch_vs_ort")]]
    return out


def _section_wire(result: SuiteResult) -> list[str]:
    out = [
        "",
        "## Tensor encoding: raw bytes vs repeated float",
        "",
        "Serialise a numpy batch into a message and parse it back (what client and "
        "server each pay per tensor), no network. Both encodings are the same size on the "
        "wire (proto3 packs repeated floats at 4 bytes each); what repeated floats cost is "
        "converting every element to and from a Python float.",
        "",
    ]
    rows = []
    for b in result.config["wire_batch_sizes"]:
        raw = result.find(scenario="wire", path="raw_bytes", batch=b)
        rep = result.find(scenario="wire", path="repeated_float", batch=b)
        if raw and rep:
            rows.append(
                [
                    str(b),
                    _fmt(raw.p50_ms * 1e3),
                    _fmt(rep.p50_ms * 1e3),
                    f"{rep.p50_ms / raw.p50_ms:.0f}x",
                    f"{raw.note.removesuffix(WIRE_NOTE)} / {rep.note.removesuffix(WIRE_NOTE)}",
                ]
            )
    out += _table(
        [
            "images",
            "raw bytes p50 µs",
            "repeated float p50 µs",
            "slower by",
            "bytes on the wire, raw / repeated",
        ],
        rows,
    )
    return out


def _section_memory(result: SuiteResult) -> list[str]:
    mem = result.memory
    out = ["", "## Server memory (RSS, batching-on server)", ""]
    out += [
        "Idle at start is right after the server reported ready. The baseline (before) is "
        "taken after a few warm-up calls of every kind the run makes, so that one-time "
        "allocations (per-thread scratch buffers, the allocator's high-water mark for the "
        "largest messages) do not count as growth; after is idle once every measurement "
        "is done.",
        "",
    ]
    out += _table(
        [
            "idle at start (MiB)",
            "before: after warm-up (MiB)",
            "peak under load (MiB)",
            "idle after the run (MiB)",
            "after / before",
        ],
        [
            [
                _fmt(mem.get("idle_cold_mib", 0)),
                _fmt(mem.get("idle_before_mib", 0)),
                _fmt(mem.get("peak_under_load_mib", 0)),
                _fmt(mem.get("idle_after_mib", 0)),
                f"{mem.get('growth_ratio', 0):.3f}",
            ]
        ],
    )
    return out


def _section_notes(result: SuiteResult) -> list[str]:
    other = [n for n in result.notes if not n.startswith("torch_vs_ort")]
    if other:
        return ["", "## Notes", "", *[f"- {n}" for n in other]]
    return []


def write_report(result: SuiteResult, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plots = True
    try:
        written += plot(result, folder)
    except ImportError:
        plots = False
        result.notes.append("plots skipped: matplotlib is not installed (pip install matplotlib)")
    md = folder / "RESULTS.md"
    md.write_text(render(result, plots))
    return [md, *written]
