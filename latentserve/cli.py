"""`latent-client`: talk to a latentserve server from the shell.

Subcommands: models, health, encode, decode, sample; each is one function below, picked by
argparse (`set_defaults(func=...)`). --target (env LATENTSERVE_TARGET) picks the server:
host:port, or a name-resolver target such as dns:///host:port or ipv4:a:p,b:p for
client-side round robin over replicas. Installs with the client alone (numpy, grpcio,
protobuf); writing a .png or .jpg file needs Pillow (the `png` extra).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .client import DEFAULT_TARGET, LatentClient, LatentServeError, ModelInfo, TlsConfig
from .png import PngUnavailable, image_file, require_pillow
from .priors import PRIOR_NAMES
from .wording import counted

# The largest grid an image `--out` draws; beyond this the file would be unwieldy to open.
MAX_GRID_IMAGES = 10_000
PROG = "latent-client"
# What `--out` writes, by its extension.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
IMAGES_OUT_HELP = (
    ".png or .jpg: the image (a grid for several); .npy: N x C x H x W float32 (uint8 with --uint8)"
)


# -- output helpers ------------------------------------------------------------------------------


def _check_images_out(path: Path | None) -> None:
    """Refuse an --out the images cannot be written to, before the call that makes them."""
    if path is None:
        return
    suffix = path.suffix.lower()
    if suffix in IMAGE_FORMATS:
        require_pillow()
    elif suffix != ".npy":
        raise ValueError(
            f"--out {path}: unknown extension {suffix or '(none)'}; use .png, .jpg or .jpeg "
            "(the image, a grid for several) or .npy (N x 1 x 28 x 28 float32)"
        )


def _check_npy_out(path: Path | None, flag: str) -> None:
    # A name not ending in .npy would hold something else than its extension says.
    if path is not None and path.suffix.lower() != ".npy":
        raise ValueError(f"{flag} {path}: latents are written as .npy; give a name ending in .npy")


def _save_npy(path: Path, array: npt.NDArray[np.float32]) -> None:
    # Through a file object: np.save(name) appends .npy to a name ending otherwise (x.NPY).
    with path.open("wb") as file:
        np.save(file, array)


def _write_images(path: Path, images: npt.NDArray[Any]) -> str:
    """N x C x H x W images -> a .png/.jpg file (the bare image for one, a grid for several;
    grey or RGB), or a .npy as received: float32 in [0, 1], or uint8 levels (--uint8)."""
    image_format = IMAGE_FORMATS.get(path.suffix.lower())
    if image_format is None:  # .npy, checked by _check_images_out
        kind = "uint8" if images.dtype == np.uint8 else "float32"
        _save_npy(path, images if kind == "uint8" else images.astype(np.float32))
        return f"wrote {' x '.join(map(str, images.shape))} {kind} to {path}"
    shown = images[:MAX_GRID_IMAGES]
    if shown.dtype == np.uint8:
        shown = shown.astype(np.float32) / np.float32(255.0)
    path.write_bytes(image_file(shown, image_format))
    if len(images) == 1:
        channels, height, width = images.shape[1:]
        colour = "RGB " if channels == 3 else ""
        return f"wrote one {height} x {width} {colour}image to {path}"
    extra = f" (first {MAX_GRID_IMAGES})" if len(images) > MAX_GRID_IMAGES else ""
    return f"wrote a grid of {counted(len(shown), 'image')}{extra} to {path}"


def _print_models(models: list[ModelInfo], default: str) -> None:
    rows = [("", "NAME", "VERSIONS", "STATE", "KIND", "DIM", "PRIOR", "PROVIDERS")]
    for m in models:
        rows.append(
            (
                "*" if m.name == default else "",
                m.name,
                _versions(m),
                m.state,
                m.kind or "-",
                "x".join(map(str, m.latent_shape)) or str(m.latent_dim or "-"),
                m.default_prior or "-",
                ",".join(p.removesuffix("ExecutionProvider") for p in m.providers) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for m in models:
        if m.error:
            print(f"\n{m.name}: {m.error}")
        for v in m.versions:
            if v.reason and v.state != "READY":
                print(f"{m.name} version {v.version}: {v.state}: {v.reason}")
    if default:
        print(f"\n* default model: {default}")


# Latents with more values than this (a spatial map) are summarised, not printed in full.
MAX_PRINTED_VALUES = 32


def _versions(m: ModelInfo) -> str:
    """ "2 READY, 1 UNLOADING": every version and its state, newest first."""
    if not m.versions:
        return m.version or "-"
    return ", ".join(f"{v.version} {v.state}" for v in m.versions)


def _format_vector(v: npt.NDArray[np.float32]) -> str:
    if v.size > MAX_PRINTED_VALUES:
        shape = " x ".join(map(str, v.shape))
        return f"<{shape}: mean {v.mean():.4f}, std {v.std():.4f}; --out writes them all>"
    return "[" + ", ".join(f"{x:.4f}" for x in v.reshape(-1)) + "]"


# -- connection ------------------------------------------------------------------------------------


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return TlsConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _token(args: argparse.Namespace) -> str | None:
    # A file or the environment, never a flag: command lines are visible to other users.
    if args.token_file:
        lines = args.token_file.read_text(encoding="utf-8").splitlines()
        return lines[0].strip() if lines else None
    return os.environ.get("LATENTSERVE_AUTH_TOKEN") or None


def _connect(args: argparse.Namespace) -> LatentClient:
    return LatentClient(args.target, timeout=args.timeout, tls=_tls(args), token=_token(args))


# -- subcommands ---------------------------------------------------------------------------------


def _cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        _print_models(client.list_models(), client.default_model())
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        status = client.health(args.model)
    print(status)
    return 0 if status == "SERVING" else 1


def _encode_inputs(paths: list[Path]) -> tuple[npt.NDArray[np.float32] | list[bytes], list[str]]:
    """.npy arrays are sent as tensors; image files as their bytes (the server decodes them,
    so the client needs no Pillow). Mixing the two is refused."""
    arrays = [p for p in paths if p.suffix.lower() == ".npy"]
    if not arrays:
        return [p.read_bytes() for p in paths], [str(p) for p in paths]
    if len(arrays) != len(paths):
        raise ValueError("give either image files or .npy arrays, not both")
    # One H x W array is one grey image; otherwise N x H x W (grey) or N x C x H x W.
    loaded = {p: np.load(p) for p in arrays}
    loaded = {p: a[None] if a.ndim == 2 else a for p, a in loaded.items()}
    if len({a.shape[1:] for a in loaded.values()}) > 1:
        shapes = ", ".join(f"{p}: {list(a.shape)}" for p, a in loaded.items())
        raise ValueError(f"the .npy arrays hold images of different shapes ({shapes})")
    labels = [f"{p}[{i}]" for p, a in loaded.items() for i in range(len(a))]
    return np.concatenate(list(loaded.values())), labels


def _cmd_encode(args: argparse.Namespace) -> int:
    _check_npy_out(args.out, "--out")
    inputs, labels = _encode_inputs(args.images)
    with _connect(args) as client:
        enc = client.encode(
            inputs, model=args.model, sample_z=args.sample_z, seed=args.seed, resize=args.resize
        )
    for i, label in enumerate(labels):
        line = f"{label}: latents {_format_vector(enc.latents[i])}"
        if enc.log_var is not None:
            line += f" log_var {_format_vector(enc.log_var[i])}"
        if enc.z is not None:
            line += f" z {_format_vector(enc.z[i])}"
        print(line)
    if enc.z is not None:
        print(f"(model {enc.model}, z seed {enc.seed})")
    if args.out:
        _save_npy(args.out, enc.latents)
        shape = " x ".join(map(str, enc.latents.shape))
        print(f"wrote {shape} latents to {args.out}")
    return 0


def _image_dtype(args: argparse.Namespace) -> str:
    return "uint8" if args.uint8 else "float32"


def _cmd_decode(args: argparse.Namespace) -> int:
    if args.latents:
        latents = np.load(args.latents).astype(np.float32)
    else:
        latents = np.array(
            [[float(x) for x in v.split(",")] for v in args.latent], dtype=np.float32
        )
    _check_images_out(args.out)
    with _connect(args) as client:
        dec = client.decode(latents, model=args.model, image_dtype=_image_dtype(args))
    print(f"decoded {counted(dec.images.shape[0], 'image')} with {dec.model}")
    if args.out:
        print(_write_images(args.out, dec.images))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    _check_images_out(args.out)
    _check_npy_out(args.latents_out, "--latents-out")
    with _connect(args) as client:
        res = client.sample(
            args.count,
            model=args.model,
            seed=args.seed,
            prior=args.prior,
            temperature=args.temperature,
            return_latents=args.latents_out is not None,
            image_dtype=_image_dtype(args),
        )
    print(
        f"sampled {counted(res.images.shape[0], 'image')} from {res.model} "
        f"(prior {res.prior}, seed {res.seed})"
    )
    if args.out:
        print(_write_images(args.out, res.images))
    if args.latents_out and res.latents is not None:
        _save_npy(args.latents_out, res.latents)
        print(f"wrote latents to {args.latents_out}")
    return 0


# -- parser --------------------------------------------------------------------------------------


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get("LATENTSERVE_TARGET", DEFAULT_TARGET),
        help="server address: host:port, dns:///host:port or ipv4:a:p,b:p "
        "[env LATENTSERVE_TARGET, default %(default)s]",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    security = parser.add_argument_group(
        "TLS and authentication", "for a server started with --tls-* or a token"
    )
    security.add_argument("--tls", action="store_true", help="use TLS, trusting the system CAs")
    security.add_argument("--tls-ca", type=Path, help="PEM CA bundle to trust (implies --tls)")
    security.add_argument("--tls-cert", type=Path, help="client certificate, for mutual TLS")
    security.add_argument("--tls-key", type=Path, help="its private key")
    security.add_argument("--tls-server-name", help="name to check the server certificate for")
    security.add_argument(
        "--token-file",
        type=Path,
        help="file whose first line is the bearer token [default: env LATENTSERVE_AUTH_TOKEN]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Talk to a latentserve server.")
    _add_connection_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the served models (and refused ones, with the reason)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("health", help="exit 0 only when the server (or --model) is SERVING")
    p.add_argument("--model", default="", help="a model's health instead of the server's")
    p.set_defaults(func=_cmd_health)

    p = sub.add_parser("encode", help="images (PNG/JPEG, or .npy arrays) -> latents")
    p.add_argument("images", nargs="+", type=Path, metavar="IMG")
    p.add_argument("--model", default="")
    p.add_argument(
        "--resize",
        action="store_true",
        help="scale images to the model's size (and colour to grey for a grey model)",
    )
    p.add_argument("--sample-z", action="store_true", help="VAE: also sample z")
    p.add_argument("--seed", type=int, default=None, help="seed for --sample-z")
    p.add_argument(
        "--out", type=Path, help="write the latents (N x D or N x C x h x w float32) to a .npy"
    )
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="latents -> images")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--latents", type=Path, help=".npy file holding N x D (or N x C x h x w) float32"
    )
    source.add_argument(
        "--latent", action="append", metavar="V1,V2,...", help="one latent vector (repeatable)"
    )
    p.add_argument("--model", default="")
    p.add_argument("--out", type=Path, help=IMAGES_OUT_HELP)
    p.add_argument(
        "--uint8", action="store_true", help="images as uint8 levels (4x smaller on the wire)"
    )
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("sample", help="random images from a model's latent space")
    p.add_argument("--model", default="")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--seed", type=int, default=None, help="same seed, same images")
    p.add_argument("--prior", choices=PRIOR_NAMES, default=None, help="default: the model's own")
    p.add_argument("--temperature", type=float, default=None, help="Gaussian spread, default 1")
    p.add_argument("--out", type=Path, help=IMAGES_OUT_HELP)
    p.add_argument(
        "--uint8", action="store_true", help="images as uint8 levels (4x smaller on the wire)"
    )
    p.add_argument("--latents-out", type=Path, help="also write the latents to a .npy")
    p.set_defaults(func=_cmd_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LatentServeError as e:
        hint = f" (is a server running at {args.target}?)" if e.code.name == "UNAVAILABLE" else ""
        print(f"{PROG}: {e.code.name}: {e.message}{hint}", file=sys.stderr)
        return 1
    except PngUnavailable as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
