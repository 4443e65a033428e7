"""`latent-models list` and `publish` on real folders, and the repository index of a
server in the default mode (none), which reads the repository once."""

from __future__ import annotations

import json

import grpc
from fixtures.models import build_model_folder, corrupt_hash
from fixtures.repository import http_json, publish_tiny
from fixtures.servers import InProcessServer, free_port

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from serving.process.models_cli import main


def test_list_shows_versions_policies_and_broken_ones(tmp_path, capsys):
    repo = tmp_path / "repo"
    build_model_folder(repo, "good", seed=1)
    (repo / "good" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    publish_tiny(repo, "good", seed=2)
    corrupt_hash(build_model_folder(repo, "bad", seed=3))
    assert main(["list", "--repository", str(repo)]) == 1  # something is broken
    out = capsys.readouterr().out
    lines = {tuple(line.split()[:3]) for line in out.splitlines()}
    assert {("good", "2", "ok"), ("good", "1", "ok"), ("bad", "1", "BROKEN")} <= lines
    assert "all: served" in out and "bad version 1:" in out and "sha256" in out


def test_publish_writes_the_next_version_or_refuses(tmp_path, capsys):
    source = build_model_folder(tmp_path / "src", "trained", seed=1)
    repo = tmp_path / "repo"
    assert main(["publish", str(source), "--repository", str(repo), "--name", "m"]) == 0
    assert main(["publish", str(source), "--repository", str(repo), "--name", "m"]) == 0
    out = capsys.readouterr().out
    assert "published m version 1" in out and "published m version 2" in out
    corrupt_hash(source)
    assert main(["publish", str(source), "--repository", str(repo), "--name", "m"]) == 1
    assert "not published" in capsys.readouterr().err
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]


def test_none_mode_serves_what_it_found_and_indexes_it(tmp_path):
    repo = tmp_path / "repo"
    build_model_folder(repo, "m", seed=1)
    publish_tiny(repo, "m", seed=2)
    with InProcessServer(repo, http_port=free_port(), default_model="m") as running:
        assert running.server.http is not None
        base = f"http://127.0.0.1:{running.server.http.port}"
        publish_tiny(repo, "m", seed=3)  # not noticed: model_control none
        status, rows = http_json(base, "/v2/repository/index", {})
        assert status == 200
        assert [(r["version"], r["state"]) for r in rows] == [
            ("1", "UNAVAILABLE"),
            ("2", "READY"),
        ]
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.AutoencoderStub(channel)
            info = stub.GetModel(pb.GetModelRequest(model="m"))
            assert info.version == "2" and [v.version for v in info.versions] == [2, 1]
            try:
                stub.GetModel(pb.GetModelRequest(model="m", version=1))
            except grpc.RpcError as e:
                assert e.code() is grpc.StatusCode.NOT_FOUND
                assert "versions served: 2" in (e.details() or "")
            else:
                raise AssertionError("version 1 is not served (latest 1): NOT_FOUND expected")
