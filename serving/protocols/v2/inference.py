"""The Open Inference Protocol's calls, protocol-neutral: what both v2 transports run.

The gRPC servicer and the REST app decode their wire tensors with codec.py into
:class:`InferInput` arrays and hand them here; :class:`V2Api` checks them against the v2
model's inputs (names, datatypes, single-value scalars), turns them into the native API's
typed requests (serving.core.requests: the same limits, shapes, finiteness and pixel checks),
runs them on the model (so v2 calls batch together with native ones) and returns the
outputs asked for. Health and metadata answers come from here too. Nothing here knows
protobuf, JSON or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.core.convergence import READY, WorkerStates, behind_on, merge_index
from serving.core.errors import failed_precondition, invalid_argument
from serving.core.model import ServedModel
from serving.core.repository import IndexRow, ModelRepository
from serving.core.requests import RequestParser
from serving.process.settings import ServerSettings
from serving.protocols.calls import Call, CallTracker
from serving.protocols.v2 import statistics
from serving.protocols.v2.models import (
    Role,
    TensorSpec,
    V2Catalogue,
    V2Model,
    parse_version,
    split_v2_name,
)

SERVER_NAME = "latentserve"
# Protocol extensions served beyond the core API (Triton's names, which clients check).
EXTENSIONS = ("binary_tensor_data", "statistics", "model_repository")

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str
    array: Array  # shape as sent


class V2Api:
    """Health, metadata and inference for one server's registry and limits."""

    def __init__(self, registry: ModelRepository, settings: ServerSettings, calls: CallTracker):
        self.catalogue = V2Catalogue(registry)
        self.calls = calls
        self.settings = settings
        self._registry = registry
        self._parse = RequestParser(registry, settings)
        self._version = _package_version()
        # With --workers N: the other live workers' version states, and how reasons name
        # this one (serving.process.shared_repository); the index and a version's readiness
        # then answer for every worker (serving.core.convergence).
        self.peers: Callable[[], list[WorkerStates]] | None = None
        self.label = ""

    # -- health and metadata ----------------------------------------------------------------

    def live(self) -> bool:
        """The process answers (true until it exits; draining is shown by readiness)."""
        return True

    def ready(self) -> bool:
        """Loading is done, at least one model is READY, and the server is not draining."""
        return bool(self._registry.ready_names) and not self.calls.draining

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether v2 model `name` can answer now; NOT_FOUND for an unknown name. With
        several workers, a version is ready once every live worker serves it."""
        ready = self.catalogue.is_ready(name, version) and not self.calls.draining
        parts = split_v2_name(name)
        if ready and version and parts is not None and self.peers is not None:
            ready = not behind_on(self.peers(), parts[0], str(parse_version(version)))
        return ready

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, self._version, EXTENSIONS

    def model_metadata(self, name: str, version: str = "") -> tuple[V2Model, list[str]]:
        """The v2 model (at `version`, or its newest served) and every version served."""
        _, described = self.catalogue.resolve(name, version)
        return described, self.catalogue.versions(name)

    # -- the model repository extension -----------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexRow]:
        """Every model and version with its state (READY, LOADING, UNLOADING, UNAVAILABLE)
        and reason. Models are listed by their folder name (each serves three v2 models:
        NAME-encoder, NAME-decoder, NAME-sampler). With several workers, a version READY
        in some but not all is LOADING, its reason naming the workers behind."""
        if self.peers is None:
            return self._registry.index(ready_only)
        rows = merge_index(self._registry.index(), self.label, self.peers())
        return [r for r in rows if r.state == READY] if ready_only else rows

    async def repository_load(self, name: str) -> None:
        """Load (or reload) model folder `name`: see ModelRepository.load."""
        self._check_explicit("load")
        await self._registry.load(self._folder_name(name))

    async def repository_unload(self, name: str) -> None:
        self._check_explicit("unload")
        await self._registry.unload(self._folder_name(name))

    def _folder_name(self, name: str) -> str:
        """The model folder a repository call means: `name` itself, or for a v2 model name
        ("mnist-vae-decoder") the folder that serves it (a folder serves all three)."""
        parts = split_v2_name(name)
        if parts is None or self._registry.slot(name) or (self._registry.root / name).is_dir():
            return name
        return parts[0]

    def _check_explicit(self, action: str) -> None:
        mode = self.settings.model_control
        if mode != "explicit":
            raise failed_precondition(
                f"cannot {action} models: this server runs with --model-control {mode} "
                f"({'it scans the repository itself' if mode == 'poll' else 'models are fixed at start-up'}); "
                "start it with --model-control explicit to load and unload through the API"
            )

    def model_statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's statistics extension: cumulative figures per v2 model and version."""
        return statistics.model_statistics(self._registry, self.catalogue, name, version)

    # -- inference --------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Sequence[InferInput],
        requested: Sequence[str] | None,
        deadline: float | None,
        call: Call,
    ) -> tuple[V2Model, dict[str, Array]]:
        """Run v2 model `name` on `inputs`; the arrays of the outputs `requested` (None: all
        of them), keyed by name, in the model's output order. `call` gets the metric labels
        (the v2 model name) and the rows answered."""
        model, described = self.catalogue.resolve(name, version)
        call.model, call.version = described.name, described.version
        given = _match_inputs(described, inputs)
        wanted = _requested_outputs(described, requested)
        if described.role is Role.ENCODER:
            outputs = await self._encode(model, described, given, deadline)
        elif described.role is Role.DECODER:
            outputs = await self._decode(model, described, given, deadline)
        else:
            outputs = await self._sample(model, given, deadline)
        call.samples = int(next(iter(outputs.values())).shape[0])
        return described, {n: outputs[n] for n in wanted}

    async def _encode(
        self,
        model: ServedModel,
        described: V2Model,
        given: dict[str, Array],
        deadline: float | None,
    ) -> dict[str, Array]:
        request = self._parse.encode(model, given[described.inputs[0].name])
        result = await request.run(deadline)
        # The graph's own output names, in model.json's order: latents, or mean and log_var.
        names = [t.name for t in described.outputs]
        if result.log_var is None:
            return {names[0]: result.latents}
        return {names[0]: result.latents, names[1]: result.log_var}

    async def _decode(
        self,
        model: ServedModel,
        described: V2Model,
        given: dict[str, Array],
        deadline: float | None,
    ) -> dict[str, Array]:
        request = self._parse.decode(model, given[described.inputs[0].name])
        images = await request.run(deadline)
        return {described.outputs[0].name: images}

    async def _sample(
        self, model: ServedModel, given: dict[str, Array], deadline: float | None
    ) -> dict[str, Array]:
        prior = given.get("prior")
        temperature = given.get("temperature")
        seed = given.get("seed")
        request = self._parse.sample(
            model,
            count=_scalar_int(given["count"]),
            prior=None if prior is None else _scalar_text(prior),
            temperature=None if temperature is None else float(temperature.reshape(-1)[0]),
            seed=None if seed is None else _scalar_seed(seed),
            return_latents=True,
            method="the sampler",
            stream_method=None,
        )
        chunks = [c async for c in request.chunks(deadline)]
        (chunk,) = chunks
        return {
            "images": chunk.images,
            "latents": chunk.latents,
            "seed": np.array([request.seed], dtype=np.uint64),
        }


