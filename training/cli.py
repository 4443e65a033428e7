"""The ``latent-train`` command (also ``python -m training``): data, fit, export, analyze, classifier.

Each subcommand parses its flags and calls one function of the module that owns the concern;
nothing here trains, exports or measures by itself. Data is MNIST (IDX files, the default), a
folder of images (``--images DIR``), or the Noto emoji set (``--emoji``). ``export`` and
``analyze`` reload the image folder a model was trained on from its recorded provenance, so
they need no data flags for it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from latentserve.priors import PRIOR_NAMES
from training.data import DATA_DIR_ENV, DataNotFoundError, IdxError, load_mnist, locate_mnist
from training.emoji import EMOJI_DIR_ENV, EmojiDataError, locate_emoji
from training.images import KIND as IMAGE_FOLDER
from training.images import (
    ImageFolderData,
    ImageFolderError,
    list_images,
    load_image_folder,
    parse_size,
    reload_from_provenance,
)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (default: MNIST)")
    group.add_argument(
        "--data-dir",
        type=Path,
        help=f"local folder with the four MNIST IDX files, used when the official download "
        f"is not reachable (default: ${DATA_DIR_ENV})",
    )
    group.add_argument(
        "--cache-dir",
        type=Path,
        help="where downloads go (default ~/.cache/latentserve/mnist; emoji: ~/.cache/latentserve)",
    )
    group.add_argument("--offline", action="store_true", help="do not try any download")
    group.add_argument(
        "--images",
        type=Path,
        help="a folder of images instead of MNIST; class subfolders become labels",
    )
    group.add_argument(
        "--emoji",
        action="store_true",
        help="the Noto emoji of npm emoji-datasource-google@16.0.0 (downloaded, integrity checked)",
    )
    group.add_argument(
        "--emoji-dir",
        type=Path,
        help=f"the package's .tgz or an unpacked copy, used when the npm registry is not "
        f"reachable (default: ${EMOJI_DIR_ENV})",
    )
    group.add_argument(
        "--image-size",
        help="S or HxW to resize images to (default: the first image's size)",
    )
    group.add_argument(
        "--channels", type=int, choices=[1, 3], default=3, help="images: 1 grey, 3 RGB (default)"
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="images: share of each class held out as the test set (default 0.1)",
    )


def _image_folder(args: argparse.Namespace) -> Path | None:
    if args.images is not None and args.emoji:
        raise ImageFolderError("give either --images DIR or --emoji, not both")
    if args.emoji:
        cache = args.cache_dir
        return locate_emoji(args.emoji_dir, cache_dir=cache, download=not args.offline).folder
    return args.images  # type: ignore[no-any-return]


def _load_images(args: argparse.Namespace, folder: Path) -> ImageFolderData:
    if args.image_size:
        size = parse_size(args.image_size)
    else:
        from PIL import Image

        with Image.open(list_images(folder)[0][0]) as first:
            size = (first.height, first.width)
    return load_image_folder(
        folder, size=size, channels=args.channels, test_fraction=args.test_fraction
    )


def _load_data(args: argparse.Namespace, record: dict[str, Any] | None = None) -> Any:
    """MNIST, or the images the flags name, or (record: a model's data provenance) the image
    folder that model was trained on."""
    folder = _image_folder(args)
    if folder is not None:
        return _load_images(args, folder)
    if record is not None and record.get("kind") == IMAGE_FOLDER:
        return reload_from_provenance(record)
    source = locate_mnist(args.data_dir, cache_dir=args.cache_dir, download=not args.offline)
    return load_mnist(source)


def _cmd_data(args: argparse.Namespace) -> int:
    data = _load_data(args)
    prov = data.provenance()
    if isinstance(data, ImageFolderData):
        print(f"images: {prov['folder']}  ({' x '.join(map(str, data.image_shape))} each)")
        if "source" in prov:
            src = prov["source"]
            print(f"  source: {src.get('package')} ({src.get('origin')}; {src.get('checks')})")
        classes = ", ".join(f"{name}:{n}" for name, n in prov["classes"].items())
        print(f"  train: {prov['train_count']}  test: {prov['test_count']}  ({classes})")
        return 0
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

    data = _load_data(args)
    channels, height, width = (1, 28, 28)
    val_size = 2000 if args.val_size is None else args.val_size
    if isinstance(data, ImageFolderData):
        channels, height, width = data.image_shape
        if args.val_size is None:
            val_size = max(1, len(data.train_images) // 10)
    config = FitConfig(
        model=ModelConfig(
            kind=args.kind,
            latent_dim=args.latent_dim,
            batch_norm=args.batch_norm,
            dropout=args.dropout,
            channels=channels,
            height=height,
            width=width,
            latent_channels=args.latent_channels,
        ),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_schedule=args.lr_schedule,
        beta=args.beta,
        recon_loss=args.recon_loss,
        seed=args.seed,
        val_size=val_size,
        threads=args.threads,
    )
    started = time.perf_counter()
    path = fit(
        data,
        config,
        args.out,
        resume=args.resume,
        progress=_progress_bars(args),
        stop_after=args.stop_after,
    )
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
    from training.train import checkpoint_data

    checkpoint = args.run / "checkpoint.pt"
    if not checkpoint.is_file():
        raise DataNotFoundError(f"{checkpoint}: no checkpoint (give the --out folder of `fit`)")
    if args.repository is not None and not args.name:
        raise DataNotFoundError("--repository needs --name: the model's folder in the repository")
    data = _load_data(args, checkpoint_data(checkpoint))
    if args.repository is None:
        folder = export_model(
            checkpoint,
            args.out,
            data,
            name=args.name or args.out.name,
            description=args.description,
            prior=args.prior,
        )
        print(f"exported {folder} (encoder.onnx, decoder.onnx, model.json; parity checked)")
        return 0
    return _export_to_repository(args, checkpoint, data)


def _export_to_repository(args: argparse.Namespace, checkpoint: Path, data: Any) -> int:
    """Export into a hidden folder inside the repository (a polling server ignores names
    starting with '.'), then publish it as the model's next version with one rename."""
    import tempfile

    from latentserve.publish import publish
    from training.export import export_model

    repository: Path = args.repository
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=repository) as staging:
        exported = export_model(
            checkpoint,
            Path(staging) / args.name,
            data,
            name=args.name,
            description=args.description,
            prior=args.prior,
        )
        version = publish(exported, repository, args.name)
    print(f"published {version} (encoder.onnx, decoder.onnx, model.json; parity checked)")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from training.analyze import analyze_model, compare_models, summary_table
    from training.analyze_images import analyze_image_model, trained_on_images

    mnist = [f for f in args.model_dirs if not trained_on_images(f)]
    for folder in args.model_dirs:
        if folder not in mnist:
            record = trained_on_images(folder)
            result = analyze_image_model(folder, _load_data(args, record), seed=args.seed)
            print(f"{folder}: wrote {', '.join(result['files'])}")
    if not mnist:
        return 0
    data = _load_data(args)
    for folder in mnist:
        result = analyze_model(
            folder,
            data,
            classifier=args.classifier,
            samples=args.samples,
            seed=args.seed,
            spread_seeds=args.spread_seeds,
        )
        print(f"{folder}: wrote {', '.join(result['files'])}")
    print(summary_table(mnist))
    if args.compare:
        compare_models(
            mnist,
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
    if isinstance(data, ImageFolderData):
        raise ImageFolderError(
            "the classifier judges MNIST digits: run it without --images/--emoji"
        )
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


Subparsers = Any  # argparse's _SubParsersAction is private


def _add_data_command(sub: Subparsers) -> None:
    p = sub.add_parser(
        "data", help="fetch or locate MNIST (or --images / --emoji), verify, report counts"
    )
    _add_data_flags(p)
    p.set_defaults(func=_cmd_data)


def _add_fit_command(sub: Subparsers) -> None:
    p = sub.add_parser("fit", help="train an AE or VAE")
    _add_data_flags(p)
    p.add_argument("--kind", choices=["ae", "vae"], default="vae")
    p.add_argument("--latent-dim", type=int, default=2, help="size D of a flat latent")
    p.add_argument(
        "--latent-channels",
        type=int,
        default=0,
        help="C > 0: a fully convolutional model whose latent is a C x h x w map",
    )
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
        "--val-size",
        type=int,
        help="training images held out for validation (default: MNIST 2000, images a tenth)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt goes here)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="E",
        help="end after epoch E of the --epochs schedule (--resume continues it)",
    )
    _add_progress_flag(p)
    p.set_defaults(func=_cmd_fit)


