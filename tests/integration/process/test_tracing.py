"""OpenTelemetry tracing on real servers on 127.0.0.1.

- `OTEL_TRACES_EXPORTER=console python -m serving` prints the spans of native gRPC, v2 gRPC
  and REST calls, in the trace the client sent in `traceparent`, the call's span a child of
  the client's.
- The span tree of batched calls, through an in-memory exporter: each call's queue wait is
  its child; one batch span per run, linked to every call it served, with its onnxruntime
  run span (model, version, graph, batch size).
- Log lines inside a traced call carry its trace id; a bad OTEL_TRACES_EXPORTER is refused
  at start-up with one line naming the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fixtures.servers import InProcessServer, SubprocessServer, free_port
from fixtures.slow_model import build_slow_model_folder

from latentserve._proto.inference import grpc_predict_v2_pb2 as v2_pb
from latentserve._proto.inference import grpc_predict_v2_pb2_grpc as v2_pb_grpc
from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.tensors import array_to_tensor

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from serving.process.tracing import Tracing

LATENTS = np.zeros((1, 2), dtype=np.float32)
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def traceparent() -> tuple[str, str, str]:
    """A client's W3C traceparent: (header value, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


# -- the console exporter, on `python -m serving` ---------------------------------------------


def console_spans(text: str) -> list[dict[str, Any]]:
    """The ConsoleSpanExporter's output: JSON objects one after another."""
    decoder, spans, i = json.JSONDecoder(), [], 0
    while True:
        start = text.find("{", i)
        if start < 0:
            return spans
        span, i = decoder.raw_decode(text, start)
        spans.append(span)


def test_console_exporter_prints_the_callers_trace(tiny_models_dir: Path, tmp_path: Path) -> None:
    http_port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", "0"]
    command += ["--models-dir", str(tiny_models_dir), "--default-model", "tiny-vae"]
    command += ["--metrics-port", "0", "--http-port", str(http_port)]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    try:
        end = time.monotonic() + 60
        while "ready: serving" not in err.read_text():
            assert proc.poll() is None and time.monotonic() < end, err.read_text()
            time.sleep(0.1)
        match = LISTENING.search(err.read_text())
        assert match is not None
        target = f"127.0.0.1:{match.group(1)}"
        native, v2, rest = traceparent(), traceparent(), traceparent()
        with grpc.insecure_channel(target) as channel:
            request = pb.DecodeRequest(model="tiny-vae", latents=array_to_tensor(LATENTS))
            pb_grpc.AutoencoderStub(channel).Decode(
                request, metadata=[("traceparent", native[0])], timeout=10
            )
            infer = v2_pb.ModelInferRequest(
                model_name="tiny-vae-decoder",
                inputs=[
                    v2_pb.ModelInferRequest.InferInputTensor(
                        name="latents", datatype="FP32", shape=[1, 2]
                    )
                ],
                raw_input_contents=[LATENTS.tobytes()],
            )
            v2_pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer, metadata=[("traceparent", v2[0])], timeout=10
            )
        body = json.dumps(
            {"inputs": [{"name": "latents", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}]}
        ).encode()
        url = f"http://127.0.0.1:{http_port}/v2/models/tiny-vae-decoder/infer"
        request_http = urllib.request.Request(url, data=body, headers={"traceparent": rest[0]})
        with urllib.request.urlopen(request_http, timeout=10) as response:
            assert response.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)  # the server this test started
        assert proc.wait(30) == 0, err.read_text()
    spans = console_spans(out.read_text())
    for (_, trace_id, parent_id), method in (
        (native, "Decode"),
        (v2, "ModelInfer"),
        (rest, "RestInfer"),
    ):
        mine = [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]
        names = sorted(s["name"] for s in mine)
        assert names == sorted([method, "queue wait", "batch", "onnxruntime run"]), (method, names)
        (call,) = [s for s in mine if s["name"] == method]
        assert call["parent_id"] == f"0x{parent_id}"  # the client's span
        assert call["kind"] == "SpanKind.SERVER"
        assert call["attributes"]["rpc.grpc.status_code"] == "OK"
        (run,) = [s for s in mine if s["name"] == "onnxruntime run"]
        assert run["attributes"]["latentserve.model"] == "tiny-vae"
        assert run["attributes"]["latentserve.batch_size"] == 1


# -- the span tree, through an in-memory exporter ---------------------------------------------


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[InProcessServer, InMemorySpanExporter]]:
    """A traced server whose decoder takes a few ms a run, so concurrent calls queue."""
    build_slow_model_folder(tmp_path, "slow", matmuls=100)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with InProcessServer(
        tmp_path,
        tracing=Tracing(provider),
        max_batch_delay_ms=50.0,
    ) as running:
        yield running, exporter


