"""What a signed-in user may do on Letta, decided before Letta sees the request (SPEC §6).

`LettaGuard.plan` matches the route against the allow-list in `rules.py`, proves every id in
the path, the query and the body the user's own (`ownership.py`), shapes the body
(`bodies.py`), writes the owner marks only the gateway may write, and says what to do with
Letta's answer. An agent turn is checked first as the agent route would check its calls:
the user's profile, the agent's model against the allow-list, and the month's budget.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from agent_gateway.errors import BadRequest, Forbidden
from agent_gateway.frontend.letta import bodies
from agent_gateway.frontend.letta.bodies import BodyContext
from agent_gateway.frontend.letta.ownership import OWNER_TAG, Agent, Owners, owner_of_source
from agent_gateway.frontend.letta.rules import Answer, Rule, match
from agent_gateway.frontend.passthrough import ServiceCall

# Path and query parameters that name objects, and what each is proven as.
ID_KINDS = {
    "agent_id": "agent",
    "agent_ids": "agent",
    "folder_id": "folder",
    "source_id": "source",
    "run_id": "run",
    "step_id": "step",
    "conversation_id": "conversation",
    "archive_id": "archive",
    "message_id": "message",
    "memory_id": "passage",
    "passage_id": "passage",
    "file_id": "file",
}
_OBJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
Preflight = Callable[[str, Agent], Awaitable[None]]  # (user, the agent of the turn); raises §8 errors
ResponseEdit = Callable[[Any], Awaitable[Any]]


@dataclass
class Plan:
    """An allowed request: its rule, the ids in its path, and what to do with Letta's answer."""

    rule: Rule
    params: dict[str, str]
    edit: ResponseEdit | None = None


