"""`latent-bench`: run the benchmark suite against servers it starts on 127.0.0.1.

    latent-bench --quick                  # ~1 minute; writes benchmarks/quick.json
    latent-bench                          # full run; writes RESULTS.md, results.json, plots
    latent-bench --smoke --models-dir D   # seconds; what the test suite runs

Nothing here talks to anything but loopback servers it started itself, and every
measurement is bounded in time and in request count.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from latentbench.suite import QUICK, SMOKE, Suite, SuiteConfig, SuiteResult, summarise_suite

# Results are data, not code: they go to the benchmarks/ folder of the working directory.
HERE = Path("benchmarks")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latent-bench", description=__doc__.split("\n\n")[0])
    _add_modes(p)
    _add_options(p)
    return p


def _add_modes(p: argparse.ArgumentParser) -> None:
    """What to run: the whole suite (no flag), a short form of it, or one scenario."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short run (< 60 s), JSON only")
    mode.add_argument("--smoke", action="store_true", help="seconds-long run for tests")
    mode.add_argument(
        "--replicas",
        action="store_true",
        help="only the replicas scenario: direct vs through Envoy at 1 and 64 callers, 1 "
        "replica vs 3 (latentbench/replicas.py); writes benchmarks/replicas.json and .md",
    )
    mode.add_argument(
        "--v2",
        action="store_true",
        help="only the protocols scenario: native Decode vs Open Inference Protocol gRPC and "
        "REST (binary, JSON) at batch 1 and 256 and 64 callers (latentbench/v2.py); writes "
        "benchmarks/v2.json and v2.md",
    )
    mode.add_argument(
        "--overhead",
        action="store_true",
        help="only server CPU per call, health checks vs single-image Encode at 64 streams "
        "(latentbench/overhead.py); writes benchmarks/overhead.json",
    )
    mode.add_argument(
        "--workers",
        action="store_true",
        help="only the workers scenario: 1 vs 2 vs auto server processes on one port, "
        "Encode and Decode at 64 h2load streams (latentbench/workers.py); writes "
        "benchmarks/workers.json and workers.md",
    )
    mode.add_argument(
        "--heavy",
        action="store_true",
        help="only the compute-heavy scenario: a generated RGB 3 x 64 x 64 conv VAE, gRPC vs "
        "in-process at batch 64, batching gain at 64 single-image callers, intra-op threads "
        "vs processes (latentbench/heavy.py); writes benchmarks/heavy.json and heavy.md",
    )
    mode.add_argument(
        "--reload",
        action="store_true",
        help="only the reload scenario: 64 native + REST callers while a new version is "
        "published every 2 s in poll mode, 1 and 2 workers, then RSS over 100 unload/load "
        "cycles (latentbench/reload.py); --warmup is the steady phase [10 s], --duration the "
        "publishing phase [60 s]; writes benchmarks/reload.json and reload.md",
    )


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="mnist-vae", help="model to benchmark [%(default)s]")
    p.add_argument("--json", type=Path, help="where to write the JSON results")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=HERE,
        help="full runs: folder for RESULTS.md and the plots [%(default)s]",
    )
    p.add_argument("--duration", type=float, help="seconds measured per configuration")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per configuration")
    p.add_argument("--client-processes", type=int, default=2, help="load-generator processes")
    p.add_argument(
        "--channels",
        type=int,
        help="gRPC channels per load-generator process, each its own connection (a local "
        "subchannel pool), so a --workers N server's processes share the load "
        "[1; the workers scenario's Python fallback: 4]",
    )
    p.add_argument(
        "--server-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra latent-serve flag for both servers, e.g. --server-flag=--max-batch-delay-ms=1",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=SuiteConfig.intra_op_threads,
        help="for the in-process ceiling; match the servers' [%(default)s]",
    )
    p.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="only re-render RESULTS.md and the plots from a saved full-run JSON (its "
        "summary is recomputed from the measurements and saved back)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    if args.replicas:
        return _replicas(args)
    if args.v2:
        return _v2(args, given)
    if args.workers:
        return _workers(args, given)
    if args.heavy:
        return _heavy(args)
    if args.reload:
        from latentbench.reload import main_reload

        return main_reload(args, " ".join(["latent-bench", shlex.join(given)]))
    if args.overhead:
        return _overhead(args)
    if args.report_from:
        return _report_from(args)
    config = _suite_config(args)
    if not (config.models_dir / config.model / "model.json").is_file():
        print(
            f"latent-bench: no model {config.model!r} under {config.models_dir} "
            "(give --models-dir and --model)",
            file=sys.stderr,
        )
        return 2
    return _suite(config, args, given)


