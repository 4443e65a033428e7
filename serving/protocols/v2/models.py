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

import contextlib
import enum
import functools
from dataclasses import dataclass

from serving.core.errors import ServingError, not_found
from serving.core.model import ServedModel
from serving.core.registry import ModelEntry, ModelRegistry, ModelState
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
    name, version = v2_name(model.name, role), model.manifest.version
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
    """The v2 models of a registry's READY model folders, described once per load."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._described: dict[str, V2Model] = {}

    def entry(self, name: str, version: str = "") -> tuple[ModelEntry, Role]:
        """The model folder behind v2 model `name`, in any state; NOT_FOUND if none."""
        parts = split_v2_name(name)
        entry = None
        if parts is not None:
            with contextlib.suppress(ServingError):
                entry = self._registry.get_entry(parts[0])
        if parts is None or entry is None:
            available = ", ".join(
                v2_name(e.name, r)
                for e in self._registry.entries
                for r in Role
                if e.state is ModelState.READY
            )
            raise not_found(
                f"unknown model {name!r}; the Open Inference Protocol models are "
                f"<model>-encoder, <model>-decoder and <model>-sampler: {available or 'none ready'}"
            )
        if version and entry.manifest is not None and version != entry.manifest.version:
            raise not_found(
                f"model {name!r} has no version {version!r}; it serves version "
                f"{entry.manifest.version!r} (or leave the version empty)"
            )
        return entry, parts[1]

    def is_ready(self, name: str, version: str = "") -> bool:
        entry, _ = self.entry(name, version)
        return entry.state is ModelState.READY

    def resolve(self, name: str, version: str = "") -> tuple[ServedModel, V2Model]:
        """The READY model behind `name` and its v2 description, or the right error
        (NOT_FOUND, FAILED_PRECONDITION for a refused folder, UNAVAILABLE while loading)."""
        entry, role = self.entry(name, version)
        model = self._registry.resolve(entry.name)
        described = self._described.get(name)
        if described is None:
            described = self._described[name] = describe(model, role)
        return model, described
