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
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import SecretStr
from starlette.staticfiles import StaticFiles

from agent_gateway.domain import Rate
from agent_gateway.errors import Forbidden, InvalidSecret, RateLimited
from agent_gateway.limits.rate import MemoryRateLimiter

COOKIE = "agw_admin"
CSRF_HEADER = "x-csrf-token"
ASSETS = Path(__file__).with_name("admin_assets")
_LIFETIME = 8 * 3600  # seconds a login lasts
_MAX_FORM_BYTES = 4096
_LOGINS = Rate(10, 60.0, "10/minute")  # login attempts per client address
# The page's own rules for what it may load: only this gateway's files, no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class AdminSessions:
    """Signed, expiring session tokens and their CSRF tokens, from ADMIN_API_KEY alone."""

    def __init__(self, admin_key: SecretStr, secure: bool) -> None:
        secret = admin_key.get_secret_value().encode()
        self._key = hmac.new(secret, b"agent-gateway admin session", hashlib.sha256).digest()
        self.admin_key = secret
        self.secure = secure  # send the cookie over HTTPS only (production, staging)

    def key_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.admin_key)

    def issue(self, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + _LIFETIME)
        payload = f"{expires}.{base64.urlsafe_b64encode(os.urandom(12)).decode()}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, token: str | None, now: float | None = None) -> bool:
        if not token or token.count(".") != 2:
            return False
        payload, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return False
        expires = payload.partition(".")[0]
        return expires.isdigit() and int(expires) > (now if now is not None else time.time())

    def csrf_token(self, session: str) -> str:
        return self._sign(f"csrf:{session}")

    def allows(self, request: Request) -> bool:
        """A browser call from the page: a live session cookie and the CSRF token that goes with it."""
        session = request.cookies.get(COOKIE)
        if not self.valid(session):
            return False
        assert session is not None
        return hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), self.csrf_token(session))

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def build_admin_page(sessions: AdminSessions) -> APIRouter:
    router = APIRouter(prefix="/admin", include_in_schema=False)
    attempts = MemoryRateLimiter()

    @router.get("")
    async def page(request: Request) -> Response:
        session = request.cookies.get(COOKIE)
        if not sessions.valid(session):
            return _login_page()
        assert session is not None
        body = (ASSETS / "admin.html").read_text().replace("{{csrf}}", html.escape(sessions.csrf_token(session)))
        return HTMLResponse(body, headers=_PAGE_HEADERS)

    @router.post("/login")
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        attempt = attempts.hit_now(client, _LOGINS)
        if not attempt.allowed:  # guessing the key: a handful of tries a minute per address
            raise RateLimited("Too many login attempts; wait a minute.", retry_after=attempt.retry_after, headers={})
        form = await _form(request)
        if not sessions.key_matches(form.get("key", "")):
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
        response = Response(status_code=204, headers=_PAGE_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=sessions.secure)
        return response

    return router


def mount_assets(app: FastAPI) -> None:
    """The page's script and style sheet at /admin/assets/…"""
    app.mount("/admin/assets", StaticFiles(directory=ASSETS), name="admin-assets")


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise InvalidSecret("Log in with the form on /admin.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise InvalidSecret("Log in with the form on /admin.")
    return {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    body = (ASSETS / "login.html").read_text().replace("{{error}}", html.escape(error))
    return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)