def _add_export_command(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="ONNX encoder + decoder + model.json, parity checked")
    _add_data_flags(p)
    p.add_argument("run", type=Path, help="run folder from `fit`")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="model folder to write, e.g. models/mnist-vae")
    where.add_argument(
        "--repository",
        type=Path,
        help="a model repository (latent-serve --models-dir): publish the export as the next "
        "version, REPOSITORY/NAME/<n>/, atomically (needs --name)",
    )
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--description", default="")
    p.add_argument(
        "--prior",
        choices=PRIOR_NAMES,
        help="default sampling prior (default: VAE standard_normal, AE fitted_gaussian)",
    )
    p.set_defaults(func=_cmd_export)


def _add_analyze_command(sub: Subparsers) -> None:
    from training.assets import DEFAULT_CLASSIFIER

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


def _add_classifier_command(sub: Subparsers) -> None:
    from training.assets import DEFAULT_CLASSIFIER

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latent-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_data_command,
        _add_fit_command,
        _add_export_command,
        _add_analyze_command,
        _add_classifier_command,
    ):
        add(sub)
    return parser


# What the train extra brings that a serve-only install lacks (import names): a subcommand that
# needs one of them, run without it, gets one line naming the extra instead of a traceback.
TRAIN_EXTRA_MODULES = {"torch", "onnx", "onnxscript", "matplotlib", "scipy", "tqdm", "PIL"}
TRAIN_EXTRA_HINT = (
    'pip install "latentserve[train]" --extra-index-url https://download.pytorch.org/whl/cpu '
    '(from a checkout: ".[train]"; the index gives Linux the CPU torch wheel)'
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (DataNotFoundError, IdxError, ImageFolderError, EmojiDataError) as e:
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
