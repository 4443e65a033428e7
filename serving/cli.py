"""`latent-serve`: run the server (the client's `latent-client` lives in latentserve.cli).

latent-serve takes one flag per ServerSettings field (see settings.py), with LATENTSERVE_*
environment variables as defaults. Configuration errors print one line naming the bad
setting and exit 2, without a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

    from .settings import ServerSettings

PROG = "latent-serve"


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in error.errors())


def _settings(argv: Sequence[str] | None) -> ServerSettings | None:
    """The settings from flags and environment, or None after printing what is wrong."""
    from pydantic import ValidationError

    from .settings import parse_settings

    try:
        return parse_settings(argv)
    except ValidationError as e:
        print(f"{PROG}: invalid configuration: {_describe(e)}", file=sys.stderr)
        return None


def _run(settings: ServerSettings) -> int:
    from .logs import configure_logging
    from .memory import keep_large_buffers_out_of_heap
    from .server import serve

    configure_logging(settings.log_level, settings.log_format)
    keep_large_buffers_out_of_heap()
    return asyncio.run(serve(settings))


def serve_main(argv: Sequence[str] | None = None) -> int:
    settings = _settings(argv)
    return 2 if settings is None else _run(settings)
