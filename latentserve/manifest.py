"""The model-folder contract shared by training (which writes it) and serving (which reads it).

A model folder holds ``model.json`` (described by :class:`ModelManifest`) beside two ONNX
graphs: the encoder (images N x 1 x 28 x 28 float32 in [0, 1] -> latents N x D, or for a
VAE mean and log-variance N x D each) and the decoder (latents N x D -> images
N x 1 x 28 x 28). This module validates the manifest and the files it names; it knows
nothing about torch, onnxruntime or gRPC.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .priors import PriorName

MANIFEST_FILE = "model.json"
SCHEMA_VERSION: Literal[1] = 1

Kind = Literal["ae", "vae"]

# Graph I/O names are part of the contract so serving never guesses.
ENCODER_INPUT = "images"
AE_ENCODER_OUTPUTS = ("latents",)
VAE_ENCODER_OUTPUTS = ("mean", "log_var")
DECODER_INPUT = "latents"
DECODER_OUTPUT = "images"


class ManifestError(ValueError):
    """A model folder that cannot be served; the message names the folder and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Strict):
    shape: tuple[int, int, int] = (1, 28, 28)
    dtype: Literal["float32"] = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)


class GraphSpec(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[str]
    outputs: list[str]
    opset: int = Field(ge=7)


class FittedGaussian(_Strict):
    """Mean (D) and covariance (D x D) of the training-set latents (for a VAE: of the means)."""

    mean: list[float]
    covariance: list[list[float]]


class BoundingBox(_Strict):
    """Per-axis min (low) and max (high) of the training-set latents."""

    low: list[float]
    high: list[float]


class PriorSpec(_Strict):
    default: PriorName
    fitted_gaussian: FittedGaussian
    bounding_box: BoundingBox


class ModelManifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = "1"
    kind: Kind
    description: str = ""
    latent_dim: int = Field(ge=1, le=4096)
    image: ImageSpec = ImageSpec()
    encoder: GraphSpec
    decoder: GraphSpec
    prior: PriorSpec
    provenance: dict[str, Any] = {}
    metrics: dict[str, float] = {}

    @field_validator("encoder")
    @classmethod
    def _encoder_io(cls, spec: GraphSpec) -> GraphSpec:
        if spec.inputs != [ENCODER_INPUT]:
            raise ValueError(f"encoder inputs must be [{ENCODER_INPUT!r}], got {spec.inputs}")
        return spec

    @field_validator("decoder")
    @classmethod
    def _decoder_io(cls, spec: GraphSpec) -> GraphSpec:
        if spec.inputs != [DECODER_INPUT] or spec.outputs != [DECODER_OUTPUT]:
            raise ValueError(
                f"decoder must map [{DECODER_INPUT!r}] -> [{DECODER_OUTPUT!r}], "
                f"got {spec.inputs} -> {spec.outputs}"
            )
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        expected = AE_ENCODER_OUTPUTS if self.kind == "ae" else VAE_ENCODER_OUTPUTS
        if tuple(self.encoder.outputs) != expected:
            raise ValueError(
                f"a {self.kind} encoder must output {list(expected)}, got {self.encoder.outputs}"
            )
        d = self.latent_dim
        g = self.prior.fitted_gaussian
        if len(g.mean) != d or len(g.covariance) != d or any(len(r) != d for r in g.covariance):
            raise ValueError(f"prior.fitted_gaussian must be {d}-dimensional (latent_dim)")
        b = self.prior.bounding_box
        if len(b.low) != d or len(b.high) != d:
            raise ValueError(f"prior.bounding_box must be {d}-dimensional (latent_dim)")
        if any(lo > hi for lo, hi in zip(b.low, b.high, strict=True)):
            raise ValueError("prior.bounding_box has low > high on some axis")
        return self

    @property
    def encoder_outputs(self) -> tuple[str, ...]:
        return tuple(self.encoder.outputs)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> ModelManifest:
    """Parse and validate ``folder/model.json`` (not the graph files)."""
    path = folder / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{folder}: no {MANIFEST_FILE}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in e.errors()
        )
        raise ManifestError(f"{path}: invalid manifest: {problems}") from None


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
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path
