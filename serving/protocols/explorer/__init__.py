"""The latent-space explorer: a page served by latentserve itself on its HTTP port.

The page (static/: plain ES modules, canvas and SVG, no build step) calls the v2 REST API
for every image it shows and ``/explorer/models`` for what to draw (data.py). pages.py
holds the HTTP resources independent of the HTTP stack; routes.py mounts them on the HTTP
port's aiohttp app, which finds them through :func:`routes`.
"""

from serving.protocols.explorer.data import ExplorerData
from serving.protocols.explorer.pages import MODELS_PATH, STATIC_PREFIX, ExplorerPages, Reply
from serving.protocols.explorer.routes import routes

__all__ = ["MODELS_PATH", "STATIC_PREFIX", "ExplorerData", "ExplorerPages", "Reply", "routes"]
