"""The README's "Try it" commands run as written against a real server with the shipped
models, from a folder holding only what the repository gives a user (examples/): each exits 0
and leaves the file it names. The only change is the address (LATENTSERVE_TARGET, a random
port) and `.venv/bin/` (this interpreter's scripts folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures.servers import InProcessServer
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
SCRIPTS = Path(sys.executable).parent


def try_it_commands(heading: str = "## Try it") -> list[str]:
    text = README.read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 5)]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block is not None
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[InProcessServer]:
    with InProcessServer(ROOT / "models") as running:
        yield running


def test_try_it_commands_run_as_written(shipped_server, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "LATENTSERVE_TARGET": shipped_server.target}
    commands = try_it_commands()
    assert any("encode examples/digits/" in c for c in commands)
    for command in commands:
        assert command.startswith(".venv/bin/latent-client "), command
        done = subprocess.run(
            ["bash", "-c", command.replace(".venv/bin/", f"{SCRIPTS}/")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        for out in re.findall(r"--out (\S+)", command):
            assert (tmp_path / out).is_file(), (command, done.stdout)
            assert f"to {out}\n" in done.stdout, (command, done.stdout)

    assert np.load(tmp_path / "a.npy").shape == (512, 1, 28, 28)
    assert Image.open(tmp_path / "my-digit.png").size == (28, 28)
    assert np.load(tmp_path / "latents.npy").shape == (1, 2)


def test_colour_model_commands_run_as_written(shipped_server, tmp_path):
    """The emoji-vae section's commands, with a 64 x 64 RGBA picture as `my-emoji.png`."""
    picture = np.zeros((64, 64, 4), np.uint8)
    picture[16:48, 16:48] = (250, 200, 60, 255)  # a yellow square on a transparent ground
    Image.fromarray(picture).save(tmp_path / "my-emoji.png")
    env = {**os.environ, "LATENTSERVE_TARGET": shipped_server.target}
    commands = try_it_commands("## A colour model: emoji-vae")
    assert len(commands) == 3 and all("--model emoji-vae" in c for c in commands)
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command.replace(".venv/bin/", f"{SCRIPTS}/")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert Image.open(tmp_path / "emoji.png").mode == "RGB"
    assert np.load(tmp_path / "z.npy").shape == (1, 8)
    back = Image.open(tmp_path / "back.png")
    assert back.mode == "RGB" and back.size == (32, 32)
