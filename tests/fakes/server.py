"""A real HTTP server for fakes: an aiohttp app on its own event loop, in a thread of the tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass

from aiohttp import web


@dataclass
class ThreadedServer:
    """An aiohttp app on its own loop in a thread, on a loopback port that survives restarts."""

    host: str = "127.0.0.1"
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def build(self) -> web.Application:
        raise NotImplementedError

    def start(self) -> ThreadedServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            # A fake has nothing to finish: handlers still waiting (a `hang`) are cancelled after
            # 0.1 s instead of holding stop() for aiohttp's 60 s.
            self._runner = web.AppRunner(self.build(), access_log=None, shutdown_timeout=0.1)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.SockSite(self._runner, sock).start())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self._runner.shutdown(), self._loop).result(5)
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None
