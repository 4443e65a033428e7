"""latentserve.publish: a model folder becomes the next version, atomically, validated."""

from __future__ import annotations

import threading

import pytest
from fixtures.models import build_model_folder, corrupt_hash

from latentserve.manifest import ManifestError, load_model_folder
from latentserve.publish import next_version, publish, versions


def test_publish_numbers_versions_after_a_flat_folder(tmp_path):
    repo = tmp_path / "repo"
    build_model_folder(repo, "m", seed=1)  # flat: version 1
    source = build_model_folder(tmp_path / "src", "trained-name", seed=2)
    target = publish(source, repo, "m")
    assert target == repo / "m" / "2"
    manifest = load_model_folder(target)  # complete, hashes intact
    assert (manifest.name, manifest.version) == ("m", "2")
    assert next_version(repo / "m") == 3
    assert [p.name for p in (repo / "m").iterdir() if p.name.startswith(".")] == []


def test_a_broken_source_publishes_nothing(tmp_path):
    source = build_model_folder(tmp_path / "src", "m", seed=1)
    corrupt_hash(source)
    with pytest.raises(ManifestError, match="sha256"):
        publish(source, tmp_path / "repo")
    assert versions(tmp_path / "repo" / "m") == []


def test_concurrent_publishers_each_get_their_own_version(tmp_path):
    source = build_model_folder(tmp_path / "src", "m", seed=1)
    repo = tmp_path / "repo"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(publish(source, repo))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(p.name for p in results) == ["1", "2", "3", "4"]
    assert versions(repo / "m") == [1, 2, 3, 4]
