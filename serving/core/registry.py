"""Loading one model folder: onnxruntime sessions, shape checks, batchers, warm-up.

:class:`FolderLoader` turns a folder whose model.json validated (latentserve.manifest) into a
warmed-up :class:`ServedModel`: it creates the sessions, checks that the graphs' input and
output shapes agree with model.json, gives each graph its batcher and warms both up; a
folder that fails any step raises with the reason. Which folders exist, their versions and
their lifecycle (load, swap, unload) belong to serving.core.repository. :class:`ModelEntry`
is the per-model view the protocols show (ListModels, GetModel, the explorer).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from latentserve.image_spec import IMAGE_SHAPE
from latentserve.manifest import ManifestError, ModelManifest
from serving.core.batching import (
    INLINE_AFTER_IDLE_S,
    INLINE_MAX_ROWS,
    BatchObserver,
    DynamicBatcher,
)
from serving.core.model import ServedModel
from serving.core.runtime import Dim, GraphSession
from serving.process.settings import ServerSettings

log = logging.getLogger(__name__)


# (model name, version, graph) -> the observer of that version's batcher for that graph.
ObserverFactory = Callable[[str, str, str], BatchObserver]


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNAVAILABLE = "UNAVAILABLE"  # found, not served: unloaded, or outside the version policy


@dataclass
class ModelEntry:
    name: str
    folder: Path
    state: ModelState
    manifest: ModelManifest | None = None
    error: str = ""
    model: ServedModel | None = None
    version: int = 1  # the repository version this entry describes


def _shape_matches(actual: list[Dim], expected: tuple[int, ...]) -> bool:
    """Static dims must equal `expected`; dynamic ones (names/None) match anything."""
    if len(actual) != len(expected):
        return False
    return all(not isinstance(a, int) or a == e for a, e in zip(actual, expected, strict=True))


def check_graph_shapes(
    manifest: ModelManifest, encoder: GraphSession, decoder: GraphSession
) -> None:
    """Refuse graphs whose I/O shapes disagree with model.json (e.g. another latent_dim)."""
    d = manifest.latent_dim
    # -1 stands for the batch dimension, which the check lets be anything.
    expected: list[tuple[str, str, list[Dim], tuple[int, ...]]] = [
        ("encoder", "input " + encoder.input_name, encoder.input_shape, (-1, *IMAGE_SHAPE)),
        ("decoder", "input " + decoder.input_name, decoder.input_shape, (-1, d)),
    ]
    for name in manifest.encoder.outputs:
        if name not in encoder.output_shapes:
            raise ManifestError(
                f"encoder graph has no output {name!r} (has {encoder.output_names})"
            )
        expected.append(("encoder", "output " + name, encoder.output_shapes[name], (-1, d)))
    for name in manifest.decoder.outputs:
        if name not in decoder.output_shapes:
            raise ManifestError(
                f"decoder graph has no output {name!r} (has {decoder.output_names})"
            )
        expected.append(
            ("decoder", "output " + name, decoder.output_shapes[name], (-1, *IMAGE_SHAPE))
        )
    if encoder.input_name != manifest.encoder.inputs[0]:
        raise ManifestError(
            f"encoder graph input is {encoder.input_name!r}, model.json says "
            f"{manifest.encoder.inputs[0]!r}"
        )
    if decoder.input_name != manifest.decoder.inputs[0]:
        raise ManifestError(
            f"decoder graph input is {decoder.input_name!r}, model.json says "
            f"{manifest.decoder.inputs[0]!r}"
        )
    for graph, what, actual, shape in expected:
        batchless = [None, *actual[1:]] if actual else actual
        if not _shape_matches(batchless, shape):
            raise ManifestError(
                f"{graph} graph {what} has shape {actual}, but model.json (latent_dim {d}) "
                f"implies [N, {', '.join(str(s) for s in shape[1:])}]"
            )


class FolderLoader:
    """Loads one model version folder into a warmed-up :class:`ServedModel` (blocking: the
    repository runs it in a thread)."""

    def __init__(
        self,
        settings: ServerSettings,
        executor: Executor,
        observer_factory: ObserverFactory | None = None,
    ) -> None:
        self._settings = settings
        self._executor = executor
        self._observer_factory = observer_factory

    def load(
        self, folder: Path, manifest: ModelManifest, version: int, providers: list[str]
    ) -> ServedModel:
        """Sessions, shape checks, one batcher per graph of this version, warm-up."""
        entry = ModelEntry(manifest.name, folder, ModelState.LOADING, manifest, version=version)
        return self._load(entry, providers)

    def _load(self, entry: ModelEntry, providers: list[str]) -> ServedModel:
        assert entry.manifest is not None
        s = self._settings
        manifest = entry.manifest
        encoder = GraphSession(entry.folder / manifest.encoder.file, providers, s.intra_op_threads)
        decoder = GraphSession(entry.folder / manifest.decoder.file, providers, s.intra_op_threads)
        check_graph_shapes(manifest, encoder, decoder)

        def batcher(graph: str, session: GraphSession) -> DynamicBatcher:
            observer = (
                self._observer_factory(manifest.name, str(entry.version), graph)
                if self._observer_factory
                else None
            )
            return DynamicBatcher(
                session.run,
                self._executor,
                max_batch_size=s.max_batch_size,
                max_delay_s=s.max_batch_delay_s,
                max_queue=s.max_queue,
                concurrency=s.batch_concurrency,
                enabled=s.batching,
                inline_max_rows=INLINE_MAX_ROWS,
                inline_after_idle_s=INLINE_AFTER_IDLE_S,
                observer=observer,
                name=f"{manifest.name}/{entry.version}/{graph}",
            )

        model = ServedModel(
            manifest,
            entry.folder,
            encoder,
            decoder,
            batcher("encoder", encoder),
            batcher("decoder", decoder),
            version=entry.version,
        )
        model.warm_up(s.warmup_runs)
        return model
