"""The sampling priors by name, and their wire enum: the one place both are spelled out.

A model folder names its default prior (model.json), the native proto carries an enum, the
CLIs and the Open Inference Protocol take the name; every one of them maps through here.
"""

from __future__ import annotations

from typing import Literal, get_args

from ._proto.latentserve.v1 import autoencoder_pb2 as pb

PriorName = Literal["standard_normal", "fitted_gaussian", "bounding_box_uniform"]
PRIOR_NAMES: tuple[PriorName, ...] = get_args(PriorName)

PRIOR_TO_PROTO: dict[PriorName, pb.Prior.ValueType] = {
    "standard_normal": pb.PRIOR_STANDARD_NORMAL,
    "fitted_gaussian": pb.PRIOR_FITTED_GAUSSIAN,
    "bounding_box_uniform": pb.PRIOR_BOUNDING_BOX_UNIFORM,
}
PROTO_TO_PRIOR: dict[pb.Prior.ValueType, PriorName] = {v: k for k, v in PRIOR_TO_PROTO.items()}


def is_prior_name(name: str) -> bool:
    return name in PRIOR_TO_PROTO
