"""Public flows: apply for a terminal (the onboarding application with its SMS code) and the
merchant's 忘记密码 (a new password with an SMS code).

Apply runs on the SAME onboarding service as ``/v1/applications``, step by step without
JavaScript: the application form (``/apply``), the phone's code (``/apply/{id}/verify``) and
the result (``/apply/{id}``). The applicant token the service returns once is kept only in an
HttpOnly cookie limited to ``/apply`` (never in a URL, never in the page); a wrong or missing
token is the service's not-found (404). An ID number or a card number is never written back
into the form after an error: those two fields come back empty and say so.

忘记密码 answers the same page, status and text whether the phone has a login or not
(``WebAccounts.request_password_reset`` writes a code row for both and texts only a real
account), so the page cannot be used to learn which phones are merchants'.

Both are rate limited per client address like the public API (``app.state.public_limiter``).
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from shoudan.core.crypto import mask_phone
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.onboarding import service as onboarding
from shoudan.onboarding.domain import KYC_REASONS, ApplicationStatus, code_shape_ok
from shoudan.web.context import PageContext
from shoudan.web.i18n import N_

router = APIRouter(include_in_schema=False)

APPLY_COOKIE = "shoudan_apply"
APPLY_COOKIE_PATH = "/apply"
APPLY_COOKIE_SECONDS = int(timedelta(days=30).total_seconds())
REQUIRED_FIELDS = (
    "applicant_name", "phone", "province", "city", "product", "merchant_type", "id_number",
    "bank_card", "business_name", "business_address",
)  # fmt: skip
OPTIONAL_FIELDS = ("credit_code", "bank_name", "area_code", "mcc")
SECRET_FIELDS = ("id_number", "bank_card")  # never echoed back after an error

PRODUCTS = {
    "epos": N_("Electronic-signature POS"),
    "smart": N_("Smart POS"),
    "traditional": N_("Traditional POS"),
}
MERCHANT_TYPES = {
    "individual": N_("Individual (micro merchant)"),
    "small_business": N_("Individual business (个体工商户)"),
    "enterprise": N_("Enterprise"),
}
BUSINESS_TYPES = {  # MCC → what the applicant recognises; the reviewer may change it
    "5411": N_("Supermarket, convenience store"),
    "5812": N_("Restaurant"),
    "5814": N_("Fast food, snacks"),
    "7230": N_("Hair and beauty"),
    "5999": N_("Other shop"),
}
ID_CHECKS = {
    "format": N_("18 characters: 17 digits and a digit or X."),
    "birth_date": N_("The birth date in it (digits 7-14) is not a real date."),
    "checksum": N_("The last character (check digit) does not match: check the number."),
    "region": N_("The region code (the first 6 digits) is unknown."),
}
CREDIT_CHECKS = {
    "missing": N_("Required for an enterprise."),
    "format": N_("18 characters; characters 3-8 are digits."),
    "checksum": N_("The last character (check character) does not match."),
}
ERROR_MESSAGES = {
    ErrorCode.INVALID_PHONE: N_("A mainland mobile number: 11 digits starting with 1."),
    ErrorCode.INVALID_CARD: N_("A bank card number has 12 to 19 digits."),
    ErrorCode.INVALID_MCC: N_("Choose a business type."),
    ErrorCode.INVALID_AREA_CODE: N_("The area code has 4 digits."),
}
INPUT_MESSAGES = {  # invalid_input, by field
    "product": N_("Choose a product."),
    "merchant_type": N_("Choose a merchant type."),
    "bank_name": N_("We do not know this card's bank: enter the bank's name."),
}
FILL_IN = N_("Fill this in: not too long, no control characters.")
STATUSES = {
    ApplicationStatus.PHONE_PENDING: N_("Phone not verified yet"),
    ApplicationStatus.IN_REVIEW: N_("Waiting for review"),
    ApplicationStatus.INFO_REQUESTED: N_("More information requested"),
    ApplicationStatus.APPROVED: N_("Approved"),
    ApplicationStatus.REJECTED: N_("Rejected"),
}
KYC_MESSAGES = {
    "id_name_mismatch": N_("The name does not match the ID number."),
    "card_not_found": N_("The bank card does not exist (its check digit fails)."),
    "card_holder_mismatch": N_("The bank card is not in the applicant's name."),
    "phone_holder_mismatch": N_("The phone is not registered to the applicant."),
}
assert KYC_MESSAGES.keys() == KYC_REASONS.keys()  # a new reason needs its translation


def _host(ctx: PageContext) -> str:
    return ctx.request.client.host if ctx.request.client else "unknown"


def _limited(ctx: PageContext, budget: str) -> str | None:
    """The message to show when this client is over ``budget``'s public rate limit."""
    try:
        ctx.request.app.state.public_limiter.hit(f"{budget}:{_host(ctx)}")
    except DomainError as error:
        if error.code is ErrorCode.RATE_LIMITED:
            return ctx._("Too many queries. Please try again in a minute.")
        raise
    return None


