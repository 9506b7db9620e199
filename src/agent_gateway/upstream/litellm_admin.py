"""LiteLLM's management API, called with LITELLM_MASTER_KEY: users' virtual keys and model prices.

Through the one upstream boundary (`UpstreamClient`), at LiteLLM's root (its management routes
are not under `/v1`). Documented routes only: `/key/generate`, `/key/update`, `/key/delete` and
`/model/info`. Not `/key/regenerate`: LiteLLM serves it to Enterprise licences only, so a
rotation is a new key, then the old one deleted (ops/users.py).

A refusal is a 502 `key_provisioning_failed` naming the route and status, never LiteLLM's own
message (it can echo key fragments); the key never reaches a log line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from agent_gateway.errors import GatewayError, KeyProvisioningFailed
from agent_gateway.upstream.client import UpstreamClient

log = logging.getLogger("agent_gateway.upstream")
PRICES_SECONDS = 300.0
_CREATED_BY = {"created_by": "agent-gateway"}  # in the key's metadata, so LiteLLM's UI says where it came from


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token, as LiteLLM's model cost map has it."""

    prompt: float
    completion: float
    cached_prompt: float | None = None  # a cache read, where the provider bills it apart


class LiteLLMAdmin:
    def __init__(self, client: UpstreamClient, master_key: str, timeout: float) -> None:
        self.client = client
        self._auth = {"Authorization": f"Bearer {master_key}", "Accept-Encoding": "identity"}
        self.timeout = timeout

    async def generate_key(self, user_id: str, models: frozenset[str] | None) -> str:
        """A new virtual key for `user_id`, limited to `models` (None: every model)."""
        answer = await self._post(
            "/key/generate", {"user_id": user_id, "models": _models(models), "metadata": _CREATED_BY}
        )
        key = answer.get("key") if isinstance(answer, dict) else None
        if not isinstance(key, str) or not key:
            raise KeyProvisioningFailed("LiteLLM's /key/generate answer holds no key.")
        return key

    async def set_models(self, key: str, models: frozenset[str] | None) -> None:
        await self._post("/key/update", {"key": key, "models": _models(models)})

    async def delete_key(self, key: str) -> None:
        """Delete `key`; a key LiteLLM does not know is gone already."""
        await self._post("/key/delete", {"keys": [key]}, missing_is_done=True)

    async def prices(self) -> dict[str, Price]:
        """Token prices by model name from `/model/info`; models without a price are left out."""
        status, found = await self.client.get_json("/model/info", self.timeout, self._auth)
        data = found.get("data") if status == 200 and isinstance(found, dict) else None
        if not isinstance(data, list):
            log.warning("litellm model prices unavailable", extra={"upstream": self.client.name, "status": status})
            return {}
        prices: dict[str, Price] = {}
        for entry in data:
            info = entry.get("model_info") if isinstance(entry, dict) else None
            name = entry.get("model_name") if isinstance(entry, dict) else None
            if not isinstance(info, dict) or not isinstance(name, str) or name in prices:
                continue  # several deployments of one name: the first one's price
            prompt, completion = _price(info.get("input_cost_per_token")), _price(info.get("output_cost_per_token"))
            if prompt is not None and completion is not None:
                prices[name] = Price(prompt, completion, _price(info.get("cache_read_input_token_cost")))
        return prices

    async def _post(self, path: str, body: dict[str, Any], missing_is_done: bool = False) -> Any:
        headers = {**self._auth, "Content-Type": "application/json"}
        response = await self.client.open(
            "POST", path, headers=headers, body=orjson.dumps(body), timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        answer = await response.json()
        if response.status == 200:
            return answer
        if response.status == 404 and missing_is_done:
            return None
        log.warning(
            "litellm key request refused",
            extra={"upstream": self.client.name, "route": path, "status": response.status},
        )
        raise KeyProvisioningFailed(_refusal(path, response.status))


class PriceList:
    """LiteLLM's token prices, kept `ttl` seconds; empty while LiteLLM cannot say (costs are then unknown)."""

    def __init__(self, admin: LiteLLMAdmin, ttl: float = PRICES_SECONDS) -> None:
        self.admin = admin
        self.ttl = ttl
        self._prices: dict[str, Price] = {}
        self._until = 0.0

    async def get(self) -> dict[str, Price]:
        if time.monotonic() >= self._until:
            try:
                self._prices = await self.admin.prices()
            except GatewayError:
                self._prices = {}
            # A failure is retried sooner than a success is refreshed.
            self._until = time.monotonic() + (self.ttl if self._prices else min(self.ttl, 30.0))
        return self._prices


def _models(models: frozenset[str] | None) -> list[str]:
    return sorted(models) if models is not None else []  # LiteLLM: an empty list allows every model


def _price(value: Any) -> float | None:
    valid = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if valid else None


def _refusal(path: str, status: int) -> str:
    if status in (401, 403):
        return f"LiteLLM refused LITELLM_MASTER_KEY (HTTP {status} on {path})."
    if status == 404:
        return f"LiteLLM does not know this user's key (HTTP 404 on {path}); rotating it makes a new one."
    return f"LiteLLM answered HTTP {status} on {path}."
