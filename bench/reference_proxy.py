"""The bare reference for the benchmark: a raw ASGI pass-through with no policies (SPEC §9).

uvicorn (uvloop, httptools, no access log) and one shared aiohttp session. It relays the request
body to `UPSTREAM/chat/completions` and relays status, content type and body back; streams go
chunk by chunk as they arrive. It is what the gateway's hot path costs with every policy removed.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]

AGENT_PREFIX = "/api/v1/agents/"
PING = b'{"status":"ok"}'


class ReferenceProxy:
    def __init__(self, upstream: str, api_key: str) -> None:
        self.target = upstream.rstrip("/") + "/chat/completions"
        self.auth = f"Bearer {api_key}"
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            path: str = scope["path"]
            if scope["method"] == "POST" and path.startswith(AGENT_PREFIX) and path.endswith("/chat/completions"):
                await self._relay(scope, receive, send)
            elif path == "/ping":
                await self._answer(send, 200, b"application/json", PING)
            else:
                await self._answer(send, 404, b"application/json", b'{"error":"not found"}')

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    auto_decompress=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.session is not None
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "Authorization": self.auth,
        }
        for name, value in scope["headers"]:
            if name == b"accept":
                headers["Accept"] = value.decode("latin-1")
        try:
            async with self.session.post(self.target, data=body, headers=headers) as resp:
                content_type = resp.headers.get("Content-Type", "application/json").encode("latin-1")
                if content_type.startswith(b"text/event-stream"):
                    await send(
                        {
                            "type": "http.response.start",
                            "status": resp.status,
                            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
                        }
                    )
                    async for chunk in resp.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    await self._answer(send, resp.status, content_type, await resp.read())
        except aiohttp.ClientError:
            await self._answer(send, 502, b"application/json", b'{"error":"upstream error"}')

    @staticmethod
    async def _answer(send: Any, status: int, content_type: bytes, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare raw-ASGI + aiohttp reference proxy.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--upstream", default="http://127.0.0.1:4000")
    parser.add_argument("--api-key", default="sk-bench-user-key")
    args = parser.parse_args()
    uvicorn.run(
        ReferenceProxy(args.upstream, args.api_key),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
