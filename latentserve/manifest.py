"""The model spec: the model-folder contract shared by training (which writes it) and serving
(which reads it), and the one source of a model's image and latent shapes.

A model folder holds ``model.json`` (described by :class:`ModelManifest`) beside two ONNX
graphs: the encoder (images N x C x H x W in ``image.value_range`` -> latents N x D or
N x C' x h x w; a VAE gives mean and log-variance, each that shape) and the decoder (latents ->
images). Schema version 2 records the image (channels, height, width, optional dynamic sizes
for fully convolutional graphs, value range, the graphs' float type), the latent shape with an
optional scaling and shift, and the graphs' own input and output names. Version 1 files (every
image 1 x 28 x 28, a flat ``latent_dim``, fixed graph names) still load: they are converted on
read to the same version 2 model. This module validates the manifest and the files it names;
it knows nothing about torch, onnxruntime or gRPC.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .priors import PriorName

MANIFEST_FILE = "model.json"
SCHEMA_VERSION: Literal[2] = 2

Kind = Literal["ae", "vae"]
GraphDtype = Literal["float32", "float16"]

# The graph I/O names latentserve's own training writes. Other exporters use their own names,
# which model.json records (encoder.inputs etc.); serving reads them from there.
ENCODER_INPUT = "images"
AE_ENCODER_OUTPUTS = ("latents",)
VAE_ENCODER_OUTPUTS = ("mean", "log_var")
DECODER_INPUT = "latents"
DECODER_OUTPUT = "images"

MAX_SIDE = 16384
MAX_LATENT_VALUES = 1 << 24


class ManifestError(ValueError):
    """A model folder that cannot be served; the message names the folder and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_shape(shape: Sequence[int | str]) -> str:
    """``(3, 64, 64)`` -> ``"3 x 64 x 64"``: how messages and docs write a shape."""
    return " x ".join(str(s) for s in shape)


class DynamicSize(_Strict):
    """Sizes a fully convolutional graph accepts: any height and width that are multiples of
    ``multiple`` within [min, max] (each side on its own)."""

    multiple: int = Field(ge=1, le=MAX_SIDE)
    min: int = Field(ge=1, le=MAX_SIDE)
    max: int = Field(ge=1, le=MAX_SIDE)

    @model_validator(mode="after")
    def _ordered(self) -> DynamicSize:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.max < self.multiple:
            raise ValueError(f"max {self.max} is below the multiple {self.multiple}")
        return self

    def accepts(self, side: int) -> bool:
        return self.min <= side <= self.max and side % self.multiple == 0


class ImageSpec(_Strict):
    """The images a model takes and gives. ``height`` x ``width`` is the size for a fixed graph,
    and the nominal size (sampling, warm-up) for a dynamic one. ``dtype`` is the graphs' float
    type; images on the wire stay float32 whatever it is."""

    channels: Literal[1, 3] = 1
    height: int = Field(default=28, ge=1, le=MAX_SIDE)
    width: int = Field(default=28, ge=1, le=MAX_SIDE)
    dynamic: DynamicSize | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    dtype: GraphDtype = "float32"

    @model_validator(mode="after")
    def _consistent(self) -> ImageSpec:
        lo, hi = self.value_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"value_range must be two finite numbers lo < hi, got [{lo}, {hi}]")
        if self.dynamic is not None:
            for side, size in (("height", self.height), ("width", self.width)):
                if not self.dynamic.accepts(size):
                    raise ValueError(
                        f"nominal {side} {size} is outside dynamic: it must be a multiple of "
                        f"{self.dynamic.multiple} within [{self.dynamic.min}, {self.dynamic.max}]"
                    )
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x H x W (the nominal size for a dynamic graph)."""
        return (self.channels, self.height, self.width)

    def accepts(self, height: int, width: int) -> bool:
        """Whether the graphs take images of this height and width."""
        if self.dynamic is None:
            return (height, width) == (self.height, self.width)
        return self.dynamic.accepts(height) and self.dynamic.accepts(width)

    def allowed_sizes(self) -> str:
        """What :meth:`accepts` allows, in words, for error messages."""
        if self.dynamic is None:
            return f"{self.height} x {self.width}"
        d = self.dynamic
        return f"height and width multiples of {d.multiple} within [{d.min}, {d.max}]"


class LatentSpec(_Strict):
    """The latent as served: ``shape`` is ``[D]`` (flat) or ``[C, h, w]`` (spatial, at the
    nominal image size). The server serves ``(z_graph - shift) * scaling`` and decodes
    ``z_served / scaling + shift``, as latent-diffusion autoencoders are used (scaling 0.18215
    for SD 1.x, 0.13025 for SDXL, 0.3611 with shift 0.1159 for Flux); the priors in model.json
    describe served latents."""

    shape: tuple[int, ...]
    scaling: float = 1.0
    shift: float = 0.0

    @field_validator("shape")
    @classmethod
    def _shape(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) not in (1, 3) or any(s < 1 for s in shape):
            raise ValueError(f"must be [D] or [C, h, w] with positive sizes, got {list(shape)}")
        if math.prod(shape) > MAX_LATENT_VALUES:
            raise ValueError(f"{describe_shape(shape)} has over {MAX_LATENT_VALUES} values")
        return shape

    @model_validator(mode="after")
    def _finite(self) -> LatentSpec:
        if not (math.isfinite(self.scaling) and self.scaling != 0.0):
            raise ValueError(f"scaling must be finite and non-zero, got {self.scaling}")
        if not math.isfinite(self.shift):
            raise ValueError(f"shift must be finite, got {self.shift}")
        return self

    @property
    def is_spatial(self) -> bool:
        return len(self.shape) == 3

    @property
    def is_identity(self) -> bool:
        return self.scaling == 1.0 and self.shift == 0.0


Float32Array = npt.NDArray[np.float32]


def to_served_latents(z_graph: Float32Array, scaling: float, shift: float) -> Float32Array:
    """What the encoder graph gives -> what the server returns: ``(z - shift) * scaling``.
    float32 in, float32 out; the identity (scaling 1, shift 0) returns the array itself."""
    if scaling == 1.0 and shift == 0.0:
        return z_graph
    return ((z_graph - np.float32(shift)) * np.float32(scaling)).astype(np.float32, copy=False)


def to_graph_latents(z_served: Float32Array, scaling: float, shift: float) -> Float32Array:
    """The inverse of :func:`to_served_latents`, applied before the decoder graph runs."""
    if scaling == 1.0 and shift == 0.0:
        return z_served
    return (z_served / np.float32(scaling) + np.float32(shift)).astype(np.float32, copy=False)


def to_served_log_var(log_var_graph: Float32Array, scaling: float) -> Float32Array:
    """A VAE's log-variance under the same map: scaling z by s scales its variance by s**2."""
    if scaling == 1.0:
        return log_var_graph
    offset = np.float32(2.0 * math.log(abs(scaling)))
    return (log_var_graph + offset).astype(np.float32, copy=False)


