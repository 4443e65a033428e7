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

ROOT = Path(__file__).resolve().parents[2]
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
