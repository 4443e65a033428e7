"""Every doc works with the repository alone: no doc (README.md, docs/, examples/) names a path
outside the repository. The authors' machines have folders beside the checkout
(`../shared/...`) and under /work; a user who clones the repository has neither.

- In commands (fenced code blocks, run from the repository root), no `../` path at all.
- In prose and links, a `../` path is read from the doc's own folder and must be a file or
  folder of the repository (docs/ links to ../benchmarks/RESULTS.md, say).
- Nowhere an absolute path of a developer machine (/work/, /home/, /root/, /Users/, /opt/).
  Paths inside containers and pods (/models, /mnt/models, /tmp/x.png) are fine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "examples").rglob("*.md")]
)
PARENT_PATH = re.compile(r"(?<![\w.])(?:\.\./)+[\w./-]*")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users|opt)/[\w./-]*")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
HEREDOC = re.compile(r"cat > (\S+) <<'?EOF'?")


def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def command_paths(block: str, repo: Path) -> list[str]:
    """`../` paths in a code block. Commands run from the repository root, so any is outside;
    but a file a command writes (`cat > deploy/x/kustomization.yaml <<EOF`) may name paths
    relative to itself, which must then be in the repository."""
    found = []
    written: Path | None = None
    for line in block.splitlines():
        if written is not None and line.strip() == "EOF":
            written = None
            continue
        heredoc = HEREDOC.search(line)
        for path in PARENT_PATH.findall(line):
            target = (written.parent / path).resolve() if written else None
            if target is None or not (target.is_relative_to(repo) and target.exists()):
                found.append(f"command path {path}")
        if heredoc:
            written = repo / heredoc.group(1)
    return found


def outside_paths(doc: Path, repo: Path = REPO) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    found = [f"machine path {m}" for m in MACHINE_PATH.findall(text)]
    for block in FENCE.findall(text):
        found += command_paths(block, repo)
    for path in PARENT_PATH.findall(FENCE.sub("", text)):
        target = (doc.parent / path.split("#")[0]).resolve()
        if not (target.is_relative_to(repo) and target.exists()):
            found.append(f"path {path} (not in the repository)")
    return found


def test_the_docs_are_found():
    names = {doc_id(d) for d in DOCS}
    assert {"README.md", "docs/deployment.md", "docs/serving.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_no_doc_names_a_path_outside_the_repository(doc):
    assert outside_paths(doc) == []


def test_the_check_catches_what_it_is_for(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("")
    (tmp_path / "deploy" / "base").mkdir(parents=True)  # ../base from deploy/mine: fine
    bad = tmp_path / "docs" / "page.md"
    bad.write_text(
        "Run `bash ../shared/tools/docker-here.sh base` first.\n\n"
        "```bash\nscripts/build_models.sh --data-dir ../shared/data/mnist\n"
        "cat > deploy/mine/kustomization.yaml <<EOF\nresources:\n  - ../base\n"
        "  - ../../../elsewhere\nEOF\n```\n\n"
        "Data in /work/shared/data/mnist. Results: [r](../benchmarks/RESULTS.md), /models.\n"
    )
    assert outside_paths(bad, repo=tmp_path) == [
        "machine path /work/shared/data/mnist.",
        "command path ../shared/data/mnist",
        "command path ../../../elsewhere",
        "path ../shared/tools/docker-here.sh (not in the repository)",
    ]
