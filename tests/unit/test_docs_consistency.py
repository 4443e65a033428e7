"""The docs tell one story with the README: the client is `latentserve.client` (what
`pip install latentserve` gives a caller, no server needed), and pip extras are quoted, so the
install lines work in zsh (macOS's shell) as well as bash."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
UNQUOTED_EXTRA = re.compile(r"pip install (?:-e )?[\w.-]*\[")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_python_examples_use_the_client_package(doc):
    for block in PYTHON_BLOCK.findall(doc.read_text()):
        assert "from serving.client" not in block and "import serving.client" not in block, block
        for line in re.findall(r"^.*import.*LatentClient.*$", block, flags=re.M):
            assert line.startswith("from latentserve.client import"), line


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_pip_extras_are_quoted(doc):
    assert UNQUOTED_EXTRA.findall(doc.read_text()) == []
