"""The dashboard's gate, as ASGI middleware around the app: the token, the
Host header, same-origin POSTs, read-only mode and the security headers of
every response. (The CSRF token of each form is checked by the action that
reads the form.)"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Collection
from http.cookies import SimpleCookie
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: under no-referrer a form's Origin is "null".
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
"""The Host names a loopback-bound dashboard answers (anything else is a
DNS-rebinding page pretending to be this origin)."""


def cookie_name(token: str) -> str:
    """The token's cookie: named after the token, so that dashboards on
    other ports of the same host (which share cookies) keep their own."""
    return "errands_dashboard_" + hashlib.sha256(token.encode()).hexdigest()[:12]


def cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token (any characters), not the token."""
    return hmac.new(token.encode(), b"errands-dashboard", hashlib.sha256).hexdigest()


class Guard:
    """Refuses what the dashboard must not serve; adds the security headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        read_only: bool,
        allowed_hosts: Collection[str] | None,
    ) -> None:
        self.app = app
        self.token = token
        self.read_only = read_only
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _plain(send, *refusal)
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.token is not None and "token" in query and scope["method"] == "GET":
            await self._remember_token(scope, query, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, secured)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return 421, f"This dashboard does not answer for the host {host!r}."
        if self.token is not None and not self._authorized(scope, headers):
            return 401, (
                "This dashboard needs its token: open the address that `errands dashboard` "
                "printed (it ends in ?token=...), or send 'Authorization: Bearer <token>'."
            )
        if scope["method"] not in ("GET", "HEAD"):
            if self.read_only:
                return 403, "This dashboard is read-only: it takes no actions."
            origin = headers.get("origin")
            if origin is None or _origin_host(origin) != host.lower():
                return 403, "Actions are taken only from the dashboard's own pages (same origin)."
        return None

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        assert self.token is not None
        given: list[str] = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header counts as none
            cookies = SimpleCookie()
        morsel = cookies.get(cookie_name(self.token))
        if morsel is not None and hmac.compare_digest(
            morsel.value.encode(), cookie_value(self.token).encode()
        ):
            return True
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given.extend(query.get("token", []))
        return any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    async def _remember_token(self, scope: Scope, query: dict[str, list[str]], send: Send) -> None:
        """A valid ?token= sets the cookie and sends the browser on without
        it, so the token leaves the address bar and the history."""
        assert self.token is not None
        rest = urllib.parse.urlencode(
            [(k, v) for k, vs in query.items() if k != "token" for v in vs]
        )
        path = scope.get("root_path", "") + scope["path"]
        # One leading slash: "//evil.example/" would send the browser to another site.
        location = "/" + path.lstrip("/") + (f"?{rest}" if rest else "")
        cookie = (
            f"{cookie_name(self.token)}={cookie_value(self.token)}; "
            f"Path={scope.get('root_path', '') or '/'}; "
            "HttpOnly; SameSite=Strict"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1", "replace")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin_host(origin: str) -> str:
    return urllib.parse.urlsplit(origin.strip()).netloc.lower()


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    headers: list[Any] = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
