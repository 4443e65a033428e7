"""The native gRPC servicer (latentserve.v1.Autoencoder): protobuf in, model API, protobuf out.

Each handler reads straight through: pull arrays and values out of the request
(latentserve.tensors), validate them into a typed request (serving.core.requests), run it on the
model (serving.core.model), check the output and build the response (serving.protocols.native.converters). The
`calls.unary` / `calls.stream` decorators own drain accounting, metrics and error-to-status
mapping, through the server's shared CallTracker. Nothing here loads models, batches or runs
onnxruntime; see registry.py, model.py and batching.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.tensors import tensor_to_array
from serving.core.errors import invalid_argument, overloaded
from serving.core.images import encode_pngs
from serving.core.model import ServedModel, monotonic_deadline
from serving.core.registry import ModelState
from serving.core.repository import ModelRepository
from serving.core.requests import EncodeRequest, RequestParser, SampleRequest
from serving.process.settings import ServerSettings
from serving.protocols import calls
from serving.protocols.calls import Call, CallTracker
from serving.protocols.native.converters import (
    decode_response,
    encode_response,
    image_dtype_from_proto,
    list_models_response,
    model_info,
    prior_from_proto,
    sample_response,
)

Context = grpc.aio.ServicerContext[Any, Any]
Float32Array = npt.NDArray[np.float32]


class AutoencoderServicer(pb_grpc.AutoencoderServicer):
    def __init__(
        self, registry: ModelRepository, settings: ServerSettings, calls: CallTracker
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._parse = RequestParser(registry, settings)
        self.calls = calls
        # SampleRandomStream calls in progress (bounded by max_concurrent_streams).
        self.active_streams = 0

    def _model(self, name: str, version: int, call: Call) -> ServedModel:
        """The READY model `name` (empty = default) at `version` (0 = its newest), now also
        the call's metric labels."""
        model = self._parse.model(name, version)
        call.model, call.version = model.name, str(model.version)
        return model

    @calls.unary("Encode")
    async def Encode(
        self, request: pb.EncodeRequest, context: Context, call: Call
    ) -> pb.EncodeResponse:
        model = self._model(request.model, request.version, call)
        parsed = await self._encode_request(model, request)
        result = await parsed.run(monotonic_deadline(context.time_remaining()))
        call.samples = parsed.rows
        return encode_response(parsed, result)

    async def _encode_request(self, model: ServedModel, request: pb.EncodeRequest) -> EncodeRequest:
        seed = request.seed if request.HasField("seed") else None
        which = request.WhichOneof("input")
        if which == "images":
            images = tensor_to_array(request.images, "images", allow_uint8=True)
            return self._parse.encode(model, images, sample_z=request.sample_z, seed=seed)
        if which == "encoded_images":
            return await self._parse.encode_files(
                model,
                list(request.encoded_images.data),
                resize=request.encoded_images.resize,
                sample_z=request.sample_z,
                seed=seed,
            )
        raise invalid_argument("no input: set either images (a float32 tensor) or encoded_images")

    @calls.unary("Decode")
    async def Decode(
        self, request: pb.DecodeRequest, context: Context, call: Call
    ) -> pb.DecodeResponse:
        model = self._model(request.model, request.version, call)
        latents = (
            tensor_to_array(request.latents, "latents") if request.HasField("latents") else None
        )
        parsed = self._parse.decode(
            model,
            latents,
            return_png=request.return_png,
            image_dtype=image_dtype_from_proto(request.image_dtype),
        )
        images = await parsed.run(monotonic_deadline(context.time_remaining()))
        pngs = await asyncio.to_thread(encode_pngs, images) if parsed.return_png else []
        call.samples = parsed.rows
        return decode_response(parsed, images, pngs)

    @calls.unary("SampleRandom")
    async def SampleRandom(
        self, request: pb.SampleRequest, context: Context, call: Call
    ) -> pb.SampleResponse:
        model = self._model(request.model, request.version, call)
        parsed = self._parse.sample(model, **_sampling_fields(request))
        deadline = monotonic_deadline(context.time_remaining())
        (chunk,) = [c async for c in parsed.chunks(deadline)]
        call.samples = parsed.count
        return await _sample_response(parsed, chunk.offset, chunk.latents, chunk.images)

    @calls.stream("SampleRandomStream")
    async def SampleRandomStream(
        self, request: pb.SampleRequest, context: Context, call: Call
    ) -> AsyncIterator[pb.SampleResponse]:
        model = self._model(request.model, request.version, call)
        parsed = self._parse.sample_stream(
            model, chunk_size=request.chunk_size, **_sampling_fields(request)
        )
        most = self._settings.max_concurrent_streams
        if self.active_streams >= most:
            raise overloaded(
                f"SampleRandomStream: {self.active_streams} streams already running "
                f"(max_concurrent_streams {most}); retry with backoff"
            )
        self.active_streams += 1
        try:
            deadline = monotonic_deadline(context.time_remaining())
            async for chunk in parsed.chunks(deadline):
                yield await _sample_response(parsed, chunk.offset, chunk.latents, chunk.images)
                call.samples += int(chunk.images.shape[0])
        finally:
            self.active_streams -= 1

    @calls.unary("ListModels", lambda request: "")
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context, call: Call
    ) -> pb.ListModelsResponse:
        return list_models_response(self._registry)

    @calls.unary("GetModel")
    async def GetModel(
        self, request: pb.GetModelRequest, context: Context, call: Call
    ) -> pb.ModelInfo:
        entry = self._registry.get_entry(request.model)
        call.model = entry.name
        slot = self._registry.slot(entry.name)
        if request.version:
            # The named version, READY, or the error a call to it would get.
            model = self._registry.resolve(entry.name, request.version)
            entry = replace(
                entry, state=ModelState.READY, manifest=model.manifest, model=model, error=""
            )
            entry.version = model.version
        return model_info(entry, slot)


def _sampling_fields(request: pb.SampleRequest) -> dict[str, Any]:
    """The SampleRequest fields both sampling RPCs validate the same way."""
    return {
        "count": request.count,
        "prior": prior_from_proto(request.prior),
        "temperature": request.temperature if request.HasField("temperature") else None,
        "seed": request.seed if request.HasField("seed") else None,
        "return_latents": request.return_latents,
        "return_png": request.return_png,
        "image_dtype": image_dtype_from_proto(request.image_dtype),
    }


async def _sample_response(
    request: SampleRequest, offset: int, latents: Float32Array, images: Float32Array
) -> pb.SampleResponse:
    pngs = await asyncio.to_thread(encode_pngs, images) if request.return_png else []
    return sample_response(request, offset, latents, images, pngs)
