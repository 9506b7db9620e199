"""A fake Letta server (v1 REST, SSE streams, multipart uploads) and a fake AMS, over real HTTP.

Letta keeps agents, runs and sources in memory, filters agent lists by `tags` /
`match_all_tags` as Letta does, and records every request so tests can see what arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.server import ThreadedServer

LETTA_KEY = "letta-server-password-3e1f"


@dataclass
class Seen:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeLetta(ThreadedServer):
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # source -> (name, size, sha256)
    requests: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def build(self) -> web.Application:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", "/v1/{path:.*}", self._dispatch)
        return app

    def add_agent(self, owner: str | None, **fields: Any) -> str:
        agent_id = f"agent-{uuid.uuid4()}"
        tags = [f"owner:{owner}"] if owner else []
        self.agents[agent_id] = {"id": agent_id, "name": fields.pop("name", "a"), "tags": tags, **fields}
        run_id = f"run-{uuid.uuid4()}"
        self.runs[run_id] = {"id": run_id, "agent_id": agent_id, "status": "completed"}
        return agent_id

    def run_of(self, agent_id: str) -> str:
        return next(run_id for run_id, run in self.runs.items() if run["agent_id"] == agent_id)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.content_type == "application/json" and request.can_read_body:
            body = await request.json()
        self.requests.append(
            Seen(request.method, request.path, list(request.query.items()), dict(request.headers), body)
        )
        if request.headers.get("Authorization") != f"Bearer {LETTA_KEY}":
            return web.json_response({"detail": "unauthorized"}, status=401)
        parts = request.match_info["path"].strip("/").split("/")
        handler = getattr(self, f"_{parts[0].replace('-', '_')}", None)
        if handler is None:
            return web.json_response({"detail": f"{parts[0]} exists on the real server"}, status=200)
        result: web.StreamResponse = await handler(request, parts[1:], body)
        return result

    async def _health(self, request: web.Request, parts: list[str], body: Any) -> web.StreamResponse:
        return web.json_response({"status": "ok", "version": "0.16.8"})

    async def _agents(self, request: web.Request, parts: list[str], body: Any) -> web.StreamResponse:
        if not parts:
            if request.method == "POST":
                agent = {"id": f"agent-{uuid.uuid4()}", **body}
                self.agents[agent["id"]] = agent
                return web.json_response(agent)
            wanted = request.query.getall("tags", [])
            match_all = request.query.get("match_all_tags") == "true"
            found = [
                agent
                for agent in self.agents.values()
                if not wanted or (all if match_all else any)(tag in agent.get("tags", []) for tag in wanted)
            ]
            return web.json_response(found)
        found_agent = self.agents.get(parts[0])
        if found_agent is None:
            return web.json_response({"detail": "Agent not found"}, status=404)
        agent = found_agent
        rest = parts[1:]
        if not rest:
            if request.method == "PATCH":
                agent.update(body)
            if request.method == "DELETE":
                del self.agents[parts[0]]
            return web.json_response(agent)
        if rest == ["messages", "stream"]:
            return await self._stream(request)
        if rest == ["messages"] and request.method == "POST":
            reply = {"messages": [{"message_type": "assistant_message", "content": "hi from letta"}]}
            return web.json_response(reply)
        return web.json_response({"agent_id": parts[0], "path": rest})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(b'data: {"message_type": "reasoning_message", "reasoning": "thinking"}\n\n')
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        await stream.write(b'data: {"message_type": "assistant_message", "content": "done"}\n\n')
        await stream.write(b"data: [DONE]\n\n")
        await stream.write_eof()
        return stream

    async def _runs(self, request: web.Request, parts: list[str], body: Any) -> web.StreamResponse:
        run = self.runs.get(parts[0])
        if run is None:
            return web.json_response({"detail": "Run not found"}, status=404)
        return web.json_response(run if len(parts) == 1 else {"run": run["id"], "path": parts[1:]})

    async def _sources(self, request: web.Request, parts: list[str], body: Any) -> web.StreamResponse:
        if not parts:
            if request.method == "POST":
                source = {"id": f"source-{uuid.uuid4()}", **body}
                self.sources[source["id"]] = source
                return web.json_response(source)
            return web.json_response(list(self.sources.values()))
        found_source = self.sources.get(parts[0])
        if found_source is None:
            return web.json_response({"detail": "Source not found"}, status=404)
        if parts[1:] == ["upload"]:
            reader = await request.multipart()
            part = await reader.next()
            assert part is not None and not isinstance(part, type(reader))
            digest, size = hashlib.sha256(), 0
            while chunk := await part.read_chunk():  # type: ignore[union-attr]
                digest.update(chunk)
                size += len(chunk)
            self.uploads[parts[0]] = (part.filename or "", size, digest.hexdigest())  # type: ignore[union-attr]
            return web.json_response({"id": f"job-{uuid.uuid4()}", "status": "created"})
        return web.json_response(found_source)


@dataclass
class FakeAMS(ThreadedServer):
    """Agent Management Service: `/me` lists a user's agents; other paths echo what arrived."""

    agents_of: dict[str, list[str]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._any)
        return app

    async def _any(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(
            Seen(request.method, request.path, list(request.query.items()), dict(request.headers), body)
        )
        user_id = request.headers.get("X-User-ID", "")
        if request.path == "/me":
            agents = [{"id": agent_id} for agent_id in self.agents_of.get(user_id, [])]
            return web.json_response({"id": user_id, "agents": agents})
        if request.path.startswith("/redirect/"):  # as a framework redirects: to its own absolute URL
            target = request.path.removeprefix("/redirect")
            away = target.startswith("/away")
            raise web.HTTPTemporaryRedirect("http://evil.example/" if away else f"http://{request.host}{target}")
        return web.json_response({"path": request.path, "method": request.method, "user": user_id, "body": body})
