"""The Open Inference Protocol's view of the served models: names, roles and metadata.

Every served model folder ``M`` appears as three v2 models, shaped as M's spec says (images
C x H x W, latents D or C x h x w; the graphs' own tensor names):

- ``M-encoder``: the encoder graph. Input: the graph's image input, FP32 [-1, C, H, W]
  (-1 for sizes a dynamic graph leaves free), pixels in [0, 1] whatever range the graph
  takes (the server maps them), or UINT8 levels 0..255; outputs: the latents, FP32
  [-1, D] or [-1, C, h, w], for a plain autoencoder, or the mean and log-variance for a VAE,
  on the served latent scale (model.json's scaling and shift applied).
- ``M-decoder``: the decoder graph. Input: the latents (as above); output: the images,
  FP32 [-1, C, H, W] in [0, 1].
- ``M-sampler``: SampleRandom. Inputs ``count`` INT64 [1] (INT32, UINT32, UINT64 too),
  optional ``seed`` UINT64 [1] (INT64 and the 32-bit types too; absent: the server picks
  one), optional ``prior`` BYTES [1] (a prior name; absent: the model's default) and
  optional ``temperature`` FP32 [1] (FP64 too; absent: 1). Outputs ``images`` FP32
  [-1, C, H, W], ``latents`` FP32 [-1, D] or [-1, C, h, w] and ``seed`` UINT64 [1] (the
  seed used, so any result can be replayed).

A float16 graph is still FP32 here: the wire stays float32, the runtime converts. The
metadata of the two graph models is read from the loaded onnxruntime sessions (names, and
shapes with -1 for every dynamic dimension), so it says what the graphs really take.
This module only describes and looks up; inference.py runs the calls.
"""

from __future__ import annotations

import enum
import functools
import weakref
from dataclasses import dataclass

import grpc

from serving.core.errors import ServingError, not_found
from serving.core.model import ServedModel
from serving.core.repository import ModelRepository, ModelSlot
from serving.core.runtime import Dim

PLATFORM_ONNX = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
PLATFORM_SAMPLER = "latentserve_sampler"
FP32 = "FP32"
INTEGER_TYPES = ("INT64", "INT32", "UINT64", "UINT32")


class Role(enum.Enum):
    ENCODER = "encoder"
    DECODER = "decoder"
    SAMPLER = "sampler"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, its datatype as metadata shows it, every datatype it
    is accepted in, its shape (-1 = any size) and whether a request may leave it out."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()
    optional: bool = False

    @property
    def datatypes(self) -> tuple[str, ...]:
        return self.accepts or (self.datatype,)


@dataclass(frozen=True)
class V2Model:
    """One v2 model: a role of one served model folder."""

    name: str
    served: str  # the model folder's name, as the native API calls it
    role: Role
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    @functools.cached_property
    def output_datatypes(self) -> dict[str, str]:
        """Each output's datatype by name (looked up once per answer)."""
        return {t.name: t.datatype for t in self.outputs}


def v2_name(served: str, role: Role) -> str:
    return f"{served}-{role.value}"


def split_v2_name(name: str) -> tuple[str, Role] | None:
    """('mnist-vae-16', Role.DECODER) for 'mnist-vae-16-decoder'; None without a role."""
    served, _, suffix = name.rpartition("-")
    for role in Role:
        if served and suffix == role.value:
            return served, role
    return None


