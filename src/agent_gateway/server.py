"""Serving with uvicorn (uvloop, httptools), as `agent-gateway serve` runs it."""

from __future__ import annotations

import signal

import uvicorn

from agent_gateway.logs import configure_logging
from agent_gateway.settings import Settings

# Past the grace, streams are ended with an error event; these seconds let them write it.
_CUT_OFF_MARGIN = 5.0


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    # uvicorn re-raises SIGTERM after its graceful shutdown under the handler it found at start;
    # with this no-op there, a drained and flushed gateway exits 0 instead of dying by signal.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    options = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "proxy_headers": False,  # nothing here reads the client address: skip the per-request rewrite
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds + _CUT_OFF_MARGIN,
        "timeout_keep_alive": 75,
    }
    if settings.workers > 1:
        uvicorn.run("agent_gateway.app:create_app", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]
        return
    from agent_gateway.app import Gateway

    uvicorn.run(Gateway(settings), **options)  # type: ignore[arg-type]