def _replicas(args: argparse.Namespace) -> int:
    from latentbench.replicas import main as main_replicas

    forwarded = ["--models-dir", str(args.models_dir), "--model", args.model]
    forwarded += ["--client-processes", str(args.client_processes)]
    forwarded += ["--results-dir", str(args.results_dir)]
    if args.duration is not None:
        forwarded += ["--duration", str(args.duration)]
    if args.warmup is not None:
        forwarded += ["--warmup", str(args.warmup)]
    return main_replicas(forwarded)


def _v2(args: argparse.Namespace, given: list[str]) -> int:
    from latentbench.v2 import main_v2

    return main_v2(args, " ".join(["latent-bench", shlex.join(given)]))


def _heavy(args: argparse.Namespace) -> int:
    from latentbench.heavy import main as main_heavy

    forwarded = ["--client-processes", str(args.client_processes)]
    forwarded += ["--results-dir", str(args.results_dir)]
    if args.duration is not None:
        forwarded += ["--duration", str(args.duration)]
    if args.warmup is not None:
        forwarded += ["--warmup", str(args.warmup)]
    return main_heavy(forwarded)


def _workers(args: argparse.Namespace, given: list[str]) -> int:
    from latentbench.workers import main_workers

    return main_workers(args, " ".join(["latent-bench", shlex.join(given)]))


def _report_from(args: argparse.Namespace) -> int:
    from latentbench.report import write_report

    saved = SuiteResult.from_dict(json.loads(args.report_from.read_text()))
    concurrencies = tuple(saved.config["concurrencies"])
    saved.summary = summarise_suite(
        saved,
        SuiteConfig(models_dir=Path(saved.config["models_dir"]), concurrencies=concurrencies),
    )
    args.report_from.write_text(json.dumps(saved.to_dict(), indent=2) + "\n")
    for path in write_report(saved, args.results_dir):
        print(f"wrote {path}")
    return 0


def _suite_config(args: argparse.Namespace) -> SuiteConfig:
    config = SuiteConfig(
        models_dir=args.models_dir,
        model=args.model,
        client_processes=args.client_processes,
        channels=args.channels or 1,
        server_flags=tuple(f for flag in args.server_flag for f in flag.split("=", 1)),
        intra_op_threads=args.intra_op_threads,
    )
    if args.quick:
        config = replace(config, **QUICK)
    elif args.smoke:
        config = replace(config, **SMOKE)
    if args.duration is not None:
        config = replace(config, duration_s=args.duration)
    if args.warmup is not None:
        config = replace(config, warmup_s=args.warmup)
    return config


def _suite(config: SuiteConfig, args: argparse.Namespace, given: list[str]) -> int:
    def log(line: str) -> None:
        print(line, flush=True)

    result = Suite(config, log).run()
    result.config["command"] = " ".join(["latent-bench", shlex.join(given)]).strip()
    data = result.to_dict()
    out = args.json or (
        HERE / "results.json" if config.mode == "full" else HERE / f"{config.mode}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")
    if config.mode == "full":
        from latentbench.report import write_report

        for path in write_report(result, args.results_dir):
            print(f"wrote {path}")
    print(json.dumps(result.summary, indent=2))
    return 0 if result.summary["errors"] == 0 else 1


def _overhead(args: argparse.Namespace) -> int:
    from latentbench.overhead import run_overhead

    timing = {"warmup_s": args.warmup, "duration_s": args.duration}
    result = run_overhead(
        args.models_dir,
        args.model,
        server_flags=tuple(f for flag in args.server_flag for f in flag.split("=", 1)),
        intra_op_threads=args.intra_op_threads,
        **{k: v for k, v in timing.items() if v is not None},
    )
    out = args.json or HERE / "overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(f"wrote {out}")
    errors = sum(result.health.errors.values()) + sum(result.encode.errors.values())
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
