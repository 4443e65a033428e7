"""Start-up checks: a configuration the server cannot run with stops it before anything else
starts, with one log line that says what is wrong and how to fix it, and exit code 2.

The checks run in the process that `latent-serve` started, before any gRPC object, model or
worker exists:

- the models folder exists (an explicit `--models-dir` that is not there is a typo, not an
  empty server);
- every port the server will listen on (gRPC, metrics, HTTP) is free (serving/process/ports.py
  says how that is checked).

A models folder with no servable model is refused too, but only once the models have been
loaded (the hashes and graphs are checked then): see `NO_MODEL_FIX`.
"""

from __future__ import annotations

from pathlib import Path

from serving.process.ports import PORTS, check_port_free
from serving.process.settings import ServerSettings, StartupError

EXIT_STARTUP_ERROR = 2

NO_MODEL_FIX = (
    "pass --models-dir (LATENTSERVE_MODELS_DIR) a folder holding at least one valid model "
    "folder (model.json, encoder.onnx, decoder.onnx, as latent-train export writes them), or "
    "leave it unset to serve the shipped models; each refused folder is logged above with "
    "its reason"
)


def check_startup(settings: ServerSettings) -> None:
    """Raise StartupError for the first thing that would keep the server from starting."""
    check_models_dir(settings.models_dir)
    for field in PORTS:
        if port := getattr(settings, field, 0):
            check_port_free(settings.host, port, field)


def check_models_dir(folder: Path) -> None:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise StartupError(
            f"models folder {folder} {what}: pass --models-dir (LATENTSERVE_MODELS_DIR) a "
            "folder holding one folder per model, or leave it unset to serve the shipped models"
        )
