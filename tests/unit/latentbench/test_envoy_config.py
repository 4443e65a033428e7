"""deploy/envoy/envoy.yaml as shipped: retry tokens Envoy knows (a wrong one, like `resets`,
is silently ignored by Envoy, so only a test catches it), gRPC health checks on the service
the server reports, and `render_config` (what tests and latent-bench run) changing nothing
but the addresses."""

from __future__ import annotations

import copy

import pytest

from latentbench.envoyproc import cluster, load_config, render_config
from serving.process.server import SERVICE_NAME

pytest.importorskip("yaml")

# Envoy 1.40's router: x-envoy-retry-on and x-envoy-retry-grpc-on values.
RETRY_ON = {
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
    "retriable-headers", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}  # fmt: skip


def _route(config):
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]


def test_retry_policy_uses_known_tokens_and_another_host():
    policy = _route(load_config())["retry_policy"]
    tokens = policy["retry_on"].split(",")
    assert set(tokens) <= RETRY_ON, set(tokens) - RETRY_ON
    assert {"connect-failure", "refused-stream", "reset", "unavailable"} <= set(tokens)
    predicates = [p["name"] for p in policy["retry_host_predicate"]]
    assert predicates == ["envoy.retry_host_predicates.previous_hosts"]
    budget = cluster(load_config())["circuit_breakers"]["thresholds"][0]["retry_budget"]
    assert budget["budget_percent"]["value"] > 100 / 3, "must cover one of 3 replicas failing"


def test_health_checks_ask_the_servers_health_service():
    checks = cluster(load_config())["health_checks"]
    assert checks[0]["grpc_health_check"]["service_name"] == SERVICE_NAME
    assert cluster(load_config())["lb_policy"] in ("LEAST_REQUEST", "ROUND_ROBIN")


def test_admin_is_on_loopback_only():
    assert load_config()["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_render_changes_only_the_addresses():
    shipped = load_config()
    rendered = render_config(
        [("127.0.0.2", 20001), ("127.0.0.3", 20002)], ("127.0.0.1", 20003), ("127.0.0.1", 20004)
    )
    endpoints = cluster(rendered)["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [
        20001,
        20002,
    ]
    a, b = copy.deepcopy(shipped), copy.deepcopy(rendered)
    for config in (a, b):
        del cluster(config)["load_assignment"]
        del config["admin"]["address"]
        del config["static_resources"]["listeners"][0]["address"]
    assert a == b
