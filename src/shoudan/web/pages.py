"""The pages: public (landing, track a refund, verify a terminal) and the merchant platform
(login, logout, dashboard, 账户安全). Handlers hold no business rules: they read a form,
call a service, and render. ``install_web(app)`` mounts everything on the API's app.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoudan.api.errors import domain_error_handler, http_error_handler, status_for
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.refunds.schemas import PublicTrackingOut
from shoudan.terminals import stock
from shoudan.web import (
    merchant_account,
    merchant_payments,
    public_flows,
    reports,
    staff_reviews,
    staff_views,
)
from shoudan.web.context import PageContext, RoleRequired, SignInRequired, set_cookie
from shoudan.web.domain import PasswordProblem, SessionKind
from shoudan.web.i18n import N_, parse_yuan
from shoudan.web.security import (
    SESSION_COOKIE,
    BodyTooLarge,
    CsrfRejected,
    SecurityHeadersMiddleware,
    is_web_path,
)
from shoudan.web.service import LoginOutcome, LoginResult

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)

PASSWORD_MESSAGES = {
    PasswordProblem.TOO_SHORT: N_("At least 10 characters."),
    PasswordProblem.TOO_LONG: N_("At most 128 characters."),
    PasswordProblem.ALL_DIGITS: N_("Not only digits."),
    PasswordProblem.TOO_FEW_KINDS: N_("Use letters and digits (or symbols)."),
    PasswordProblem.CONTAINS_IDENTITY: N_("Must not contain your phone number or user name."),
    PasswordProblem.SAME_AS_OLD: N_("Must differ from the current password."),
}


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _rate_limited(ctx: PageContext) -> bool:
    try:
        ctx.request.app.state.public_limiter.hit(_client(ctx.request))
    except DomainError as error:
        if error.code is ErrorCode.RATE_LIMITED:
            return True
        raise
    return False


# -- public ------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def landing(request: Request) -> Response:
    return PageContext.of(request).render("landing.html")


@router.get("/track", response_class=HTMLResponse)
def track_form(request: Request) -> Response:
    return PageContext.of(request).render("track.html", values={}, errors={})


@router.post("/track", response_class=HTMLResponse)
async def track(request: Request) -> Response:
    ctx = PageContext.of(request)
    form = await ctx.form()
    values = {k: form.get(k, "").strip() for k in ("rrn", "last4", "amount")}
    errors: dict[str, str] = {}
    if not (len(values["rrn"]) == 12 and values["rrn"].isascii() and values["rrn"].isdigit()):
        errors["rrn"] = ctx._("Enter the 12-digit reference number (参考号) on the receipt.")
    if not (len(values["last4"]) == 4 and values["last4"].isascii() and values["last4"].isdigit()):
        errors["last4"] = ctx._("Enter the last four digits of the card.")
    amount = parse_yuan(values["amount"])
    if amount is None:
        errors["amount"] = ctx._("Enter the amount paid, e.g. 128.50.")
    if errors:
        return ctx.render("track.html", status=422, values=values, errors=errors)
    if _rate_limited(ctx):
        message = ctx._("Too many queries. Please try again in a minute.")
        return ctx.render("track.html", status=429, values=values, errors={}, message=message)
    assert amount is not None
    try:
        tracking = PublicTrackingOut.of(ctx.container.refunds.track(values["rrn"],
                                                                   values["last4"], amount))
    except DomainError as error:
        if error.code is not ErrorCode.REFUND_NOT_FOUND:
            raise
        message = ctx._("No refund matches these details.")
        return ctx.render("track.html", status=404, values=values, errors={}, message=message)
    return ctx.render("track.html", values=values, errors={}, tracking=tracking)


@router.get("/verify", response_class=HTMLResponse)
def verify_form(request: Request) -> Response:
    return PageContext.of(request).render("verify.html", values={}, errors={})


@router.post("/verify", response_class=HTMLResponse)
async def verify(request: Request) -> Response:
    ctx = PageContext.of(request)
    form = await ctx.form()
    values = {k: form.get(k, "").strip() for k in ("serial_number", "code")}
    errors = {k: ctx._("Required.") for k, v in values.items() if not v or len(v) > 64}
    if errors:
        return ctx.render("verify.html", status=422, values=values, errors=errors)
    if _rate_limited(ctx):
        message = ctx._("Too many queries. Please try again in a minute.")
        return ctx.render("verify.html", status=429, values=values, errors={}, message=message)
    container = ctx.container
    with container.database.transaction() as session:
        result = stock.verify_terminal(
            session, container.vault, values["serial_number"], values["code"],
            clock=container.clock,
        )  # fmt: skip
    return ctx.render("verify.html", values=values, errors={}, result=asdict(result))


# -- merchant platform --------------------------------------------------------------------------
@router.get("/merchant/login", response_class=HTMLResponse)
def merchant_login_form(request: Request) -> Response:
    return PageContext.of(request).render("merchant/login.html", values={}, errors={})


@router.post("/merchant/login", response_class=HTMLResponse)
async def merchant_login(request: Request) -> Response:
    ctx = PageContext.of(request)
    form = await ctx.form()
    values = {"phone": form.get("phone", "").strip()}
    result = ctx.accounts.login_merchant(values["phone"], form.get("password", ""))
    failed = {"password": ctx._("Wrong phone number or password.")}
    return _login_answer(ctx, result, "/merchant", "merchant/login.html", values, failed)


def _login_answer(
    ctx: PageContext,
    result: LoginResult,
    home: str,
    template: str,
    values: dict[str, str],
    failed: dict[str, str],
) -> Response:
    """A login's answer: signed in → the session cookie and home; locked → 429; else the
    form again with ``failed`` (one message whatever was wrong) → 401."""
    if result.outcome is LoginOutcome.OK:
        assert result.token is not None
        response = ctx.redirect(home)
        set_cookie(ctx.request, response, SESSION_COOKIE, result.token)
        return response
    if result.outcome is LoginOutcome.LOCKED:
        message = ctx._("Too many failed attempts: this account is locked for 15 minutes.")
        return ctx.render(template, status=429, values=values, errors={}, message=message)
    return ctx.render(template, status=401, values=values, errors=failed)


async def _logout(request: Request, login_page: str) -> Response:
    """End this session (CSRF-checked form), forget the cookie, back to the login page."""
    ctx = PageContext.of(request)
    await ctx.form()
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        ctx.accounts.logout(token)
    response = ctx.redirect(login_page)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/merchant/logout")
async def merchant_logout(request: Request) -> Response:
    return await _logout(request, "/merchant/login")


@router.get("/merchant", response_class=HTMLResponse)
def merchant_dashboard(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    day = reports.merchant_day(ctx.container.database, ctx.container.clock,
                               merchant.merchant_id)  # fmt: skip
    chart = merchant_payments.sales_chart(ctx, merchant.merchant_id)
    return ctx.render("merchant/dashboard.html", day=day, chart=chart,
                      payout_labels=merchant_account.PAYOUT_STATUS)  # fmt: skip


@router.get("/merchant/security", response_class=HTMLResponse)
def merchant_security(request: Request) -> Response:
    ctx = PageContext.of(request)
    ctx.require_merchant()
    return _security_page(ctx, errors={})


def _security_page(
    ctx: PageContext, errors: dict[str, str], status: int = 200, message: str | None = None
) -> Response:
    others = ctx.accounts.other_sessions(ctx.require_merchant().identity)
    return ctx.render("merchant/security.html", status=status, errors=errors, others=others,
                      message=message)  # fmt: skip


@router.post("/merchant/security/password", response_class=HTMLResponse)
async def merchant_change_password(request: Request) -> Response:
    ctx = PageContext.of(request)
    identity = ctx.require_merchant().identity
    form = await ctx.form()
    new = form.get("new_password", "")
    if new != form.get("confirm_password", ""):
        return _security_page(ctx, {"confirm_password": ctx._("The two entries differ.")}, 422)
    current, problems = ctx.accounts.change_password(
        identity, form.get("current_password", ""), new
    )
    if current is LoginOutcome.LOCKED:
        message = ctx._("Too many failed attempts: this account is locked for 15 minutes.")
        return _security_page(ctx, {"current_password": message}, 429)
    if current is LoginOutcome.FAILED:
        return _security_page(ctx, {"current_password": ctx._("Wrong password.")}, 422)
    if problems:
        text = " ".join(ctx._(PASSWORD_MESSAGES[p]) for p in problems)
        return _security_page(ctx, {"new_password": text}, 422)
    return _security_page(ctx, {}, message=ctx._("Password changed. Other sessions signed out."))


@router.post("/merchant/security/sign-out-others", response_class=HTMLResponse)
async def merchant_sign_out_others(request: Request) -> Response:
    ctx = PageContext.of(request)
    identity = ctx.require_merchant().identity
    await ctx.form()
    ctx.accounts.sign_out_others(identity)
    return _security_page(ctx, {}, message=ctx._("Other sessions signed out."))


# -- staff console ------------------------------------------------------------------------------
@router.get("/staff/login", response_class=HTMLResponse)
def staff_login_form(request: Request) -> Response:
    return PageContext.of(request).render("staff/login.html", values={}, errors={})


@router.post("/staff/login", response_class=HTMLResponse)
async def staff_login(request: Request) -> Response:
    ctx = PageContext.of(request)
    form = await ctx.form()
    values = {"username": form.get("username", "").strip()}
    result = ctx.accounts.login_staff(
        values["username"], form.get("password", ""), form.get("totp", "")
    )
    failed = {"totp": ctx._("Wrong user name, password or code.")}
    return _login_answer(ctx, result, "/staff", "staff/login.html", values, failed)


@router.post("/staff/logout")
async def staff_logout(request: Request) -> Response:
    return await _logout(request, "/staff/login")


@router.get("/staff", response_class=HTMLResponse)
def staff_home(request: Request) -> Response:
    ctx = PageContext.of(request)
    ctx.require_staff()
    return ctx.render("staff/home.html", queues=reports.queue_counts(ctx.container.database))


# -- wiring ------------------------------------------------------------------------------------
async def _csrf_rejected(request: Request, exc: Exception) -> Response:
    ctx = PageContext.of(request)
    message = ctx._("This form has expired or was not sent from this site. Please try again.")
    return ctx.render("error.html", status=403, message=message)


async def _body_too_large(request: Request, exc: Exception) -> Response:
    ctx = PageContext.of(request)
    return ctx.render("error.html", status=413, message=ctx._("This form is too large."))


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    login = "/merchant/login" if exc.kind is SessionKind.MERCHANT else "/staff/login"
    return PageContext.of(request).redirect(login)


async def _role_required(request: Request, exc: Exception) -> Response:
    ctx = PageContext.of(request)
    return ctx.render("error.html", status=403, message=ctx._("Not allowed."))


async def _http_error(request: Request, exc: Exception) -> Response:
    if is_web_path(request.url.path) and isinstance(exc, StarletteHTTPException):
        ctx = PageContext.of(request)
        message = ctx._("Page not found.") if exc.status_code == 404 else ctx._("Not allowed.")
        return ctx.render("error.html", status=exc.status_code, message=message)
    return await http_error_handler(request, exc)


async def _domain_error(request: Request, exc: Exception) -> Response:
    if is_web_path(request.url.path) and isinstance(exc, DomainError):
        ctx = PageContext.of(request)
        status = status_for(exc.code)
        message = ctx._("Page not found.") if status == 404 else ctx._("Not allowed.")
        return ctx.render("error.html", status=status, message=message)
    return await domain_error_handler(request, exc)


def install_web(app: FastAPI) -> None:
    """Mount the console on the app: pages, static files, error pages, security headers."""
    app.include_router(router)
    app.include_router(public_flows.router)
    app.include_router(staff_reviews.router)
    app.include_router(staff_views.router)
    app.include_router(merchant_account.router)
    app.include_router(merchant_payments.router)
    app.mount("/static/web", StaticFiles(directory=STATIC), name="web-static")
    app.add_exception_handler(CsrfRejected, _csrf_rejected)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(RoleRequired, _role_required)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_middleware(SecurityHeadersMiddleware)
