"""Import an ONNX encoder/decoder pair exported by any tool into a servable model folder.

:func:`import_pair` reads the graphs' own input and output names and shapes through
onnxruntime, works out the model spec (image channels and size, or dynamic sizes with a
nominal size; latent D or C x h x w; float32 or float16; AE or VAE from the encoder's
outputs), checks that the decoder takes what the encoder gives by running one random batch
through both, and writes ``model.json`` (schema version 2, with both graphs' sha256) beside
copies of the graphs. With image files to fit on, it encodes them (decoded as the server
decodes uploads) and fits the Gaussian and bounding-box priors, per latent dimension or per
channel for a spatial latent; without, the default prior is the standard normal. Anything
that does not fit raises :class:`ImportRefused` with one line saying what and why. No torch.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx

from latentserve.image_spec import from_graph_range, to_graph_range
from latentserve.manifest import (
    BoundingBox,
    DynamicSize,
    FittedGaussian,
    ImageSpec,
    ManifestError,
    ModelManifest,
    PriorSpec,
    describe_shape,
    parse_manifest,
    sha256_of,
    write_manifest,
)
from latentserve.priors import PriorName
from serving.core.errors import ServingError
from serving.core.images import decode_image
from serving.core.runtime import CPU, Dim, GraphSession

Float32Array = npt.NDArray[np.float32]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
PROBE_ROWS = 2
FIT_BATCH = 64
# A dynamic graph is declared to take sides up to this many times its nominal size.
DYNAMIC_MAX_FACTOR = 4
# The box a standard-normal default records when there is nothing to fit (+-3 sigma).
UNFITTED_BOX = 3.0


class ImportRefused(ValueError):
    """The pair cannot be imported; the message is one line naming what does not fit."""


@dataclass(frozen=True)
class ImportOptions:
    name: str
    encoder: Path
    decoder: Path
    out: Path
    value_range: tuple[float, float] = (0.0, 1.0)
    kind: Literal["ae", "vae"] | None = None  # None: from the encoder's outputs
    fit_images: Path | None = None
    image_size: tuple[int, int] | None = None  # nominal H x W, for dynamic graphs
    description: str = ""
    provenance: dict[str, object] = field(default_factory=dict)


def _shape(dims: Sequence[Dim]) -> str:
    return describe_shape(["N" if i == 0 else (d if isinstance(d, int) else "?")
                           for i, d in enumerate(dims)])  # fmt: skip


def _session(path: Path, role: str) -> GraphSession:
    if not path.is_file():
        raise ImportRefused(f"{role} graph {path} does not exist")
    try:
        return GraphSession(path, [CPU])
    except ValueError as e:
        raise ImportRefused(f"{role} graph {path}: {e}") from None
    except Exception as e:  # onnxruntime raises its own exception types for a bad graph
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportRefused(f"{role} graph {path} cannot be loaded: {first}") from None


def _opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 7)


def _kind(encoder: GraphSession, wanted: str | None) -> Literal["ae", "vae"]:
    outputs = encoder.output_names
    if wanted == "vae" or (wanted is None and len(outputs) >= 2):
        if len(outputs) < 2:
            raise ImportRefused(
                f"--kind vae needs an encoder with two outputs (mean, log-variance); "
                f"this one has {outputs}"
            )
        return "vae"
    return "ae"


def _image_spec(encoder: GraphSession, options: ImportOptions) -> ImageSpec:
    dims = encoder.input_shape
    if len(dims) != 4 or dims[1] not in (1, 3):
        raise ImportRefused(
            f"encoder input {encoder.input_name!r} has shape {_shape(dims)}; latentserve serves "
            "images N x C x H x W with C = 1 (grey) or 3 (RGB)"
        )
    if encoder.input_dtype is None:
        raise ImportRefused(
            f"encoder input {encoder.input_name!r} is not float32 or float16; those are the "
            "graph types latentserve serves"
        )
    height, width = dims[2], dims[3]
    static = isinstance(height, int) and isinstance(width, int)
    if static and options.image_size not in (None, (height, width)):
        raise ImportRefused(
            f"--image-size {describe_shape(options.image_size or ())} disagrees with the "
            f"encoder input {_shape(dims)}"
        )
    if not static and options.image_size is None:
        raise ImportRefused(
            f"encoder input {encoder.input_name!r} has shape {_shape(dims)} (free height and "
            "width); give the nominal size with --image-size HxW"
        )
    if isinstance(height, int) and isinstance(width, int):
        h, w = height, width
    else:
        assert options.image_size is not None
        h, w = options.image_size
    return ImageSpec(
        channels=dims[1],  # type: ignore[arg-type]
        height=h,
        width=w,
        value_range=options.value_range,
        dtype=encoder.input_dtype,  # type: ignore[arg-type]
    )


def _fits(dims: Sequence[Dim], shape: tuple[int, ...]) -> bool:
    """Whether a graph's declared dims (batch first) take arrays of `shape` (batch first)."""
    if len(dims) != len(shape):
        return False
    return all(not isinstance(d, int) or d == s for d, s in zip(dims[1:], shape[1:], strict=True))


