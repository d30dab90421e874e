"""The web console's security plumbing: headers, cookies, CSRF.

- ``SecurityHeadersMiddleware`` adds the security headers to every response under the web
  console's paths (the API's offline docs page keeps its own inline scripts, so it is left
  out): a CSP without inline scripts or styles, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: same-origin``, ``X-Content-Type-Options: nosniff``; and, on every
  page and download but the static files, ``Cache-Control: no-store``.
- CSRF: the token of a form is the keyed hash (``Vault.lookup_hash``) of what binds the
  browser — the session token when signed in, else an anonymous random cookie. Every POST
  is checked before anything runs; a missing or wrong token is a 403 and nothing changes.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoudan.core.crypto import Vault

SESSION_COOKIE = "shoudan_session"
ANON_COOKIE = "shoudan_anon"
LANG_COOKIE = "shoudan_lang"
CSRF_FIELD = "csrf_token"
CSRF_CONTEXT = "web:csrf"

WEB_PREFIXES = ("/track", "/verify", "/merchant", "/staff", "/static/web", "/apply")
HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
     b"object-src 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
]  # fmt: skip
STATIC_PREFIX = "/static/web"
# pages and downloads are never stored by a browser or a proxy: one URL (/merchant,
# /merchant/statements?period=…) serves each signed-in user their own data, and a page
# stays readable from the cache after logging out
NO_STORE = (b"cache-control", b"no-store")


class CsrfRejected(Exception):
    """A POST without the right CSRF token (answered 403, nothing done)."""


class BodyTooLarge(Exception):
    """A POST whose body is over the form's limit or of no declared length (answered 413,
    nothing read, nothing done)."""


def is_static_path(path: str) -> bool:
    return path.startswith(STATIC_PREFIX + "/")


def is_web_path(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p + "/") for p in WEB_PREFIXES)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_web_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return

        headers = HEADERS if is_static_path(scope.get("path", "")) else [*HEADERS, NO_STORE]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in headers if n not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def new_anon_binding() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(vault: Vault, binding: str) -> str:
    return vault.lookup_hash(binding, CSRF_CONTEXT)


def csrf_valid(vault: Vault, binding: str | None, submitted: object) -> bool:
    if not binding or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(csrf_token(vault, binding), submitted)
