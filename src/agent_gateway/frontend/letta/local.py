"""Letta routes the gateway answers itself, because Letta's own answer would be wrong for a user.

- `models`, `models/embedding`: Letta lists its providers' models, which would call endpoints
  the gateway does not force or bill. The gateway lists the user's allowed models instead, in
  Letta's shape (0.11's `LLMConfig`/`EmbeddingConfig`, with 0.16's `Model` fields too), each
  pointing at the user's own agent route; LiteLLM's `/model/info` tells chat from embedding
  models and gives context windows.
- `agents/count`, `folders/count`, `sources/count`: Letta would count the whole organisation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent_gateway.frontend.letta.bodies import DEFAULT_CHUNK_SIZE, DEFAULT_CONTEXT_WINDOW, DEFAULT_EMBEDDING_DIM
from agent_gateway.frontend.letta.ownership import OWNER_TAG, PAGE, Fetch, owner_of_source
from agent_gateway.frontend.letta.rules import Answer

ModelInfo = Callable[[str], Awaitable[list[dict[str, Any]]]]  # the user's key -> LiteLLM's /model/info data
MAX_COUNTED = 10_000


def models(
    answer: Answer, allowed: frozenset[str] | None, info: list[dict[str, Any]], endpoint: str
) -> list[dict[str, Any]]:
    """The user's allowed models of one kind (chat or embedding) as Letta lists them."""
    known = {str(entry.get("model_name")): entry.get("model_info") or {} for entry in info if entry.get("model_name")}
    names = sorted(allowed if allowed is not None else known)
    wanted = "embedding" if answer is Answer.EMBEDDING_MODELS else "chat"
    listed = []
    for name in names:
        details = known.get(name, {})
        mode = details.get("mode") or ("embedding" if "embed" in name else "chat")
        if (mode == "embedding") != (wanted == "embedding"):
            continue
        if wanted == "embedding":
            listed.append(_embedding_model(name, endpoint))
        else:
            window = details.get("max_input_tokens")
            listed.append(_model(name, endpoint, window if isinstance(window, int) else DEFAULT_CONTEXT_WINDOW))
    return listed


def _model(name: str, endpoint: str, window: int) -> dict[str, Any]:
    return {
        "model": name,
        "name": name,
        "display_name": name,
        "handle": f"openai/{name}",
        "model_endpoint_type": "openai",
        "model_endpoint": endpoint,
        "provider_type": "openai",
        "provider_name": "openai",
        "provider_category": "base",
        "model_type": "llm",
        "context_window": window,
        "max_context_window": window,
    }


def _embedding_model(name: str, endpoint: str) -> dict[str, Any]:
    return {
        "embedding_model": name,
        "name": name,
        "display_name": name,
        "handle": f"openai/{name}",
        "embedding_endpoint_type": "openai",
        "embedding_endpoint": endpoint,
        "provider_type": "openai",
        "provider_name": "openai",
        "model_type": "embedding",
        "embedding_dim": DEFAULT_EMBEDDING_DIM,
        "embedding_chunk_size": DEFAULT_CHUNK_SIZE,
    }


async def count(answer: Answer, family: str, fetch: Fetch, user_id: str) -> int:
    """How many agents (or folders, sources) the user owns, by listing them page by page."""
    if answer is Answer.COUNT_AGENTS:
        query = {"tags": OWNER_TAG + user_id, "match_all_tags": "true", "limit": str(PAGE)}
        return await _count_pages("/agents/", query, fetch, lambda item: True)
    return await _count_pages(f"/{family}/", {"limit": str(PAGE)}, fetch, lambda item: owner_of_source(item) == user_id)


async def _count_pages(path: str, query: dict[str, str], fetch: Fetch, mine: Callable[[Any], bool]) -> int:
    counted = seen = 0
    while seen < MAX_COUNTED:
        status, page = await fetch(path, query)
        items = page if status == 200 and isinstance(page, list) else []
        counted += sum(1 for item in items if isinstance(item, dict) and mine(item))
        seen += len(items)
        last = items[-1].get("id") if items and isinstance(items[-1], dict) else None
        if len(items) < PAGE or not isinstance(last, str):
            break
        query = {**query, "after": last}
    return counted
