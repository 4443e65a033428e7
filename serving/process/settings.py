"""Server configuration: one pydantic-settings object, built once at start-up.

Every field can be set by an environment variable ``LATENTSERVE_<FIELD>`` (e.g.
``LATENTSERVE_PORT``) and overridden by the matching command-line flag (``--port``);
:func:`settings_from_args` does that merge. The object is then passed down explicitly;
no other module reads the environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LATENTSERVE_"

Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
ModelControl = Literal["none", "poll", "explicit"]

MiB = 1 << 20
# On SIGTERM, keep serving this long after health turns NOT_SERVING. The shipped Envoy config
# needs 3 s to notice (checks every 1 s, 2 failures, 1 s timeout); Kubernetes' endpoint
# removal and kube-proxy take a few seconds too. With 0, a replica that stops behind Envoy
# refuses calls Envoy still sends it and then closes connections under them (issue 22: 645 of
# 24,579 calls lost).
DEFAULT_DRAIN_DELAY_S = 5.0

# The shipped models (mnist-ae, mnist-vae, mnist-vae-16) travel inside the package as its
# default models folder, so `pip install ".[serve]" && latent-serve` serves them from any
# working directory. In a checkout this is a symlink to the top-level models/ folder, which
# stays the one copy that training writes and git tracks; a wheel holds the real files.
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "shipped_models"


def _workers_value(value: object) -> object:
    """`workers` is a count >= 1 or "auto"; one clear message for anything else."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"workers must be a whole number >= 1 or 'auto', got {value!r}")


