"""Serving must install and run without torch: nothing under serving/ imports it, and the
serve extra does not depend on it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_serving_modules_do_not_import_torch():
    code = (
        "import sys, serving.server, serving.client, serving.cli, serving.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_serve_extra_has_no_torch():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not [d for d in extras["serve"] if d.lower().startswith("torch")]