class GraphSpec(_Strict):
    """One ONNX graph file: its sha256 and its own input and output names, in order."""

    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    opset: int = Field(ge=7)


class FittedGaussian(_Strict):
    """Mean (P) and covariance (P x P) of the training-set latents (for a VAE: of the means).
    P is the latent's D when flat; C (per channel, pooled over positions) when spatial."""

    mean: list[float]
    covariance: list[list[float]]


class BoundingBox(_Strict):
    """Per-axis min (low) and max (high) of the training-set latents (P each, as above)."""

    low: list[float]
    high: list[float]


class PriorSpec(_Strict):
    default: PriorName
    fitted_gaussian: FittedGaussian
    bounding_box: BoundingBox


def _from_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A version 1 manifest (``latent_dim``, ``image.shape``) as version 2 fields."""
    v2 = {k: v for k, v in raw.items() if k not in ("schema_version", "latent_dim")}
    v2["schema_version"] = SCHEMA_VERSION
    if "latent_dim" in raw:
        v2["latent"] = {"shape": [raw["latent_dim"]]}
    image = raw.get("image", {})
    if isinstance(image, dict) and "shape" in image:
        shape = image["shape"]
        rest = {k: v for k, v in image.items() if k != "shape"}
        if isinstance(shape, Sequence) and len(shape) == 3:
            v2["image"] = {"channels": shape[0], "height": shape[1], "width": shape[2], **rest}
        else:
            v2["image"] = {"shape": shape, **rest}  # refused below, naming image.shape
    elif isinstance(image, ImageSpec):
        v2["image"] = image
    return v2


class ModelManifest(_Strict):
    schema_version: Literal[2] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = "1"
    kind: Kind
    description: str = ""
    image: ImageSpec = ImageSpec()
    latent: LatentSpec
    encoder: GraphSpec
    decoder: GraphSpec
    prior: PriorSpec
    provenance: dict[str, Any] = {}
    metrics: dict[str, float] = {}

    @model_validator(mode="before")
    @classmethod
    def _upgrade_v1(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        version = raw.get("schema_version")
        if version == 1 or (version is None and "latent_dim" in raw):
            return _from_v1(raw)
        return raw

    @field_validator("decoder")
    @classmethod
    def _decoder_io(cls, spec: GraphSpec) -> GraphSpec:
        if len(spec.inputs) != 1 or len(spec.outputs) != 1:
            raise ValueError(
                f"the decoder takes one input (latents) and gives one output (images), "
                f"got inputs {spec.inputs} and outputs {spec.outputs}"
            )
        return spec

    @field_validator("encoder")
    @classmethod
    def _encoder_inputs(cls, spec: GraphSpec) -> GraphSpec:
        if len(spec.inputs) != 1:
            raise ValueError(f"the encoder takes one input (images), got {spec.inputs}")
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        wanted = {"ae": "[latents]", "vae": "[mean, log_var]"}[self.kind]
        if len(self.encoder.outputs) != (1 if self.kind == "ae" else 2):
            raise ValueError(
                f"encoder.outputs: a {self.kind} encoder gives {wanted} (any names, in that "
                f"order), got {self.encoder.outputs}"
            )
        if self.image.dynamic is not None and not self.latent.is_spatial:
            raise ValueError(
                "image.dynamic needs a spatial latent [C, h, w] (a fully convolutional graph); "
                f"latent.shape is {list(self.latent.shape)}"
            )
        if self.image.dynamic is not None:
            _, h, w = self.latent.shape
            if self.image.height % h or self.image.width % w:
                raise ValueError(
                    f"latent.shape {describe_shape(self.latent.shape)} must divide the nominal "
                    f"image {self.image.height} x {self.image.width} (a dynamic graph's latent "
                    "scales with the image)"
                )
        self._check_prior()
        return self

    def _check_prior(self) -> None:
        p = self.prior_dim
        what = f"{p} (latent.shape {describe_shape(self.latent.shape)}: " + (
            "one per channel)" if self.latent.is_spatial else "D)"
        )
        g = self.prior.fitted_gaussian
        if len(g.mean) != p:
            raise ValueError(f"prior.fitted_gaussian.mean has {len(g.mean)} values, must be {what}")
        if len(g.covariance) != p or any(len(r) != p for r in g.covariance):
            raise ValueError(f"prior.fitted_gaussian.covariance must be {p} x {p}, as {what}")
        b = self.prior.bounding_box
        if len(b.low) != p or len(b.high) != p:
            raise ValueError(
                f"prior.bounding_box low and high have {len(b.low)} and {len(b.high)} values, "
                f"must be {what}"
            )
        if any(lo > hi for lo, hi in zip(b.low, b.high, strict=True)):
            raise ValueError("prior.bounding_box has low > high on some axis")

    # The shapes serving and training use; nothing else spells them out.

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C x H x W (the nominal size for a dynamic graph)."""
        return self.image.shape

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(D,) or (C, h, w) per image, at the nominal image size."""
        return self.latent.shape

    @property
    def is_spatial(self) -> bool:
        return self.latent.is_spatial

    @property
    def latent_dim(self) -> int:
        """Latent values per image: D for a flat latent, C * h * w for a spatial one
        (at the nominal size)."""
        return math.prod(self.latent.shape)

    @property
    def prior_dim(self) -> int:
        """Length of the prior's mean: D (flat), or C (spatial: one per channel)."""
        return self.latent.shape[0]

    def latent_shape_for(self, height: int, width: int) -> tuple[int, ...]:
        """The latent shape of an image of this size (a dynamic graph's latent scales with it).
        The caller checks the size first with ``image.accepts``."""
        if not self.is_spatial or (height, width) == (self.image.height, self.image.width):
            return self.latent.shape
        c, h, w = self.latent.shape
        return (c, height * h // self.image.height, width * w // self.image.width)

    @property
    def encoder_input(self) -> str:
        return self.encoder.inputs[0]

    @property
    def encoder_outputs(self) -> tuple[str, ...]:
        """(latents,) for an AE, (mean, log_var) for a VAE: the graph's names, in that order."""
        return tuple(self.encoder.outputs)

    @property
    def decoder_input(self) -> str:
        return self.decoder.inputs[0]

    @property
    def decoder_output(self) -> str:
        return self.decoder.outputs[0]

    def to_served_latents(self, z_graph: Float32Array) -> Float32Array:
        return to_served_latents(z_graph, self.latent.scaling, self.latent.shift)

    def to_graph_latents(self, z_served: Float32Array) -> Float32Array:
        return to_graph_latents(z_served, self.latent.scaling, self.latent.shift)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_manifest(raw: Any, source: str = MANIFEST_FILE) -> ModelManifest:
    """Validate a parsed model.json (version 1 or 2); raises ManifestError naming each field."""
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise ManifestError(f"{source}: invalid manifest: {problems}") from None


def read_manifest(folder: Path) -> ModelManifest:
    """Parse and validate ``folder/model.json`` (not the graph files)."""
    path = folder / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{folder}: no {MANIFEST_FILE}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    return parse_manifest(raw, str(path))


def verify_graph_files(folder: Path, manifest: ModelManifest) -> None:
    """Check that both graph files exist and match their recorded sha256."""
    for role, spec in (("encoder", manifest.encoder), ("decoder", manifest.decoder)):
        path = folder / spec.file
        if not path.is_file():
            raise ManifestError(f"{folder}: {role} graph {spec.file!r} is missing")
        actual = sha256_of(path)
        if actual != spec.sha256:
            raise ManifestError(
                f"{folder}: {role} graph {spec.file!r} has sha256 {actual[:12]}..., "
                f"model.json says {spec.sha256[:12]}... (file changed or corrupt)"
            )


def load_model_folder(folder: Path) -> ModelManifest:
    """Read, validate and hash-check one model folder; raises ManifestError with the reason."""
    manifest = read_manifest(folder)
    verify_graph_files(folder, manifest)
    return manifest


def write_manifest(folder: Path, manifest: ModelManifest) -> Path:
    """Write ``folder/model.json`` in the current schema (version 2)."""
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path