def _match_inputs(model: V2Model, inputs: Sequence[InferInput]) -> dict[str, Array]:
    """The request's arrays by input name, after checking names and datatypes."""
    given: dict[str, Array] = {}
    for tensor in inputs:
        spec = model.input(tensor.name)
        if spec is None:
            raise invalid_argument(
                f"input {tensor.name!r}: model {model.name!r} has no such input; its inputs "
                f"are {_describe(model.inputs)}"
            )
        if tensor.name in given:
            raise invalid_argument(f"input {tensor.name!r}: given more than once")
        if tensor.datatype not in spec.datatypes:
            raise invalid_argument(
                f"input {tensor.name!r}: datatype {tensor.datatype} is not allowed; model "
                f"{model.name!r} takes {' or '.join(spec.datatypes)}"
            )
        if spec.shape == (1,) and tensor.array.size != 1:
            raise invalid_argument(
                f"input {tensor.name!r}: shape {list(tensor.array.shape)} holds "
                f"{tensor.array.size} values; it takes exactly one (shape [1])"
            )
        given[tensor.name] = tensor.array
    missing = [s.name for s in model.inputs if not s.optional and s.name not in given]
    if missing:
        raise invalid_argument(
            f"missing input {', '.join(repr(m) for m in missing)}; model {model.name!r} takes "
            f"{_describe(model.inputs)}"
        )
    return given


def _requested_outputs(model: V2Model, requested: Sequence[str] | None) -> list[str]:
    names = [s.name for s in model.outputs]
    if not requested:
        return names
    unknown = [r for r in requested if r not in names]
    if unknown:
        raise invalid_argument(
            f"requested output {', '.join(repr(u) for u in unknown)}: model {model.name!r} "
            f"has outputs {', '.join(names)}"
        )
    return [n for n in names if n in requested]


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(
        f"{s.name} {'/'.join(s.datatypes)} {list(s.shape)}{' (optional)' if s.optional else ''}"
        for s in specs
    )


def _scalar_int(array: Array) -> int:
    return int(array.reshape(-1)[0])


def _scalar_seed(array: Array) -> int:
    seed = int(array.reshape(-1)[0])
    if not 0 <= seed < 1 << 64:
        raise invalid_argument(f"seed: {seed} is out of range; allowed 0 <= seed < 2^64")
    return seed


def _scalar_text(array: Array) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("latentserve")
    except PackageNotFoundError:
        return "0"
