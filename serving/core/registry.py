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

from latentserve.manifest import (
    ManifestError,
    ModelManifest,
    describe_shape,
)
from serving.core.batching import (
    INLINE_AFTER_IDLE_S,
    INLINE_MAX_ROWS,
    BatchObserver,
    BatchTracer,
    DynamicBatcher,
)
from serving.core.model import ServedModel
from serving.core.runtime import Dim, GraphSession, cpu_run_rows
from serving.core.statistics import StatisticsBook
from serving.process.settings import ServerSettings

log = logging.getLogger(__name__)


# (model name, version, graph) -> the observer of that version's batcher for that graph.
ObserverFactory = Callable[[str, str, str], BatchObserver]
# (model, version, graph) -> the graph's span recorder, when tracing is on.
TracerFactory = Callable[[str, str, str], BatchTracer]
# The most image bytes one gathered batch holds (float32): max_batch_size rows for the
# shipped models, fewer for large images (21 rows of 3 x 512 x 512).
BATCH_IMAGE_BYTES = 64 << 20


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


def _shape_matches(actual: list[Dim], expected: tuple[int | None, ...]) -> bool:
    """Static dims must equal `expected`; dynamic ones (names/None) match anything, and an
    expected None (a size the spec leaves dynamic) matches only a dynamic dim."""
    if len(actual) != len(expected):
        return False
    return all(
        (not isinstance(a, int)) if e is None else (not isinstance(a, int) or a == e)
        for a, e in zip(actual, expected, strict=True)
    )


def _expected_shapes(manifest: ModelManifest) -> tuple[tuple[int | None, ...], ...]:
    """(image, latent) shapes per row as model.json implies them; None for a dynamic size."""
    image: tuple[int | None, ...] = manifest.image_shape
    latent: tuple[int | None, ...] = manifest.latent_shape
    if manifest.image.dynamic is not None:
        image, latent = (image[0], None, None), (latent[0], None, None)
    return image, latent


def _describe(shape: tuple[int | None, ...]) -> str:
    return ", ".join("?" if s is None else str(s) for s in shape)


def check_graph_shapes(
    manifest: ModelManifest, encoder: GraphSession, decoder: GraphSession
) -> None:
    """Refuse graphs whose I/O names, shapes or float type disagree with model.json (e.g.
    another latent size, channel count or image size, or float16 graphs in a float32 spec)."""
    for graph, session in (("encoder", encoder), ("decoder", decoder)):
        batch = session.input_shape[0] if session.input_shape else None
        if isinstance(batch, int) and batch > 1:
            raise ManifestError(
                f"{graph} graph input {session.input_name!r} has a fixed batch of {batch}; "
                "export it with a dynamic batch axis (or a batch of 1, run row by row)"
            )
    image, latent = _expected_shapes(manifest)
    expected: list[tuple[str, str, list[Dim], tuple[int | None, ...]]] = [
        ("encoder", "input " + encoder.input_name, encoder.input_shape, image),
        ("decoder", "input " + decoder.input_name, decoder.input_shape, latent),
    ]
    for graph, session, spec in (("encoder", encoder, manifest.encoder),
                                 ("decoder", decoder, manifest.decoder)):  # fmt: skip
        if session.input_name != spec.inputs[0]:
            raise ManifestError(
                f"{graph} graph input is {session.input_name!r}, model.json says {spec.inputs[0]!r}"
            )
        for name in spec.outputs:
            if name not in session.output_shapes:
                raise ManifestError(
                    f"{graph} graph has no output {name!r} (has {session.output_names})"
                )
            shape = latent if graph == "encoder" else image
            expected.append((graph, "output " + name, session.output_shapes[name], shape))
        dtypes = {session.input_dtype, *(session.output_dtypes[n] for n in spec.outputs)}
        if dtypes != {manifest.image.dtype}:
            raise ManifestError(
                f"{graph} graph input and outputs are {sorted(str(d) for d in dtypes)}, but "
                f"model.json says image.dtype {manifest.image.dtype!r} (float32 or float16 "
                "throughout)"
            )
    for graph, what, actual, shape in expected:
        batchless = [None, *actual[1:]] if actual else actual
        if not _shape_matches(batchless, (-1, *shape)):
            raise ManifestError(
                f"{graph} graph {what} has shape {actual}, but model.json ({_spec_words(manifest)}"
                f") implies [N, {_describe(shape)}]"
            )


def _spec_words(manifest: ModelManifest) -> str:
    latent = (
        f"latent {describe_shape(manifest.latent_shape)}"
        if manifest.is_spatial
        else f"latent_dim {manifest.latent_dim}"
    )
    dynamic = f" ({manifest.image.allowed_sizes()})" if manifest.image.dynamic else ""
    return f"{latent}, image {describe_shape(manifest.image_shape)}{dynamic}"


class FolderLoader:
    """Loads one model version folder into a warmed-up :class:`ServedModel` (blocking: the
    repository runs it in a thread)."""

    def __init__(
        self,
        settings: ServerSettings,
        executor: Executor,
        observer_factory: ObserverFactory | None = None,
        tracer_factory: TracerFactory | None = None,
    ) -> None:
        self._settings = settings
        self._executor = executor
        self._observer_factory = observer_factory
        self._tracer_factory = tracer_factory
        # Every version's request and run statistics (Triton's statistics extension).
        self.statistics = StatisticsBook()

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
        # Both graphs handle the images' bytes (in or out): slices sized by the largest image.
        c, h, w = manifest.image_shape
        side = manifest.image.dynamic.max if manifest.image.dynamic is not None else 0
        image_values = c * max(h, side) * max(w, side)
        rows = cpu_run_rows(image_values)
        # A gathered batch is concatenated in memory: at most BATCH_IMAGE_BYTES of images.
        batch_rows = max(1, min(s.max_batch_size, BATCH_IMAGE_BYTES // (4 * image_values)))
        encoder = GraphSession(
            entry.folder / manifest.encoder.file, providers, s.intra_op_threads, max_run_rows=rows
        )
        decoder = GraphSession(
            entry.folder / manifest.decoder.file, providers, s.intra_op_threads, max_run_rows=rows
        )
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
                max_batch_size=batch_rows,
                max_delay_s=s.max_batch_delay_s,
                max_queue=s.max_queue,
                concurrency=s.batch_concurrency,
                enabled=s.batching,
                inline_max_rows=INLINE_MAX_ROWS,
                inline_after_idle_s=INLINE_AFTER_IDLE_S,
                observer=observer,
                name=f"{manifest.name}/{entry.version}/{graph}",
                statistics=self.statistics.graph(manifest.name, str(entry.version), graph),
                tracer=(
                    self._tracer_factory(manifest.name, str(entry.version), graph)
                    if self._tracer_factory
                    else None
                ),
            )

        model = ServedModel(
            manifest,
            entry.folder,
            encoder,
            decoder,
            batcher("encoder", encoder),
            batcher("decoder", decoder),
            self.statistics,
            version=entry.version,
        )
        model.warm_up(s.warmup_runs)
        return model