def code_error(ctx: PageContext, error: DomainError) -> str | None:
    """A verification code's refusal in the user's language (``None``: not a code error)."""
    if error.code is ErrorCode.VERIFICATION_CODE_INVALID:
        left = error.details.get("attempts_left")
        if left is None:
            return ctx._("No code was sent to this phone: send one.")
        return ctx._("The code is not right: %(left)s attempts left.") % {"left": left}
    if error.code is ErrorCode.VERIFICATION_CODE_EXPIRED:
        return ctx._("The code has expired: send a new one.")
    if error.code is ErrorCode.TOO_MANY_ATTEMPTS:
        return ctx._("This code was tried too many times: send a new one.")
    return None


def send_error(ctx: PageContext, error: DomainError) -> str | None:
    """Why no code was sent, in the user's language (``None``: another error)."""
    if error.code is ErrorCode.RESEND_TOO_SOON:
        seconds = error.details.get("retry_after", 60)
        return ctx._("A new code can be sent in %(seconds)s s.") % {"seconds": seconds}
    if error.code is ErrorCode.TOO_MANY_CODES:
        return ctx._("Too many codes for this phone today: try again tomorrow.")
    if error.code is ErrorCode.RATE_LIMITED:  # the network address's daily budget of codes
        return ctx._("Too many codes from this network today: try again tomorrow.")
    return None


# -- apply: the application ---------------------------------------------------------------------
def _apply_page(
    ctx: PageContext, values: dict[str, str], errors: dict[str, str], status: int = 200,
    message: str | None = None, secrets_cleared: bool = False,
) -> Response:  # fmt: skip
    return ctx.render(
        "public_flows/apply.html", status=status, values=values, errors=errors,
        message=message, secrets_cleared=secrets_cleared, products=PRODUCTS,
        merchant_types=MERCHANT_TYPES, business_types=BUSINESS_TYPES,
    )  # fmt: skip


@router.get("/apply", response_class=HTMLResponse)
def apply_form(request: Request) -> Response:
    blank = dict.fromkeys((*REQUIRED_FIELDS, *OPTIONAL_FIELDS), "")
    return _apply_page(PageContext.of(request), values=blank | {"product": "epos"}, errors={})


def application_error(ctx: PageContext, error: DomainError) -> tuple[str, str] | None:
    """(field, message) for a refusal of the application's validators, naming the failed
    check; ``None`` when the error is not about one field."""
    field = error.details.get("field")
    if not isinstance(field, str):
        return None
    check = error.details.get("check")
    if error.code is ErrorCode.INVALID_ID_NUMBER and check in ID_CHECKS:
        return field, ctx._(ID_CHECKS[check])
    if error.code is ErrorCode.INVALID_CREDIT_CODE and check in CREDIT_CHECKS:
        return field, ctx._(CREDIT_CHECKS[check])
    if error.code in ERROR_MESSAGES:
        return field, ctx._(ERROR_MESSAGES[error.code])
    if field in INPUT_MESSAGES:
        return field, ctx._(INPUT_MESSAGES[field])
    return field, ctx._(FILL_IN)


