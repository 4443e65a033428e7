"""The Open Inference Protocol's REST API (KServe v2 HTTP/REST), as aiohttp routes.

Handlers translate only: JSON (or the binary tensor data extension) in, :class:`V2Api`
(inference.py) for the answer, JSON (plus binary outputs when asked) out. Inference calls
go through the server's CallTracker like native calls, so drain, metrics and the error
mapping are shared; a failure answers ``{"error": "..."}`` with the HTTP status for its
gRPC code (http_app.HTTP_STATUS; a full queue is 429, a request too large 413).

Binary tensor data extension: a request whose ``Inference-Header-Content-Length`` header
is N carries N bytes of JSON, then the raw bytes of every input whose parameters hold
``binary_data_size``, in input order. Outputs come back raw (after the JSON, with
``binary_data_size`` in their parameters and the same header on the response) when the
request asks for it per output (``"parameters": {"binary_data": true}``) or for all
(request parameter ``binary_data_output: true``); otherwise as JSON ``data``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from aiohttp import web

from latentserve.tensors import TensorError
from serving.core.errors import Overloaded, ServingError, invalid_argument, resource_exhausted
from serving.protocols.calls import UNKNOWN_MODEL_LABEL, Call, Refused
from serving.protocols.http_app import HTTP_STATUS, json_error
from serving.protocols.v2 import codec
from serving.protocols.v2.inference import InferInput, V2Api
from serving.protocols.v2.models import V2Model

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON = "application/json"
BINARY = "application/octet-stream"
INFER_METHOD = "RestInfer"
# JSON parts from this size on are parsed in a thread, one at a time (see V2Rest._parse).
LARGE_JSON_BYTES = 256 * 1024


def routes(api: V2Api) -> list[web.RouteDef]:
    rest = V2Rest(api)
    return [
        web.get("/v2", rest.server_metadata),
        web.get("/v2/health/live", rest.live),
        web.get("/v2/health/ready", rest.ready),
        # Before /v2/models/{name}, which would take "stats" for a model name.
        web.get("/v2/models/stats", rest.model_statistics),
        web.get("/v2/models/{name}/stats", rest.model_statistics),
        web.get("/v2/models/{name}/versions/{version}/stats", rest.model_statistics),
        web.get("/v2/models/{name}", rest.model_metadata),
        web.get("/v2/models/{name}/ready", rest.model_ready),
        web.post("/v2/models/{name}/infer", rest.infer),
        web.get("/v2/models/{name}/versions/{version}", rest.model_metadata),
        web.get("/v2/models/{name}/versions/{version}/ready", rest.model_ready),
        web.post("/v2/models/{name}/versions/{version}/infer", rest.infer),
        web.post("/v2/repository/index", rest.repository_index),
        web.post("/v2/repository/models/{name}/load", rest.repository_load),
        web.post("/v2/repository/models/{name}/unload", rest.repository_unload),
    ]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type=JSON)


def _failure(error: BaseException, code_status: int, message: str) -> web.Response:
    status = (
        429
        if isinstance(error, Overloaded)
        else 408
        if isinstance(error, BodyTimeout)
        else code_status
    )
    return json_error(status, message)


class V2Rest:
    def __init__(self, api: V2Api) -> None:
        self._api = api
        # One large parse at a time: the memory budget (max_json_bytes x ~16) holds per
        # server, not per concurrent request.
        self._large_parse = asyncio.Semaphore(1)

    async def _parse(
        self, body: bytes, header_length: str | None
    ) -> tuple[dict[str, Any], list[InferInput], set[str] | bool, list[str] | None]:
        """parse_infer_request, in a thread for a large JSON part so the event loop can run
        between its steps (orjson itself holds the interpreter while it parses)."""
        json_size = len(body) if header_length is None else _int_or(header_length, len(body))
        if json_size < LARGE_JSON_BYTES:
            return parse_infer_request(body, header_length, self._api.settings.max_json_bytes)
        async with self._large_parse:
            return await asyncio.to_thread(
                parse_infer_request, body, header_length, self._api.settings.max_json_bytes
            )

    async def _answer(
        self,
        method: str,
        work: Callable[[Call], Awaitable[web.Response]],
        request: web.Request | None = None,
    ) -> web.Response:
        """Run `work` as one tracked call: refused while draining, counted, errors mapped;
        traced as a continuation of the `request`'s traceparent header, if any."""
        calls = self._api.calls
        headers = request.headers.items() if request is not None and calls.tracing else None
        try:
            # Labelled by the v2 model once it resolves; until then the URL's name is unchecked.
            call = calls.begin(method, UNKNOWN_MODEL_LABEL, headers)
        except Refused as refused:
            return json_error(503, refused.status.message)
        try:
            response = await work(call)
        except BaseException as error:
            status = calls.end(call, error)
            if status is None:
                raise
            return _failure(error, HTTP_STATUS.get(status.code, 500), status.message)
        calls.end(call)
        return response

    # -- health and metadata ----------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        live = self._api.live()
        return _json({"live": live}, 200 if live else 503)

    async def ready(self, request: web.Request) -> web.Response:
        ready = self._api.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        try:
            ready = self._api.model_ready(name, version)
        except ServingError as e:
            return json_error(HTTP_STATUS.get(e.code, 500), e.message)
        return _json({"name": name, "ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        name, version, extensions = self._api.server_metadata()
        return _json({"name": name, "version": version, "extensions": list(extensions)})

    async def model_metadata(self, request: web.Request) -> web.Response:
        async def work(call: Call) -> web.Response:
            model, versions = self._api.model_metadata(
                request.match_info["name"], request.match_info.get("version", "")
            )
            call.model = model.name
            return _json(metadata_json(model, versions))

        return await self._answer("RestModelMetadata", work, request)

    async def model_statistics(self, request: web.Request) -> web.Response:
        async def work(call: Call) -> web.Response:
            call.model = UNKNOWN_MODEL_LABEL
            name = request.match_info.get("name", "")
            stats = self._api.model_statistics(name, request.match_info.get("version", ""))
            if name:
                call.model = name
            return _json({"model_stats": stats})

        return await self._answer("RestModelStatistics", work, request)

    # -- the model repository extension (Triton's shapes) ------------------------------------
    # Not tracked calls: an unload waits for the tracked calls in flight, never for itself.

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await request.read()
        ready = False
        if body.strip():
            try:
                options = orjson.loads(body)
            except orjson.JSONDecodeError:
                options = None
            if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
                return json_error(400, 'the body must be empty or {"ready": true|false}')
            ready = options.get("ready", False)
        rows = self._api.repository_index(ready)
        return _json(
            [
                {"name": r.name, "version": r.version, "state": r.state, "reason": r.reason}
                for r in rows
            ]
        )

    async def repository_load(self, request: web.Request) -> web.Response:
        return await self._repository_call(request, self._api.repository_load)

    async def repository_unload(self, request: web.Request) -> web.Response:
        return await self._repository_call(request, self._api.repository_unload)

    async def _repository_call(
        self, request: web.Request, action: Callable[[str], Awaitable[None]]
    ) -> web.Response:
        try:
            await action(request.match_info["name"])
        except ServingError as e:
            # Triton answers a load that fails with 400; an unknown model is a 404.
            status = 404 if e.code is grpc.StatusCode.NOT_FOUND else 400
            return json_error(status, e.message)
        return web.Response(status=200)

    # -- inference --------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")

        async def work(call: Call) -> web.Response:
            settings = self._api.settings
            check_declared_sizes(request, settings.max_message_bytes, settings.max_json_bytes)
            body = await read_body(
                request, settings.max_message_bytes, settings.http_body_timeout_s
            )
            header, inputs, binary_outputs, requested = await self._parse(
                body, request.headers.get(HEADER_LENGTH)
            )
            model, outputs = await self._api.infer(name, version, inputs, requested, None, call)
            return infer_response(model, header.get("id"), outputs, binary_outputs)

        return await self._answer(INFER_METHOD, work, request)


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def check_declared_sizes(request: web.Request, max_body: int, max_json: int) -> None:
    """Refuse from the headers alone, before reading a byte of the body: a Content-Length
    over the body limit (a 200 MB body used to be read up to 64 MiB first), or a JSON part
    over max_json_bytes."""
    declared = request.content_length
    if declared is not None and declared > max_body:
        raise resource_exhausted(
            f"request body of {declared} bytes (Content-Length) is more than the server's "
            f"max_message_bytes ({max_body}); split the request"
        )
    header_length = request.headers.get(HEADER_LENGTH)
    json_size = declared if header_length is None else _int_or(header_length, 0)
    if json_size is not None and json_size > max_json:
        raise resource_exhausted(
            f"JSON part of {json_size} bytes is more than the server's max_json_bytes "
            f"({max_json}); send large tensors as binary data (the binary tensor data "
            f"extension: {HEADER_LENGTH} and binary_data_size)"
        )


class BodyTimeout(ServingError):
    """The request body did not arrive in time (HTTP 408)."""


async def read_body(request: web.Request, limit: int, timeout: float | None = None) -> bytes:
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise BodyTimeout(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"request body not received within http_body_timeout_s ({timeout} s)",
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise resource_exhausted(
            f"request body too large: more than the server's max_message_bytes ({limit}); "
            "split the request"
        ) from None


def metadata_json(model: V2Model, versions: list[str]) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": versions,
        "platform": model.platform,
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.inputs
        ],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.outputs
        ],
    }


