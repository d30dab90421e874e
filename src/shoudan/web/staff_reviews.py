"""The staff console's review queues and their actions: refunds (with the second approval of
large refunds and the re-route of abnormal ones), deposit refunds, onboarding applications and
reconciliation exceptions; and ``/staff/files/{id}``, which shows evidence to staff.

Handlers hold no rules: every action calls the same domain service as the API, with the
signed-in staff member's principal. Maker-checker, state and role rules are the services';
a refusal is shown on the item's page with its reason and nothing changes. Every action is
written to the audit log by the service it calls. A successful action redirects back to the
item (post/redirect/get) with a short confirmation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from shoudan.api.errors import status_for
from shoudan.api.pagination import decode_cursor, encode_cursor
from shoudan.auth.domain import Principal, Role
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.deposits.domain import RequestStatus
from shoudan.deposits.service import REVIEW_ROLES as DEPOSIT_REVIEW_ROLES
from shoudan.onboarding import service as onboarding
from shoudan.onboarding.domain import ApplicationStatus
from shoudan.reconciliation.domain import ExceptionStatus, Resolution
from shoudan.reconciliation.service import ExceptionFilters, ReconciliationService
from shoudan.refunds.domain import RefundStatus
from shoudan.refunds.service import (
    STAFF_REROUTE_ROLES,
    STAFF_REVIEW_ROLES,
    RefundFilters,
    Reroute,
)
from shoudan.web.context import PageContext
from shoudan.web.i18n import N_
from shoudan.web.merchant_account import DEPOSIT_STATUS
from shoudan.web.merchant_payments import REASON_LABELS
from shoudan.web.public_flows import KYC_MESSAGES, MERCHANT_TYPES, PRODUCTS
from shoudan.web.public_flows import STATUSES as APPLICATION_STATUS
from shoudan.web.service import Identity

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
TEXT_MAX = 500
AWAITING_SECOND = "awaiting_second"  # a refund queue of its own: one approval of two given
APPLICATION_ROLES = (Role.REVIEWER,)  # as /v1/applications (admin always passes)
RECONCILIATION_ROLES = (Role.FINANCE,)  # as /v1/reconciliation-exceptions
APPROVE_ROLES = (Role.APPROVER, *STAFF_REVIEW_ROLES)  # approver first: it may give both
E = TypeVar("E", bound=StrEnum)

# Why a service refused an action, in the reviewer's words (the item is unchanged).
REFUSALS = {
    ErrorCode.SELF_APPROVAL: N_(
        "You requested this yourself: the approval must come from another person."
    ),
    ErrorCode.ALREADY_APPROVED: N_(
        "You gave the first approval: the second approval must come from another person."
    ),
    ErrorCode.FORBIDDEN: N_(
        "Your role cannot do this here (a large refund needs two approvers)."
    ),
    ErrorCode.INVALID_TRANSITION: N_(
        "This item is no longer in a state that allows this action."
    ),
    ErrorCode.EXCEPTION_ALREADY_RESOLVED: N_("This exception is already resolved."),
    ErrorCode.SETTLEMENT_ACCOUNT_NOT_VERIFIED: N_(
        "The merchant's settlement card is not verified: verify it before approving."
    ),
    ErrorCode.INVALID_CARD: N_(
        "The bank card fails its check: ask the applicant for new materials."
    ),
    ErrorCode.CHANNEL_UNAVAILABLE: N_("The network did not answer. Please try again later."),
}
# A service's refusal of one typed value, shown next to the field.
FIELD_PROBLEMS = {
    ErrorCode.INVALID_INPUT: N_("This value is not valid."),
    ErrorCode.INVALID_BANK_ACCOUNT: N_("Enter a valid bank card number (12 to 19 digits)."),
    ErrorCode.INVALID_MCC: N_("Enter a valid 4-digit MCC."),
    ErrorCode.INVALID_AREA_CODE: N_("Enter a valid 4-digit area code."),
}
DONE = {
    "approved": N_("Approval recorded."),
    "rejected": N_("Rejected."),
    "info_requested": N_("Information requested."),
    "rerouted": N_("Re-routed to the bank account."),
    "synced": N_("The network was asked."),
    "resolved": N_("Resolved."),
}
RISK_RULES = {
    "quick_refund": N_("Quick refund"),
    "refund_ratio": N_("High refund ratio"),
    "large_ticket": N_("Large ticket"),
    "card_velocity": N_("Card velocity"),
    "off_hours": N_("Paid outside business hours"),
    "round_amount": N_("Round amount"),
}
ROLES = {
    "admin": N_("Administrator"), "reviewer": N_("Reviewer"), "approver": N_("Approver"),
    "risk": N_("Risk officer"), "finance": N_("Finance"), "cs_agent": N_("Customer service"),
}  # fmt: skip
REQUESTERS = {"merchant": N_("Merchant"), "staff": N_("Staff"), "terminal": N_("Terminal")}
KYC_STATUS = {"pending": N_("Not checked yet"), "passed": N_("Passed"), "failed": N_("Failed")}
EXCEPTION_CLASSES = {
    "missing_in_ours": N_("Only on the channel's statement (长款)"),
    "missing_in_channel": N_("Only in our records (短款)"),
    "amount_mismatch": N_("Amounts differ"),
    "status_mismatch": N_("Statuses differ"),
}
EXCEPTION_STATUS = {"open": N_("Open"), "resolved": N_("Resolved")}
REFUND_QUEUES = (
    ("in_review", N_("In review")),
    (AWAITING_SECOND, N_("Awaiting second approval")),
    ("needs_info", N_("Needs information")),
    ("pending_funds", N_("Waiting for funds")),
    ("abnormal", N_("Abnormal")),
    ("processing", N_("Processing")),
    ("succeeded", N_("Succeeded")),
    ("failed", N_("Failed")),
    ("rejected", N_("Rejected")),
    ("all", N_("All")),
)
DEPOSIT_QUEUES = (
    ("in_review", N_("In review")),
    ("approved", N_("Approved")),
    ("rejected", N_("Rejected")),
    ("all", N_("All")),
)
APPLICATION_QUEUES = (
    ("in_review", N_("In review")),
    ("info_requested", N_("Information requested")),
    ("phone_pending", N_("Phone not verified")),
    ("approved", N_("Approved")),
    ("rejected", N_("Rejected")),
    ("all", N_("All")),
)
EXCEPTION_QUEUES = (("open", N_("Open")), ("resolved", N_("Resolved")), ("all", N_("All")))
RESOLUTIONS = {
    Resolution.ADJUST.value: N_("Adjust (into reconciliation suspense)"),
    Resolution.WRITE_OFF.value: N_("Write off (gain or loss; reason required)"),
    Resolution.MARK_RESOLVED.value: N_("Mark resolved (no money moves)"),
}


# -- shared helpers -----------------------------------------------------------------------------
def acting(identity: Identity, roles: Sequence[Role]) -> Principal:
    """The principal for an action needing one of ``roles``: admin when held, else the first
    of ``roles`` the staff member holds (someone who is reviewer and approver approves a large
    refund as approver)."""
    held = set(identity.roles)
    if Role.ADMIN in held:
        return Principal(identity.user_id, Role.ADMIN)
    for role in roles:
        if role in held:
            return Principal(identity.user_id, role)
    return identity.principal


def _queue(ctx: PageContext, queues: Sequence[tuple[str, str]]) -> str:
    """The ``status`` asked for (the first queue by default); an unknown one is a 404."""
    status = ctx.request.query_params.get("status") or queues[0][0]
    if status not in {key for key, _ in queues}:
        raise HTTPException(404)
    return status


def _enum(kind: type[E], status: str) -> E | None:
    return None if status == "all" else kind(status)


def _after(ctx: PageContext) -> tuple[datetime, str] | None:
    cursor = ctx.request.query_params.get("cursor")
    if not cursor:
        return None
    try:
        return decode_cursor(cursor)
    except DomainError:
        raise HTTPException(404) from None


def _paged(rows: Sequence[Any]) -> tuple[list[Any], str | None]:
    """This page's rows (asked for one more than a page) and the next page's cursor."""
    page = list(rows[:PAGE_SIZE])
    more = len(rows) > PAGE_SIZE
    return page, encode_cursor(page[-1].created_at, page[-1].id) if more else None


def _done(ctx: PageContext) -> str | None:
    key = ctx.request.query_params.get("done", "")
    return ctx._(DONE[key]) if key in DONE else None


def _text(
    ctx: PageContext, form: dict[str, str], name: str, errors: dict[str, str], required: bool
) -> str:
    """A free-text field, trimmed: required ones must not be empty; none is over 500."""
    value = form.get(name, "").strip()
    if required and not value:
        errors[name] = ctx._("Required.")
    elif len(value) > TEXT_MAX:
        errors[name] = ctx._("At most 500 characters.")
    return value


Show = Callable[[int, str | None, dict[str, str]], Response]


def _perform(
    ctx: PageContext, action: Callable[[], object], show: Show, done: str, fields: Sequence[str]
) -> Response:
    """Run a service action; on success back to the item with ``done`` shown. A refusal
    re-renders the item with the reason (nothing changed); a not-found stays a 404."""
    try:
        action()
    except DomainError as error:
        status = status_for(error.code)
        if status == 404:
            raise
        field = error.details.get("field")
        problem = FIELD_PROBLEMS.get(error.code)
        if problem is not None and fields:
            name = field if isinstance(field, str) and field in fields else fields[0]
            return show(422, None, {name: ctx._(problem)})
        reason = REFUSALS.get(error.code)
        message = ctx._(reason) if reason else ctx._("The action was refused.")
        return show(status, message, {})
    return ctx.redirect(f"{ctx.request.url.path.rsplit('/', 1)[0]}?done={done}")


# -- evidence files -----------------------------------------------------------------------------
@router.get("/staff/files/{file_id}")
def staff_file(request: Request, file_id: str) -> Response:
    """A stored file for staff eyes: images inline (evidence previews), PDFs as a download;
    with the type sniffed at upload, never guessed by the browser."""
    ctx = PageContext.of(request)
    identity = ctx.require_staff()
    view, data = ctx.container.files.open(identity.principal, file_id)
    disposition = "inline" if view.content_type.startswith("image/") else "attachment"
    name = quote(view.original_name, safe="")
    headers = {
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{name}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
    }
    return Response(data, media_type=view.content_type, headers=headers)


# -- refunds ------------------------------------------------------------------------------------
@router.get("/staff/refunds", response_class=HTMLResponse)
def refunds_queue(request: Request) -> Response:
    ctx = PageContext.of(request)
    principal = ctx.require_staff().principal
    status = _queue(ctx, REFUND_QUEUES)
    refunds = ctx.container.refunds
    if status == AWAITING_SECOND:
        rows = refunds.awaiting_second_approval(principal, PAGE_SIZE + 1, _after(ctx))
    else:
        filters = RefundFilters(status=_enum(RefundStatus, status))
        rows = refunds.list(principal, filters, PAGE_SIZE + 1, _after(ctx))
    page, cursor = _paged(rows)
    approvals = refunds.approvals_given(principal, [r.id for r in page])
    return ctx.render("staff_reviews/refunds.html", wide=True, rows=page, cursor=cursor,
                      queue=status, queues=REFUND_QUEUES, approvals=approvals)  # fmt: skip


def _refund_page(
    ctx: PageContext, refund_id: str, status: int = 200, message: str | None = None,
    errors: dict[str, str] | None = None, values: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    principal = ctx.require_staff().principal
    detail = ctx.container.refunds.detail(principal, refund_id)
    payment = ctx.container.payments.get(principal, detail.refund.payment_id)
    evidence = [ctx.container.files.get(principal, e.file_id) for e in detail.evidence]
    return ctx.render(
        "staff_reviews/refund.html", status=status, wide=True, detail=detail, refund=detail.refund,
        payment=payment, evidence=evidence, risk=json.loads(detail.refund.risk_reasons),
        rules=RISK_RULES, reasons=REASON_LABELS, roles=ROLES, requesters=REQUESTERS,
        message=message, done=_done(ctx), errors=errors or {},
        values=values or {},
    )  # fmt: skip


@router.get("/staff/refunds/{refund_id}", response_class=HTMLResponse)
def refund_detail(request: Request, refund_id: str) -> Response:
    return _refund_page(PageContext.of(request), refund_id)


async def _refund_action(
    request: Request, refund_id: str, roles: Sequence[Role], done: str,
    fields: dict[str, bool], call: Callable[[Principal, dict[str, str]], object],
) -> Response:  # fmt: skip
    """Check the role and CSRF, read ``fields`` (name → required), call the refund service."""
    ctx = PageContext.of(request)
    identity = ctx.require_staff(*roles)
    form = await ctx.form()
    errors: dict[str, str] = {}
    values = {name: _text(ctx, form, name, errors, required) for name, required in fields.items()}

    def show(status: int, message: str | None, problems: dict[str, str]) -> Response:
        return _refund_page(ctx, refund_id, status, message, problems, values)

    if errors:
        return show(422, None, errors)
    principal = acting(identity, roles)
    return _perform(ctx, lambda: call(principal, values), show, done, list(fields))


@router.post("/staff/refunds/{refund_id}/approve", response_class=HTMLResponse)
async def refund_approve(request: Request, refund_id: str) -> Response:
    refunds = PageContext.of(request).container.refunds
    return await _refund_action(
        request, refund_id, APPROVE_ROLES, "approved", {"note": False},
        lambda who, v: refunds.approve(who, refund_id, v["note"]),
    )


@router.post("/staff/refunds/{refund_id}/reject", response_class=HTMLResponse)
async def refund_reject(request: Request, refund_id: str) -> Response:
    refunds = PageContext.of(request).container.refunds
    return await _refund_action(
        request, refund_id, STAFF_REVIEW_ROLES, "rejected", {"reason": True},
        lambda who, v: refunds.reject(who, refund_id, v["reason"]),
    )


@router.post("/staff/refunds/{refund_id}/request-info", response_class=HTMLResponse)
async def refund_request_info(request: Request, refund_id: str) -> Response:
    refunds = PageContext.of(request).container.refunds
    return await _refund_action(
        request, refund_id, STAFF_REVIEW_ROLES, "info_requested", {"message": True},
        lambda who, v: refunds.request_info(who, refund_id, v["message"]),
    )


@router.post("/staff/refunds/{refund_id}/reroute", response_class=HTMLResponse)
async def refund_reroute(request: Request, refund_id: str) -> Response:
    refunds = PageContext.of(request).container.refunds
    fields = {"account_number": True, "holder_name": True, "bank_name": True}
    return await _refund_action(
        request, refund_id, STAFF_REROUTE_ROLES, "rerouted", fields,
        lambda who, v: refunds.reroute(who, refund_id, Reroute(
            v["account_number"], v["holder_name"], v["bank_name"])),
    )  # fmt: skip


@router.post("/staff/refunds/{refund_id}/sync", response_class=HTMLResponse)
async def refund_sync(request: Request, refund_id: str) -> Response:
    refunds = PageContext.of(request).container.refunds
    return await _refund_action(
        request, refund_id, (), "synced", {}, lambda who, v: refunds.sync(who, refund_id)
    )


# -- deposit refunds ----------------------------------------------------------------------------
@router.get("/staff/deposit-refunds", response_class=HTMLResponse)
def deposit_refunds_queue(request: Request) -> Response:
    ctx = PageContext.of(request)
    principal = ctx.require_staff().principal
    status = _queue(ctx, DEPOSIT_QUEUES)
    rows = ctx.container.deposits.list_requests(
        principal, _enum(RequestStatus, status), PAGE_SIZE + 1, _after(ctx)
    )
    page, cursor = _paged(rows)
    return ctx.render("staff_reviews/deposit_refunds.html", wide=True, rows=page, cursor=cursor,
                      queue=status, queues=DEPOSIT_QUEUES)  # fmt: skip


def _deposit_page(
    ctx: PageContext, request_id: str, status: int = 200, message: str | None = None,
    errors: dict[str, str] | None = None, values: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    principal = ctx.require_staff().principal
    deposits = ctx.container.deposits
    refund_request, detail = deposits.get_request(principal, request_id)
    verified = deposits.settlement_card_verified(principal, refund_request.merchant_id)
    return ctx.render(
        "staff_reviews/deposit_refund.html", status=status, wide=True, item=refund_request,
        deposit=detail.deposit, history=detail.history, card_verified=verified,
        labels=DEPOSIT_STATUS,
        message=message, done=_done(ctx), errors=errors or {}, values=values or {},
    )  # fmt: skip


@router.get("/staff/deposit-refunds/{request_id}", response_class=HTMLResponse)
def deposit_refund_detail(request: Request, request_id: str) -> Response:
    return _deposit_page(PageContext.of(request), request_id)


async def _deposit_action(request: Request, request_id: str, approve: bool) -> Response:
    ctx = PageContext.of(request)
    identity = ctx.require_staff(*DEPOSIT_REVIEW_ROLES)
    form = await ctx.form()
    errors: dict[str, str] = {}
    note = _text(ctx, form, "note", errors, required=not approve)

    def show(status: int, message: str | None, problems: dict[str, str]) -> Response:
        return _deposit_page(ctx, request_id, status, message, problems, {"note": note})

    if errors:
        return show(422, None, errors)
    principal = acting(identity, DEPOSIT_REVIEW_ROLES)
    deposits = ctx.container.deposits
    if approve:
        return _perform(ctx, lambda: deposits.approve(principal, request_id, note), show,
                        "approved", ["note"])  # fmt: skip
    return _perform(ctx, lambda: deposits.reject(principal, request_id, note), show,
                    "rejected", ["note"])  # fmt: skip


@router.post("/staff/deposit-refunds/{request_id}/approve", response_class=HTMLResponse)
async def deposit_refund_approve(request: Request, request_id: str) -> Response:
    return await _deposit_action(request, request_id, approve=True)


@router.post("/staff/deposit-refunds/{request_id}/reject", response_class=HTMLResponse)
async def deposit_refund_reject(request: Request, request_id: str) -> Response:
    return await _deposit_action(request, request_id, approve=False)


# -- applications -------------------------------------------------------------------------------
@router.get("/staff/applications", response_class=HTMLResponse)
def applications_queue(request: Request) -> Response:
    ctx = PageContext.of(request)
    ctx.require_staff(*APPLICATION_ROLES)
    status = _queue(ctx, APPLICATION_QUEUES)
    with ctx.container.database.read() as session:
        found = onboarding.list_applications(
            session, status=_enum(ApplicationStatus, status), limit=PAGE_SIZE, cursor=_after(ctx)
        )
    cursor = None if found.next_cursor is None else encode_cursor(*found.next_cursor)
    return ctx.render("staff_reviews/applications.html", wide=True, rows=found.items,
                      cursor=cursor, queue=status, queues=APPLICATION_QUEUES,
                      labels={**APPLICATION_STATUS, **KYC_STATUS}, products=PRODUCTS)  # fmt: skip


def _application_page(
    ctx: PageContext, application_id: str, status: int = 200, message: str | None = None,
    errors: dict[str, str] | None = None, values: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    ctx.require_staff(*APPLICATION_ROLES)
    with ctx.container.database.read() as session:
        view = onboarding.application_for_staff(session, application_id)
        history = onboarding.history(session, application_id)
    return ctx.render(
        "staff_reviews/application.html", status=status, wide=True, app=view, history=history,
        labels={**APPLICATION_STATUS, **KYC_STATUS}, kyc=KYC_MESSAGES, products=PRODUCTS,
        merchant_types=MERCHANT_TYPES,
        message=message, done=_done(ctx), errors=errors or {}, values=values or {},
    )  # fmt: skip


@router.get("/staff/applications/{application_id}", response_class=HTMLResponse)
def application_detail(request: Request, application_id: str) -> Response:
    return _application_page(PageContext.of(request), application_id)


APPLICATION_ACTIONS = {
    # action → (form fields: name → required, confirmation)
    "approve": ({"mcc": False, "area_code": False}, "approved"),
    "reject": ({"reason": True}, "rejected"),
    "request-info": ({"message": True}, "info_requested"),
}


@router.post("/staff/applications/{application_id}/{action}", response_class=HTMLResponse)
async def application_action(request: Request, application_id: str, action: str) -> Response:
    ctx = PageContext.of(request)
    identity = ctx.require_staff(*APPLICATION_ROLES)
    form = await ctx.form()  # the CSRF check comes first, whatever the URL
    if action not in APPLICATION_ACTIONS:
        raise HTTPException(404)
    fields, done = APPLICATION_ACTIONS[action]
    errors: dict[str, str] = {}
    values = {name: _text(ctx, form, name, errors, required) for name, required in fields.items()}

    def show(status: int, message: str | None, problems: dict[str, str]) -> Response:
        return _application_page(ctx, application_id, status, message, problems, values)

    if errors:
        return show(422, None, errors)
    actor = acting(identity, APPLICATION_ROLES).id
    container = ctx.container

    def run() -> object:
        with container.database.transaction() as session:
            if action == "approve":
                return onboarding.approve_application(
                    session, container.vault, container.ledger, application_id, actor=actor,
                    clock=container.clock, mcc=values["mcc"] or None,
                    area_code=values["area_code"] or None,
                )  # fmt: skip
            if action == "reject":
                return onboarding.reject_application(
                    session, application_id, reason=values["reason"], actor=actor,
                    clock=container.clock,
                )  # fmt: skip
            return onboarding.request_info(session, application_id, message=values["message"],
                                           actor=actor, clock=container.clock)  # fmt: skip

    return _perform(ctx, run, show, done, list(fields))


# -- reconciliation exceptions ------------------------------------------------------------------
def _reconciliation(ctx: PageContext) -> ReconciliationService:
    c = ctx.container
    return ReconciliationService(c.database, c.ledger, c.clock)


@router.get("/staff/reconciliation-exceptions", response_class=HTMLResponse)
def exceptions_queue(request: Request) -> Response:
    ctx = PageContext.of(request)
    identity = ctx.require_staff(*RECONCILIATION_ROLES)
    status = _queue(ctx, EXCEPTION_QUEUES)
    filters = ExceptionFilters(status=_enum(ExceptionStatus, status))
    rows = _reconciliation(ctx).list_exceptions(
        acting(identity, RECONCILIATION_ROLES), filters, PAGE_SIZE + 1, _after(ctx)
    )
    page, cursor = _paged(rows)
    return ctx.render("staff_reviews/exceptions.html", wide=True, rows=page, cursor=cursor,
                      queue=status, queues=EXCEPTION_QUEUES, labels=EXCEPTION_STATUS,
                      classes=EXCEPTION_CLASSES)  # fmt: skip


def _exception_page(
    ctx: PageContext, exception_id: str, status: int = 200, message: str | None = None,
    errors: dict[str, str] | None = None, values: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    identity = ctx.require_staff(*RECONCILIATION_ROLES)
    found, notes = _reconciliation(ctx).get_exception(
        acting(identity, RECONCILIATION_ROLES), exception_id
    )
    theirs = json.loads(found.their_values) if found.their_values else {}
    return ctx.render(
        "staff_reviews/exception.html", status=status, wide=True, item=found, notes=notes,
        theirs=theirs, resolutions=RESOLUTIONS, labels=EXCEPTION_STATUS,
        classes=EXCEPTION_CLASSES, message=message, done=_done(ctx),
        errors=errors or {}, values=values or {},
    )  # fmt: skip


@router.get("/staff/reconciliation-exceptions/{exception_id}", response_class=HTMLResponse)
def exception_detail(request: Request, exception_id: str) -> Response:
    return _exception_page(PageContext.of(request), exception_id)


@router.post("/staff/reconciliation-exceptions/{exception_id}/resolve",
             response_class=HTMLResponse)  # fmt: skip
async def exception_resolve(request: Request, exception_id: str) -> Response:
    ctx = PageContext.of(request)
    identity = ctx.require_staff(*RECONCILIATION_ROLES)
    form = await ctx.form()
    errors: dict[str, str] = {}
    action = form.get("action", "")
    reason = _text(ctx, form, "reason", errors, required=action == Resolution.WRITE_OFF.value)
    note = _text(ctx, form, "note", errors, required=False)
    if action not in RESOLUTIONS:
        errors["action"] = ctx._("Choose an action.")
    values = {"action": action, "reason": reason, "note": note}

    def show(status: int, message: str | None, problems: dict[str, str]) -> Response:
        return _exception_page(ctx, exception_id, status, message, problems, values)

    if errors:
        return show(422, None, errors)
    principal = acting(identity, RECONCILIATION_ROLES)
    service = _reconciliation(ctx)
    return _perform(
        ctx,
        lambda: service.resolve(principal, exception_id, Resolution(action), reason or None,
                                note or None),
        show, "resolved", ["action"],
    )  # fmt: skip
