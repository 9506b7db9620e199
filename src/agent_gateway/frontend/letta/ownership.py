"""Who owns a Letta object, proven from Letta's own data (SPEC §6).

Letta serves one organisation for every user, so each object a request names is proven the
user's own before Letta sees the request:

| object | proof |
|---|---|
| agent | its `owner:<sub>` tag, which only the gateway writes (or AMS's `/me`, LETTA_OWNERSHIP=ams) |
| folder, source | `metadata.owner`, which only the gateway writes |
| run, step, conversation | its agent (`agent_id`; a Letta 0.11 run: `metadata.agent_id`, else its steps') |
| archive | the agents it is attached to: at least one, all the user's own |
| message, passage or file of an agent | Letta places it under that agent, or lists it there |
| file of a folder | its own `source_id`, as Letta's file route reports it |

What the gateway saw created for a user (runs, passages, archives) counts as proof too: it is
recorded in the gateway's database, so every instance knows it, after a restart as well.
Letta's answers are cached for a minute, positive and negative alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from agent_gateway.errors import Forbidden
from agent_gateway.stores.letta_objects import LettaObjects

OWNER_TAG = "owner:"
CACHE_SECONDS = 60.0
CACHE_SIZE = 100_000
PAGE = 100
MAX_PAGES = 10  # a child id not found in the first 1,000 of its parent's list is not proven

Fetch = Callable[[str, dict[str, str] | None], Awaitable[tuple[int, Any]]]  # Letta path, query -> status, JSON
AgentIdsOf = Callable[[str, str | None], Awaitable[set[str]]]  # AMS: (user, their token) -> agent ids


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    owner: str | None
    model: str | None  # what its turns call: the pre-flight checks it against the allow-list
    max_tokens: int | None = None  # the most one of its calls may write: what the pre-flight reserves


class Owners:
    def __init__(self, fetch: Fetch, records: LettaObjects, ams_agent_ids: AgentIdsOf | None = None) -> None:
        self.fetch = fetch
        self.records = records
        self.ams_agent_ids = ams_agent_ids
        self._cache: TTLCache[Hashable, Any] = TTLCache(CACHE_SIZE, CACHE_SECONDS)
        self._recorded: TTLCache[Hashable, str] = TTLCache(CACHE_SIZE, 3600.0)

    async def saw_created(self, kind: str, object_id: str, belongs_to: str) -> None:
        """The gateway saw this object made: a run or passage for an agent, an archive for a user."""
        await self.records.record(kind, object_id, belongs_to)
        self._recorded[(kind, object_id)] = belongs_to

    async def recorded(self, kind: str, object_id: str) -> str | None:
        key = (kind, object_id)
        if key not in self._recorded:
            found = await self.records.belongs_to(kind, object_id)
            if found is None:
                return None  # not cached: it may be recorded by another instance any moment
            self._recorded[key] = found
        return self._recorded[key]

    def forget_agent(self, agent_id: str) -> None:
        self._cache.pop(("agent", agent_id), None)

    async def require(
        self, kind: str, object_id: str, user_id: str, token: str | None, parent: str | None = None
    ) -> None:
        """403 unless the object is `user_id`'s own; `parent` is the agent or folder a child sits under."""
        if not await self.owns(kind, object_id, user_id, token, parent):
            raise Forbidden(f"This {kind} is not yours.")

    async def agent(self, agent_id: str, user_id: str, token: str | None) -> Agent:
        """The user's own agent (else 403)."""
        agent = await self._agent(agent_id)
        if agent is None or not await self._users_agent(agent, user_id, token):
            raise Forbidden("This agent is not yours.")
        return agent

    async def agent_of(self, kind: str, object_id: str) -> str | None:
        """The agent a run, step or conversation belongs to, if Letta (or the gateway's record) says."""
        found = await self.recorded(kind, object_id) or await self._lookup((kind, object_id), self._agent_of)
        return found if isinstance(found, str) else None

    async def owns_through_agent(self, item: dict[str, Any], user_id: str, token: str | None) -> bool:
        """Whether a listed run, conversation or archive is the user's, by what it names or is."""
        object_id = item.get("id")
        if not isinstance(object_id, str):
            return False
        if object_id.startswith("archive-"):
            return await self.owns("archive", object_id, user_id, token, None)
        metadata = item.get("metadata")
        agent_id = item.get("agent_id") or (metadata.get("agent_id") if isinstance(metadata, dict) else None)
        if not isinstance(agent_id, str):  # a finished Letta 0.11 run: its steps say
            kind = "run" if object_id.startswith("run-") else "conversation"
            agent_id = await self.agent_of(kind, object_id)
        return agent_id is not None and await self.owns("agent", agent_id, user_id, token, None)

    async def owns(self, kind: str, object_id: str, user_id: str, token: str | None, parent: str | None) -> bool:
        if kind == "agent":
            agent = await self._agent(object_id)
            return agent is not None and await self._users_agent(agent, user_id, token)
        if kind in ("folder", "source"):
            owner: str | None = await self._lookup(("source", object_id), self._source_owner)
            return owner == user_id
        if kind in ("run", "step", "conversation"):
            agent_id = await self.agent_of(kind, object_id)
            return agent_id is not None and await self.owns("agent", agent_id, user_id, token, None)
        if kind == "archive":
            return await self.recorded(kind, object_id) == user_id or await self._archive_owned(
                object_id, user_id, token
            )
        assert parent is not None, f"a {kind} is proven under its parent"
        if await self.recorded(kind, object_id) == parent:
            return True
        found: bool = await self._lookup((kind, object_id, parent), self._in_parent)
        return found

    async def _lookup(self, key: tuple[str, ...], find: Callable[[tuple[str, ...]], Awaitable[Any]]) -> Any:
        if key in self._cache:
            return self._cache[key]
        found = self._cache[key] = await find(key)
        return found

    async def _agent(self, agent_id: str) -> Agent | None:
        found: Agent | None = await self._lookup(("agent", agent_id), self._fetch_agent)
        return found

    async def _fetch_agent(self, key: tuple[str, ...]) -> Agent | None:
        # Letta 0.16 leaves `tags` out of an agent unless asked for them.
        status, found = await self.fetch(f"/agents/{key[1]}", {"include": "agent.tags"})
        if status != 200 or not isinstance(found, dict):
            return None
        owners = [tag[len(OWNER_TAG) :] for tag in found.get("tags") or [] if str(tag).startswith(OWNER_TAG)]
        config = found.get("llm_config")
        model, most = (config.get("model"), config.get("max_tokens")) if isinstance(config, dict) else (None, None)
        return Agent(
            key[1],
            owners[0] if len(owners) == 1 else None,
            model if isinstance(model, str) else None,
            most if isinstance(most, int) and most > 0 else None,
        )

    async def _users_agent(self, agent: Agent, user_id: str, token: str | None) -> bool:
        if self.ams_agent_ids is not None:
            return agent.id in await self.ams_agent_ids(user_id, token)
        return agent.owner == user_id

    async def _source_owner(self, key: tuple[str, ...]) -> str | None:
        status, found = await self.fetch(f"/sources/{key[1]}", None)
        return owner_of_source(found) if status == 200 else None

    async def _agent_of(self, key: tuple[str, ...]) -> str | None:
        kind, object_id = key
        status, found = await self.fetch(f"/{kind}s/{object_id}", None)
        if status != 200 or not isinstance(found, dict):
            return None
        metadata = found.get("metadata")
        agent_id = found.get("agent_id") or (metadata.get("agent_id") if isinstance(metadata, dict) else None)
        if agent_id is None and kind == "run":
            # A finished Letta 0.11 run keeps its agent only in its steps.
            status, steps = await self.fetch(f"/runs/{object_id}/steps", {"limit": "1"})
            first = steps[0] if status == 200 and isinstance(steps, list) and steps else {}
            agent_id = first.get("agent_id") if isinstance(first, dict) else None
        return agent_id if isinstance(agent_id, str) else None

    async def _archive_owned(self, archive_id: str, user_id: str, token: str | None) -> bool:
        status, agents = await self.fetch(f"/archives/{archive_id}/agents", {"limit": str(PAGE)})
        ids = [a.get("id") for a in agents if isinstance(a, dict)] if status == 200 and isinstance(agents, list) else []
        for agent_id in ids:
            if not isinstance(agent_id, str) or not await self.owns("agent", agent_id, user_id, token, None):
                return False
        return bool(ids)

    async def _in_parent(self, key: tuple[str, ...]) -> bool:
        kind, object_id, parent = key
        if kind == "file_of_folder":
            # The file's own `source_id` decides: Letta 0.16's folder-scoped route does not check it.
            status, found = await self.fetch(f"/sources/{parent}/files/{object_id}", None)
            return status == 200 and isinstance(found, dict) and found.get("source_id") == parent
        if kind == "message":
            status, found = await self.fetch(f"/messages/{object_id}", None)  # Letta 0.16
            if status == 200 and isinstance(found, dict):
                return found.get("agent_id") == parent
        listing, id_field = _CHILD_LISTS[kind]
        return await self._listed(f"/agents/{parent}/{listing}", id_field, object_id)

    async def _listed(self, path: str, id_field: str, wanted: str) -> bool:
        """Whether `wanted` is in the paged list at `path` (at most MAX_PAGES pages)."""
        query = {"limit": str(PAGE)}
        for _ in range(MAX_PAGES):
            status, page = await self.fetch(path, query)
            if status != 200:
                return False
            items, cursor = _page_items(page)
            if any(isinstance(item, dict) and item.get(id_field) == wanted for item in items):
                return True
            last = items[-1].get("id") if items and isinstance(items[-1], dict) else None
            if len(items) < PAGE or not isinstance(last, str):
                return False
            query = {"limit": str(PAGE), **({"cursor": cursor} if cursor else {"after": last})}
        return False


# Children of an agent: the list that holds them, and the field naming the child there.
_CHILD_LISTS = {
    "message": ("messages", "id"),
    "passage": ("archival-memory", "id"),
    "file": ("files", "file_id"),
}


def _page_items(page: Any) -> tuple[list[Any], str | None]:
    """Items and next cursor of a Letta list: a bare list, or `{files|items: [...], next_cursor}`."""
    if isinstance(page, list):
        return page, None
    if isinstance(page, dict):
        items = page.get("files") or page.get("items") or page.get("data") or []
        cursor = page.get("next_cursor") if page.get("has_more") else None
        return (items if isinstance(items, list) else []), cursor if isinstance(cursor, str) else None
    return [], None


def owner_of_source(found: Any) -> str | None:
    if not isinstance(found, dict):
        return None
    metadata = found.get("metadata") or found.get("metadata_") or {}
    owner = metadata.get("owner") if isinstance(metadata, dict) else None
    return owner if isinstance(owner, str) else None
