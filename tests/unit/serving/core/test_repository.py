"""The repository's reading of a models dir: version folders, flat folders, config files
and version policies (no server: the lifecycle is tested against real servers in
tests/integration/repository)."""

from __future__ import annotations

import json
import os

import pytest
from fixtures.models import build_model_folder

from latentserve.manifest import ManifestError
from serving.core.repository import VersionPolicy, read_config, scan_model, scan_repository


def test_policies_choose_latest_all_or_specific_versions():
    versions = [1, 2, 3, 5]
    assert VersionPolicy().choose(versions) == {5}
    assert VersionPolicy.model_validate({"latest": {"num_versions": 2}}).choose(versions) == {3, 5}
    assert VersionPolicy.model_validate({"all": {}}).choose(versions) == {1, 2, 3, 5}
    specific = VersionPolicy.model_validate({"specific": {"versions": [2, 4]}})
    assert specific.choose(versions) == {2}  # 4 is not in the repository
    assert specific.describe() == "specific 2, 4"


def test_a_flat_folder_is_version_1_beside_numbered_versions(tmp_path):
    build_model_folder(tmp_path, "m", seed=1)  # flat
    build_model_folder(tmp_path / "m", "3", seed=3)  # m/3/ (its model.json says "3": fine here)
    (tmp_path / "m" / ".staging-x").mkdir()  # hidden: ignored
    (tmp_path / "m" / "04").mkdir()  # not a version number
    (tmp_path / "m" / "notes").mkdir()
    found = scan_model(tmp_path / "m")
    assert sorted(found.versions) == [1, 3]
    assert found.versions[1].folder == tmp_path / "m"
    # The flat version's fingerprint covers its own files, not its version subfolders.
    assert all("/" not in name for name, _, _ in found.versions[1].fingerprint)


def test_a_changed_file_changes_the_fingerprint(tmp_path):
    folder = build_model_folder(tmp_path / "m", "1", seed=1)
    before = scan_model(tmp_path / "m").versions[1].fingerprint
    stat = (folder / "decoder.onnx").stat()
    os.utime(folder / "decoder.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert scan_model(tmp_path / "m").versions[1].fingerprint != before


def test_config_files_are_validated_with_a_helpful_message(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    assert read_config(folder).version_policy.describe() == "latest 1"
    (folder / "config.json").write_text(
        json.dumps({"version_policy": {"latest": {"num_versions": 0}}})
    )
    with pytest.raises(ManifestError, match="num_versions"):
        read_config(folder)
    (folder / "config.json").write_text(json.dumps({"version_policy": {"all": {}, "latest": {}}}))
    with pytest.raises(ManifestError, match="set one"):
        read_config(folder)
    found = scan_repository(tmp_path)["m"]
    assert "set one" in found.error


def test_hidden_and_underscore_model_folders_are_skipped(tmp_path):
    build_model_folder(tmp_path, "good", seed=1)
    for hidden in (".hidden", "_private"):
        build_model_folder(tmp_path, "good", seed=2).rename(tmp_path / hidden)
        build_model_folder(tmp_path, "good", seed=1)
    assert list(scan_repository(tmp_path)) == ["good"]
