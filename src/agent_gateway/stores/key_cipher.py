"""LiteLLM keys at rest, sealed under KEY_ENCRYPTION_KEY, so a copy of the database (a backup,
a leaked file, a read-only SQL role) holds no key that works upstream.

Fernet (`cryptography`: AES-128-CBC with HMAC-SHA256) seals each key; the stored form is `enc1:`
and the Fernet token. A value without the prefix is a plain key (written before encryption was
on, or by the platform itself) and is read as it is. Several keys, comma-separated: the first
seals, any opens, so a new key is rolled in before the old one is dropped, and
`agent-gateway keys rotate` re-seals every stored key under the first (plain ones included).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED = "enc1:"


class KeyUnreadable(Exception):
    """A stored key is sealed and no configured key opens it: a configuration mistake, never a user's."""


class KeyCipher:
    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        self._first = Fernet(keys[0]) if keys else None
        self._any = MultiFernet([Fernet(key) for key in keys]) if keys else None

    @property
    def enabled(self) -> bool:
        return self._first is not None

    def seal(self, key: str) -> str:
        if self._first is None:
            return key
        return SEALED + self._first.encrypt(key.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(SEALED):
            return stored
        if self._any is None:
            raise KeyUnreadable("A stored LiteLLM key is encrypted and KEY_ENCRYPTION_KEY is not set.")
        try:
            return self._any.decrypt(stored[len(SEALED) :].encode()).decode()
        except InvalidToken:
            raise KeyUnreadable("No key in KEY_ENCRYPTION_KEY opens a stored LiteLLM key.") from None

    def resealed(self, stored: str) -> str | None:
        """`stored` sealed under the first key, or None when it already is."""
        if self._first is None:
            raise KeyUnreadable("KEY_ENCRYPTION_KEY is not set.")
        if stored.startswith(SEALED):
            try:
                self._first.decrypt(stored[len(SEALED) :].encode())
                return None
            except InvalidToken:
                pass
        return self.seal(self.open(stored))


def new_key() -> str:
    return Fernet.generate_key().decode()