@router.post("/apply", response_class=HTMLResponse)
async def apply(request: Request) -> Response:
    ctx = PageContext.of(request)
    form = await ctx.form()
    typed = {k: form.get(k, "").strip() for k in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}
    kept = {k: v for k, v in typed.items() if k not in SECRET_FIELDS}
    errors = {k: ctx._("Required.") for k in REQUIRED_FIELDS if not typed[k]}
    if errors:
        return _apply_page(ctx, kept, errors, 422, secrets_cleared=True)
    limited = _limited(ctx, "applications")
    if limited:
        return _apply_page(ctx, kept, {}, 429, message=limited, secrets_cleared=True)
    data = onboarding.ApplicationInput(**typed)  # the service reads "" as not given
    container = ctx.container
    try:
        submitted = onboarding.submit_application(
            container.database, container.vault, container.sms, data, clock=container.clock,
            client=_host(ctx),
        )
    except DomainError as error:
        problem = application_error(ctx, error)
        sent = send_error(ctx, error)
        if problem is None and sent is None:
            raise
        fields = dict([problem]) if problem else {}
        return _apply_page(ctx, kept, fields, 422 if problem else 429, message=sent,
                           secrets_cleared=True)  # fmt: skip
    response = ctx.redirect(f"/apply/{submitted.application.id}/verify")
    response.set_cookie(
        APPLY_COOKIE, submitted.application_token, max_age=APPLY_COOKIE_SECONDS,
        path=APPLY_COOKIE_PATH, httponly=True, samesite="lax",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


# -- apply: the phone's code --------------------------------------------------------------------
def _token(ctx: PageContext) -> str | None:
    return ctx.request.cookies.get(APPLY_COOKIE)


def _application(ctx: PageContext, application_id: str) -> onboarding.ApplicationView:
    """The application this browser's token opens, else the service's not-found (404)."""
    with ctx.container.database.read() as session:
        return onboarding.get_application(session, application_id, _token(ctx))


def _verify_page(
    ctx: PageContext, view: onboarding.ApplicationView, errors: dict[str, str],
    status: int = 200, message: str | None = None,
) -> Response:  # fmt: skip
    return ctx.render("public_flows/apply_verify.html", status=status, application=view,
                      errors=errors, message=message)  # fmt: skip


@router.get("/apply/{application_id}/verify", response_class=HTMLResponse)
def verify_form(request: Request, application_id: str) -> Response:
    ctx = PageContext.of(request)
    view = _application(ctx, application_id)
    if view.status is not ApplicationStatus.PHONE_PENDING:
        return ctx.redirect(f"/apply/{view.id}")
    return _verify_page(ctx, view, {})


@router.post("/apply/{application_id}/verify", response_class=HTMLResponse)
async def verify(request: Request, application_id: str) -> Response:
    ctx = PageContext.of(request)
    form = await ctx.form()
    view = _application(ctx, application_id)
    if view.status is not ApplicationStatus.PHONE_PENDING:
        return ctx.redirect(f"/apply/{view.id}")
    code = form.get("code", "").strip()
    if not code_shape_ok(code):  # a typo costs no attempt
        return _verify_page(ctx, view, {"code": ctx._("Enter the 6 digits of the text.")}, 422)
    limited = _limited(ctx, "applications")
    if limited:
        return _verify_page(ctx, view, {}, 429, message=limited)
    container = ctx.container
    try:
        onboarding.verify_phone(
            container.database, container.vault, container.real_name_verifier, view.id,
            _token(ctx), code, clock=container.clock,
        )  # fmt: skip
    except DomainError as error:
        problem = code_error(ctx, error)
        if problem is None:
            raise
        return _verify_page(ctx, view, {"code": problem}, 422)
    return ctx.redirect(f"/apply/{view.id}")


@router.post("/apply/{application_id}/send-code", response_class=HTMLResponse)
async def send_code(request: Request, application_id: str) -> Response:
    ctx = PageContext.of(request)
    await ctx.form()
    view = _application(ctx, application_id)
    if view.status is not ApplicationStatus.PHONE_PENDING:
        return ctx.redirect(f"/apply/{view.id}")
    limited = _limited(ctx, "applications")
    if limited:
        return _verify_page(ctx, view, {}, 429, message=limited)
    container = ctx.container
    try:
        onboarding.send_code(container.database, container.vault, container.sms, view.id,
                             _token(ctx), clock=container.clock, client=_host(ctx))  # fmt: skip
    except DomainError as error:
        refused = send_error(ctx, error)
        if refused is None:
            raise
        return _verify_page(ctx, view, {}, 429, message=refused)
    return _verify_page(ctx, view, {}, message=ctx._("A new code was sent."))


@router.get("/apply/{application_id}/send-code")
def send_code_link(request: Request, application_id: str) -> Response:
    """The language link of a page answered to a POST: back to the code's form."""
    return PageContext.of(request).redirect(f"/apply/{application_id}/verify")


# -- apply: the result --------------------------------------------------------------------------
@router.get("/apply/{application_id}", response_class=HTMLResponse)
def application_page(request: Request, application_id: str) -> Response:
    ctx = PageContext.of(request)
    view = _application(ctx, application_id)
    return ctx.render(
        "public_flows/apply_result.html", application=view, status_label=STATUSES[view.status],
        kyc_messages=[KYC_MESSAGES[r] for r in view.kyc_reasons if r in KYC_MESSAGES],
        products=PRODUCTS, merchant_types=MERCHANT_TYPES,
    )  # fmt: skip


# -- 忘记密码 -------------------------------------------------------------------------------------
FORGOT = "/merchant/forgot-password"


def _forgot_page(ctx: PageContext, values: dict[str, str], errors: dict[str, str],
                 status: int = 200, message: str | None = None) -> Response:  # fmt: skip
    return ctx.render("public_flows/forgot.html", status=status, values=values, errors=errors,
                      message=message)  # fmt: skip


def _reset_page(ctx: PageContext, phone: str, errors: dict[str, str], status: int = 200,
                message: str | None = None) -> Response:  # fmt: skip
    return ctx.render("public_flows/forgot_reset.html", status=status, phone=phone,
                      phone_masked=mask_phone(phone), errors=errors, message=message)  # fmt: skip


@router.get(FORGOT, response_class=HTMLResponse)
def forgot_form(request: Request) -> Response:
    return _forgot_page(PageContext.of(request), {"phone": ""}, {})


@router.post(FORGOT, response_class=HTMLResponse)
async def forgot(request: Request) -> Response:
    """Send a code (step 1, and "send a new code" on step 2). The answer does not depend on
    whether the phone has a login."""
    ctx = PageContext.of(request)
    form = await ctx.form()
    phone = form.get("phone", "").strip()[:32]
    limited = _limited(ctx, "password_reset")
    if limited:
        return _forgot_page(ctx, {"phone": phone}, {}, 429, message=limited)
    try:
        ctx.accounts.request_password_reset(phone, ctx.container.sms, client=_host(ctx))
    except DomainError as error:
        if error.code is ErrorCode.INVALID_PHONE:
            invalid = ctx._(ERROR_MESSAGES[ErrorCode.INVALID_PHONE])
            return _forgot_page(ctx, {"phone": phone}, {"phone": invalid}, 422)
        refused = send_error(ctx, error)
        if refused is None:
            raise
        return _reset_page(ctx, phone, {}, 429, message=refused)
    return _reset_page(ctx, phone, {}, message=ctx._(
        "If this phone number has a merchant login, a 6-digit code was texted to it. "
        "It is valid for 5 minutes."
    ))  # fmt: skip


def _password_errors(ctx: PageContext, form: dict[str, str]) -> dict[str, str]:
    """What is wrong with the form itself (before the code is tried)."""
    errors: dict[str, str] = {}
    if not code_shape_ok(form.get("code", "").strip()):
        errors["code"] = ctx._("Enter the 6 digits of the text.")
    if form.get("new_password", "") != form.get("confirm_password", ""):
        errors["confirm_password"] = ctx._("The two entries differ.")
    return errors


@router.post(FORGOT + "/reset", response_class=HTMLResponse)
async def reset(request: Request) -> Response:
    ctx = PageContext.of(request)
    form = await ctx.form()
    phone = form.get("phone", "").strip()[:32]
    errors = _password_errors(ctx, form)
    if errors:
        return _reset_page(ctx, phone, errors, 422)
    limited = _limited(ctx, "password_reset")
    if limited:
        return _reset_page(ctx, phone, {}, 429, message=limited)
    try:
        problems = ctx.accounts.reset_password(
            phone, form.get("code", "").strip(), form.get("new_password", "")
        )
    except DomainError as error:
        problem = code_error(ctx, error)
        if problem is None:
            raise
        return _reset_page(ctx, phone, {"code": problem}, 422)
    if problems:
        from shoudan.web.pages import PASSWORD_MESSAGES  # pages includes this router

        text = " ".join(ctx._(PASSWORD_MESSAGES[p]) for p in problems)
        return _reset_page(ctx, phone, {"new_password": text}, 422)
    return ctx.redirect(FORGOT + "/done")


@router.get(FORGOT + "/reset")
def reset_link(request: Request) -> Response:
    """The language link of a page answered to a POST: the flow starts again."""
    return PageContext.of(request).redirect(FORGOT)


@router.get(FORGOT + "/done", response_class=HTMLResponse)
def reset_done(request: Request) -> Response:
    """The login form with the news (the end of post/redirect/get)."""
    ctx = PageContext.of(request)
    message = ctx._("Your password was changed and every session signed out. Log in with it.")
    return ctx.render("merchant/login.html", values={"phone": ""}, errors={}, message=message)
