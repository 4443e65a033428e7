"""The index merged over several workers' version states (serving.core.convergence)."""

from __future__ import annotations

from serving.core.convergence import WorkerStates, behind_on, merge_index
from serving.core.repository import IndexRow

OWN = "worker 0 (pid 10)"


def rows(*items: tuple[str, str, str, str]) -> list[IndexRow]:
    return [IndexRow(*item) for item in items]


def test_a_version_ready_everywhere_is_ready():
    own = rows(("m", "1", "READY", ""))
    peer = WorkerStates("worker 1 (pid 11)", {"m": {"1": ("READY", "")}})
    assert merge_index(own, OWN, [peer]) == own


def test_a_version_ready_in_one_worker_only_is_loading_naming_the_others():
    own = rows(("m", "1", "READY", ""), ("m", "2", "READY", ""))
    loading = WorkerStates("worker 1 (pid 11)", {"m": {"1": ("READY", ""), "2": ("LOADING", "")}})
    unseen = WorkerStates("worker 2 (pid 12)", {"m": {"1": ("READY", "")}})
    merged = {r.version: r for r in merge_index(own, OWN, [loading, unseen])}
    assert merged["1"].state == "READY"
    assert merged["2"].state == "LOADING"
    assert "worker 1 (pid 11): LOADING" in merged["2"].reason
    assert "worker 2 (pid 12): not seen yet" in merged["2"].reason
    assert merged["2"].reason.endswith(f"ready in {OWN}")


def test_a_version_the_others_retired_is_unloading_and_one_only_a_peer_has_is_listed():
    own = rows(("m", "1", "UNAVAILABLE", "not in the version policy (latest 1)"))
    peer = WorkerStates("worker 1 (pid 11)", {"m": {"1": ("READY", ""), "3": ("LOADING", "x")}})
    merged = {r.version: r for r in merge_index(own, OWN, [peer])}
    assert merged["1"].state == "UNLOADING"
    assert merged["1"].reason.startswith("still served by worker 1 (pid 11)")
    assert (merged["3"].state, merged["3"].reason) == ("LOADING", "x")


def test_a_refused_folder_keeps_its_row_and_no_peer_means_no_change():
    own = rows(("bad", "", "UNAVAILABLE", "config.json invalid"), ("m", "1", "LOADING", "l"))
    assert merge_index(own, OWN, []) == own


def test_behind_on_names_the_peers_not_serving_a_version():
    ready = WorkerStates("worker 1 (pid 11)", {"m": {"2": ("READY", "")}})
    missing = WorkerStates("worker 2 (pid 12)", {})
    assert behind_on([ready, missing], "m", "2") == ["worker 2 (pid 12)"]
    assert behind_on([ready], "m", "2") == []
