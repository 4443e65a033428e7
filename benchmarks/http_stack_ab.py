"""The A/B behind the HTTP port's stack (docs/performance.md, "The HTTP stack"): aiohttp vs
uvicorn + starlette, both serving the same two handlers on the plain asyncio loop, as the
server runs them next to grpc.aio. Not part of the package; needs aiohttp, uvicorn,
starlette and httptools in the running Python, and h2load (Debian nghttp2-client).

    python benchmarks/http_stack_ab.py aiohttp PORT            # one server, until killed
    python benchmarks/http_stack_ab.py starlette PORT [httptools|h11]
    h2load --h1 -c16 -n20000 http://127.0.0.1:PORT/v2/health/ready
    h2load --h1 -c16 -n20000 -d body.json http://127.0.0.1:PORT/v2/models/m/infer

body.json: {"inputs":[{"name":"LATENTS","shape":[1,2],"datatype":"FP32","data":[0.5,-1.0]}]}
Loopback only; the servers run until their own PID is signalled.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

# One decoded image as JSON (784 floats), the size of a single-image v2 REST answer.
RESPONSE = json.dumps(
    {
        "model_name": "m",
        "outputs": [
            {
                "name": "IMAGES",
                "datatype": "FP32",
                "shape": [1, 1, 28, 28],
                "data": [0.123456] * 784,
            }
        ],
    }
).encode()
READY = b'{"ready":true}'


async def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=READY, content_type="application/json")

    async def infer(request: web.Request) -> web.Response:
        assert json.loads(await request.read())["inputs"]
        return web.Response(body=RESPONSE, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def serve_starlette(port: int, http: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def ready(request: Any) -> Response:
        return Response(READY, media_type="application/json")

    async def infer(request: Any) -> Response:
        assert json.loads(await request.body())["inputs"]
        return Response(RESPONSE, media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v2/health/ready", ready),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        ]
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, loop="none", http=http,  # type: ignore[arg-type]
        access_log=False, log_level="warning", lifespan="off",
    )  # fmt: skip
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    stack, port = sys.argv[1], int(sys.argv[2])
    if stack == "aiohttp":
        asyncio.run(serve_aiohttp(port))
    else:
        asyncio.run(serve_starlette(port, sys.argv[3] if len(sys.argv) > 3 else "httptools"))
