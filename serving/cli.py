"""Command lines: `latent-serve` (run the server) and `latent-client` (talk to one).

latent-serve takes one flag per ServerSettings field (see settings.py), with LATENTSERVE_*
environment variables as defaults. latent-client subcommands: models, health, encode,
decode, sample; --target (env LATENTSERVE_TARGET) picks the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .client import DEFAULT_TARGET, LatentClient, LatentServeError, ModelInfo, TlsConfig
from .images import grid_png

# The largest grid `--out x.png` draws; beyond this the PNG would be unwieldy to open.
MAX_GRID_IMAGES = 10_000


def serve_main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    from .logs import configure_logging
    from .memory import keep_large_buffers_out_of_heap
    from .server import serve
    from .settings import parse_settings

    try:
        settings = parse_settings(argv)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        print(f"latent-serve: invalid configuration: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    keep_large_buffers_out_of_heap()
    return asyncio.run(serve(settings))


# -- latent-client ---------------------------------------------------------------------------------


def _client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latent-client", description="Talk to a latentserve server."
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("LATENTSERVE_TARGET", DEFAULT_TARGET),
        help="server address host:port [env LATENTSERVE_TARGET, default %(default)s]",
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
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the served models (and refused ones, with the reason)")

    health = sub.add_parser("health", help="exit 0 only when the server (or --model) is SERVING")
    health.add_argument("--model", default="", help="a model's health instead of the server's")

    encode = sub.add_parser("encode", help="images (PNG/JPEG, or .npy arrays) -> latents")
    encode.add_argument("images", nargs="+", type=Path, metavar="IMG")
    encode.add_argument("--model", default="")
    encode.add_argument("--resize", action="store_true", help="scale images that are not 28x28")
    encode.add_argument("--sample-z", action="store_true", help="VAE: also sample z")
    encode.add_argument("--seed", type=int, default=None, help="seed for --sample-z")
    encode.add_argument("--out", type=Path, help="write the latents (N x D float32) to a .npy")

    decode = sub.add_parser("decode", help="latents -> images")
    source = decode.add_mutually_exclusive_group(required=True)
    source.add_argument("--latents", type=Path, help=".npy file holding N x D float32")
    source.add_argument(
        "--latent", action="append", metavar="V1,V2,...", help="one latent vector (repeatable)"
    )
    decode.add_argument("--model", default="")
    decode.add_argument("--out", type=Path, help=".npy (N x 1 x 28 x 28 float32) or .png grid")

    sample = sub.add_parser("sample", help="random images from a model's latent space")
    sample.add_argument("--model", default="")
    sample.add_argument("--count", type=int, default=16)
    sample.add_argument("--seed", type=int, default=None, help="same seed, same images")
    sample.add_argument(
        "--prior",
        choices=["standard_normal", "fitted_gaussian", "bounding_box_uniform"],
        default=None,
        help="default: the model's own",
    )
    sample.add_argument(
        "--temperature", type=float, default=None, help="Gaussian spread, default 1"
    )
    sample.add_argument("--out", type=Path, help=".npy (N x 1 x 28 x 28 float32) or .png grid")
    sample.add_argument("--latents-out", type=Path, help="also write the N x D latents to a .npy")
    return parser


def _write_images(path: Path, images: npt.NDArray[np.float32]) -> str:
    if path.suffix.lower() == ".png":
        shown = images[:MAX_GRID_IMAGES]
        path.write_bytes(grid_png(shown))
        extra = f" (first {MAX_GRID_IMAGES})" if len(images) > MAX_GRID_IMAGES else ""
        return f"wrote a grid of {len(shown)} images{extra} to {path}"
    np.save(path, images.astype(np.float32))
    return f"wrote {images.shape[0]} x {' x '.join(map(str, images.shape[1:]))} float32 to {path}"


def _print_models(models: list[ModelInfo], default: str) -> None:
    rows = [("", "NAME", "STATE", "KIND", "DIM", "PRIOR", "PROVIDERS")]
    for m in models:
        rows.append(
            (
                "*" if m.name == default else "",
                m.name,
                m.state,
                m.kind or "-",
                str(m.latent_dim or "-"),
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
    if default:
        print(f"\n* default model: {default}")


def _format_vector(v: npt.NDArray[np.float32]) -> str:
    return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"


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


def _run_client(args: argparse.Namespace) -> int:
    with LatentClient(
        args.target, timeout=args.timeout, tls=_tls(args), token=_token(args)
    ) as client:
        if args.command == "models":
            _print_models(client.list_models(), client.default_model())
            return 0
        if args.command == "health":
            status = client.health(args.model)
            print(status)
            return 0 if status == "SERVING" else 1
        if args.command == "encode":
            arrays = [p for p in args.images if p.suffix.lower() == ".npy"]
            if arrays and len(arrays) != len(args.images):
                print(
                    "latent-client: give either image files or .npy arrays, not both",
                    file=sys.stderr,
                )
                return 2
            inputs: npt.NDArray[np.float32] | list[bytes]
            if arrays:
                loaded = {p: np.load(p).reshape(-1, 28, 28) for p in arrays}
                inputs = np.concatenate(list(loaded.values()))
                labels = [f"{p}[{i}]" for p, a in loaded.items() for i in range(len(a))]
            else:
                inputs = [p.read_bytes() for p in args.images]
                labels = [str(p) for p in args.images]
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
                np.save(args.out, enc.latents)
                print(
                    f"wrote {enc.latents.shape[0]} x {enc.latents.shape[1]} latents to {args.out}"
                )
            return 0
        if args.command == "decode":
            if args.latents:
                latents = np.load(args.latents).astype(np.float32)
            else:
                latents = np.array(
                    [[float(x) for x in v.split(",")] for v in args.latent], dtype=np.float32
                )
            dec = client.decode(latents, model=args.model)
            print(f"decoded {dec.images.shape[0]} images with {dec.model}")
            if args.out:
                print(_write_images(args.out, dec.images))
            return 0
        if args.command == "sample":
            res = client.sample(
                args.count,
                model=args.model,
                seed=args.seed,
                prior=args.prior,
                temperature=args.temperature,
                return_latents=args.latents_out is not None,
            )
            print(
                f"sampled {res.images.shape[0]} images from {res.model} (prior {res.prior}, seed {res.seed})"
            )
            if args.out:
                print(_write_images(args.out, res.images))
            if args.latents_out and res.latents is not None:
                np.save(args.latents_out, res.latents)
                print(f"wrote latents to {args.latents_out}")
            return 0
    raise AssertionError(f"unhandled command {args.command}")


def client_main(argv: Sequence[str] | None = None) -> int:
    args = _client_parser().parse_args(argv)
    try:
        return _run_client(args)
    except LatentServeError as e:
        hint = f" (is a server running at {args.target}?)" if e.code.name == "UNAVAILABLE" else ""
        print(f"latent-client: {e.code.name}: {e.message}{hint}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"latent-client: {e}", file=sys.stderr)
        return 2
