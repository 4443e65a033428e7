"""The explorer's routes on the HTTP port's aiohttp app (serving/protocols/http_app.py collects
them through ``serving.protocols.explorer.routes``).

The page and its static files are public; the model-data endpoints need the same bearer
token as the v2 API when the server has tokens, and answer ``{"error": "..."}`` like it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from serving.protocols.auth import HTTP_CREDENTIALS, TokenCheck, tokens_from_settings
from serving.protocols.explorer.data import ExplorerData
from serving.protocols.explorer.pages import (
    MODELS_PATH,
    STATIC_PREFIX,
    ExplorerPages,
    Reply,
    error_reply,
)

if TYPE_CHECKING:
    from serving.protocols.http_app import HttpContext


def _response(reply: Reply) -> web.Response:
    content_type, _, charset = reply.content_type.partition("; charset=")
    return web.Response(
        status=reply.status,
        body=reply.body,
        content_type=content_type,
        charset=charset or None,
        headers=reply.headers,
    )


def _refusal(check: TokenCheck, request: web.Request) -> Reply | None:
    """The v2 API's rule for the data endpoints, answered the page's way."""
    message = check.refusal(
        request.headers.get("Authorization"),
        f"{HTTP_CREDENTIALS} (enter the token in the page's token field)",
    )
    return None if message is None else error_reply(401, message)


def routes(context: HttpContext) -> list[web.RouteDef]:
    """GET /, /explorer/static/{file}, /explorer/models and /explorer/models/{name}."""
    pages = ExplorerPages(ExplorerData(context.registry))
    check = TokenCheck(tokens_from_settings(context.settings))

    async def page(request: web.Request) -> web.Response:
        return _response(pages.page(request.headers.get("If-None-Match")))

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        return _response(pages.static(name, request.headers.get("If-None-Match")))

    async def models(request: web.Request) -> web.Response:
        refused = _refusal(check, request)
        if refused is not None:
            return _response(refused)
        return _response(pages.models())

    async def model(request: web.Request) -> web.Response:
        refused = _refusal(check, request)
        if refused is not None:
            return _response(refused)
        return _response(pages.model(request.match_info["name"]))

    return [
        web.get("/", page),
        web.get(STATIC_PREFIX + "{file}", static),
        web.get(MODELS_PATH, models),
        web.get(MODELS_PATH + "/{name}", model),
    ]