def parse_infer_request(
    body: bytes, header_length: str | None, max_json: int | None = None
) -> tuple[dict[str, Any], list[InferInput], set[str] | bool, list[str] | None]:
    """The JSON header, the decoded inputs, which outputs go back binary (a set of names, or
    True for all) and the requested output names (None: all). A JSON part over `max_json`
    bytes is refused (a chunked body declares no length up front)."""
    json_part, binary = _split_body(body, header_length)
    if max_json is not None and len(json_part) > max_json:
        raise resource_exhausted(
            f"JSON part of {len(json_part)} bytes is more than the server's max_json_bytes "
            f"({max_json}); send large tensors as binary data ({HEADER_LENGTH}, "
            "binary_data_size)"
        )
    header = _json_header(json_part)
    inputs = _decode_inputs(header, binary)
    binary_outputs, requested = _requested_outputs(header)
    return header, inputs, binary_outputs, requested


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part (the binary tensor data extension)."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise invalid_argument(
            f"{HEADER_LENGTH}: {header_length!r} is not a byte count within the body's "
            f"{len(body)} bytes; give the length of the JSON part"
        )
    return body[:n], body[n:]


def _json_header(json_part: bytes) -> dict[str, Any]:
    try:
        header = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise invalid_argument(
            f"request body is not valid JSON ({e}); send an inference request object"
        ) from None
    if not isinstance(header, dict):
        raise invalid_argument("request body must be a JSON object with an 'inputs' list")
    return header