class ServerSettings(BaseSettings):
    """Everything `latent-serve` can be told; defaults work for the shipped models."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    host: str = Field("0.0.0.0", description="address to bind the gRPC and HTTP ports to")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port")
    models_dir: Path = Field(
        SHIPPED_MODELS_DIR,
        description="folder holding one folder per model; default: the shipped models inside "
        "the package (an explicit folder replaces them)",
    )
    default_model: str = Field(
        "mnist-vae",
        description="model used when a request names none; if absent, the first ready "
        "model in alphabetical order",
    )
    model_control: ModelControl = Field(
        "none",
        description="none: load the models dir once at start-up; poll: also pick up new, "
        "changed and removed version folders every poll_interval_s; explicit: only the "
        "repository API (POST /v2/repository/models/NAME/load, .../unload) changes what is "
        "served (docs/serving.md, Model repository)",
    )
    poll_interval_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="with model_control poll, seconds between scans"
    )
    device: Device = Field("auto", description="auto (CUDA if available, else CPU), cpu or cuda")
    intra_op_threads: int = Field(
        1,
        ge=0,
        description="onnxruntime intra-op threads per session; 0 = one per core, or with "
        "several workers the usable cores / workers (at least 1). 1 measured fastest on "
        "2-core machines (docs/performance.md): inference_workers already runs batches in "
        "parallel",
    )
    inference_workers: int = Field(
        2, ge=1, description="threads running onnxruntime batches concurrently (all models)"
    )
    workers: Annotated[int | Literal["auto"], BeforeValidator(_workers_value)] = Field(
        1,
        description="server processes sharing the gRPC port (SO_REUSEPORT), each with its own "
        "models; auto = the usable cores (CPU affinity and cgroup quota); 1 = one process, no "
        "supervisor (docs/deployment.md, Scaling on one machine)",
    )
    max_connection_age_ms: int = Field(
        30_000,
        ge=0,
        description="server-side maximum connection age (gRFC A9): after this (give or take 10 percent) a "
        "connection gets GOAWAY and the client reconnects, so connections rebalance over the "
        "workers and over scaled-out servers; 0 = connections live forever",
    )
    max_connection_age_grace_ms: int = Field(
        0,
        ge=0,
        description="after max_connection_age, time in-flight calls get before the connection "
        "is closed; 0 = as long as they run (a SampleRandomStream of a million samples takes "
        "minutes)",
    )
    batch_concurrency: int = Field(
        1, ge=1, description="batches of one graph allowed to run at the same time"
    )
    batching: bool = Field(True, description="gather concurrent requests into one run (on/off)")
    max_batch_size: int = Field(256, ge=1, description="most images/latents in one batched run")
    max_batch_delay_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="longest wait for a batch to fill, in milliseconds"
    )
    max_queue: int = Field(
        1024, ge=1, description="requests waiting per graph before RESOURCE_EXHAUSTED"
    )
    max_samples_per_request: int = Field(
        4096, ge=1, description="most images per Encode/Decode/SampleRandom request"
    )
    max_stream_samples: int = Field(
        1_000_000, ge=1, description="most images one SampleRandomStream call may ask for"
    )
    stream_chunk_size: int = Field(
        1024, ge=1, description="default and largest number of images per stream message"
    )
    max_message_bytes: int = Field(
        64 * MiB, ge=4 * MiB, description="largest gRPC message received or sent"
    )
    max_image_bytes: int = Field(
        1 * MiB, ge=1024, description="largest encoded (PNG/JPEG) image accepted"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="largest width x height decoded (resize mode)"
    )
    warmup_runs: int = Field(1, ge=0, description="warm-up inference runs per graph before ready")
    grace_period_s: float = Field(
        10.0, ge=0.0, description="on SIGTERM/SIGINT, time allowed for in-flight calls to finish"
    )
    drain_delay_s: float = Field(
        DEFAULT_DRAIN_DELAY_S,
        ge=0.0,
        le=300.0,
        description="on SIGTERM, seconds to keep serving new calls after health turns "
        "NOT_SERVING, so load balancers' health checks move traffic away before any call is "
        "refused; above the balancer's check interval x unhealthy threshold + timeout (the "
        "shipped Envoy config: 3 s). Ctrl-C in a terminal and a second signal skip it "
        "(docs/deployment.md, Scaling out)",
    )
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 disables"
    )
    http_port: int = Field(
        8000,
        ge=0,
        le=65535,
        description="HTTP port: the Open Inference Protocol (KServe v2) REST API and the "
        "explorer page, on host; 0 disables",
    )
    max_json_bytes: int = Field(
        4 * MiB,
        ge=64 * 1024,
        description="largest JSON part of a REST request (parsing JSON takes about 16x its "
        "size in memory and holds the interpreter); larger tensors go in binary "
        "(binary_data_size), up to max_message_bytes",
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="an HTTP connection must deliver a request's headers within this many "
        "seconds of opening (or of its previous answer), else it is closed",
    )
    http_body_timeout_s: float = Field(
        60.0, gt=0.0, description="most seconds an HTTP request body may take to arrive"
    )
    http_keepalive_s: float = Field(
        75.0, gt=0.0, description="an idle keep-alive HTTP connection is closed after this"
    )
    max_http_connections: int = Field(
        1024,
        ge=1,
        description="open HTTP connections at most (per worker); more are closed at once "
        "and counted in latentserve_http_connections_refused_total",
    )
    max_concurrent_streams: int = Field(
        64,
        ge=1,
        description="SampleRandomStream calls running at once; more get RESOURCE_EXHAUSTED",
    )
    max_concurrent_rpcs: int = Field(
        0,
        ge=0,
        description="RPCs in progress at once (all methods, health too); more get "
        "RESOURCE_EXHAUSTED at once; 0 = no limit",
    )
    tls_cert_file: FilePath | None = Field(
        None, description="PEM server certificate (chain); with tls_key_file, serve TLS only"
    )
    tls_key_file: FilePath | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: FilePath | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed "
        "(mutual TLS)",
    )
    auth_token: SecretStr | None = Field(
        None,
        description="bearer token every call except health must carry "
        "('authorization: Bearer <token>'); prefer the environment variable or a file",
    )
    auth_token_file: FilePath | None = Field(
        None, description="file with accepted bearer tokens, one per line ('#' comments)"
    )
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = Field("text", description="text or json (one object per line)")

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file too"
            )
        if self.auth_token_file is not None and not read_token_file(self.auth_token_file):
            raise ValueError(f"auth_token_file {self.auth_token_file} holds no token")
        if self.model_control == "explicit" and self.workers != 1:
            # A repository call reaches the one worker its connection landed on (SO_REUSEPORT
            # picks it), so the workers would serve different versions: refuse, not diverge.
            raise ValueError(
                "model_control explicit needs workers 1: a load or unload call reaches only "
                "one worker process; with several workers use model_control poll (each worker "
                "scans the repository and converges within one poll interval)"
            )
        return self

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def read_token_file(path: Path) -> list[str]:
    """Tokens in a token file: one per line, blank lines and '#' comments skipped."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class StartupError(Exception):
    """The server cannot start with this configuration; the message names the fix."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; unset flags fall back to the environment, then defaults."""
    for name, info in ServerSettings.model_fields.items():
        # On/off settings take on/off (also true/false, 1/0): show their default that way too.
        default = info.default
        if isinstance(default, bool):  # not a dict lookup: 1 == True
            default = "on" if default else "off"
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{info.description} [env {ENV_PREFIX}{name.upper()}, default {default}]",
        )


def settings_from_args(args: argparse.Namespace | dict[str, Any]) -> ServerSettings:
    """Merge: explicit flags > LATENTSERVE_* environment > defaults (pydantic validates all)."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    fields = {k: v for k, v in given.items() if k in ServerSettings.model_fields}
    return ServerSettings(**fields)


def parse_settings(argv: Sequence[str] | None = None) -> ServerSettings:
    parser = argparse.ArgumentParser(prog="latent-serve")
    add_settings_flags(parser)
    return settings_from_args(parser.parse_args(argv))
