"""One answer for the whole server when it runs as several workers (`--workers N`): the
repository index and per-version readiness merged over every live worker's version states.

Each worker loads versions on its own, so for a moment a new version may be READY in one
worker and still loading in another, and a call may reach either. Whichever worker answers,
a version counts as READY only when every live worker serves it; until then it is LOADING
(or UNLOADING, when the workers that no longer serve it retired it) with a reason naming
the workers behind. Where the states come from (files, the supervisor) is not known here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.core.repository import IndexRow, VersionState

READY = VersionState.READY.value
LOADING = VersionState.LOADING.value
UNLOADING = VersionState.UNLOADING.value
UNAVAILABLE = VersionState.UNAVAILABLE.value

# model -> version ("3") -> (state, reason)
States = dict[str, dict[str, tuple[str, str]]]


@dataclass(frozen=True)
class WorkerStates:
    """One worker's version states, and how reasons name it: "worker 1 (pid 4242)"."""

    label: str
    states: States


def states_of(rows: Sequence[IndexRow]) -> States:
    """A worker's version states from its own index rows (ModelRepository.index)."""
    states: States = {}
    for row in rows:
        if row.version:
            states.setdefault(row.name, {})[row.version] = (row.state, row.reason)
    return states


def merge_index(
    own_rows: Sequence[IndexRow], own_label: str, peers: Sequence[WorkerStates]
) -> list[IndexRow]:
    """The index over this worker (its rows) and the other live workers (`peers`): a
    version READY in some workers but not all is LOADING (UNLOADING when the others
    retired it), its reason naming the workers that do and do not serve it."""
    workers = [WorkerStates(own_label, states_of(own_rows)), *peers]
    keys = {(name, v) for w in workers for name, versions in w.states.items() for v in versions}
    rows = []
    for name, version in sorted(keys, key=lambda k: (k[0], int(k[1]))):
        seen = [(w.label, w.states.get(name, {}).get(version)) for w in workers]
        ready = [label for label, s in seen if s is not None and s[0] == READY]
        behind = [(label, s) for label, s in seen if s is None or s[0] != READY]
        if ready and behind:
            rows.append(_diverged(name, version, ready, behind))
            continue
        state, reason = next(s for _, s in seen if s is not None)
        rows.append(IndexRow(name, version, state, reason))
    # A model folder refused as a whole has no version: this worker's row says why.
    refused = [r for r in own_rows if not r.version]
    return sorted([*refused, *rows], key=lambda r: r.name)


def behind_on(peers: Sequence[WorkerStates], name: str, version: str) -> list[str]:
    """The peers that do not serve `name` at `version` (yet, or any more)."""
    return [
        w.label for w in peers if w.states.get(name, {}).get(version, (UNAVAILABLE, ""))[0] != READY
    ]


def _diverged(
    name: str,
    version: str,
    ready: list[str],
    behind: list[tuple[str, tuple[str, str] | None]],
) -> IndexRow:
    coming = any(s is None or s[0] == LOADING for _, s in behind)
    described = "; ".join(
        f"{label}: {'not seen yet' if s is None else s[0] + (f' ({s[1]})' if s[1] else '')}"
        for label, s in behind
    )
    served = ", ".join(ready)
    if coming:
        reason = f"not loaded yet in {described}; ready in {served}"
        return IndexRow(name, version, LOADING, reason)
    return IndexRow(name, version, UNLOADING, f"still served by {served}; {described}")