def _decode_inputs(header: dict[str, Any], binary: bytes) -> list[InferInput]:
    """Each input from its JSON ``data`` or its slice of `binary`, taken in input order."""
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid_argument("'inputs' must be a non-empty list of tensors")
    inputs: list[InferInput] = []
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        name, datatype, shape, parameters = _tensor_header(tensor, i)
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise invalid_argument(
                    f"{name}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                    "binary bytes left after the JSON header"
                )
            array = codec.from_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            array = codec.from_values(name, datatype, shape, tensor["data"])
        else:
            raise TensorError(f"{name}: no 'data', and no binary_data_size parameter")
        inputs.append(InferInput(name, datatype, array))
    if offset != len(binary):
        raise invalid_argument(
            f"{len(binary) - offset} binary bytes after the inputs' binary_data_size total; "
            "each binary input must give its exact size"
        )
    return inputs


def _requested_outputs(header: dict[str, Any]) -> tuple[set[str] | bool, list[str] | None]:
    """Which outputs go back binary (True: all) and which were asked for (None: all)."""
    binary_outputs: set[str] | bool = bool(_parameters(header).get("binary_data_output", False))
    requested: list[str] | None = None
    raw_outputs = header.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise invalid_argument("'outputs' must be a list of {'name': ...} objects")
        requested = []
        chosen: set[str] = set()
        for out in raw_outputs:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise invalid_argument("each of 'outputs' must be an object with a 'name'")
            requested.append(out["name"])
            if _parameters(out).get("binary_data", False):
                chosen.add(out["name"])
        if binary_outputs is False:
            binary_outputs = chosen
    return binary_outputs, requested


def _parameters(obj: dict[str, Any]) -> dict[str, Any]:
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid_argument("'parameters' must be a JSON object")
    return parameters


def _tensor_header(tensor: Any, index: int) -> tuple[str, str, list[int], dict[str, Any]]:
    if not isinstance(tensor, dict):
        raise invalid_argument(f"inputs[{index}] must be an object with name, datatype, shape")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise invalid_argument(f"inputs[{index}]: 'name' must be a string")
    if not isinstance(datatype, str):
        raise invalid_argument(f"{name}: 'datatype' must be a string such as \"FP32\"")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise invalid_argument(f"{name}: 'shape' must be a list of integers")
    return name, datatype, shape, _parameters(tensor)


def infer_response(
    model: V2Model, request_id: Any, outputs: dict[str, Any], binary_outputs: set[str] | bool
) -> web.Response:
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out_name, array in outputs.items():
        spec = model.output(out_name)
        assert spec is not None
        entry: dict[str, Any] = {
            "name": out_name,
            "datatype": spec.datatype,
            "shape": list(array.shape),
        }
        if binary_outputs is True or (binary_outputs and out_name in binary_outputs):
            raw = codec.to_raw(array, spec.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            # orjson writes numpy arrays natively (float32 in its shortest form).
            entry["data"] = array.ravel()
        described.append(entry)
    answer: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": described,
    }
    if isinstance(request_id, str) and request_id:
        answer["id"] = request_id
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return web.Response(body=head, content_type=JSON)
    return web.Response(
        body=b"".join([head, *chunks]),
        content_type=BINARY,
        headers={HEADER_LENGTH: str(len(head))},
    )
