"""Files shipped with the training package: the evaluation digit classifier (ONNX) and its record."""

from pathlib import Path

ASSETS = Path(__file__).parent
DEFAULT_CLASSIFIER = ASSETS / "mnist-classifier.onnx"
