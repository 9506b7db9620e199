"""What a signed-in user may do on Letta, which serves one organisation for everybody (SPEC §6).

An allow-list, never a deny-list: a path not matched by `_RULES` is refused. Ownership:
agents carry the tag `owner:<sub>` (only the gateway writes it) or are listed by AMS's `/me`;
sources and folders carry `metadata.owner`. Every id in the path and in the body must be the
user's own. Agents always talk to LLMs through this gateway, billed to their owner.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson

from agent_gateway.errors import BadRequest, Forbidden, UpstreamError
from agent_gateway.passthrough import UpstreamCall
from agent_gateway.upstream import UpstreamClient

OWNER_TAG = "owner:"
_CACHE_SECONDS = 60.0
_ANY = "*"

# (first segment, shape of the rest, methods, what the path names)
_RULES: list[tuple[tuple[str, ...], frozenset[str], str]] = [
    (("health",), frozenset({"GET"}), "open"),
    (("agents",), frozenset({"GET"}), "agent_list"),
    (("agents",), frozenset({"POST"}), "agent_create"),
    (("agents", _ANY), frozenset({"GET", "PATCH", "DELETE"}), "agent"),
    (("agents", _ANY, "messages"), frozenset({"GET", "POST"}), "agent"),
    (("agents", _ANY, "messages", "stream"), frozenset({"POST"}), "agent"),
    (("agents", _ANY, "messages", "async"), frozenset({"POST"}), "agent"),
    (("agents", _ANY, "messages", "cancel"), frozenset({"POST"}), "agent"),
    (("agents", _ANY, "reset-messages"), frozenset({"PATCH"}), "agent"),
    (("agents", _ANY, "context"), frozenset({"GET"}), "agent"),
    (("agents", _ANY, "core-memory"), frozenset({"GET"}), "agent"),
    (("agents", _ANY, "core-memory", "blocks"), frozenset({"GET"}), "agent"),
    (("agents", _ANY, "core-memory", "blocks", _ANY), frozenset({"GET", "PATCH"}), "agent"),
    (("agents", _ANY, "sources"), frozenset({"GET"}), "agent"),
    (("agents", _ANY, "folders"), frozenset({"GET"}), "agent"),
    (("agents", _ANY, "runs"), frozenset({"GET"}), "agent"),
    (("runs", _ANY), frozenset({"GET"}), "run"),
    (("runs", _ANY, "stream"), frozenset({"GET", "POST"}), "run"),
    (("runs", _ANY, "steps"), frozenset({"GET"}), "run"),
    (("runs", _ANY, "messages"), frozenset({"GET"}), "run"),
    (("steps", _ANY), frozenset({"GET"}), "step"),
]
for _kind in ("sources", "folders"):
    _RULES += [
        ((_kind,), frozenset({"GET"}), "source_list"),
        ((_kind,), frozenset({"POST"}), "source_create"),
        ((_kind, _ANY), frozenset({"GET", "PATCH", "DELETE"}), "source"),
        ((_kind, _ANY, "upload"), frozenset({"POST"}), "source"),
        ((_kind, _ANY, "files"), frozenset({"GET"}), "source"),
    ]

# Body fields naming other objects, and how each is proven the user's own. Any other field
# named `*_id` or `*_ids` (blocks, tools, identities, messages, files, groups, templates…) cannot
# be proven and is refused.
_ID_FIELDS = {
    "agent_id": "agent",
    "agent_ids": "agent",
    "source_id": "source",
    "source_ids": "source",
    "folder_id": "folder",
    "folder_ids": "folder",
    "run_ids": "run",
}
_REFUSED_FIELDS = ("tool_exec_environment_variables", "secrets")
_OBJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
_MAX_CACHED = 50_000

ResponseEdit = Callable[[Any], Any]
AgentIdsOf = Callable[[str, str | None], Awaitable[set[str]]]  # (user, their token) -> AMS's agent ids


def _match(segments: list[str], method: str) -> str | None:
    for shape, methods, kind in _RULES:
        fits = len(shape) == len(segments) and all(s in (_ANY, seg) for s, seg in zip(shape, segments, strict=True))
        if fits and method in methods:
            return kind
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to pass on, and how to edit a JSON answer before the client sees it (lists, creates)."""

    edit: ResponseEdit | None = None


