"""Native protocol (latentserve.v1) conversions: wire enums to names, and the response
messages built from the model API's numpy results and the registry's entries.

The servicer reads arrays out of requests with latentserve.tensors and validates them with
serving.core.requests; everything it sends back is built here.
"""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve.png import to_uint8
from latentserve.priors import PRIOR_TO_PROTO, PROTO_TO_PRIOR, PriorName
from latentserve.tensors import array_to_tensor
from serving.core.errors import invalid_argument
from serving.core.model import Encoded
from serving.core.registry import ModelEntry, ModelState
from serving.core.repository import ModelRepository, ModelSlot, VersionState
from serving.core.requests import DecodeRequest, EncodeRequest, ImageDtype, SampleRequest

Float32Array = npt.NDArray[np.float32]

STATE_TO_PROTO = {
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.UNAVAILABLE: pb.MODEL_STATE_UNAVAILABLE,
}
VERSION_STATE_TO_PROTO = {
    VersionState.LOADING: pb.MODEL_STATE_LOADING,
    VersionState.READY: pb.MODEL_STATE_READY,
    VersionState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    VersionState.UNAVAILABLE: pb.MODEL_STATE_UNAVAILABLE,
}


def prior_from_proto(value: int) -> PriorName | None:
    """The prior a request's enum names; None for PRIOR_UNSPECIFIED (the model's default)."""
    if value == pb.PRIOR_UNSPECIFIED:
        return None
    prior = PROTO_TO_PRIOR.get(value)  # type: ignore[call-overload]
    if prior is None:
        raise invalid_argument(
            f"prior: unknown value {value}; use one of "
            + ", ".join(pb.Prior.Name(v) for v in pb.Prior.values())
        )
    return prior  # type: ignore[no-any-return]


def image_dtype_from_proto(value: int) -> ImageDtype:
    """How a request wants its answer's images: float32 (the default) or uint8."""
    if value == pb.DATA_TYPE_FLOAT32:
        return "float32"
    if value == pb.DATA_TYPE_UINT8:
        return "uint8"
    raise invalid_argument(
        f"image_dtype: unknown value {value}; use DATA_TYPE_FLOAT32 or DATA_TYPE_UINT8"
    )


def images_tensor(images: Float32Array, image_dtype: ImageDtype) -> pb.Tensor:
    """Images in [0, 1] as the request asked: float32, or uint8 levels (rounded, clipped)."""
    return array_to_tensor(to_uint8(images) if image_dtype == "uint8" else images)


def encode_response(request: EncodeRequest, result: Encoded) -> pb.EncodeResponse:
    return pb.EncodeResponse(
        model=request.model.name,
        model_version=str(request.model.version),
        latents=array_to_tensor(result.latents),
        # None leaves a field unset (a plain autoencoder has no log_var; z only on request).
        log_var=None if result.log_var is None else array_to_tensor(result.log_var),
        z=None if result.z is None else array_to_tensor(result.z),
        seed=request.z_seed or 0,
    )


def decode_response(
    request: DecodeRequest, images: Float32Array, pngs: list[bytes]
) -> pb.DecodeResponse:
    response = pb.DecodeResponse(
        model=request.model.name,
        model_version=str(request.model.version),
        images=images_tensor(images, request.image_dtype),
    )
    response.png.extend(pngs)
    return response


def sample_response(
    request: SampleRequest,
    offset: int,
    latents: Float32Array,
    images: Float32Array,
    pngs: list[bytes],
) -> pb.SampleResponse:
    response = pb.SampleResponse(
        model=request.model.name,
        model_version=str(request.model.version),
        images=images_tensor(images, request.image_dtype),
        seed=request.seed,
        offset=offset,
        prior=PRIOR_TO_PROTO[request.prior],
    )
    if request.return_latents:
        response.latents.CopyFrom(array_to_tensor(latents))
    response.png.extend(pngs)
    return response


def list_models_response(registry: ModelRepository) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[model_info(e, registry.slot(e.name)) for e in registry.entries],
        default_model=registry.default_model,
    )


def model_info(entry: ModelEntry, slot: ModelSlot | None = None) -> pb.ModelInfo:
    """The model as `entry` shows it (its newest served version), and every version."""
    info = pb.ModelInfo(name=entry.name, state=STATE_TO_PROTO[entry.state], error=entry.error)
    if slot is not None:
        for number in sorted(slot.versions, reverse=True):
            v = slot.versions[number]
            info.versions.add(
                version=number, state=_version_state(v.state, v.failed), reason=v.reason
            )
    m = entry.manifest
    if m is not None:
        info.version = str(entry.version)
        info.kind = m.kind
        info.latent_dim = m.latent_dim
        info.image_shape.extend(m.image_shape)
        info.latent_shape.extend(m.latent_shape)
        info.graph_dtype = m.image.dtype
        if m.image.dynamic is not None:
            d = m.image.dynamic
            info.size_multiple, info.min_size, info.max_size = d.multiple, d.min, d.max
        info.latent_scaling, info.latent_shift = m.latent.scaling, m.latent.shift
        info.description = m.description
        info.default_prior = PRIOR_TO_PROTO[m.prior.default]
        info.metrics.update(m.metrics)
        info.encoder_sha256 = m.encoder.sha256
        info.decoder_sha256 = m.decoder.sha256
        info.provenance_json = json.dumps(m.provenance, sort_keys=True)
    if entry.model is not None:
        info.providers.extend(entry.model.providers)
    return info


def _version_state(state: VersionState, failed: bool) -> pb.ModelState.ValueType:
    if failed and state is VersionState.UNAVAILABLE:
        return pb.MODEL_STATE_FAILED
    return VERSION_STATE_TO_PROTO[state]
