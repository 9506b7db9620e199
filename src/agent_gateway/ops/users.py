"""Managing users (SPEC §4, §7): the one set of rules behind `agent-gateway users …` and
`/api/v1/admin/users`.

Every input is checked here, for both doors, and keys leave only masked. Each write is logged
in the change log with the write itself, and then published on Redis when there is one
(stores/profile_changes.py), so running gateways apply it within a poll, or at once.

With LITELLM_MASTER_KEY the gateway makes each user's LiteLLM key itself and keeps it in step:
a new user gets a new key limited to their models, a new allow-list updates the key, removing
the user deletes it, and a rotation replaces it. Keys are then never given by hand. Each step
that LiteLLM and the database must agree on is undone on the side that went first when the
other fails, so no user is left without a key and no key without its user.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from functools import partial
from typing import Any, Final

from agent_gateway.domain import USER_ID, USER_ID_PATTERN, Profile, canonical_user_id
from agent_gateway.errors import BadRequest, InvalidField, NoSuchUser, UpstreamTimeout, UserExists
from agent_gateway.settings import Settings
from agent_gateway.stores.database import Database
from agent_gateway.stores.key_cipher import KeyCipher
from agent_gateway.stores.postgrest import PostgrestProfileStore
from agent_gateway.stores.profile_changes import ChangeNotices
from agent_gateway.stores.profiles import ProfileStore, UserStore
from agent_gateway.upstream.client import UpstreamClient
from agent_gateway.upstream.litellm_admin import LiteLLMAdmin

log = logging.getLogger("agent_gateway.users")
MAX_PAGE = 500
MAX_MODELS, MAX_MODEL_NAME = 1000, 256
MAX_LIMIT = 2**63 - 1
_KEY = re.compile(r"[\x21-\x7e]{1,512}\Z")  # sent as a Bearer token: printable, no spaces


class Keep(Enum):
    """A field an update leaves as it is."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


def checked_id(value: str, param: str = "id") -> str:
    if not USER_ID.match(value):
        raise InvalidField(param, f"must match {USER_ID_PATTERN}")
    return canonical_user_id(value)


def checked_models(value: Iterable[str] | None) -> frozenset[str] | None:
    """An allow-list: None allows every model; a list must name at least one."""
    if value is None:
        return None
    models = frozenset(model.strip() for model in value if model.strip())
    if not models:
        raise InvalidField("allowed_models", "must name at least one model, or allow every model")
    if len(models) > MAX_MODELS or any(len(model) > MAX_MODEL_NAME for model in models):
        raise InvalidField("allowed_models", f"at most {MAX_MODELS} models of at most {MAX_MODEL_NAME} characters")
    return models


def checked_limit(value: int | None) -> int | None:
    """Tokens per calendar month (UTC); None: no limit. A BIGINT column holds it."""
    if value is not None and (isinstance(value, bool) or not 0 <= value <= MAX_LIMIT):
        raise InvalidField("monthly_limit", "must be a whole number of tokens, 0 or more, below 2^63")
    return value


def checked_key(value: str) -> str:
    if not _KEY.match(value):
        raise InvalidField("litellm_key", "must be 1-512 printable characters without spaces")
    return value


@dataclass(frozen=True, slots=True)
class Changed:
    """A user as a write left them (None once removed), and whether every instance was told at once."""

    user: Profile | None
    told_now: bool


@dataclass(frozen=True, slots=True)
class Page:
    users: list[Profile]
    total: int
    next_cursor: str | None


