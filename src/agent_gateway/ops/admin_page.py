"""The operators' web page at `/admin`: a login form for ADMIN_API_KEY, then one page that
drives the admin API (users, usage charts, instance status) from the browser.

The session is a cookie the gateway signs (HttpOnly, SameSite=Strict, Path=/), so any instance
with the same ADMIN_API_KEY accepts it and changing the key ends every session. A page's calls
to the admin API carry the cookie and an `X-CSRF-Token` header derived from it, which the page
reads from its own HTML: another site can neither send the cookie (SameSite) nor know the token.
The assets are files beside this module, served by the gateway: no CDN.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs

from cachetools import TTLCache
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import SecretStr

from agent_gateway.errors import Forbidden, InvalidSecret, RateLimited

log = logging.getLogger("agent_gateway.admin")
COOKIE = "agw_admin"
CSRF_HEADER = "x-csrf-token"
ASSETS = Path(__file__).with_name("admin_assets")  # served as they are: the script and the style sheet
PAGES = ASSETS / "pages"  # templates, filled in before they are served: never served raw
_LIFETIME = 8 * 3600  # seconds a login lasts
_MAX_FORM_BYTES = 4096
# The page's own rules for what it may load: only this gateway's files, no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Guesses:
    """Wrong admin keys per client address: past `limit` in a minute, every try from there is refused
    (429) before the key is even compared, the right one too, until a minute passes without one."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._wrong: TTLCache[str, int] = TTLCache(100_000, window)

    def check(self, address: str) -> None:
        if self._wrong.get(address, 0) >= self.limit:
            raise RateLimited("Too many wrong admin keys; wait a minute.", retry_after=self.window, headers={})

    def wrong(self, address: str) -> None:
        self._wrong[address] = self._wrong.get(address, 0) + 1
        log.warning("wrong admin key", extra={"client": address, "attempts": self._wrong[address]})


class AdminSessions:
    """Signed, expiring session tokens and their CSRF tokens, from ADMIN_API_KEY alone."""

    def __init__(self, admin_key: SecretStr, secure: bool) -> None:
        secret = admin_key.get_secret_value().encode()
        self._key = hmac.new(secret, b"agent-gateway admin session", hashlib.sha256).digest()
        self.admin_key = secret
        self.secure = secure  # send the cookie over HTTPS only (production, staging)
        self.guesses = Guesses()
        # Sessions logged out before they expire. In this process: another instance still takes the
        # cookie until it expires, but the browser has dropped it.
        self._ended: TTLCache[str, bool] = TTLCache(100_000, _LIFETIME)

    def key_matches(self, given: str, address: str) -> bool:
        """The admin key, compared only while `address` has not guessed too often."""
        self.guesses.check(address)
        if hmac.compare_digest(given.encode(), self.admin_key):
            return True
        if given:  # no key at all is not a guess
            self.guesses.wrong(address)
        return False

    def issue(self, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + _LIFETIME)
        payload = f"{expires}.{base64.urlsafe_b64encode(os.urandom(12)).decode()}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, token: str | None, now: float | None = None) -> bool:
        if not token or token.count(".") != 2 or not token.isascii():
            return False
        payload, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        expires = payload.partition(".")[0]
        live = expires.isdigit() and int(expires) > (now if now is not None else time.time())
        return live and payload not in self._ended

    def end(self, token: str) -> None:
        self._ended[token.rpartition(".")[0]] = True

    def csrf_token(self, session: str) -> str:
        return self._sign(f"csrf:{session}")

    def allows(self, request: Request) -> bool:
        """A browser call from the page: a live session cookie and the CSRF token that goes with it."""
        session = request.cookies.get(COOKIE)
        if not self.valid(session):
            return False
        assert session is not None
        given = request.headers.get(CSRF_HEADER, "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self.csrf_token(session).encode())

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def build_admin_page(sessions: AdminSessions) -> APIRouter:
    router = APIRouter(prefix="/admin", include_in_schema=False)

    @router.get("")
    async def page(request: Request) -> Response:
        session = request.cookies.get(COOKIE)
        if not sessions.valid(session):
            return _login_page()
        assert session is not None
        body = (PAGES / "admin.html").read_text().replace("{{csrf}}", html.escape(sessions.csrf_token(session)))
        return HTMLResponse(body, headers=_PAGE_HEADERS)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        if not sessions.key_matches(form.get("key", ""), client_address(request)):
            return _login_page("That is not the admin key.", status=401)
        response = RedirectResponse("/admin", status_code=303, headers=_PAGE_HEADERS)
        response.set_cookie(
            COOKIE,
            sessions.issue(),
            max_age=_LIFETIME,
            path="/",
            httponly=True,
            samesite="strict",
            secure=sessions.secure,
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        if not sessions.allows(request):
            raise Forbidden("Log out from the admin page.")
        sessions.end(request.cookies[COOKIE])
        response = Response(status_code=204, headers=_PAGE_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=sessions.secure)
        return response

    return router


def mount_assets(app: FastAPI) -> None:
    """The page's script and style sheet at /admin/assets/…, nothing else of the folder."""
    for name in ("admin.js", "admin.css"):
        app.add_api_route(f"/admin/assets/{name}", _serve(ASSETS / name), methods=["GET"], include_in_schema=False)


def _serve(path: Path) -> Callable[[], Awaitable[FileResponse]]:
    """A handler without parameters: nothing of the request picks the file."""

    async def asset() -> FileResponse:
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    return asset


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise InvalidSecret("Log in with the form on /admin.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise InvalidSecret("Log in with the form on /admin.")
    return {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    body = (PAGES / "login.html").read_text().replace("{{error}}", html.escape(error))
    return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)