class LettaGuard:
    def __init__(
        self,
        owners: Owners,
        api_key: str | None,
        public_base_url: str,
        allowed_tools: frozenset[str],
        preflight: Preflight,
    ) -> None:
        self.owners = owners
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.public_base_url = public_base_url.rstrip("/")
        self.allowed_tools = bodies.SAFE_TOOLS | allowed_tools
        self.preflight = preflight

    def endpoint(self, user_id: str) -> str:
        """The user's own agent route: every model and embedding call Letta makes for them goes there."""
        return f"{self.public_base_url}/api/v1/agents/{user_id}/messages"

    async def plan(self, user_id: str, call: ServiceCall, token: str | None) -> Plan:
        """Refuse what the user may not do (400/403, or the pre-flight's 403/429); rewrite `call`."""
        found = match(call.segments, call.method)
        if found is None:
            raise Forbidden("This Letta route is not available through the gateway.")
        rule, params = found
        for name, value in params.items():
            await self._prove(name, value, params, user_id, token)
        if rule.path == ("agents", "{agent_id}") and call.method != "GET":
            self.owners.forget_agent(params["agent_id"])  # its model or owner may change: look again next time
        call.query = await self._query(rule, user_id, call.query, token)
        if call.upload is None:
            call.body = await self._body(rule, user_id, call.body, token)
        if rule.turn:
            agent_id = params.get("agent_id") or await self.owners.agent_of("conversation", params["conversation_id"])
            await self.preflight(user_id, await self.owners.agent(agent_id or "", user_id, token))
        segments = [params[part[1:-1]] if part.startswith("{") else part for part in rule.path]
        call.segments = [*segments, ""] if rule.slash else segments  # Letta's collection form
        call.headers.update(self.auth)
        return Plan(rule, params, self._edit(rule, params, user_id, token))

    async def _prove(self, name: str, value: str, params: dict[str, str], user_id: str, token: str | None) -> None:
        if name == "block_label":
            return  # a label names one of the agent's own blocks; Letta resolves it within the agent
        if not _OBJECT_ID.match(value):
            raise Forbidden("This object is not yours.")
        kind, parent = ID_KINDS[name], None
        if name in ("message_id", "memory_id", "file_id", "passage_id"):
            parent = params.get("agent_id") or params.get("archive_id")
            if parent is None:  # a file of a folder or source
                kind, parent = "file_of_folder", params.get("folder_id") or params.get("source_id")
        await self.owners.require(kind, value, user_id, token, parent)

    async def _query(self, rule: Rule, user_id: str, query: str, token: str | None) -> str:
        pairs = parse_qsl(query, keep_blank_values=True)
        for name, value in pairs:
            if name in rule.query_ids:
                if not _OBJECT_ID.match(value):
                    raise Forbidden(f"This {ID_KINDS[name]} is not yours.")
                await self.owners.require(ID_KINDS[name], value, user_id, token)
            elif name.endswith(("_id", "_ids")):
                raise BadRequest(f"The query parameter `{name}` is not accepted here.", param=name)
        if rule.path == ("agents",) and self.owners.ams_agent_ids is None:
            # Letta filters the list by the owner tag; owner tags a client sends are dropped.
            pairs = [
                (name, value)
                for name, value in pairs
                if name != "match_all_tags" and not (name == "tags" and value.startswith(OWNER_TAG))
            ]
            pairs += [("tags", OWNER_TAG + user_id), ("match_all_tags", "true")]
        elif rule.slash and rule.query_ids and not any(name in rule.query_ids for name, _ in pairs):
            raise Forbidden(f"List the {rule.path[0]} of one of your agents (`agent_id`).")
        if rule.path == ("runs",):
            # Letta 0.11 reads only `agent_ids` and would ignore an `agent_id`, listing everybody's runs.
            pairs = [("agent_ids" if name == "agent_id" else name, value) for name, value in pairs]
        return urlencode(pairs)

    async def _body(self, rule: Rule, user_id: str, raw: bytes | None, token: str | None) -> bytes | None:
        if rule.body is None:
            return None  # a body Letta does not read on this route is not passed on
        try:
            given = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            raise BadRequest("The body must be JSON.") from None
        ctx = BodyContext(user_id, self.endpoint(user_id), self.allowed_tools)
        body = bodies.shape_body(rule.body, given, ctx)
        for kind, object_id, where in ctx.proofs:
            if not _OBJECT_ID.match(object_id) or not await self.owners.owns(kind, object_id, user_id, token, None):
                raise Forbidden(f"`{where}` names a {kind} that is not yours.", param=where.split("[")[0])
        if rule.body in (bodies.AGENT_CREATE, bodies.AGENT_UPDATE):
            self._own_agent(body, ctx, creating=rule.body is bodies.AGENT_CREATE)
        elif rule.body in (bodies.SOURCE_CREATE, bodies.SOURCE_UPDATE):
            self._own_source(body, ctx, creating=rule.body is bodies.SOURCE_CREATE)
        elif rule.body is bodies.ARCHIVE_CREATE:
            _embedding_handle(body)
            if "embedding_config" in body:
                body["embedding_config"] = bodies.embedding_config(body["embedding_config"], ctx, "embedding_config")
        return orjson.dumps(body)

    def _own_agent(self, body: dict[str, Any], ctx: BodyContext, creating: bool) -> None:
        if "tags" in body or creating:
            tags = [tag for tag in body.get("tags") or [] if not str(tag).startswith(OWNER_TAG)]
            body["tags"] = [*tags, OWNER_TAG + ctx.user_id]
        # A model handle would let Letta call a provider with its own key, unbilled: every model
        # and embedding config points, as OpenAI-compatible, at the user's own agent route.
        if "model" in body:
            config = dict(body.get("llm_config") or {})
            config["model"] = bodies.handle_name(body.pop("model"), "model")
            if body.get("context_window_limit"):
                config["context_window"] = body["context_window_limit"]
            body["llm_config"] = config
        _embedding_handle(body)
        for name, force in (("llm_config", bodies.llm_config), ("embedding_config", bodies.embedding_config)):
            if name in body:
                body[name] = force(body[name], ctx, name)

    def _own_source(self, body: dict[str, Any], ctx: BodyContext, creating: bool) -> None:
        if creating or "metadata" in body:
            metadata = body.get("metadata")
            body["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), "owner": ctx.user_id}
        _embedding_handle(body)
        if "embedding_config" in body:
            body["embedding_config"] = bodies.embedding_config(body["embedding_config"], ctx, "embedding_config")

    def _edit(self, rule: Rule, params: dict[str, str], user_id: str, token: str | None) -> ResponseEdit | None:
        owners = self.owners
        if rule.answer is Answer.OWN_SOURCES:

            async def own_sources(found: Any) -> Any:
                return [item for item in _listed(found) if owner_of_source(item) == user_id]

            return own_sources
        if rule.answer is Answer.OWN_OF_AGENTS:
            # Whatever Letta's filter did (or ignored), only objects of the user's own agents go back.

            async def own_of_agents(found: Any) -> Any:
                return [item for item in _listed(found) if await owners.owns_through_agent(item, user_id, token)]

            return own_of_agents
        if rule.answer is Answer.OWN_AGENTS and (rule.path != ("agents",) or owners.ams_agent_ids is not None):

            async def own_agents(found: Any) -> Any:
                items = _listed(found)
                if owners.ams_agent_ids is not None:
                    ids = await owners.ams_agent_ids(user_id, token)
                    return [item for item in items if item.get("id") in ids]
                return [
                    item
                    for item in items
                    if isinstance(item.get("id"), str) and await owners.owns("agent", item["id"], user_id, token, None)
                ]

            return own_agents
        if rule.answer in (Answer.NEW_RUN, Answer.NEW_PASSAGES, Answer.NEW_ARCHIVE):
            # What the object belongs to: the agent of a run or passage, the archive of a passage,
            # the user of an archive.
            kind = {Answer.NEW_RUN: "run", Answer.NEW_PASSAGES: "passage", Answer.NEW_ARCHIVE: "archive"}[rule.answer]
            belongs_to = params.get("agent_id") or params.get("archive_id") or user_id

            async def remember(found: Any) -> Any:
                items = found.get("passages") if isinstance(found, dict) and "passages" in found else found
                for item in items if isinstance(items, list) else [items]:
                    if isinstance(item, dict) and isinstance(item.get("id"), str):
                        await owners.saw_created(kind, item["id"], belongs_to)
                return found

            return remember
        return None


def _embedding_handle(body: dict[str, Any]) -> None:
    if "embedding" in body:
        config = dict(body.get("embedding_config") or {})
        config["embedding_model"] = bodies.handle_name(body.pop("embedding"), "embedding")
        if body.get("embedding_chunk_size"):
            config["embedding_chunk_size"] = body["embedding_chunk_size"]
        body["embedding_config"] = config


def _listed(found: Any) -> list[dict[str, Any]]:
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []
