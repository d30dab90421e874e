"""Per-request state of a web page: language, signed-in identity, CSRF binding, rendering.

``PageContext.of(request)`` is built once per request (cached on ``request.state``).
``render`` fills a template in the request's language and sets the cookies the request
needs (language, anonymous CSRF binding) with the right flags: HttpOnly, SameSite=Lax, and
Secure when the request came over https.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shoudan.auth.domain import Principal, Role
from shoudan.container import Container
from shoudan.web.domain import SessionKind
from shoudan.web.i18n import (
    DEFAULT_LOCALE,
    HTML_LANG,
    LOCALES,
    format_fen,
    format_shanghai,
    pick_locale,
    translations,
)
from shoudan.web.security import (
    ANON_COOKIE,
    CSRF_FIELD,
    LANG_COOKIE,
    SESSION_COOKIE,
    BodyTooLarge,
    CsrfRejected,
    csrf_token,
    csrf_valid,
    new_anon_binding,
)
from shoudan.web.service import Identity, WebAccounts

R = TypeVar("R", HTMLResponse, RedirectResponse)


class SignInRequired(Exception):
    """A signed-in page opened without the right session: answered with a redirect to the
    login page of ``kind`` (see ``install_web``)."""

    def __init__(self, kind: SessionKind) -> None:
        super().__init__(kind.value)
        self.kind = kind


class RoleRequired(Exception):
    """A staff page opened by staff without one of the roles it needs: answered 403."""
TEMPLATES = Path(__file__).parent / "templates"
# a form's body without a file: its text fields are far below this (a refund reason is at most
# 500 characters); anything larger is refused before it is read
FORM_MAX_BYTES = 64 * 1024
LANG_COOKIE_SECONDS = 365 * 24 * 3600


def _environment(locale: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    env.filters["fen"] = format_fen
    env.filters["shanghai"] = format_shanghai
    return env


ENVIRONMENTS = {locale: _environment(locale) for locale in LOCALES}


@dataclass(frozen=True, slots=True)
class MerchantIdentity:
    """A signed-in merchant user: the session identity and its merchant, never ``None``."""

    identity: Identity
    merchant_id: str

    @property
    def principal(self) -> Principal:
        return self.identity.principal


def accounts_of(container: Container) -> WebAccounts:
    return WebAccounts(container.database, container.vault, container.clock)


@dataclass
class PageContext:
    request: Request
    container: Container
    locale: str
    identity: Identity | None
    binding: str
    cookies: dict[str, tuple[str, int | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, request: Request) -> PageContext:
        cached = getattr(request.state, "web_context", None)
        if isinstance(cached, PageContext):
            return cached
        container: Container = request.app.state.container
        asked = pick_locale(request.query_params.get("lang"))
        locale = asked or pick_locale(request.cookies.get(LANG_COOKIE)) or DEFAULT_LOCALE
        token = request.cookies.get(SESSION_COOKIE)
        identity = accounts_of(container).resolve(token) if token else None
        cookies: dict[str, tuple[str, int | None]] = {}
        if asked:
            cookies[LANG_COOKIE] = (asked, LANG_COOKIE_SECONDS)
        binding = token if identity is not None and token else request.cookies.get(ANON_COOKIE)
        if not binding:
            binding = new_anon_binding()
            cookies[ANON_COOKIE] = (binding, None)
        context = cls(request, container, locale, identity, binding, cookies)
        request.state.web_context = context
        return context

    def _(self, message: str) -> str:
        return translations(self.locale).gettext(message)

    def require_merchant(self) -> MerchantIdentity:
        """The signed-in merchant user, or ``SignInRequired`` (→ the merchant login page).
        Pages pass ``identity.principal`` to services: tenant scoping is the services'."""
        identity = self.identity
        if identity is None or identity.kind is not SessionKind.MERCHANT:
            raise SignInRequired(SessionKind.MERCHANT)
        assert identity.merchant_id is not None
        return MerchantIdentity(identity, identity.merchant_id)

    def require_staff(self, *roles: Role) -> Identity:
        """The signed-in staff user holding one of ``roles`` (any staff role when none is
        given); ``SignInRequired`` when not signed in as staff, ``RoleRequired`` (403) when
        the roles do not match. Admin passes every check."""
        identity = self.identity
        if identity is None or identity.kind is not SessionKind.STAFF:
            raise SignInRequired(SessionKind.STAFF)
        if roles and not ({Role.ADMIN, *roles} & set(identity.roles)):
            raise RoleRequired()
        return identity

    @property
    def accounts(self) -> WebAccounts:
        return accounts_of(self.container)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        env = ENVIRONMENTS[self.locale]
        html = env.get_template(template).render(
            request=self.request, identity=self.identity, csrf_field=CSRF_FIELD,
            csrf_token=csrf_token(self.container.vault, self.binding),
            html_lang=HTML_LANG[self.locale], locale=self.locale, lang_url=self.lang_url,
            **values,
        )  # fmt: skip
        return self.finish(HTMLResponse(html, status_code=status))

    def lang_url(self, locale: str) -> str:
        """This page in ``locale``: the same path and query, ``lang`` replaced — except a
        search text (``q``), which may be a phone number and is not written into the page."""
        params = [(k, v) for k, v in self.request.query_params.multi_items()
                  if k not in ("lang", "q")]  # fmt: skip
        return f"{self.request.url.path}?{urlencode([*params, ('lang', locale)])}"

    def redirect(self, url: str) -> RedirectResponse:
        return self.finish(RedirectResponse(url, status_code=303))

    def finish(self, response: R) -> R:
        for name, (value, max_age) in self.cookies.items():
            set_cookie(self.request, response, name, value, max_age)
        return response

    async def form(self, max_bytes: int = FORM_MAX_BYTES) -> dict[str, str]:
        """The POSTed form, after the CSRF check (``CsrfRejected`` before anything runs).
        A body over ``max_bytes``, or without a declared length, is refused unread
        (``BodyTooLarge``): Starlette would otherwise spool any multipart file to disk, and
        keep any urlencoded field in memory, before the CSRF token is even looked at."""
        declared = self.request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > max_bytes:
            raise BodyTooLarge()
        data = await self.request.form()
        if not csrf_valid(self.container.vault, self.binding, data.get(CSRF_FIELD)):
            raise CsrfRejected()
        return {k: v for k, v in data.items() if isinstance(v, str)}


def set_cookie(
    request: Request,
    response: HTMLResponse | RedirectResponse,
    name: str,
    value: str,
    max_age: int | None = None,
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
        secure=request.url.scheme == "https",
    )  # fmt: skip