class Users:
    """Users in their store (the gateway's database, or Supabase's table through PostgREST). `keys`
    is LiteLLM's management API when LITELLM_MASTER_KEY is set."""

    def __init__(self, store: UserStore, notices: ChangeNotices, keys: LiteLLMAdmin | None = None) -> None:
        self.store = store
        self.notices = notices
        self.keys = keys
        # One change to a user at a time in this process: two at once (rotate and remove, two
        # rotations) each undoing the other's LiteLLM step left keys without users.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _one_at_a_time(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def get(self, user_id: str) -> Profile:
        profile = await self.store.get(checked_id(user_id, "user_id"))
        if profile is None:
            raise NoSuchUser()
        return profile

    async def page(self, limit: int = 50, cursor: str | None = None) -> Page:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidField("limit", f"must be from 1 to {MAX_PAGE}")
        after = _decode_cursor(cursor) if cursor else None
        if after is not None and not self.store.can_hold(after):
            raise InvalidField("cursor", "is not one this API gave out")
        users = await self.store.list(after, limit + 1)
        more = len(users) > limit
        users = users[:limit]
        return Page(users, await self.store.count(), _encode_cursor(users[-1].id) if more else None)

    async def every(self) -> list[Profile]:
        return await self.store.list()

    async def create(
        self,
        user_id: str,
        *,
        litellm_key: str | None = None,
        allowed_models: Iterable[str] | None = None,
        monthly_limit: int | None = None,
    ) -> Changed:
        user_id = checked_id(user_id)
        models, limit = checked_models(allowed_models), checked_limit(monthly_limit)
        profile = Profile(user_id, "", models, limit)
        if self.keys is None:
            if litellm_key is None:
                raise InvalidField("litellm_key", "must be given unless LITELLM_MASTER_KEY is set")
            if not await self.store.add(replace(profile, litellm_key=checked_key(litellm_key))):
                raise UserExists()
            return await self._changed(user_id)
        if litellm_key is not None:
            raise InvalidField("litellm_key", "is made by the gateway when LITELLM_MASTER_KEY is set: leave it out")
        async with self._one_at_a_time(user_id):
            if await self.store.get(user_id) is not None:
                raise UserExists()  # before a key is made for nobody
            key = await self.keys.generate_key(user_id, models)
            async with self._undoing("delete the new key", partial(self.keys.delete_key, key), user_id):
                if not await self.store.add(replace(profile, litellm_key=key)):
                    raise UserExists()
            return await self._changed(user_id)

    async def update(
        self,
        user_id: str,
        *,
        litellm_key: str | Keep = KEEP,
        allowed_models: Iterable[str] | None | Keep = KEEP,
        monthly_limit: int | None | Keep = KEEP,
    ) -> Changed:
        user_id = checked_id(user_id, "user_id")
        changes: dict[str, Any] = {}
        if not isinstance(litellm_key, Keep):
            if self.keys is not None:
                raise InvalidField("litellm_key", "is managed by the gateway when LITELLM_MASTER_KEY is set: rotate it")
            changes["litellm_key"] = checked_key(litellm_key)
        if not isinstance(allowed_models, Keep):
            changes["allowed_models"] = checked_models(allowed_models)
        if not isinstance(monthly_limit, Keep):
            changes["monthly_limit"] = checked_limit(monthly_limit)
        if not changes:
            raise BadRequest("Nothing to change.")
        async with self._one_at_a_time(user_id):
            current = await self.get(user_id)
            models = changes.get("allowed_models", current.allowed_models)
            keys = self.keys if models != current.allowed_models else None
            # A timed-out update may still have reached LiteLLM: undone like any later failure.
            restore = partial(keys.set_models, current.litellm_key, current.allowed_models) if keys else None
            async with self._undoing("restore the key's models", restore, user_id):
                if keys is not None:
                    await keys.set_models(current.litellm_key, models)
                if not await self.store.update(user_id, **changes):
                    raise NoSuchUser()
            return await self._changed(user_id)

    async def remove(self, user_id: str) -> Changed:
        """Remove the user (the database first: it can be put back), then delete their LiteLLM key."""
        async with self._one_at_a_time(checked_id(user_id, "user_id")):
            current = await self.get(user_id)
            if not await self.store.remove(current.id):
                raise NoSuchUser()
            if self.keys is not None:
                try:
                    await self.keys.delete_key(current.litellm_key)
                except UpstreamTimeout:
                    # LiteLLM may have deleted it: putting the user back could leave them a dead key.
                    _left_for_an_operator("delete the removed user's LiteLLM key", current.id)
                except BaseException:  # LiteLLM said no (or the call was cancelled): the user stays
                    try:
                        await self.store.add(current)
                    except Exception:
                        _left_for_an_operator("put the removed user back", current.id)
                    raise
            return Changed(None, await self.notices.send(current.id))

    async def rotate_key(self, user_id: str) -> Changed:
        """A new LiteLLM key for the user; the old one is deleted once the new one is stored."""
        if self.keys is None:
            raise BadRequest("Rotating a user's key needs LITELLM_MASTER_KEY.")
        async with self._one_at_a_time(checked_id(user_id, "user_id")):
            current = await self.get(user_id)
            key = await self.keys.generate_key(current.id, current.allowed_models)
            async with self._undoing("delete the new key", partial(self.keys.delete_key, key), current.id):
                if not await self.store.update(current.id, litellm_key=key):
                    raise NoSuchUser()
                # Until the old key is deleted, it still works: if LiteLLM refuses, the user keeps it.
                old = partial(self.store.update, current.id, litellm_key=current.litellm_key)
                async with self._undoing("restore the old key", old, current.id):
                    try:
                        await self.keys.delete_key(current.litellm_key)
                    except UpstreamTimeout:
                        # It may be gone already: taking the new key back could leave only dead keys.
                        _left_for_an_operator("delete the rotated-out LiteLLM key", current.id)
            return await self._changed(current.id)

    async def _changed(self, user_id: str) -> Changed:
        told = await self.notices.send(user_id)
        return Changed(await self.store.get(user_id), told)

    @contextlib.asynccontextmanager
    async def _undoing(self, what: str, undo: Callable[[], Awaitable[Any]] | None, user_id: str) -> AsyncIterator[None]:
        """Run `undo` if the block fails (the block's error is what the caller gets); if `undo` fails
        too, say so in the log for an operator to finish by hand."""
        try:
            yield
        except BaseException:
            if undo is not None:
                try:
                    await undo()
                except Exception as exc:
                    extra = {"user": user_id, "step": what, "reason": type(exc).__name__}
                    log.error("could not undo a half-done user change", extra=extra)
            raise


def _left_for_an_operator(step: str, user_id: str) -> None:
    log.error("a LiteLLM key step may not have happened; check it in LiteLLM", extra={"user": user_id, "step": step})


def users_for(
    settings: Settings,
    database: Database,
    notices: ChangeNotices,
    litellm: UpstreamClient | None,
    supabase: UpstreamClient | None = None,
) -> Users:
    """Users as `settings` configure them, for the server and the CLI alike; `litellm` is a client at
    LiteLLM's root, used only with LITELLM_MASTER_KEY; `supabase` writes Supabase's `user_profiles`
    when profiles come from there."""
    master = settings.litellm_master_key
    keys = LiteLLMAdmin(litellm, master.get_secret_value(), settings.request_timeout) if master and litellm else None
    service_key = settings.supabase_service_role_key
    store: UserStore
    if settings.profiles_from_postgrest and supabase is not None and service_key is not None:
        store = PostgrestProfileStore(supabase, service_key.get_secret_value(), database)
    else:
        store = ProfileStore(database, KeyCipher(settings.key_encryption_keys))
    return Users(store, notices, keys)


def _encode_cursor(user_id: str) -> str:
    return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        user_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidField("cursor", "is not one this API gave out") from None
    if not USER_ID.match(user_id):
        raise InvalidField("cursor", "is not one this API gave out")
    return user_id
