"""Settings: defaults, LATENTSERVE_* environment, flags over environment, validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.process.cli import serve_main
from serving.process.settings import SHIPPED_MODELS_DIR, ServerSettings, parse_settings


def test_defaults(monkeypatch):
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(f"LATENTSERVE_{name.upper()}", raising=False)
    s = parse_settings([])
    assert (s.host, s.port, s.models_dir, s.default_model) == (
        "0.0.0.0",
        50051,
        SHIPPED_MODELS_DIR,
        "mnist-vae",
    )
    # The shipped models travel inside the package: the default serves them from anywhere.
    shipped = {p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / "model.json").is_file()}
    assert shipped == {"mnist-ae", "mnist-vae", "mnist-vae-16", "emoji-vae"}
    assert (s.workers, s.max_connection_age_ms) == (1, 30_000)
    assert (s.device, s.batching, s.metrics_port, s.log_format) == ("auto", True, 9090, "text")
    assert s.max_batch_delay_s == pytest.approx(0.002)


def test_environment_then_flags(monkeypatch):
    monkeypatch.setenv("LATENTSERVE_PORT", "6000")
    monkeypatch.setenv("LATENTSERVE_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("LATENTSERVE_BATCHING", "off")
    monkeypatch.setenv("LATENTSERVE_METRICS_PORT", "0")
    s = parse_settings(["--port", "7000", "--device", "cpu", "--max-batch-delay-ms", "0.5"])
    assert s.port == 7000  # flag beats environment
    assert s.models_dir == Path("/srv/models")
    assert s.batching is False and s.metrics_port == 0
    assert s.device == "cpu" and s.max_batch_delay_s == pytest.approx(0.0005)


@pytest.mark.parametrize(
    "argv",
    [["--port", "70000"], ["--device", "tpu"], ["--max-batch-size", "0"], ["--log-format", "xml"]],
)
def test_invalid_values_are_rejected(argv):
    with pytest.raises(ValidationError):
        parse_settings(argv)


def test_latent_serve_reports_invalid_configuration(capsys):
    assert serve_main(["--device", "tpu"]) == 2
    assert "device" in capsys.readouterr().err


def test_help_shows_on_off_defaults_as_on_off(capsys):
    from serving.process.settings import add_settings_flags

    parser = argparse.ArgumentParser(prog="latent-serve")
    add_settings_flags(parser)
    text = " ".join(parser.format_help().split())
    assert "(on/off) [env LATENTSERVE_BATCHING, default on]" in text
    assert "default True" not in text and "default False" not in text
    # Numbers equal to True are not bools: --workers' default stays 1.
    assert "LATENTSERVE_WORKERS, default 1]" in text
