"""The model repository: which models and versions exist under models_dir, which are served,
and their lifecycle (load, warm up, swap, drain, release).

Layout (docs/serving.md, "Model repository"), as Triton lays out its repository::

    MODELS_DIR/NAME/VERSION/model.json   VERSION a positive integer, + the graphs
    MODELS_DIR/NAME/model.json           a flat folder: version 1 (unless NAME/1/ exists)
    MODELS_DIR/NAME/config.json          optional: {"version_policy": {"latest": {"num_versions": 2}}}
                                         or {"all": {}} or {"specific": {"versions": [1, 3]}}

Hidden folders (".staging-3") and non-numeric ones are ignored, which is what makes
stage-then-rename publishing atomic (latentserve.publish). A version is served only once its
model.json validates, its graphs' sha256 match, its shapes agree and it has warmed up; only
then does it take calls. `sync()` brings one model in line with its folder and policy:
wanted versions are loaded first (a failure is kept with its reason, and the versions it
would have replaced stay served), then versions no longer wanted are retired: they take no
new call, the calls already admitted finish (`settled`, the server's call tracker), then
their batchers close and their onnxruntime sessions are dropped. Each version has its own
model object and batchers, so a batch never mixes versions. Changes of one model are
serialised by its lock, so two concurrent loads load once.

Requests reach a version through `resolve(name, version)`: the newest READY version, or the
one named. The state it checks is the state the index and readiness report, so they agree.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from latentserve.manifest import ManifestError, ModelManifest, load_model_folder
from latentserve.publish import MANIFEST_FILE, version_of
from serving.core.errors import ServingError, failed_precondition, not_found, unavailable
from serving.core.model import ServedModel
from serving.core.registry import (
    FolderLoader,
    ModelEntry,
    ModelState,
    ObserverFactory,
    TracerFactory,
)
from serving.core.runtime import choose_providers
from serving.process.settings import ServerSettings

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


class VersionState(enum.Enum):
    """A version's state, as Triton's repository index names them."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


# -- the per-model config file --------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latest(_Strict):
    num_versions: int = Field(1, ge=1)


class Specific(_Strict):
    versions: list[int] = Field(min_length=1)


class VersionPolicy(_Strict):
    """Exactly one of latest, all, specific (Triton's version_policy, in JSON)."""

    latest: Latest | None = None
    all: dict[str, object] | None = None
    specific: Specific | None = None

    def choose(self, versions: list[int]) -> set[int]:
        """The versions to serve among `versions` (those that can be tried)."""
        if self.all is not None:
            return set(versions)
        if self.specific is not None:
            return set(self.specific.versions) & set(versions)
        n = self.latest.num_versions if self.latest is not None else 1
        return set(sorted(versions)[-n:])

    def describe(self) -> str:
        if self.all is not None:
            return "all"
        if self.specific is not None:
            return "specific " + ", ".join(str(v) for v in self.specific.versions)
        return f"latest {self.latest.num_versions if self.latest is not None else 1}"


class ModelConfig(_Strict):
    version_policy: VersionPolicy = VersionPolicy()


