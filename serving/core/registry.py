"""The model registry: which model folders exist under models_dir and their state.

`scan()` reads every folder's model.json (via latentserve.manifest) without loading graphs;
`load_all()` then creates the onnxruntime sessions, checks that the graphs' input and output
shapes agree with model.json, and warms them up. A folder that fails any step is logged with
the reason and kept as FAILED, so ListModels/GetModel can show why, while the other models
are served. `resolve(name)` is how the servicer turns a request's model field into a
ServedModel or the right error.
"""

from __future__ import annotations

import asyncio
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
    load_model_folder,
)
from serving.core.batching import (
    INLINE_AFTER_IDLE_S,
    INLINE_MAX_ROWS,
    BatchObserver,
    DynamicBatcher,
)
from serving.core.errors import failed_precondition, not_found, unavailable
from serving.core.model import ServedModel
from serving.core.runtime import Dim, GraphSession, choose_providers, cpu_run_rows
from serving.process.settings import ServerSettings

log = logging.getLogger(__name__)


ObserverFactory = Callable[[str, str], BatchObserver]
# The most image bytes one gathered batch holds (float32): max_batch_size rows for the
# shipped models, fewer for large images (21 rows of 3 x 512 x 512).
BATCH_IMAGE_BYTES = 64 << 20


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass
class ModelEntry:
    name: str
    folder: Path
    state: ModelState
    manifest: ModelManifest | None = None
    error: str = ""
    model: ServedModel | None = None


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


class ModelRegistry:
    def __init__(
        self,
        settings: ServerSettings,
        executor: Executor,
        observer_factory: ObserverFactory | None = None,
    ) -> None:
        self._settings = settings
        self._executor = executor
        self._observer_factory = observer_factory
        self._entries: dict[str, ModelEntry] = {}
        self.default_model = ""

    @property
    def entries(self) -> list[ModelEntry]:
        return [self._entries[name] for name in sorted(self._entries)]

    @property
    def ready_names(self) -> list[str]:
        return [e.name for e in self.entries if e.state is ModelState.READY]

    def scan(self) -> list[ModelEntry]:
        """Read every model folder's manifest and hashes; nothing is loaded yet."""
        root = self._settings.models_dir
        if not root.is_dir():
            log.error("models_dir %s does not exist or is not a folder; no models to serve", root)
            return []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name.startswith((".", "_")):
                continue
            try:
                manifest = load_model_folder(folder)
            except ManifestError as e:
                self._refuse(ModelEntry(folder.name, folder, ModelState.FAILED), str(e))
                continue
            if manifest.name in self._entries:
                other = self._entries[manifest.name].folder
                self._refuse(
                    ModelEntry(folder.name, folder, ModelState.FAILED, manifest),
                    f"{folder}: model name {manifest.name!r} is already served from {other}",
                )
                continue
            self._entries[manifest.name] = ModelEntry(
                manifest.name, folder, ModelState.LOADING, manifest
            )
        if not self._entries:
            log.error("no model folders found under %s", root)
        return self.entries

    def _refuse(self, entry: ModelEntry, reason: str) -> None:
        log.error("model folder %s refused: %s", entry.folder, reason)
        entry.state, entry.error, entry.model = ModelState.FAILED, reason, None
        key = entry.name if entry.name not in self._entries else str(entry.folder)
        self._entries[key] = entry

    async def load_all(self) -> None:
        """Create sessions, check shapes and warm up every scanned model (one at a time,
        off the event loop), then pick the default model."""
        loop = asyncio.get_running_loop()
        providers = choose_providers(self._settings.device)
        for entry in self.entries:
            if entry.state is not ModelState.LOADING:
                continue
            try:
                model = await loop.run_in_executor(None, self._load, entry, providers)
            except (ManifestError, ValueError, RuntimeError, OSError) as e:
                self._refuse(entry, f"{entry.folder}: {e}")
                continue
            except Exception as e:  # onnxruntime raises its own exception types
                self._refuse(entry, f"{entry.folder}: cannot load graph: {type(e).__name__}: {e}")
                continue
            model.start()
            entry.model, entry.state = model, ModelState.READY
            log.info(
                "model %s ready (%s, images %s, latent %s, providers %s)",
                entry.name,
                model.manifest.kind,
                describe_shape(model.image_shape),
                describe_shape(model.latent_shape),
                ", ".join(model.providers),
            )
        self.default_model = self._pick_default()

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
                self._observer_factory(manifest.name, graph) if self._observer_factory else None
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
                name=f"{manifest.name}/{graph}",
            )

        model = ServedModel(
            manifest,
            entry.folder,
            encoder,
            decoder,
            batcher("encoder", encoder),
            batcher("decoder", decoder),
        )
        model.warm_up(s.warmup_runs)
        return model

    def _pick_default(self) -> str:
        ready = self.ready_names
        wanted = self._settings.default_model
        if wanted in ready:
            return wanted
        if not ready:
            log.error("no model is ready; every request will fail until models are fixed")
            return ""
        log.warning(
            "default model %r is not available; using %r (first ready model alphabetically)",
            wanted,
            ready[0],
        )
        return ready[0]

    def get_entry(self, name: str) -> ModelEntry:
        """The entry for `name` (empty = default), in any state; NOT_FOUND if unknown."""
        key = name or self.default_model
        entry = self._entries.get(key)
        if entry is None:
            if not name:
                raise unavailable(
                    "no default model is ready (the server is starting, or no model folder "
                    "could be loaded)"
                )
            available = ", ".join(self.ready_names) or "none"
            raise not_found(f"unknown model {name!r}; available models: {available}")
        return entry

    def resolve(self, name: str) -> ServedModel:
        """The READY model for `name` (empty = default), or the error the caller should get."""
        entry = self.get_entry(name)
        if entry.state is ModelState.FAILED:
            raise failed_precondition(f"model {entry.name!r} is not served: {entry.error}")
        if entry.state is ModelState.LOADING or entry.model is None:
            raise unavailable(f"model {entry.name!r} is still loading; retry shortly")
        return entry.model

    async def close(self) -> None:
        for entry in self.entries:
            if entry.model is not None:
                await entry.model.close()
