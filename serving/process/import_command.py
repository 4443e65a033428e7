"""`latent-models import`: turn an ONNX encoder/decoder pair exported by any tool into a
model folder the server serves (the work is serving.core.importer's; this is its argparse).

    latent-models import --name NAME --encoder E.onnx --decoder D.onnx --out DIR \
        [--value-range=LO,HI] [--kind ae|vae] [--fit-images DIR] [--image-size HxW]

A pair that does not fit is reported in one line on stderr with exit status 2, never a
traceback. `add_import_command(subparsers)` lets another `latent-models` front end add the
subcommand beside its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentserve.manifest import describe_shape
from serving.core.importer import ImportOptions, import_pair

PROG = "latent-models"


def _value_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give two numbers LO,HI, e.g. -1,1") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: LO must be below HI")
    return lo, hi


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW, e.g. 64x64") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return h, w


def add_import_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "import",
        help="make a model folder from an ONNX encoder/decoder pair exported by any tool",
        description="Read the graphs' own input/output names and shapes, check that the "
        "decoder takes what the encoder gives (one random batch through both), and write "
        "DIR/model.json (schema version 2, with sha256) beside copies of the graphs.",
    )
    p.add_argument("--name", required=True, help="the model's name (a-z, 0-9, . _ -)")
    p.add_argument("--encoder", required=True, type=Path, help="encoder ONNX graph")
    p.add_argument("--decoder", required=True, type=Path, help="decoder ONNX graph")
    p.add_argument("--out", required=True, type=Path, help="the model folder to write")
    p.add_argument(
        "--value-range",
        type=_value_range,
        default=(0.0, 1.0),
        metavar="LO,HI",
        help="pixel range the graphs take and give (default 0,1); write a negative one with "
        "'=': --value-range=-1,1",
    )
    p.add_argument(
        "--kind",
        choices=("ae", "vae"),
        default=None,
        help="default: vae when the encoder has two outputs (mean, log-variance), else ae",
    )
    p.add_argument(
        "--fit-images",
        type=Path,
        help="folder of PNG/JPEG images to fit the Gaussian and box priors on "
        "(default prior without: standard normal)",
    )
    p.add_argument(
        "--image-size",
        type=_size,
        metavar="HxW",
        help="nominal image size, needed when the graphs take any height and width",
    )
    p.add_argument("--description", default="", help="free text for model.json")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    manifest = import_pair(
        ImportOptions(
            name=args.name,
            encoder=args.encoder,
            decoder=args.decoder,
            out=args.out,
            value_range=args.value_range,
            kind=args.kind,
            fit_images=args.fit_images,
            image_size=args.image_size,
            description=args.description,
        )
    )
    dynamic = f" ({manifest.image.allowed_sizes()})" if manifest.image.dynamic else ""
    print(
        f"imported {manifest.name} ({manifest.kind}, {manifest.image.dtype}): images "
        f"{describe_shape(manifest.image_shape)}{dynamic} -> latent "
        f"{describe_shape(manifest.latent_shape)}, default prior {manifest.prior.default}; "
        f"wrote {args.out}"
    )
    return 0
