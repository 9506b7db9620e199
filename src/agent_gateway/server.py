"""Serving with uvicorn (uvloop, httptools), as `agent-gateway serve` runs it."""

from __future__ import annotations

import signal

import uvicorn

from agent_gateway.deadlines import ClientDeadlinesProtocol
from agent_gateway.ops.logs import configure_logging
from agent_gateway.settings import Settings

# Past the grace, streams are ended with an error event; these seconds let them write it.
_CUT_OFF_MARGIN = 5.0


def serve(settings: Settings) -> int:
    """Serve until stopped; the exit status: 0, or 3 when usage rows were left in the outbox."""
    configure_logging(settings.log_level)
    # uvicorn re-raises SIGTERM after its graceful shutdown under the handler it found at start;
    # with this no-op there, a drained and flushed gateway exits 0 instead of dying by signal.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    options = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": ClientDeadlinesProtocol.configure(settings),  # httptools, with header deadlines
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "proxy_headers": False,  # the client address is read only where it matters (TRUSTED_PROXIES)
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds + _CUT_OFF_MARGIN,
        "timeout_keep_alive": 75,
    }
    if settings.workers > 1:
        uvicorn.run("agent_gateway.app:create_app", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]
        return 0
    from agent_gateway.app import build_gateway

    gateway = build_gateway(settings)
    uvicorn.run(gateway, **options)  # type: ignore[arg-type]
    return gateway.lifecycle.exit_code()