def read_config(folder: Path) -> ModelConfig:
    """NAME/config.json, or the defaults (latest 1) when there is none."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    try:
        config = ModelConfig.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as e:
        raise ManifestError(
            f"{path}: {e}; expected e.g. "
            '{"version_policy": {"latest": {"num_versions": 1}}} (or "all": {}, or '
            '"specific": {"versions": [1, 2]})'
        ) from None
    policy = config.version_policy
    chosen = [k for k in ("latest", "all", "specific") if getattr(policy, k) is not None]
    if len(chosen) > 1:
        raise ManifestError(f"{path}: version_policy sets {' and '.join(chosen)}; set one")
    return config


# -- what is on disk ------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundVersion:
    version: int
    folder: Path
    fingerprint: tuple[tuple[str, int, int], ...]  # (file, size, mtime_ns): changed = differs


@dataclass(frozen=True)
class FoundModel:
    name: str
    folder: Path
    versions: dict[int, FoundVersion]
    config: ModelConfig
    error: str = ""  # a config file that does not validate


def _fingerprint(folder: Path, skip_dirs: bool) -> tuple[tuple[str, int, int], ...]:
    files = []
    for root, dirs, names in os.walk(folder):
        if skip_dirs:  # a flat folder: its version subfolders are versions of their own
            dirs.clear()
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name == CONFIG_FILE and skip_dirs:
                continue
            path = Path(root, name)
            try:
                st = path.stat()
            except OSError:
                continue  # removed while we looked: the next scan sees the new state
            files.append((str(path.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(files))


def scan_model(folder: Path) -> FoundModel:
    """One model folder: its numbered version folders, a flat model.json as version 1."""
    versions: dict[int, FoundVersion] = {}
    for child in sorted(folder.iterdir()):
        number = version_of(child.name)
        if number is not None and child.is_dir():
            versions[number] = FoundVersion(number, child, _fingerprint(child, skip_dirs=False))
    if 1 not in versions and (folder / MANIFEST_FILE).is_file():
        versions[1] = FoundVersion(1, folder, _fingerprint(folder, skip_dirs=True))
    try:
        config, error = read_config(folder), ""
    except ManifestError as e:
        config, error = ModelConfig(), str(e)
    if not versions and not error:
        error = (
            f"{folder}: no {MANIFEST_FILE} and no version folder; a model folder holds "
            f"{MANIFEST_FILE} and its graphs, or version folders 1/, 2/, ... that do"
        )
    return FoundModel(folder.name, folder, versions, config, error)


def scan_repository(root: Path) -> dict[str, FoundModel]:
    """Every model folder under `root` (hidden and "_" folders skipped)."""
    if not root.is_dir():
        return {}
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith((".", "_")):
            continue
        found[folder.name] = scan_model(folder)
    return found


# -- what is served -------------------------------------------------------------------------


@dataclass
class VersionEntry:
    name: str
    version: int
    folder: Path
    state: VersionState
    reason: str = ""
    manifest: ModelManifest | None = None
    model: ServedModel | None = None
    # The files the served model (or the failed attempt) was loaded from.
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    failed: bool = False

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY and self.model is not None


@dataclass
class ModelSlot:
    name: str
    folder: Path
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    error: str = ""
    unloaded: bool = False  # explicitly unloaded: serve nothing until loaded again

    def ready_versions(self) -> list[int]:
        return sorted((v for v, e in self.versions.items() if e.ready), reverse=True)


@dataclass(frozen=True)
class IndexRow:
    name: str
    version: str
    state: str
    reason: str


Settled = Callable[[], Awaitable[None]]


class ModelRepository:
    """The models of one server process and their versions; see the module docstring."""

    def __init__(
        self,
        settings: ServerSettings,
        executor: Executor,
        observer_factory: ObserverFactory | None = None,
        tracer_factory: TracerFactory | None = None,
        settled: Settled | None = None,
        where: str = "",
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._loader = FolderLoader(settings, executor, observer_factory, tracer_factory)
        # Every version's request and run statistics (Triton's statistics extension).
        self.statistics = self._loader.statistics
        self._settled = settled
        self._where = where  # e.g. "worker 1 (pid 4242)", in LOADING reasons
        # (event, model, version) for "loaded", "failed", "unloaded" (the server's metrics).
        self._on_event = on_event
        self._slots: dict[str, ModelSlot] = {}
        self._providers: list[str] | None = None
        self._default = ""
        # Called after every state change (the server updates health and metrics).
        self.listeners: list[Callable[[], None]] = []
        self.loads = 0  # versions loaded (a test counts them: two concurrent loads, one load)
        self.changes = 0  # state changes so far (a test tells a quiet moment by it)

    # -- reading ------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._settings.models_dir

    @property
    def slots(self) -> list[ModelSlot]:
        return [self._slots[name] for name in sorted(self._slots)]

    @property
    def ready_names(self) -> list[str]:
        return [s.name for s in self.slots if s.ready_versions()]

    @property
    def default_model(self) -> str:
        return self._default

    @property
    def entries(self) -> list[ModelEntry]:
        """One view per model: its newest READY version, else its newest version."""
        return [self._entry(slot) for slot in self.slots]

    def _entry(self, slot: ModelSlot) -> ModelEntry:
        ready = slot.ready_versions()
        if ready:
            v = slot.versions[ready[0]]
            return ModelEntry(
                slot.name, v.folder, ModelState.READY, v.manifest, "", v.model, v.version
            )
        newest = max(slot.versions.values(), key=lambda e: e.version, default=None)
        loading = any(e.state is VersionState.LOADING for e in slot.versions.values())
        failed = slot.error or any(e.failed for e in slot.versions.values())
        state = (
            ModelState.LOADING
            if loading
            else ModelState.FAILED
            if failed
            else ModelState.UNAVAILABLE
        )
        if newest is None:
            return ModelEntry(slot.name, slot.folder, state, None, slot.error or "no version")
        reason = slot.error or newest.reason or "not loaded"
        return ModelEntry(
            slot.name, newest.folder, state, newest.manifest, reason, None, newest.version
        )

    def slot(self, name: str) -> ModelSlot | None:
        return self._slots.get(name or self._default)

    def index(self, ready_only: bool = False) -> list[IndexRow]:
        """Every model and version with its state and reason (Triton's repository index)."""
        rows = []
        for slot in self.slots:
            if slot.error and not slot.versions:
                rows.append(IndexRow(slot.name, "", VersionState.UNAVAILABLE.value, slot.error))
            for number in sorted(slot.versions):
                v = slot.versions[number]
                rows.append(IndexRow(slot.name, str(number), v.state.value, v.reason))
        if ready_only:
            rows = [r for r in rows if r.state == VersionState.READY.value]
        return rows

    def loaded_summary(self) -> str:
        """What is loaded, for NOT_FOUND messages: "a, b (versions 3, 2)" (a model serving
        just version 1, as a flat folder does, is its name alone)."""
        parts = []
        for slot in self.slots:
            ready = slot.ready_versions()
            if ready == [1]:
                parts.append(slot.name)
            elif ready:
                label = "versions" if len(ready) > 1 else "version"
                parts.append(f"{slot.name} ({label} {', '.join(str(v) for v in ready)})")
        return ", ".join(parts) or "none"

    def get_entry(self, name: str) -> ModelEntry:
        """The view of model `name` (empty = default), in any state; NOT_FOUND if unknown."""
        slot = self.slot(name)
        if slot is None:
            if not name:
                raise unavailable(
                    "no default model is ready (the server is starting, or no model folder "
                    "could be loaded)"
                )
            raise not_found(f"unknown model {name!r}; available models: {self.loaded_summary()}")
        return self._entry(slot)

    def resolve(self, name: str, version: int = 0) -> ServedModel:
        """The READY model for `name` (empty = default) and `version` (0 = the newest
        served), or the error the caller should get."""
        slot = self.slot(name)
        if slot is None:
            self.get_entry(name)  # raises the right error
            raise AssertionError
        if version:
            entry = slot.versions.get(version)
            if entry is not None and entry.ready and entry.model is not None:
                return entry.model
            if entry is not None and entry.state is VersionState.LOADING and not slot.unloaded:
                raise unavailable(
                    f"model {slot.name!r} version {version} is loading; retry shortly"
                )
            served = ", ".join(str(v) for v in slot.ready_versions()) or "none"
            raise not_found(
                f"model {slot.name!r} has no version {version} loaded (versions served: "
                f"{served}; 0 or none = the newest); available models: {self.loaded_summary()}"
            )
        ready = slot.ready_versions()
        if ready:
            model = slot.versions[ready[0]].model
            assert model is not None
            return model
        states = {e.state for e in slot.versions.values()}
        if VersionState.LOADING in states and not slot.unloaded:
            raise unavailable(f"model {slot.name!r} is still loading; retry shortly")
        failures = [e for e in slot.versions.values() if e.failed]
        if (failures or slot.error) and not slot.unloaded:
            newest = max(failures, key=lambda e: e.version).reason if failures else slot.error
            raise failed_precondition(f"model {slot.name!r} is not served: {newest}")
        raise not_found(
            f"model {slot.name!r} is not loaded; available models: {self.loaded_summary()}"
        )

    # -- changing -----------------------------------------------------------------------------

    def scan(self) -> list[ModelEntry]:
        """Read the repository's folders (nothing is loaded yet): the models start-up loads."""
        root = self.root
        if not root.is_dir():
            log.error("models_dir %s does not exist or is not a folder; no models to serve", root)
            return []
        for found in scan_repository(root).values():
            slot = self._slots.setdefault(found.name, ModelSlot(found.name, found.folder))
            slot.policy, slot.error = found.config.version_policy, found.error
            if found.error:
                log.error("model folder %s refused: %s", found.folder, found.error)
                continue
            for number in slot.policy.choose(list(found.versions)):
                fv = found.versions[number]
                slot.versions[number] = VersionEntry(
                    found.name, number, fv.folder, VersionState.LOADING, self._loading_reason()
                )
        if not self._slots:
            log.error("no model folders found under %s", root)
        return self.entries

    async def load_all(self) -> None:
        """Load every model found (one at a time, off the event loop)."""
        found = await asyncio.to_thread(scan_repository, self.root)
        for name in sorted(found):
            await self.sync(name, found[name])
        self._pick_default()

    async def poll(self) -> None:
        """One poll: new, changed and removed models and versions."""
        found = await asyncio.to_thread(scan_repository, self.root)
        for name in sorted(set(found) | set(self._slots)):
            await self.sync(name, found.get(name))
        self._pick_default()

    async def load(self, name: str) -> None:
        """The repository API's load: (re)read `name`'s folder and serve it per its policy,
        retrying versions that failed before. NOT_FOUND when there is no such folder;
        FAILED_PRECONDITION when no version of it can be served."""
        folder = self.root / name
        if not _plain_name(name) or not folder.is_dir():
            raise not_found(
                f"no model folder {name!r} in the repository {self.root}; folders: "
                + (", ".join(sorted(scan_repository(self.root))) or "none")
            )
        found = await asyncio.to_thread(scan_model, folder)
        await self.sync(name, found, retry_failed=True, unloaded=False)
        self._pick_default()
        slot = self._slots.get(name)
        if slot is None or not slot.ready_versions():
            reasons = [e.reason for e in (slot.versions.values() if slot else []) if e.failed]
            reason = (slot.error if slot else "") or "; ".join(reasons) or "no version folder"
            raise failed_precondition(f"failed to load {name!r}: {reason}")

    async def unload(self, name: str) -> None:
        """The repository API's unload: every version of `name` stops taking calls, the
        calls in flight finish, then they are released. NOT_FOUND for an unknown model."""
        if name not in self._slots:
            raise not_found(f"unknown model {name!r}; available models: {self.loaded_summary()}")
        folder = self._slots[name].folder
        found = await asyncio.to_thread(scan_model, folder) if folder.is_dir() else None
        await self.sync(name, found, unloaded=True)
        self._pick_default()

    async def sync(
        self,
        name: str,
        found: FoundModel | None,
        *,
        retry_failed: bool = False,
        unloaded: bool | None = None,
    ) -> None:
        """Bring model `name` in line with what is on disk (`found`; None: removed) and its
        policy: load what is wanted, then retire what is not."""
        slot = self._slots.setdefault(name, ModelSlot(name, self.root / name))
        async with slot.lock:
            if unloaded is not None:
                slot.unloaded = unloaded
            on_disk = found.versions if found is not None else {}
            if found is not None:
                slot.policy, slot.error = found.config.version_policy, found.error
            await self._load_wanted(slot, on_disk, retry_failed)
            wanted = self._wanted(slot, on_disk)
            why = _not_served_reason(slot)
            for number, entry in list(slot.versions.items()):
                if number not in on_disk:
                    await self._retire(slot, entry, "removed from the repository", drop=True)
                elif number not in wanted and _stale(entry, why):
                    await self._retire(slot, entry, why)
            for number in set(on_disk) - set(slot.versions):
                fv = on_disk[number]
                slot.versions[number] = VersionEntry(
                    name, number, fv.folder, VersionState.UNAVAILABLE, why
                )
            if found is None and not slot.versions:
                del self._slots[name]
        self._changed()

    def _wanted(self, slot: ModelSlot, on_disk: dict[int, FoundVersion]) -> set[int]:
        """The versions to serve: the policy over the versions that may load (not those that
        failed with the very files on disk now)."""
        if slot.unloaded or slot.error:
            return set()
        candidates = []
        for number, fv in on_disk.items():
            entry = slot.versions.get(number)
            # These very files failed; a READY version whose reload failed still counts.
            if (
                entry is not None
                and entry.failed
                and entry.fingerprint == fv.fingerprint
                and not entry.ready
            ):
                continue
            candidates.append(number)
        return slot.policy.choose(candidates)

    async def _load_wanted(
        self, slot: ModelSlot, on_disk: dict[int, FoundVersion], retry_failed: bool
    ) -> None:
        if retry_failed:
            for entry in slot.versions.values():
                if entry.failed:
                    entry.fingerprint = ()
        # Each failure changes what is wanted (the next older version may be wanted then).
        for _ in range(len(on_disk) + 1):
            wanted = sorted(self._wanted(slot, on_disk), reverse=True)
            todo = [on_disk[n] for n in wanted if _needs_load(slot.versions.get(n), on_disk[n])]
            if not todo:
                return
            for fv in todo:
                await self._load_version(slot, fv)

    def _loading_reason(self) -> str:
        return f"loading in {self._where}" if self._where else "loading"

    async def _load_version(self, slot: ModelSlot, fv: FoundVersion) -> None:
        """Load, check and warm up one version; swap it in only when it is ready."""
        entry = slot.versions.get(fv.version)
        replacing = entry is not None and entry.ready
        if entry is None or not replacing:
            entry = slot.versions[fv.version] = VersionEntry(
                slot.name, fv.version, fv.folder, VersionState.LOADING, self._loading_reason()
            )
            self._changed()
        started = time.perf_counter()
        try:
            manifest, model = await self._build(slot.name, fv)
        except ServingError as e:
            reason = e.message
            log.error("model %s version %d refused: %s", slot.name, fv.version, reason)
            if replacing:
                entry.reason = (
                    f"new files failed to load, still serving the previous ones: {reason}"
                )
            else:
                entry.state, entry.reason, entry.model = VersionState.UNAVAILABLE, reason, None
            entry.failed, entry.fingerprint = True, fv.fingerprint
            self._event("failed", slot.name, fv.version)
            self._changed()
            return
        model.start()
        self.loads += 1
        self._event("loaded", slot.name, fv.version)
        old = entry.model if replacing else None
        # The swap: one synchronous step, so resolve, the index and readiness change together.
        entry.model, entry.manifest, entry.folder = model, manifest, fv.folder
        entry.state, entry.reason, entry.failed = VersionState.READY, "", False
        entry.fingerprint = fv.fingerprint
        log.info(
            "model %s version %d %s in %.2f s (%s, latent_dim %d, providers %s)",
            slot.name,
            fv.version,
            "reloaded" if replacing else "ready",
            time.perf_counter() - started,
            manifest.kind,
            manifest.latent_dim,
            ", ".join(model.providers),
        )
        self._changed()
        if old is not None:
            await self._release(slot.name, fv.version, old, "replaced by its changed files")
            del old
            _collect()

    async def _build(self, name: str, fv: FoundVersion) -> tuple[ModelManifest, ServedModel]:
        """model.json, hashes, sessions, shapes, warm-up: off the event loop."""
        if self._providers is None:
            self._providers = choose_providers(self._settings.device)
        providers = self._providers

        def build() -> tuple[ModelManifest, ServedModel]:
            manifest = load_model_folder(fv.folder)
            if manifest.name != name:
                raise ManifestError(
                    f"model.json names the model {manifest.name!r}, but it sits in the model "
                    f"folder {name!r}; rename the folder or fix the name in model.json"
                )
            return manifest, self._loader.load(fv.folder, manifest, fv.version, providers)

        try:
            return await asyncio.get_running_loop().run_in_executor(None, build)
        except (ManifestError, ValueError, RuntimeError, OSError) as e:
            where = "" if str(fv.folder) in str(e) else f"{fv.folder}: "
            raise failed_precondition(f"{where}{e}") from None
        except Exception as e:  # onnxruntime raises its own exception types
            raise failed_precondition(
                f"{fv.folder}: cannot load graph: {type(e).__name__}: {e}"
            ) from None

    async def _retire(
        self, slot: ModelSlot, entry: VersionEntry, why: str, drop: bool = False
    ) -> None:
        """No new calls, then the admitted ones finish, then the sessions go."""
        model, entry.model = entry.model, None  # resolve skips it from here on
        if model is not None:
            entry.state, entry.reason = VersionState.UNLOADING, why
            self._changed()
            await self._release(slot.name, entry.version, model, why)
            del model
            _collect()
        entry.state, entry.reason, entry.failed = VersionState.UNAVAILABLE, why, False
        if drop:
            del slot.versions[entry.version]
        self._changed()

    async def _release(self, name: str, version: int, model: ServedModel, why: str) -> None:
        """Wait for the calls that may hold `model`, then close its batchers. The caller
        drops the last reference, and with it the onnxruntime sessions and their arenas."""
        started = time.perf_counter()
        if self._settled is not None:
            await self._settled()
        await model.close()
        self._event("unloaded", name, version)
        log.info(
            "model %s version %d unloaded (%s) in %.2f s",
            name,
            version,
            why,
            time.perf_counter() - started,
        )

    def _pick_default(self) -> None:
        ready = self.ready_names
        wanted = self._settings.default_model
        chosen = wanted if wanted in ready else (ready[0] if ready else "")
        if chosen != self._default:
            if chosen and chosen != wanted:
                log.warning(
                    "default model %r is not available; using %r (first ready model "
                    "alphabetically)",
                    wanted,
                    chosen,
                )
            elif not chosen:
                log.error("no model is ready; every request will fail until models are fixed")
            self._default = chosen

    def _event(self, event: str, name: str, version: int) -> None:
        if self._on_event is not None:
            self._on_event(event, name, str(version))

    def _changed(self) -> None:
        self.changes += 1
        for listener in self.listeners:
            listener()

    async def close(self) -> None:
        for slot in self.slots:
            for entry in slot.versions.values():
                if entry.model is not None:
                    await entry.model.close()


def _collect() -> None:
    """Collect now what a released version leaves in reference cycles, so its memory comes
    back at once rather than at some later collection (a few ms: the server froze its
    start-up objects out of the collector's way, serving.process.server)."""
    gc.collect()


def _not_served_reason(slot: ModelSlot) -> str:
    if slot.unloaded:
        return "unloaded"
    if slot.error:
        return slot.error
    return f"not in the version policy ({slot.policy.describe()})"


def _stale(entry: VersionEntry, why: str) -> bool:
    """Whether a version that is not wanted still has to be retired (or its reason
    updated); a refused version keeps its refusal as its reason."""
    if entry.ready or entry.state is not VersionState.UNAVAILABLE:
        return True
    return not entry.failed and entry.reason != why


def _needs_load(entry: VersionEntry | None, fv: FoundVersion) -> bool:
    """A wanted version needs loading unless it serves these very files, or these very
    files failed already."""
    if entry is None:
        return True
    if entry.failed and entry.fingerprint == fv.fingerprint:
        return False
    return not entry.ready or entry.fingerprint != fv.fingerprint


def _plain_name(name: str) -> bool:
    return (
        bool(name) and "/" not in name and not name.startswith((".", "_")) and name not in ("..",)
    )
