"""`latent-serve`: run the server (the client's `latent-client` lives in latentserve.cli).

latent-serve takes one flag per ServerSettings field (see settings.py), with LATENTSERVE_*
environment variables as defaults. Configuration errors print one line naming the bad
setting and exit 2, without a traceback; so do start-up problems (a port in use, a missing
models folder, no servable model: serving/process/startup.py). `--workers N|auto` runs N processes
on one port under a supervisor (serving/process/supervisor.py); 1 runs the server in this process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

    from serving.process.settings import ServerSettings

PROG = "latent-serve"


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in error.errors())


def _settings(argv: Sequence[str] | None) -> ServerSettings | None:
    """The settings from flags and environment, or None after printing what is wrong."""
    from pydantic import ValidationError

    from serving.process.settings import parse_settings

    try:
        return parse_settings(argv)
    except ValidationError as e:
        print(f"{PROG}: invalid configuration: {_describe(e)}", file=sys.stderr)
        return None


def _run(settings: ServerSettings) -> int:
    """Check the configuration, then run one server process or the supervisor's workers.

    Nothing gRPC is imported here before the workers exist (they are spawned, not forked)."""
    from serving.process.logs import configure_logging
    from serving.process.settings import StartupError
    from serving.process.startup import EXIT_STARTUP_ERROR, check_startup
    from serving.process.supervisor import resolve_workers, supervise

    configure_logging(settings.log_level, settings.log_format)
    try:
        check_startup(settings)
    except StartupError as e:
        logging.getLogger(__name__).error("%s", e)
        return EXIT_STARTUP_ERROR
    workers = resolve_workers(settings)
    if workers > 1:
        return supervise(settings, workers)
    from serving.process.memory import keep_large_buffers_out_of_heap
    from serving.process.server import serve

    keep_large_buffers_out_of_heap()
    return asyncio.run(serve(settings))


def serve_main(argv: Sequence[str] | None = None) -> int:
    settings = _settings(argv)
    return 2 if settings is None else _run(settings)