def test_batched_calls_link_to_one_batch_span(
    traced: tuple[InProcessServer, InMemorySpanExporter],
) -> None:
    running, exporter = traced
    parents = [traceparent() for _ in range(12)]
    # More rows than the batcher runs inline on the event loop (serving.core.batching's
    # INLINE_MAX_ROWS): the first call runs in the executor and the others queue behind it.
    rows = np.zeros((5, 2), dtype=np.float32)
    request = pb.DecodeRequest(model="slow", latents=array_to_tensor(rows))

    async def calls() -> None:
        # One connection, all calls at once: they arrive together, queue and share batches.
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.AutoencoderStub(channel)
            await stub.Decode(request, timeout=10)  # connected
            await asyncio.gather(
                *(
                    stub.Decode(request, metadata=[("traceparent", p[0])], timeout=10)
                    for p in parents
                )
            )

    asyncio.run(calls())
    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    by_id = {s.context.span_id: s for s in spans}
    calls = {}
    for _, trace_id, parent_id in parents:
        (span,) = [
            s for s in spans if s.name == "Decode" and s.context.trace_id == int(trace_id, 16)
        ]
        assert span.parent is not None and span.parent.span_id == int(parent_id, 16)
        calls[span.context.span_id] = span
        # Its queue wait is its child, inside the call.
        (wait,) = [
            s
            for s in spans
            if s.name == "queue wait" and s.parent and s.parent.span_id == span.context.span_id
        ]
        assert span.start_time <= wait.start_time <= wait.end_time <= span.end_time
    batches = [
        s
        for s in spans
        if s.name == "batch" and any(link.context.span_id in calls for link in s.links)
    ]
    linked = [link.context.span_id for b in batches for link in b.links]
    assert sorted(linked) == sorted(calls), "each traced call is linked from exactly one batch"
    assert max(len(b.links) for b in batches) >= 2, "some batch served several calls"
    for batch in batches:
        assert batch.parent is not None and batch.parent.span_id in calls
        (run,) = [
            s
            for s in spans
            if s.name == "onnxruntime run"
            and s.parent
            and s.parent.span_id == batch.context.span_id
        ]
        attributes = dict(run.attributes or {})
        assert attributes["latentserve.model"] == "slow"
        assert attributes["latentserve.model_version"] == "1"
        assert attributes["latentserve.graph"] == "decoder"
        assert (
            attributes["latentserve.batch_size"]
            == dict(batch.attributes or {})["latentserve.batch.rows"]
        )
        assert batch.start_time <= run.start_time <= run.end_time <= batch.end_time
    assert by_id  # spans were exported at all


def test_untraced_calls_make_no_spans_unless_sampled(
    traced: tuple[InProcessServer, InMemorySpanExporter],
) -> None:
    running, exporter = traced
    with grpc.insecure_channel(running.target) as channel:
        request = pb.DecodeRequest(model="slow", latents=array_to_tensor(LATENTS))
        # A client that did not sample its trace (flags 00): the server follows it.
        header = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
        pb_grpc.AutoencoderStub(channel).Decode(
            request, metadata=[("traceparent", header)], timeout=10
        )
    assert [s.name for s in exporter.get_finished_spans()] == []


def test_log_lines_in_a_call_carry_its_trace_id(
    traced: tuple[InProcessServer, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    running, _ = traced
    tracing = running.server.calls.tracing
    assert tracing is not None
    header, trace_id, _ = traceparent()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    from serving.process.logs import TraceIdFilter

    handler = Keep()
    handler.addFilter(TraceIdFilter(tracing.trace_id))
    logging.getLogger("serving.protocols.calls").addHandler(handler)
    try:
        call = running.server.calls.begin("Probe", "slow", [("traceparent", header)])
        logging.getLogger("serving.protocols.calls").warning("inside the call")
        running.server.calls.end(call)
        logging.getLogger("serving.protocols.calls").warning("after the call")
    finally:
        logging.getLogger("serving.protocols.calls").removeHandler(handler)
    inside, after = records
    assert getattr(inside, "trace_id", None) == trace_id
    assert getattr(after, "trace_id", None) is None


def test_a_bad_exporter_name_is_refused_at_start(tiny_models_dir: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "jaeger"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--http-port",
            "0",
            "--models-dir",
            str(tiny_models_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert (
        "OTEL_TRACES_EXPORTER='jaeger': unknown exporter jaeger; use otlp, console" in done.stderr
    )
    assert "Traceback" not in done.stderr


# -- OTLP, to a test-local receiver, from a --workers 2 server --------------------------------


def test_otlp_export_from_a_two_worker_server_reaches_a_receiver(tiny_models_dir: Path) -> None:
    from fixtures.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver().start()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "latentserve-under-test",
    }
    server = SubprocessServer(
        tiny_models_dir, ["--workers", "2", "--default-model", "tiny-vae"], env=env
    ).start()
    sent = [traceparent() for _ in range(6)]
    try:
        server.wait_for_log("ready: serving")
        request = pb.DecodeRequest(model="tiny-vae", latents=array_to_tensor(LATENTS))
        for header, _, _ in sent:
            # A channel each: SO_REUSEPORT spreads the connections over both workers.
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(server.target, options=options) as channel:
                stub = pb_grpc.AutoencoderStub(channel)
                stub.Decode(request, metadata=[("traceparent", header)], timeout=10)
    finally:
        server.terminate()  # each worker exports what it still holds as it stops
        assert server.wait(60) == 0
        receiver.stop()
    assert {r.get("service.name") for r in receiver.resources} == {"latentserve-under-test"}
    for _, trace_id, parent_id in sent:
        mine = [s for s in receiver.spans if s.trace_id.hex() == trace_id]
        by_name = {s.name: s for s in mine}
        assert sorted(by_name) == ["Decode", "batch", "onnxruntime run", "queue wait"], by_name
        call = by_name["Decode"]
        assert call.parent_span_id.hex() == parent_id
        assert by_name["queue wait"].parent_span_id == call.span_id
        assert by_name["batch"].parent_span_id == call.span_id
        assert [link.span_id for link in by_name["batch"].links] == [call.span_id]
        assert by_name["onnxruntime run"].parent_span_id == by_name["batch"].span_id
        run = {a.key: a.value for a in by_name["onnxruntime run"].attributes}
        assert run["latentserve.batch_size"].int_value == 1
        assert run["latentserve.model_version"].string_value == "1"
