"""The client moved to :mod:`latentserve.client`, which installs without the server
(`pip install latentserve`). This re-export keeps `from serving.client import LatentClient`
working for existing code; new code imports from latentserve.client.
"""

from latentserve.client import (
    DEFAULT_TARGET,
    AsyncLatentClient,
    DecodeResult,
    EncodeResult,
    LatentClient,
    LatentServeError,
    ModelInfo,
    SampleResult,
    TlsConfig,
)

__all__ = [
    "DEFAULT_TARGET",
    "AsyncLatentClient",
    "DecodeResult",
    "EncodeResult",
    "LatentClient",
    "LatentServeError",
    "ModelInfo",
    "SampleResult",
    "TlsConfig",
]
