"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``), on the
server's gRPC port next to the native API.

Handlers translate only: v2 protobuf tensors to arrays (codec.py), :class:`V2Api` for the
answer (inference.py: typed requests, the model's batchers), arrays to
``raw_output_contents``. ModelMetadata and ModelInfer are tracked calls (``calls.unary``:
drain, metrics, error -> status, like native calls); the liveness and readiness RPCs answer
even while the server drains, which is how they report it. The repository RPCs (index,
load, unload) are not tracked calls: an unload waits for the tracked calls in flight to
finish, which must not include itself.
"""

from __future__ import annotations

from typing import Any

import grpc

from latentserve._proto.inference import grpc_predict_v2_pb2 as pb
from latentserve._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from latentserve.tensors import TensorError
from serving.core.errors import ServingError, invalid_argument
from serving.core.model import monotonic_deadline
from serving.protocols import calls
from serving.protocols.calls import Call, bounded
from serving.protocols.v2 import codec
from serving.protocols.v2.inference import InferInput, V2Api
from serving.protocols.v2.models import V2Model
from serving.protocols.v2.statistics import statistics_response

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Liveness and readiness are health checks: open without a token, like grpc.health.v1.
PUBLIC_METHODS = (
    f"/{SERVICE_NAME}/ServerLive",
    f"/{SERVICE_NAME}/ServerReady",
)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, api: V2Api) -> None:
        self.api = api
        self.calls = api.calls

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self.api.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.api.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        try:
            ready = self.api.model_ready(request.name, request.version)
        except ServingError as e:
            await context.abort(e.code, e.message)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        name, version, extensions = self.api.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @calls.unary("ModelMetadata", calls.unresolved_model)
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context, call: Call
    ) -> pb.ModelMetadataResponse:
        model, versions = self.api.model_metadata(request.name, request.version)
        call.model = model.name
        return metadata_response(model, versions)

    @calls.unary("ModelInfer", calls.unresolved_model)
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context, call: Call
    ) -> pb.ModelInferResponse:
        inputs = infer_inputs(request)
        requested = [o.name for o in request.outputs] or None
        model, outputs = await self.api.infer(
            request.model_name,
            request.model_version,
            inputs,
            requested,
            monotonic_deadline(context.time_remaining()),
            call,
        )
        return infer_response(model, request.id, outputs)

    @calls.unary("ModelStatistics", calls.unresolved_model)
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context, call: Call
    ) -> pb.ModelStatisticsResponse:
        stats = self.api.model_statistics(request.name, request.version)
        if request.name:
            call.model = request.name
        return statistics_response(stats)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        Index = pb.RepositoryIndexResponse.ModelIndex
        rows = self.api.repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                Index(name=r.name, version=r.version, state=r.state, reason=r.reason) for r in rows
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        name = request.triton_model_name or request.model_name
        try:
            await self.api.repository_load(name)
        except ServingError as e:
            await context.abort(e.code, bounded(e.message))
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        name = request.triton_model_name or request.model_name
        try:
            await self.api.repository_unload(name)
        except ServingError as e:
            await context.abort(e.code, bounded(e.message))
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)


def metadata_response(model: V2Model, versions: list[str]) -> pb.ModelMetadataResponse:
    Tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=versions,
        platform=model.platform,
        inputs=[Tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.inputs],
        outputs=[Tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.outputs],
    )


def infer_inputs(request: pb.ModelInferRequest) -> list[InferInput]:
    """The request's tensors as arrays, from raw_input_contents or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in the order of inputs"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        if raw:
            if tensor.HasField("contents"):
                raise TensorError(
                    f"{tensor.name}: contents and raw_input_contents are both set; use one"
                )
            array = codec.from_raw(tensor.name, tensor.datatype, tensor.shape, raw[i])
        else:
            array = codec.from_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
        inputs.append(InferInput(tensor.name, tensor.datatype, array))
    return inputs


def infer_response(
    model: V2Model, request_id: str, outputs: dict[str, Any]
) -> pb.ModelInferResponse:
    # One constructor call: building the message field by field costs more per call.
    Tensor = pb.ModelInferResponse.InferOutputTensor
    datatypes = model.output_datatypes
    return pb.ModelInferResponse(
        model_name=model.name,
        model_version=model.version,
        id=request_id,
        outputs=[
            Tensor(name=name, datatype=datatypes[name], shape=array.shape)
            for name, array in outputs.items()
        ],
        raw_output_contents=[
            codec.to_raw(array, datatypes[name]) for name, array in outputs.items()
        ],
    )
