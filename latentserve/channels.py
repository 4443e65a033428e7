"""How a client reaches one or many servers: the gRPC service config (round_robin load
balancing, retries on UNAVAILABLE and a shutting-down server's CANCELLED) and K channels
spread round robin.

Targets are gRPC's own name syntax, so client-side balancing needs no code of ours:
``host:port`` (DNS), ``dns:///host:port`` (every address the name resolves to, e.g. a
Kubernetes headless Service), ``ipv4:10.0.0.1:50051,10.0.0.2:50051`` (a fixed list). With
the ``round_robin`` policy one channel keeps a connection to every address and sends each
call to the next ready one; a replica that goes away is skipped once its connection fails.

Retries (gRPC's retryPolicy, gRFC A6), only for two statuses, both meaning that the call
was not run or not answered: UNAVAILABLE (the server is draining and refused it, or the
connection failed or the server died before answering) and CANCELLED as a server sends it (gRPC core resets the
calls still arriving while a stopping server closes its listener; measured: a SIGTERM of one
of three replicas under 16 threads cost 1-5 such calls per run before they were retried).
A caller's own cancellation ends the call and is never retried. At most
``RetryPolicy.max_attempts`` attempts in all, with exponential backoff and jitter. Every
RPC of the client is idempotent (no call changes server state; a call without a seed may
draw other random numbers on a retry, which the caller could not tell apart), so the policy
covers Encode, Decode, SampleRandom, ListModels, GetModel and grpc.health.v1 Check. It also
names SampleRandomStream, but gRPC retries a call only until it is *committed*, which for a
stream is when the first response arrives: a stream that fails after its first chunk
surfaces the error to the caller (replaying it could duplicate chunks already delivered).
A call that never left the client (no connection yet) is retried transparently by gRPC
regardless of this policy.

Client-side health checking (``health_check=True``, gRFC A17): each connection also
watches the server's grpc.health.v1 status, and round_robin skips a replica while it says
NOT_SERVING, as a draining server does at once (then, after its drain delay, it refuses and
closes). Meant for several replicas; off by default, because with one server a call would
then fail on the client while the server warms up, instead of getting the server's answer.

Several channels: SO_REUSEPORT spreads *connections* over a server's worker processes, not
calls, and channels normally share one global subchannel pool (one connection per address).
``channels=K`` opens K channels, each with its own pool (``grpc.use_local_subchannel_pool``),
hence K connections per address, and :class:`RoundRobin` spreads calls over them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
import grpc.aio

ChannelOption = tuple[str, int | str]

AUTOENCODER_SERVICE = "latentserve.v1.Autoencoder"
HEALTH_SERVICE = "grpc.health.v1.Health"
# The calls the retry policy covers (see the module docstring for SampleRandomStream).
RETRIED_METHODS: tuple[tuple[str, str], ...] = (
    (AUTOENCODER_SERVICE, "Encode"),
    (AUTOENCODER_SERVICE, "Decode"),
    (AUTOENCODER_SERVICE, "SampleRandom"),
    (AUTOENCODER_SERVICE, "SampleRandomStream"),
    (AUTOENCODER_SERVICE, "ListModels"),
    (AUTOENCODER_SERVICE, "GetModel"),
    (HEALTH_SERVICE, "Check"),
)
LOAD_BALANCING_POLICIES = ("round_robin", "pick_first")
# The statuses retried, both "not run" (see the module docstring).
RETRYABLE_CODES = ("UNAVAILABLE", "CANCELLED")


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retries on RETRYABLE_CODES: at most `max_attempts` attempts in all (gRPC caps it at
    5), the n-th retry after a random delay in [0, min(initial * multiplier^(n-1), max)]."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be 2..5 (gRPC's limit), got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("backoff must satisfy 0 < initial_backoff_s <= max_backoff_s")
        if self.backoff_multiplier <= 0:
            raise ValueError("backoff_multiplier must be > 0")

    def as_json(self) -> dict[str, object]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s:.3f}s",
            "maxBackoff": f"{self.max_backoff_s:.3f}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(RETRYABLE_CODES),
        }


DEFAULT_RETRY = RetryPolicy()


def service_config(
    load_balancing: str | None = "round_robin",
    retry: RetryPolicy | None = DEFAULT_RETRY,
    health_check: bool = False,
) -> str:
    """The JSON service config for a channel (gRPC's `grpc.service_config` option).
    `health_check` adds client-side health checking (gRFC A17, round_robin only)."""
    config: dict[str, object] = {}
    if load_balancing is not None:
        if load_balancing not in LOAD_BALANCING_POLICIES:
            raise ValueError(
                f"load_balancing must be one of {list(LOAD_BALANCING_POLICIES)} or None, "
                f"got {load_balancing!r}"
            )
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    if retry is not None:
        names = [{"service": s, "method": m} for s, m in RETRIED_METHODS]
        config["methodConfig"] = [{"name": names, "retryPolicy": retry.as_json()}]
    if health_check:
        if load_balancing != "round_robin":
            raise ValueError("health_check needs load_balancing='round_robin'")
        # The server's overall status (service ""), which turns NOT_SERVING when it drains.
        config["healthCheckConfig"] = {"serviceName": ""}
    return json.dumps(config, separators=(",", ":"))


RECONNECT_BACKOFF_MS = 100


def channel_options(
    *,
    max_message_bytes: int,
    load_balancing: str | None = "round_robin",
    retry: RetryPolicy | None = DEFAULT_RETRY,
    health_check: bool = False,
    server_name: str | None = None,
    extra: Sequence[ChannelOption] = (),
) -> list[ChannelOption]:
    """Channel arguments; `extra` ones come last (gRPC keeps the first of a repeated key,
    so they add to these and cannot replace them)."""
    options: list[ChannelOption] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", service_config(load_balancing, retry, health_check)),
        # A DNS TXT record must not replace the config above.
        ("grpc.service_config_disable_resolution", 1),
        # gRPC keeps a request for retrying only up to this size (default 256 KiB, less than
        # one 100-image Encode); a larger one would be committed at once and never retried.
        # The buffer holds references to the message already sent, not a copy.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        # When a server process dies (a SIGKILLed worker, a replica restarting), the first
        # reconnect can reach its dying listener and fail; gRPC's default 1 s initial backoff
        # would then fail every call fast for a second, longer than the retries wait. With
        # 100 ms, 10 of 10 worker-kill runs failed at most one call per channel (3 of 5 runs
        # at the default failed 6-7; tests/integration/process/test_workers.py).
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    options.extend(extra)
    return options


def _check_count(channels: int) -> None:
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")


def sync_channels(
    target: str,
    channels: int,
    options: Sequence[ChannelOption],
    credentials: grpc.ChannelCredentials | None = None,
) -> list[grpc.Channel]:
    """`channels` blocking channels to `target`; more than one get local subchannel pools,
    so that each holds connections of its own."""
    _check_count(channels)
    opts = [*options, *([("grpc.use_local_subchannel_pool", 1)] if channels > 1 else [])]
    if credentials is None:
        return [grpc.insecure_channel(target, options=opts) for _ in range(channels)]
    return [grpc.secure_channel(target, credentials, options=opts) for _ in range(channels)]


def aio_channels(
    target: str,
    channels: int,
    options: Sequence[ChannelOption],
    credentials: grpc.ChannelCredentials | None = None,
) -> list[grpc.aio.Channel]:
    """As sync_channels, for asyncio (create them inside the event loop that uses them)."""
    _check_count(channels)
    opts = [*options, *([("grpc.use_local_subchannel_pool", 1)] if channels > 1 else [])]
    if credentials is None:
        return [grpc.aio.insecure_channel(target, options=opts) for _ in range(channels)]
    return [grpc.aio.secure_channel(target, credentials, options=opts) for _ in range(channels)]


T = TypeVar("T")


class RoundRobin(Generic[T]):
    """Hands out the items in turn. next() is one step of an itertools.cycle, which the GIL
    makes safe to call from several threads (the blocking client may be shared)."""

    def __init__(self, items: Sequence[T]) -> None:
        if not items:
            raise ValueError("RoundRobin needs at least one item")
        self.items = tuple(items)
        self._cycle = itertools.cycle(self.items)

    def next(self) -> T:
        return next(self._cycle)

    def __len__(self) -> int:
        return len(self.items)
