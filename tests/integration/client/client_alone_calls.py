"""Client calls run inside a venv that holds `pip install latentserve` and nothing else.

Started by test_client_alone.py as `VENV/bin/python client_alone_calls.py TARGET`, against a
server running in the main venv. Plain asserts, no pytest (the venv has none): exit 0 means
every call worked, and no module of the server, of training, or of the manifest (pydantic)
was imported on the way.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from latentserve.client import AsyncLatentClient, LatentClient, LatentServeError

SERVER_ONLY = (
    "serving",
    "training",
    "onnxruntime",
    "PIL",
    "pydantic",
    "grpc_health",
    "prometheus_client",
)


def sync_calls(target: str) -> None:
    with LatentClient(target, timeout=30) as client:
        assert client.health() == "SERVING"
        assert client.health("tiny-ae") == "SERVING"
        assert client.health("nope") == "SERVICE_UNKNOWN"
        names = {m.name for m in client.list_models()}
        assert {"tiny-ae", "tiny-vae"} <= names, names
        assert client.default_model() == "tiny-vae"
        assert client.get_model("tiny-ae").latent_dim == 2
        sample = client.sample(5, model="tiny-vae", seed=3, return_latents=True)
        assert sample.images.shape == (5, 1, 28, 28) and sample.images.dtype == np.float32
        again = client.sample(5, model="tiny-vae", seed=3, return_latents=True)
        np.testing.assert_array_equal(sample.images, again.images)
        streamed = LatentClient(target, timeout=30, max_unary_samples=2)
        with streamed:
            np.testing.assert_array_equal(
                streamed.sample(5, model="tiny-vae", seed=3).images, sample.images
            )
        encoded = client.encode(sample.images, model="tiny-vae")
        assert encoded.latents.shape == (5, 2) and encoded.log_var is not None
        decoded = client.decode(encoded.latents, model="tiny-vae", return_png=True)
        assert decoded.images.shape == (5, 1, 28, 28)
        assert all(p.startswith(b"\x89PNG") for p in decoded.png)
        # PNG bytes go to the server as they are: the client needs no Pillow for them.
        from_png = client.encode(decoded.png, model="tiny-vae")
        assert from_png.latents.shape == (5, 2)
        try:
            client.sample(1, model="nope")
        except LatentServeError as e:
            assert e.code.name == "NOT_FOUND", e
        else:
            raise AssertionError("an unknown model must fail")


async def async_calls(target: str) -> None:
    async with AsyncLatentClient(target, timeout=30) as client:
        assert await client.health() == "SERVING"
        sample = await client.sample(3, model="tiny-ae", seed=1)
        decoded = await client.decode(
            (await client.encode(sample.images, model="tiny-ae")).latents, model="tiny-ae"
        )
        assert decoded.images.shape == (3, 1, 28, 28)


def main() -> int:
    target = sys.argv[1]
    sync_calls(target)
    asyncio.run(async_calls(target))
    imported = sorted(m for m in sys.modules if m.split(".")[0] in SERVER_ONLY)
    imported += [m for m in ("latentserve.manifest",) if m in sys.modules]
    assert not imported, f"the client imported server-only modules: {imported}"
    import google.protobuf
    import grpc

    print(f"client alone OK: grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
