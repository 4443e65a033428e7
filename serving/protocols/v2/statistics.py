"""Triton's statistics extension for the v2 models: the cumulative figures of
serving.core.statistics, per v2 model and version, as Triton's JSON (REST) and protobuf
(gRPC ``ModelStatistics``) give them.

Each v2 model reads its role's figures: ``M-encoder`` and ``M-decoder`` their graph's
(requests from every protocol that ran the graph; batch_stats are the graph's runs by
batch size), ``M-sampler`` SampleRandom's (one request per chunk; its runs are the decoder
graph's, so its batch_stats stay empty and execution_count counts its chunks).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from latentserve._proto.inference import grpc_predict_v2_pb2 as pb
from serving.core.errors import invalid_argument
from serving.core.repository import ModelRepository
from serving.core.statistics import BATCH_DURATIONS, DURATIONS, Counts
from serving.protocols.v2.models import Role, V2Catalogue, v2_name

# Triton's InferStatistics also has these; latentserve has no response cache.
UNUSED_DURATIONS = ("cache_hit", "cache_miss")


def model_statistics(
    repository: ModelRepository, catalogue: V2Catalogue, name: str = "", version: str = ""
) -> list[dict[str, Any]]:
    """The statistics of v2 model `name` (empty: every v2 model of every served version)
    at `version` (empty: the newest served), in Triton's JSON shape; NOT_FOUND for an
    unknown model or version."""
    if name:
        model, described = catalogue.resolve(name, version)
        role = described.role
        targets = [(model.manifest.name, str(model.version), role)]
    elif version:
        raise invalid_argument("a version needs a model name; leave both empty for every model")
    else:
        targets = [
            (slot.name, str(number), role)
            for slot in repository.slots
            for number in slot.ready_versions()
            for role in Role
        ]
    snapshot = repository.statistics.snapshot()
    return [
        _model_stat(
            v2_name(model_name, role), served, snapshot.get((model_name, served, role.value), {})
        )
        for model_name, served, role in targets
    ]


def _model_stat(name: str, version: str, counts: Counts) -> dict[str, Any]:
    def duration(prefix: str) -> dict[str, int]:
        return {"count": counts.get(f"{prefix}.count", 0), "ns": counts.get(f"{prefix}.ns", 0)}

    sizes = sorted({int(key.split(".")[1]) for key in counts if key.startswith("batch.")})
    return {
        "name": name,
        "version": version,
        "last_inference": counts.get("last_inference", 0),
        "inference_count": counts.get("inference_count", 0),
        "execution_count": counts.get("execution_count", 0),
        "inference_stats": {
            **{d: duration(d) for d in DURATIONS},
            **{d: {"count": 0, "ns": 0} for d in UNUSED_DURATIONS},
        },
        "batch_stats": [
            {"batch_size": size, **{d: duration(f"batch.{size}.{d}") for d in BATCH_DURATIONS}}
            for size in sizes
        ],
    }


def statistics_response(stats: list[dict[str, Any]]) -> pb.ModelStatisticsResponse:
    """The gRPC answer for `model_statistics`'s figures."""
    return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())