def _probe(
    encoder: GraphSession, decoder: GraphSession, image: ImageSpec, kind: str
) -> tuple[int, ...]:
    """Run a random batch through encoder then decoder; the per-image latent shape."""
    rng = np.random.default_rng(0)
    pixels = rng.random((PROBE_ROWS, *image.shape), dtype=np.float32)
    try:
        outputs = encoder.run(to_graph_range(pixels, image.value_range))
    except Exception as e:
        raise ImportRefused(
            f"the encoder failed on images {_shape((None, *image.shape))}: {_first_line(e)}"
        ) from None
    latents = outputs[0]
    if kind == "vae" and outputs[1].shape != latents.shape:
        raise ImportRefused(
            f"the encoder's mean is {_shape(latents.shape)} but its log-variance "
            f"{_shape(outputs[1].shape)}; a VAE gives both in one shape"
        )
    gives = f"the encoder gives latents {_shape(latents.shape)}"
    if not _fits(decoder.input_shape, latents.shape):
        raise ImportRefused(
            f"{gives} but the decoder takes {_shape(decoder.input_shape)}: they are not a pair"
        )
    try:
        (images, *_) = decoder.run(latents)
    except Exception as e:
        raise ImportRefused(
            f"{gives} but the decoder failed on them ({_first_line(e)}); it takes "
            f"{_shape(decoder.input_shape)}"
        ) from None
    if images.shape != pixels.shape:
        raise ImportRefused(
            f"the decoder gives images {_shape(images.shape)} but the encoder takes "
            f"{_shape(pixels.shape)}: they are not a pair"
        )
    if not np.isfinite(from_graph_range(images, image.value_range)).all():
        raise ImportRefused("the decoder gave NaN or infinite values for the encoder's latents")
    latent_shape = tuple(int(s) for s in latents.shape[1:])
    if len(latent_shape) not in (1, 3):
        raise ImportRefused(f"{gives}; latentserve serves latents N x D or N x C x h x w")
    return latent_shape


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _dynamic(
    encoder: GraphSession, image: ImageSpec, latent_shape: tuple[int, ...]
) -> DynamicSize | None:
    """Dynamic sizes for a fully convolutional graph: multiples of its downsampling factor."""
    if all(isinstance(d, int) for d in encoder.input_shape[2:]):
        return None
    if len(latent_shape) != 3:
        raise ImportRefused(
            f"the encoder takes free image sizes but gives a flat latent "
            f"{describe_shape(latent_shape)}; dynamic sizes need a spatial latent C x h x w"
        )
    factor_h, factor_w = image.height // latent_shape[1], image.width // latent_shape[2]
    if factor_h != factor_w or factor_h * latent_shape[1] != image.height:
        raise ImportRefused(
            f"latents {describe_shape(latent_shape)} of images {image.height} x {image.width} "
            "are not the image downsampled by one whole factor"
        )
    largest = max(image.height, image.width) * DYNAMIC_MAX_FACTOR
    return DynamicSize(multiple=factor_h, min=factor_h, max=largest - largest % factor_h)


def _graph_spec(
    path: Path, session: GraphSession, outputs: Sequence[str], role: str
) -> dict[str, object]:
    """model.json's entry for a graph, named as the copy in the model folder will be."""
    return {
        "file": f"{role}.onnx",
        "sha256": sha256_of(path),
        "inputs": [session.input_name],
        "outputs": list(outputs),
        "opset": max(_opset(path), 7),
    }


def _standard_prior(p: int) -> PriorSpec:
    return PriorSpec(
        default="standard_normal",
        fitted_gaussian=FittedGaussian(mean=[0.0] * p, covariance=np.eye(p).tolist()),
        bounding_box=BoundingBox(low=[-UNFITTED_BOX] * p, high=[UNFITTED_BOX] * p),
    )


def _fitted_prior(latents: Float32Array, kind: str) -> PriorSpec:
    """Gaussian and box fitted to N x D latents, or per channel of N x C x h x w ones."""
    if latents.ndim == 4:
        values = latents.transpose(0, 2, 3, 1).reshape(-1, latents.shape[1])
    else:
        values = latents
    values64 = values.astype(np.float64)
    p = values64.shape[1]
    covariance = np.cov(values64, rowvar=False).reshape(p, p) if len(values64) > 1 else np.eye(p)
    default: PriorName = "standard_normal" if kind == "vae" else "fitted_gaussian"
    return PriorSpec(
        default=default,
        fitted_gaussian=FittedGaussian(
            mean=values64.mean(axis=0).tolist(), covariance=covariance.tolist()
        ),
        bounding_box=BoundingBox(
            low=values64.min(axis=0).tolist(), high=values64.max(axis=0).tolist()
        ),
    )


