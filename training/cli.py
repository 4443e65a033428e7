"""The ``latent-train`` command (also ``python -m training``): data, fit, export, analyze, classifier.

Each subcommand parses its flags and calls one function of the module that owns the concern;
nothing here trains, exports or measures by itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from latentserve.priors import PRIOR_NAMES
from training.data import DATA_DIR_ENV, DataNotFoundError, IdxError, load_mnist, locate_mnist


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"local folder with the four MNIST IDX files, used when the official download "
        f"is not reachable (default: ${DATA_DIR_ENV})",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="where downloads go (default ~/.cache/latentserve/mnist)"
    )
    parser.add_argument("--offline", action="store_true", help="do not try the official download")


def _load_data(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    source = locate_mnist(args.data_dir, cache_dir=args.cache_dir, download=not args.offline)
    return load_mnist(source)


def _cmd_data(args: argparse.Namespace) -> int:
    data = _load_data(args)
    prov = data.provenance()
    print(f"MNIST: {prov['origin']} in {prov['folder']}")
    print(f"  checks: {prov['checks']}")
    for split, labels in (("train", data.train_labels), ("test", data.test_labels)):
        counts = ", ".join(f"{d}:{int((labels == d).sum())}" for d in range(10))
        print(f"  {split}: {len(labels)} images  (per digit {counts})")
    if prov["train_count"] < 60000:
        print(
            f"  note: the training split holds {prov['train_count']} of the official 60000 images"
        )
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from training.models import ModelConfig
    from training.train import FitConfig, fit

    config = FitConfig(
        model=ModelConfig(
            kind=args.kind,
            latent_dim=args.latent_dim,
            batch_norm=args.batch_norm,
            dropout=args.dropout,
        ),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_schedule=args.lr_schedule,
        beta=args.beta,
        recon_loss=args.recon_loss,
        seed=args.seed,
        val_size=args.val_size,
        threads=args.threads,
    )
    data = _load_data(args)
    started = time.perf_counter()
    path = fit(data, config, args.out, resume=args.resume, progress=_progress_bars(args))
    print(f"checkpoint: {path}  ({time.perf_counter() - started:.0f}s)")
    return 0


def _add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (log lines only; bars are off anyway when stderr is not a terminal)",
    )


def _progress_bars(args: argparse.Namespace) -> bool:
    # A bar redraws many times a second: in a log file or CI output that is megabytes of
    # carriage returns, so bars are drawn only on a terminal.
    return not args.no_progress and sys.stderr.isatty()


def _cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_model

    data = _load_data(args)
    folder = export_model(
        args.run / "checkpoint.pt",
        args.out,
        data,
        name=args.name or args.out.name,
        description=args.description,
        prior=args.prior,
    )
    print(f"exported {folder} (encoder.onnx, decoder.onnx, model.json; parity checked)")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from training.analyze import analyze_model, compare_models, summary_table

    data = _load_data(args)
    for folder in args.model_dirs:
        result = analyze_model(
            folder,
            data,
            classifier=args.classifier,
            samples=args.samples,
            seed=args.seed,
            spread_seeds=args.spread_seeds,
        )
        print(f"{folder}: wrote {', '.join(result['files'])}")
    print(summary_table(args.model_dirs))
    if args.compare:
        compare_models(
            args.model_dirs,
            data,
            args.compare,
            classifier=args.classifier,
            samples=args.samples,
            seed=args.seed,
        )
        print(f"comparison figure: {args.compare}")
    return 0


def _cmd_classifier(args: argparse.Namespace) -> int:
    from training.classifier import train_and_export

    data = _load_data(args)
    info = train_and_export(
        data,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        progress=_progress_bars(args),
    )
    print(f"classifier: {info['file']}  test accuracy {info['test_accuracy']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from training.assets import DEFAULT_CLASSIFIER

    parser = argparse.ArgumentParser(prog="latent-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="fetch or locate MNIST, verify checksums, report counts")
    _add_data_flags(p)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("fit", help="train an AE or VAE")
    _add_data_flags(p)
    p.add_argument("--kind", choices=["ae", "vae"], default="vae")
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (VAE)")
    p.add_argument(
        "--recon-loss",
        choices=["bce", "mse"],
        default="bce",
        help="reconstruction term, summed over pixels (default bce)",
    )
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--val-size", type=int, default=2000, help="training images held out for validation"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt goes here)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    _add_progress_flag(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("export", help="ONNX encoder + decoder + model.json, parity checked")
    _add_data_flags(p)
    p.add_argument("run", type=Path, help="run folder from `fit`")
    p.add_argument(
        "--out", type=Path, required=True, help="model folder to write, e.g. models/mnist-vae"
    )
    p.add_argument("--name", help="model name (default: the folder name)")
    p.add_argument("--description", default="")
    p.add_argument(
        "--prior",
        choices=PRIOR_NAMES,
        help="default sampling prior (default: VAE standard_normal, AE fitted_gaussian)",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("analyze", help="walkthrough figures and numbers for model folders")
    _add_data_flags(p)
    p.add_argument("model_dirs", type=Path, nargs="+")
    p.add_argument(
        "--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="digit classifier ONNX"
    )
    p.add_argument("--samples", type=int, default=1000, help="random samples per prior")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed: each prior's samples are what SampleRandom serves for it",
    )
    p.add_argument(
        "--spread-seeds",
        type=int,
        default=8,
        help="also draw under this many consecutive seeds from --seed and record each sample "
        "measure's mean, sd, min and max (1: off)",
    )
    p.add_argument(
        "--compare", type=Path, help="also write a side-by-side figure of all given models"
    )
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "classifier", help="train the evaluation digit classifier and export it to ONNX"
    )
    _add_data_flags(p)
    p.add_argument("--out", type=Path, default=DEFAULT_CLASSIFIER)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    _add_progress_flag(p)
    p.set_defaults(func=_cmd_classifier)
    return parser


# What the train extra brings that a serve-only install lacks (import names).
TRAIN_EXTRA_MODULES = {"torch", "onnx", "onnxscript", "matplotlib", "scipy", "tqdm"}
TRAIN_EXTRA_HINT = (
    'pip install "latentserve[train]" --extra-index-url https://download.pytorch.org/whl/cpu '
    '(from a checkout: ".[train]"; the index gives Linux the CPU torch wheel)'
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (DataNotFoundError, IdxError) as e:
        print(f"latent-train: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if missing not in TRAIN_EXTRA_MODULES:
            raise
        needs = "PyTorch" if missing == "torch" else missing
        print(
            f"latent-train {args.command} needs {needs} (the train extra): {TRAIN_EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2