class LettaGuard:
    def __init__(
        self, client: UpstreamClient, api_key: str | None, public_base_url: str, ams_agent_ids: AgentIdsOf | None = None
    ) -> None:
        self.client = client
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.public_base_url = public_base_url.rstrip("/")
        self.ams_agent_ids = ams_agent_ids  # set when LETTA_OWNERSHIP=ams
        self._owners: dict[tuple[str, str], tuple[float, str | None]] = {}

    async def check(self, user_id: str, call: UpstreamCall, token: str | None = None) -> Verdict:
        """Refuse (403) what the user may not do; rewrite `call` where the gateway must decide."""
        kind = _match(call.segments, call.method)
        if kind is None:
            raise Forbidden("This Letta route is not available through the gateway.")
        body = self._json_body(call)
        if kind in ("agent", "run", "step"):
            agent_id = call.segments[1] if kind == "agent" else await self._agent_of(kind, call.segments[1])
            await self._require("agent", agent_id, user_id, token)
        elif kind == "source":
            await self._require(call.segments[0].rstrip("s"), call.segments[1], user_id, token)
        if body is not None:
            await self._check_body_ids(user_id, body, token)
        edit: ResponseEdit | None = None
        if kind == "agent_list" and self.ams_agent_ids is not None:
            edit = _only_ids(await self.ams_agent_ids(user_id, token))
        elif kind == "agent_list":
            call.query = self._owner_query(user_id, call.query)
        elif kind in ("agent_create", "agent") and call.method in ("POST", "PATCH") and len(call.segments) <= 2:
            self._own_agent_body(user_id, body, creating=kind == "agent_create")
            if kind == "agent_create":
                edit = self._remember_owner(user_id, "agent")
        elif kind == "source_create" and body is not None:
            metadata = body.get("metadata")
            body["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), "owner": user_id}
            edit = self._remember_owner(user_id, call.segments[0].rstrip("s"))
        elif kind == "source_list":
            edit = _only_owned(user_id)
        elif kind == "source" and call.method == "PATCH" and body and isinstance(body.get("metadata"), dict):
            body["metadata"]["owner"] = user_id  # the owner mark stays the gateway's
        if body is not None:
            call.body = orjson.dumps(body)
        call.headers.update(self.auth)
        return Verdict(edit)

    def _json_body(self, call: UpstreamCall) -> dict[str, Any] | None:
        if not call.body:
            return None
        try:
            body = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            raise BadRequest("The body must be JSON.") from None
        return body if isinstance(body, dict) else None

    async def _check_body_ids(self, user_id: str, body: dict[str, Any], token: str | None) -> None:
        for name, value in body.items():
            if name in _REFUSED_FIELDS and value:
                raise Forbidden(f"`{name}` cannot be set through the gateway.", param=name)
            if not name.endswith(("_id", "_ids")) or value in (None, [], ""):
                continue
            kind = _ID_FIELDS.get(name)
            if kind is None:
                raise Forbidden(f"`{name}` cannot be proven yours, so it cannot be set here.", param=name)
            for object_id in value if isinstance(value, list) else [value]:
                if kind == "run":
                    await self._require("agent", await self._agent_of("run", str(object_id)), user_id, token)
                else:
                    await self._require(kind, str(object_id), user_id, token)

    def _own_agent_body(self, user_id: str, body: dict[str, Any] | None, creating: bool) -> None:
        if body is None:
            if creating:
                raise BadRequest("Creating an agent needs a JSON body.")
            return
        if "tags" in body or creating:
            tags = [tag for tag in body.get("tags") or [] if not str(tag).startswith(OWNER_TAG)]
            body["tags"] = [*tags, OWNER_TAG + user_id]
        # A bare model handle would let Letta call a provider with its own key, unbilled; every
        # model and embedding config instead points, as OpenAI-compatible, at this gateway.
        endpoint = f"{self.public_base_url}/api/v1/agents/{user_id}/messages"
        if isinstance(body.get("model"), str):
            given = body.get("llm_config")
            body["llm_config"] = {
                **(given if isinstance(given, dict) else {}),
                "model": body.pop("model").split("/", 1)[-1],
                "context_window": body.get("context_window_limit") or 128000,
            }
        if isinstance(body.get("embedding"), str):
            given = body.get("embedding_config")
            body["embedding_config"] = {
                **(given if isinstance(given, dict) else {}),
                "embedding_model": body.pop("embedding").split("/", 1)[-1],
                "embedding_dim": body.get("embedding_dim") or 1536,
                "embedding_chunk_size": body.get("embedding_chunk_size") or 300,
            }
        if "llm_config" in body:
            if not isinstance(body["llm_config"], dict):
                raise BadRequest("`llm_config` must be an object.", param="llm_config")
            body["llm_config"].update(model_endpoint_type="openai", model_endpoint=endpoint)
        if "embedding_config" in body:
            if not isinstance(body["embedding_config"], dict):
                raise BadRequest("`embedding_config` must be an object.", param="embedding_config")
            body["embedding_config"].update(embedding_endpoint_type="openai", embedding_endpoint=endpoint)

    def _owner_query(self, user_id: str, query: str) -> str:
        kept = [
            (key, value)
            for key, value in parse_qsl(query, keep_blank_values=True)
            if key != "match_all_tags" and not (key == "tags" and value.startswith(OWNER_TAG))
        ]
        return urlencode([*kept, ("tags", OWNER_TAG + user_id), ("match_all_tags", "true")])

    def _remember_owner(self, user_id: str, kind: str) -> ResponseEdit:
        def edit(answer: Any) -> Any:
            if isinstance(answer, dict) and isinstance(answer.get("id"), str):
                self._remember(self._cache_key(kind, answer["id"], user_id), user_id)
            return answer

        return edit

    def _cache_key(self, kind: str, object_id: str, user_id: str) -> tuple[str, str]:
        # With AMS ownership the answer depends on who asks, so it is cached per user; with
        # tags it is a fact about the object.
        if kind == "agent" and self.ams_agent_ids is not None:
            return (f"agent:{user_id}", object_id)
        return (kind, object_id)

    def _remember(self, key: tuple[str, str], owner: str | None) -> None:
        if len(self._owners) >= _MAX_CACHED:
            self._owners.pop(next(iter(self._owners)))
        self._owners[key] = (time.monotonic() + _CACHE_SECONDS, owner)

    async def _require(self, kind: str, object_id: str, user_id: str, token: str | None) -> None:
        if await self._owner(kind, object_id, user_id, token) != user_id:
            raise Forbidden(f"This {kind} is not yours.")

    async def _owner(self, kind: str, object_id: str, user_id: str, token: str | None) -> str | None:
        if not _OBJECT_ID.match(object_id):
            raise Forbidden(f"This {kind} is not yours.")
        key = self._cache_key(kind, object_id, user_id)
        cached = self._owners.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if kind == "agent" and self.ams_agent_ids is not None:
            owner = user_id if object_id in await self.ams_agent_ids(user_id, token) else None
        else:
            found = await self._fetch(f"/v1/{kind}s/{object_id}")
            owner = _owner_of(kind, found)
        self._remember(key, owner)
        return owner

    async def _agent_of(self, kind: str, object_id: str) -> str:
        if not _OBJECT_ID.match(object_id):
            raise Forbidden(f"This {kind} is not yours.")
        found = await self._fetch(f"/v1/{kind}s/{object_id}")
        agent_id = found.get("agent_id") if found else None
        if not isinstance(agent_id, str):
            raise Forbidden(f"This {kind} is not yours.")
        return agent_id

    async def _fetch(self, path: str) -> dict[str, Any] | None:
        try:
            async with self.client.session.get(
                self.client.base_url + path, headers=self.auth, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                if response.status == 404:
                    return None
                if response.status >= 400:
                    raise UpstreamError("Letta could not confirm who owns this object.")
                found = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError):
            raise UpstreamError("Letta could not confirm who owns this object.") from None
        return found if isinstance(found, dict) else None


def _owner_of(kind: str, found: dict[str, Any] | None) -> str | None:
    if found is None:
        return None
    if kind == "agent":
        owners = [tag[len(OWNER_TAG) :] for tag in found.get("tags") or [] if str(tag).startswith(OWNER_TAG)]
        return owners[0] if len(owners) == 1 else None
    metadata = found.get("metadata") or found.get("metadata_") or {}
    owner = metadata.get("owner") if isinstance(metadata, dict) else None
    return owner if isinstance(owner, str) else None


def _only_owned(user_id: str) -> ResponseEdit:
    def edit(answer: Any) -> Any:
        if not isinstance(answer, list):
            return answer
        return [item for item in answer if isinstance(item, dict) and _owner_of("source", item) == user_id]

    return edit


def _only_ids(ids: set[str]) -> ResponseEdit:
    def edit(answer: Any) -> Any:
        if not isinstance(answer, list):
            return answer
        return [item for item in answer if isinstance(item, dict) and item.get("id") in ids]

    return edit
