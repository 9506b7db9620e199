"""A loopback server that answers every request with 200 `{}` and records it: the place an
attacker would point Letta at, so a test can show that nothing ever arrives there."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.fakes.server import ThreadedServer


@dataclass(frozen=True)
class Caught:
    method: str
    path: str
    authorization: str | None


@dataclass
class Catcher(ThreadedServer):
    caught: list[Caught] = field(default_factory=list)

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._catch)
        return app

    def start(self) -> Catcher:
        super().start()
        return self

    async def _catch(self, request: web.Request) -> web.Response:
        await request.read()
        self.caught.append(Caught(request.method, request.path, request.headers.get("Authorization")))
        return web.json_response({})
