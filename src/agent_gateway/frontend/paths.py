"""Paths passed on to a service (SPEC §6): built from the configured origin and prefix plus
segments checked one by one, never from the client's path alone."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from agent_gateway.errors import BadRequest

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def split_path(raw_path: bytes, prefix: str) -> list[str]:
    """The decoded segments after `prefix`, each one safe to put back into a URL (else 400): no
    `.`/`..`/empty segment, no encoded `/` or `\\`, no control character."""
    raw = raw_path.decode("latin-1")
    if not raw.startswith(prefix):  # an encoded prefix (`/api/v1/%61ms`) must not shift the path
        raise BadRequest("The path is not in canonical form.", param="path")
    rest = raw[len(prefix) :].removeprefix("/")
    segments = rest.split("/") if rest else []
    if segments and segments[-1] == "":
        segments.pop()  # one trailing slash is harmless
    decoded: list[str] = []
    for raw in segments:
        segment = unquote(raw)
        if segment in ("", ".", "..") or "/" in segment or "\\" in segment or _CONTROL.search(segment):
            raise BadRequest("The path holds a segment that is not allowed.", param="path")
        decoded.append(segment)
    return decoded


def join_path(segments: list[str]) -> str:
    """`/a/b` from checked segments; an empty last segment is a collection's trailing slash."""
    return "".join("/" + quote(segment, safe="") for segment in segments)