def _dims(shape: list[Dim]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def describe(model: ServedModel, role: Role) -> V2Model:
    """The v2 model for one role of a loaded model, its metadata read from the graphs."""
    name, version = v2_name(model.name, role), str(model.version)
    if role is Role.ENCODER:
        graph, names = model.encoder, model.manifest.encoder.outputs
    elif role is Role.DECODER:
        graph, names = model.decoder, model.manifest.decoder.outputs
    else:
        return V2Model(
            name,
            model.name,
            role,
            version,
            PLATFORM_SAMPLER,
            inputs=(
                TensorSpec("count", "INT64", (1,), INTEGER_TYPES),
                TensorSpec("seed", "UINT64", (1,), INTEGER_TYPES, optional=True),
                TensorSpec("prior", "BYTES", (1,), optional=True),
                TensorSpec("temperature", FP32, (1,), (FP32, "FP64"), optional=True),
            ),
            outputs=(
                TensorSpec("images", FP32, (-1, *model.image_shape)),
                TensorSpec("latents", FP32, (-1, *model.latent_shape)),
                TensorSpec("seed", "UINT64", (1,)),
            ),
        )
    # Images may come as UINT8 levels (4x smaller); latents are FP32 only.
    accepts = (FP32, "UINT8") if role is Role.ENCODER else ()
    inputs = (TensorSpec(graph.input_name, FP32, _dims(graph.input_shape), accepts),)
    # The outputs model.json names (the registry checked the graph has them), in its order.
    outputs = tuple(TensorSpec(out, FP32, _dims(graph.output_shapes[out])) for out in names)
    return V2Model(name, model.name, role, version, PLATFORM_ONNX, inputs, outputs)


class V2Catalogue:
    """The v2 models of a repository's READY model versions, each described once per
    loaded version (a reloaded version may have other shapes: it is described anew)."""

    def __init__(self, registry: ModelRepository) -> None:
        self._registry = registry
        self._described: weakref.WeakKeyDictionary[ServedModel, dict[Role, V2Model]] = (
            weakref.WeakKeyDictionary()
        )

    def _parts(self, name: str) -> tuple[ModelSlot, Role]:
        """The model behind v2 model `name`, in any state; NOT_FOUND if none."""
        parts = split_v2_name(name)
        slot = self._registry.slot(parts[0]) if parts is not None else None
        if parts is None or slot is None:
            available = ", ".join(v2_name(n, r) for n in self._registry.ready_names for r in Role)
            raise not_found(
                f"unknown model {name!r}; the Open Inference Protocol models are "
                f"<model>-encoder, <model>-decoder and <model>-sampler: {available or 'none ready'}"
            )
        return slot, parts[1]

    def versions(self, name: str) -> list[str]:
        """The versions of v2 model `name` that are served, newest first."""
        slot, _ = self._parts(name)
        return [str(v) for v in slot.ready_versions()]

    def is_ready(self, name: str, version: str = "") -> bool:
        slot, _ = self._parts(name)
        number = parse_version(version)
        if not number:
            return bool(slot.ready_versions())
        entry = slot.versions.get(number)
        if entry is None:
            raise self._no_version(name, slot, version)
        return entry.ready

    def resolve(self, name: str, version: str = "") -> tuple[ServedModel, V2Model]:
        """The READY model behind `name` (at `version`; empty = the newest served) and its
        v2 description, or the right error (NOT_FOUND, FAILED_PRECONDITION for a refused
        folder, UNAVAILABLE while loading)."""
        slot, role = self._parts(name)
        number = parse_version(version)
        try:
            model = self._registry.resolve(slot.name, number)
        except ServingError as e:
            if number and e.code is grpc.StatusCode.NOT_FOUND:
                raise self._no_version(name, slot, version) from None
            raise
        roles = self._described.get(model)
        if roles is None:
            roles = self._described[model] = {}
        described = roles.get(role)
        if described is None:
            described = roles[role] = describe(model, role)
        return model, described

    def _no_version(self, name: str, slot: ModelSlot, version: str) -> ServingError:
        served = [f"'{v}'" for v in slot.ready_versions()]
        serves = f"version {served[0]}" if len(served) == 1 else f"versions {', '.join(served)}"
        return not_found(
            f"model {name!r} has no version {version!r} loaded; it serves "
            f"{serves if served else 'no version'} (or leave the version empty for the newest)"
        )


def parse_version(version: str) -> int:
    """A request's version: "" = 0 (the newest served), else a positive integer."""
    if not version:
        return 0
    if not version.isdigit() or int(version) < 1:
        raise not_found(
            f"model version {version!r} does not exist: versions are positive integers "
            "(the repository's version folders), or empty for the newest"
        )
    return int(version)
