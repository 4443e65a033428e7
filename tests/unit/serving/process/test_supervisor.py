"""How many workers `auto` means, and how the onnxruntime threads are shared among them."""

from __future__ import annotations

import os

import pytest

from serving.process import supervisor
from serving.process.settings import ServerSettings
from serving.process.supervisor import read_cpu_max, resolve_workers, worker_settings


def test_cpu_max_is_read_as_cores(tmp_path):
    (tmp_path / "limited").write_text("150000 100000\n")
    (tmp_path / "unlimited").write_text("max 100000\n")
    assert read_cpu_max(tmp_path / "limited") == 1.5
    assert read_cpu_max(tmp_path / "unlimited") is None
    assert read_cpu_max(tmp_path / "absent") is None


def test_the_tightest_quota_on_the_cgroup_path_counts(tmp_path):
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "cpu.max").write_text("800000 100000\n")
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("250000 100000\n")
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/kubepods/pod1\n")
    assert supervisor.cgroup_cpu_quota(root=tmp_path, membership=membership) == 2.5
    membership.write_text("0::/\n")  # inside a container: its own cgroup is the root
    assert supervisor.cgroup_cpu_quota(root=tmp_path, membership=membership) is None


def test_auto_is_the_usable_cores_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(supervisor, "cgroup_cpu_quota", lambda: None)
    assert resolve_workers(ServerSettings(workers="auto")) == 4
    monkeypatch.setattr(supervisor, "cgroup_cpu_quota", lambda: 2.5)
    assert resolve_workers(ServerSettings(workers="auto")) == 2  # a partial core rounds down
    monkeypatch.setattr(supervisor, "cgroup_cpu_quota", lambda: 0.5)
    assert resolve_workers(ServerSettings(workers="auto")) == 1
    assert resolve_workers(ServerSettings(workers=3)) == 3


def test_onnxruntime_threads_are_shared_out_so_workers_times_threads_fit(monkeypatch):
    monkeypatch.setattr(supervisor, "usable_cores", lambda: 8)
    base = ServerSettings(intra_op_threads=0, port=50051, metrics_port=9090)
    child = worker_settings(base, port=41000, workers=4)
    assert child.intra_op_threads == 2
    assert (child.port, child.metrics_port) == (41000, 0)  # the supervisor serves metrics
    assert worker_settings(ServerSettings(intra_op_threads=1), 41000, 4).intra_op_threads == 1


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_workers_must_be_a_count_or_auto(value):
    with pytest.raises(ValueError, match="workers must be a whole number >= 1 or 'auto'"):
        ServerSettings(workers=value)
