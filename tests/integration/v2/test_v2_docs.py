"""The curl examples of docs/serving.md's Open Inference Protocol section run against a
real server (the shipped models, a random HTTP port in place of localhost:8000), and each
answer matches the comment below its command: the comment's text between '...' elisions
must appear in the output, in order."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.servers import InProcessServer, free_port

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "serving.md"
SECTION = "## Open Inference Protocol (KServe v2)"
DOC_ADDRESS = "localhost:8000"


def curl_examples() -> list[tuple[str, str]]:
    """(command, expected-output comment) pairs from the section's curl block."""
    text = DOC.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    (block,) = [b for b in blocks if "curl" in b]
    examples: list[tuple[str, str]] = []
    pending = ""
    for line in block.splitlines():
        if not pending and line.startswith("#"):
            command, _ = examples[-1]
            examples[-1] = (command, line[1:].strip())
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            continue
        try:
            shlex.split(pending)
        except ValueError:  # an open quote: the command goes on
            continue
        examples.append((pending, ""))
        pending = ""
    return examples


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[InProcessServer]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with InProcessServer(ROOT / "models", http_port=free_port()) as running:
        yield running


EXAMPLES = curl_examples()


def test_the_section_has_curl_examples_with_answers() -> None:
    assert len(EXAMPLES) >= 5
    assert all(expected for _, expected in EXAMPLES)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_curl_example_answers_as_documented(shipped_server: InProcessServer, index: int) -> None:
    command, expected = EXAMPLES[index]
    assert shipped_server.server.http is not None
    address = f"127.0.0.1:{shipped_server.server.http.port}"
    done = subprocess.run(
        ["bash", "-c", command.replace(DOC_ADDRESS, address)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout.strip()
    position = 0
    for fragment in (f.strip() for f in expected.split("...")):
        found = output.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in the answer after position {position}:\n{output}"
        position = found + len(fragment)


README = ROOT / "README.md"


def readme_grpcurl_lines() -> list[tuple[str, str]]:
    """(request JSON, method) of each grpcurl line in the README's 'Three ways' table."""
    text = README.read_text()
    section = text[text.index("## Three ways to call the service") :]
    section = section[: section.index("\n## ", 5)]
    return re.findall(r"grpcurl -plaintext -d '(\{.*?\})' localhost:50051 ([\w./]+)`", section)


def test_readme_grpcurl_lines_are_valid_calls(shipped_server: InProcessServer) -> None:
    """grpcurl is not installed here, so its JSON is parsed the way grpcurl does (protobuf's
    JSON mapping) and sent with the same method."""
    import grpc
    from google.protobuf import json_format

    from latentserve._proto.inference import grpc_predict_v2_pb2 as v2pb
    from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb

    messages = {
        "latentserve.v1.Autoencoder/SampleRandom": (pb.SampleRequest, pb.SampleResponse),
        "inference.GRPCInferenceService/ModelInfer": (
            v2pb.ModelInferRequest,
            v2pb.ModelInferResponse,
        ),
    }
    lines = readme_grpcurl_lines()
    assert sorted(method for _, method in lines) == sorted(messages)
    with grpc.insecure_channel(shipped_server.target) as channel:
        for body, method in lines:
            request_type, response_type = messages[method]
            request = json_format.Parse(body, request_type())
            call = channel.unary_unary(
                f"/{method}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            response = call(request, timeout=30)
            assert response.ByteSize() > 0


def test_readme_curl_line_answers(shipped_server: InProcessServer) -> None:
    text = README.read_text()
    section = text[text.index("## Three ways to call the service") :]
    (command,) = re.findall(r"`(curl [^`]*)`", section[: section.index("\n## ", 5)])
    assert shipped_server.server.http is not None
    address = f"127.0.0.1:{shipped_server.server.http.port}"
    done = subprocess.run(
        ["bash", "-c", command.replace(DOC_ADDRESS, address)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and '"shape":[1,1,28,28]' in done.stdout, done.stdout[:300]