def image_files(folder: Path) -> list[Path]:
    """PNG and JPEG files under `folder` (subfolders too), in a stable order."""
    if not folder.is_dir():
        raise ImportRefused(f"--fit-images {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImportRefused(f"--fit-images {folder} holds no PNG or JPEG files")
    return files


def _encode_folder(
    folder: Path, encoder: GraphSession, image: ImageSpec, heads: Sequence[int]
) -> Float32Array:
    """The graph latents (VAE: means) of every image under `folder`, decoded and resized to
    the nominal size as the server decodes an upload with resize set."""
    fixed = ImageSpec(**{**image.model_dump(), "dynamic": None})
    parts = []
    files = image_files(folder)
    for start in range(0, len(files), FIT_BATCH):
        batch = []
        for path in files[start : start + FIT_BATCH]:
            try:
                batch.append(
                    decode_image(
                        path.read_bytes(),
                        index=0,
                        resize=True,
                        max_bytes=1 << 30,
                        max_pixels=1 << 30,
                        spec=fixed,
                    )
                )
            except ServingError as e:
                raise ImportRefused(f"--fit-images: {path}: {e.message}") from None
        outputs = encoder.run(to_graph_range(np.stack(batch), image.value_range))
        parts.append(outputs[heads[0]])
    return np.concatenate(parts)


def import_pair(options: ImportOptions) -> ModelManifest:
    """Check the pair, then write options.out/{model.json, encoder.onnx, decoder.onnx}."""
    encoder = _session(options.encoder, "encoder")
    decoder = _session(options.decoder, "decoder")
    if decoder.input_dtype != encoder.input_dtype:
        raise ImportRefused(
            f"the encoder takes {encoder.input_dtype} but the decoder {decoder.input_dtype}; "
            "both graphs must use one float type"
        )
    for role, session in (("encoder", encoder), ("decoder", decoder)):
        batch = session.input_shape[0] if session.input_shape else None
        if isinstance(batch, int) and batch > 1:
            raise ImportRefused(
                f"the {role}'s input {session.input_name!r} has a fixed batch of {batch}; "
                "export it with a dynamic batch axis (a batch of 1 is served row by row)"
            )
    kind = _kind(encoder, options.kind)
    try:
        image = _image_spec(encoder, options)
    except ValueError as e:  # pydantic's check of the spec, e.g. the value range
        if isinstance(e, ImportRefused):
            raise
        raise ImportRefused(f"image spec: {_first_line(e)}") from None
    latent_shape = _probe(encoder, decoder, image, kind)
    dynamic = _dynamic(encoder, image, latent_shape)
    if dynamic is not None:
        image = ImageSpec(**{**image.model_dump(), "dynamic": dynamic})
    heads = encoder.output_names[: 2 if kind == "vae" else 1]
    if options.fit_images is not None:
        latents = _encode_folder(options.fit_images, encoder, image, [0])
        prior = _fitted_prior(latents, kind)
        fitted = {"fit_images": str(options.fit_images), "fit_count": len(latents)}
    else:
        prior, fitted = _standard_prior(latent_shape[0]), {}
    manifest = _manifest(options, kind, image, latent_shape, encoder, decoder, heads, prior, fitted)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    for role, source in (("encoder", options.encoder), ("decoder", options.decoder)):
        target = out / f"{role}.onnx"
        if not target.exists() or source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    write_manifest(out, manifest)
    return manifest


def _manifest(
    options: ImportOptions,
    kind: str,
    image: ImageSpec,
    latent_shape: tuple[int, ...],
    encoder: GraphSession,
    decoder: GraphSession,
    heads: Sequence[str],
    prior: PriorSpec,
    fitted: dict[str, object],
) -> ModelManifest:
    raw = {
        "name": options.name,
        "kind": kind,
        "description": options.description
        or f"imported {kind}: images {describe_shape(image.shape)}, "
        f"latent {describe_shape(latent_shape)}",
        "image": image.model_dump(mode="json"),
        "latent": {"shape": list(latent_shape)},
        "encoder": _graph_spec(options.encoder, encoder, heads, "encoder"),
        "decoder": _graph_spec(options.decoder, decoder, decoder.output_names[:1], "decoder"),
        "prior": prior.model_dump(mode="json"),
        "provenance": {
            "imported_from": {"encoder": str(options.encoder), "decoder": str(options.decoder)},
            **fitted,
            **options.provenance,
        },
    }
    try:
        return parse_manifest(raw, "model.json")
    except ManifestError as e:
        raise ImportRefused(str(e)) from None
