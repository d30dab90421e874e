"""Merchant platform: 交易 (transaction search and receipt), 退款 (create with evidence, list,
timeline, answer a request for information) and the dashboard's 30-day sales chart.

Handlers hold no business rules. Every read goes through the payments and refunds services
with the signed-in merchant's principal (another tenant's id is "not found" → 404); a refund
is requested through the same ``RefundService.request`` as ``POST /v1/refunds`` and evidence
is stored by the same ``FileService.store`` as ``POST /v1/files``. A refund form carries an
``out_refund_no`` made when the form is rendered, so submitting it twice makes one refund.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from sqlalchemy import func, select
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from shoudan.api.pagination import decode_cursor, encode_cursor
from shoudan.auth.domain import Principal
from shoudan.core.clock import Clock
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.merchants.domain import validate_phone
from shoudan.merchants.service import get_merchant
from shoudan.payments.domain import Method, PaymentStatus, business_date
from shoudan.payments.models import Payment
from shoudan.payments.schemas import PaymentOut
from shoudan.payments.service import PaymentSearch
from shoudan.refunds.domain import (
    MAX_REASON_TEXT,
    RefundReason,
    RefundStatus,
    check_out_refund_no,
)
from shoudan.refunds.models import Refund
from shoudan.refunds.schemas import arrival_of
from shoudan.refunds.service import RefundFilters, RefundRequest
from shoudan.terminals.service import get_terminal
from shoudan.web.charts import Point, bar_chart
from shoudan.web.context import PageContext
from shoudan.web.i18n import N_, format_fen, parse_yuan

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 20
CHART_DAYS = 30
RECEIPT_REFUNDS = 50
# room for the multipart framing and the text fields around the evidence file
MULTIPART_OVERHEAD = 64 * 1024
FILE_FIELD = "evidence"
SEARCH_FIELDS = ("date_from", "date_to", "status", "method", "amount", "rrn", "last4")

METHOD_LABELS = {
    Method.CARD.value: N_("Bank card"),
    Method.WECHAT.value: N_("WeChat Pay"),
    Method.ALIPAY.value: N_("Alipay"),
    Method.UNIONPAY_QR.value: N_("UnionPay QR"),
}
REASON_LABELS = {
    RefundReason.CUSTOMER_REQUEST.value: N_("Customer request"),
    RefundReason.PRODUCT_RETURN.value: N_("Goods returned"),
    RefundReason.PRODUCT_RECALL.value: N_("Product recall"),
    RefundReason.DUPLICATE.value: N_("Charged twice"),
    RefundReason.PAYMENT_ERROR.value: N_("Wrong amount charged"),
    RefundReason.TRANSACTION_FAILURE.value: N_("Transaction failed but was charged"),
    RefundReason.FRAUDULENT.value: N_("Fraudulent payment"),
    RefundReason.OTHER.value: N_("Other"),
}
# colour of a status badge (web.css .badge.good/.bad/.wait)
BADGES = {
    PaymentStatus.CAPTURED.value: "good",
    PaymentStatus.AUTHORIZED.value: "wait",
    PaymentStatus.DECLINED.value: "bad",
    RefundStatus.SUCCEEDED.value: "good",
    RefundStatus.FAILED.value: "bad",
    RefundStatus.ABNORMAL.value: "bad",
    RefundStatus.REJECTED.value: "bad",
    **{s.value: "wait" for s in (RefundStatus.REQUESTED, RefundStatus.PENDING_FUNDS,
                                 RefundStatus.IN_REVIEW, RefundStatus.NEEDS_INFO,
                                 RefundStatus.APPROVED, RefundStatus.PROCESSING)},
}  # fmt: skip
NO_ARRIVAL = frozenset({RefundStatus.FAILED, RefundStatus.REJECTED, RefundStatus.CANCELED})
FILE_ERRORS = frozenset({
    ErrorCode.FILE_TOO_LARGE, ErrorCode.UNSUPPORTED_FILE_TYPE, ErrorCode.FILE_CONTENT_MISMATCH,
    ErrorCode.INVALID_INPUT,
})  # fmt: skip
TOO_LARGE = N_("The file is larger than 10 MB.")
# the notes the refunds service itself writes into a refund's history: shown translated
# (anything else — a staff note, the merchant's own text — is shown as written)
SYSTEM_NOTES = frozenset({
    N_("approved"), N_("approved automatically"), N_("canceled"), N_("evidence added"),
    N_("sent to the network"), N_("refunded"), N_("the network has not refunded it"),
    N_("the network reports it refunded"),
    N_("the merchant's balance is short: waiting for funds"),
    N_("the merchant's balance stayed short"),
})  # fmt: skip


# notes for staff only: the risk score and its reasons are not shown to the merchant (knowing
# the rules would help game them); the timeline still shows the "in review" step itself
INTERNAL_NOTE_PREFIXES = ("review:",)


def _labels() -> dict[str, Any]:
    return {"methods": METHOD_LABELS, "reasons": REASON_LABELS, "badges": BADGES}


def _yuan_text(fen: int) -> str:
    """Fen as a plain yuan amount to prefill an input (``2345`` → ``23.45``)."""
    return f"{fen // 100}.{fen % 100:02d}"


def _after(request: Request) -> tuple[Any, str] | None:
    """The keyset of a ``cursor`` link; a tampered cursor starts from the first page."""
    cursor = request.query_params.get("cursor", "")
    if not cursor or len(cursor) > 512:
        return None
    try:
        return decode_cursor(cursor)
    except DomainError:
        return None


def _next_link(path: str, query: dict[str, str], rows: list[Any]) -> str | None:
    if len(rows) <= PAGE_SIZE:
        return None
    last = rows[PAGE_SIZE - 1]
    kept = {k: v for k, v in query.items() if v}
    return f"{path}?{urlencode({**kept, 'cursor': encode_cursor(last.created_at, last.id)})}"


# -- 交易: search and receipt ---------------------------------------------------------------------
def _parse_day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _search_of(ctx: PageContext, values: dict[str, str]) -> tuple[PaymentSearch, dict[str, str]]:
    """The search the filter form asks for, or field errors in the user's language."""
    errors: dict[str, str] = {}
    days: dict[str, date | None] = {}
    for name in ("date_from", "date_to"):
        days[name] = _parse_day(values[name]) if values[name] else None
        if values[name] and days[name] is None:
            errors[name] = ctx._("Enter a date as YYYY-MM-DD.")
    if days["date_from"] and days["date_to"] and days["date_from"] > days["date_to"]:
        errors["date_to"] = ctx._("The end date is before the start date.")
    statuses = {s.value: s for s in PaymentStatus}
    methods = {m.value: m for m in Method}
    for name, known in (("status", statuses), ("method", methods)):
        if values[name] and values[name] not in known:
            errors[name] = ctx._("Choose from the list.")
    amount = parse_yuan(values["amount"]) if values["amount"] else None
    if values["amount"] and amount is None:
        errors["amount"] = ctx._("Enter the amount paid, e.g. 128.50.")
    rrn, last4 = values["rrn"], values["last4"]
    if rrn and not (len(rrn) == 12 and rrn.isascii() and rrn.isdigit()):
        errors["rrn"] = ctx._("Enter the 12-digit reference number (参考号) on the receipt.")
    if last4 and not (len(last4) == 4 and last4.isascii() and last4.isdigit()):
        errors["last4"] = ctx._("Enter the last four digits of the card.")
    search = PaymentSearch(
        status=statuses.get(values["status"]), method=methods.get(values["method"]),
        amount=amount, rrn=rrn or None, card_last4=last4 or None,
        day_from=days["date_from"], day_to=days["date_to"],
    )  # fmt: skip
    return search, errors


@router.get("/merchant/payments", response_class=HTMLResponse)
def payments(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    values = {k: request.query_params.get(k, "").strip()[:32] for k in SEARCH_FIELDS}
    search, errors = _search_of(ctx, values)
    if errors:
        return ctx.render("merchant_payments/payments.html", status=422, values=values,
                          errors=errors, rows=[], next_link=None, **_labels())  # fmt: skip
    found = ctx.container.payments.search(
        merchant.principal, search, PAGE_SIZE + 1, _after(request)
    )
    rows = [PaymentOut.of(p) for p in found[:PAGE_SIZE]]
    return ctx.render(
        "merchant_payments/payments.html", values=values, errors={}, rows=rows,
        next_link=_next_link("/merchant/payments", values, found),
        first_link="/merchant/payments?" + urlencode({k: v for k, v in values.items() if v})
        if request.query_params.get("cursor") else None,
        **_labels(),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a 签购单 shows besides the payment itself."""

    merchant_name: str
    terminal_serial: str


def _receipt_of(database: Database, payment: Payment) -> Receipt:
    with database.read() as session:
        merchant = get_merchant(session, payment.merchant_id)
        terminal = get_terminal(session, payment.terminal_id)
    return Receipt(merchant.legal_name, terminal.serial_number)


@router.get("/merchant/payments/{payment_id}", response_class=HTMLResponse)
def receipt(request: Request, payment_id: str) -> Response:
    ctx = PageContext.of(request)
    principal = ctx.require_merchant().principal
    container = ctx.container
    payment = container.payments.get(principal, payment_id)  # another tenant's: 404
    refunds = container.refunds.list(
        principal, RefundFilters(payment_id=payment.id), RECEIPT_REFUNDS, None
    )
    return ctx.render(
        "merchant_payments/receipt.html", payment=PaymentOut.of(payment),
        receipt=_receipt_of(container.database, payment), refunds=refunds,
        refundable=container.refunds.refundable_amount(principal, payment.id), **_labels(),
    )  # fmt: skip


# -- 退款: create ----------------------------------------------------------------------------------
def _refund_form(
    ctx: PageContext,
    payment: Payment,
    values: dict[str, str],
    errors: dict[str, str],
    status: int = 200,
    message: str | None = None,
) -> HTMLResponse:
    refundable = ctx.container.refunds.refundable_amount(ctx.require_merchant().principal,
                                                         payment.id)  # fmt: skip
    return ctx.render(
        "merchant_payments/refund_form.html", status=status, payment=PaymentOut.of(payment),
        refundable=refundable, values=values, errors=errors, message=message,
        max_reason=MAX_REASON_TEXT, **_labels(),
    )  # fmt: skip


def _fresh_values(refundable: int) -> dict[str, str]:
    return {
        "amount": _yuan_text(refundable), "reason": RefundReason.CUSTOMER_REQUEST.value,
        "reason_text": "", "consumer_phone": "", "out_refund_no": new_id("web_"),
    }  # fmt: skip


def _payment_of(ctx: PageContext, principal: Principal) -> Payment:
    payment_id = ctx.request.query_params.get("payment_id", "")
    if not payment_id or len(payment_id) > 64:
        raise HTTPException(404)
    return ctx.container.payments.get(principal, payment_id)


@router.get("/merchant/refunds/new", response_class=HTMLResponse)
def refund_new(request: Request) -> Response:
    ctx = PageContext.of(request)
    principal = ctx.require_merchant().principal
    payment = _payment_of(ctx, principal)
    refundable = ctx.container.refunds.refundable_amount(principal, payment.id)
    return _refund_form(ctx, payment, _fresh_values(refundable), {})


def _upload_limit(ctx: PageContext) -> int:
    """The largest body of a form carrying one evidence file."""
    return ctx.container.files.max_bytes + MULTIPART_OVERHEAD


def _body_too_large(ctx: PageContext) -> bool:
    """A declared body over the upload limit (or none declared: browsers always declare
    one) is refused before a byte of it is read."""
    declared = ctx.request.headers.get("content-length", "")
    return not declared.isdigit() or int(declared) > _upload_limit(ctx)


async def _upload(ctx: PageContext) -> tuple[bytes, str | None, str | None] | None:
    """(bytes, declared type, file name) of the form's evidence file, None when none chosen.
    The form itself was parsed (after the CSRF check) by ``ctx.form``; this reads its file."""
    upload = (await ctx.request.form()).get(FILE_FIELD)
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    data = await upload.read(ctx.container.files.max_bytes + 1)  # one byte over is enough
    return data, upload.content_type, upload.filename


def _file_error(ctx: PageContext, error: DomainError) -> str:
    if error.code is ErrorCode.FILE_TOO_LARGE:
        return ctx._(TOO_LARGE)
    if error.code is ErrorCode.INVALID_INPUT:
        return ctx._("The file is empty.")
    return ctx._("Only JPEG, PNG or PDF files, named and sent as what they are.")


async def _stored_evidence(
    ctx: PageContext, principal: Principal, errors: dict[str, str]
) -> tuple[str, ...]:
    """Store the form's evidence file with the files domain (content-checked), or put the
    reason it was refused in ``errors``."""
    upload = await _upload(ctx)
    if upload is None:
        return ()
    try:
        view = ctx.container.files.store(principal, *upload)
    except DomainError as error:
        if error.code not in FILE_ERRORS:
            raise
        errors[FILE_FIELD] = _file_error(ctx, error)
        return ()
    return (view.id,)


def _refund_values(ctx: PageContext, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    values = {k: form.get(k, "").strip()[:600] for k in
              ("amount", "reason", "reason_text", "consumer_phone", "out_refund_no")}  # fmt: skip
    errors: dict[str, str] = {}
    if parse_yuan(values["amount"]) is None:
        errors["amount"] = ctx._("Enter the amount to refund in yuan, e.g. 12.50.")
    if values["reason"] not in REASON_LABELS:
        errors["reason"] = ctx._("Choose from the list.")
    if len(values["reason_text"]) > MAX_REASON_TEXT:
        errors["reason_text"] = ctx._("At most 500 characters.")
    elif values["reason"] == RefundReason.OTHER.value and not values["reason_text"]:
        errors["reason_text"] = ctx._("Say why the payment is refunded.")
    if values["consumer_phone"]:
        try:
            validate_phone(values["consumer_phone"])
        except DomainError:
            errors["consumer_phone"] = ctx._("Enter an 11-digit mainland mobile number.")
    try:
        check_out_refund_no(values["out_refund_no"] or None)
    except DomainError:
        values["out_refund_no"] = ""
    values["out_refund_no"] = values["out_refund_no"] or new_id("web_")  # a tampered form
    return values, errors


def _refusal(ctx: PageContext, error: DomainError) -> tuple[str, str] | None:
    """(field, message in the user's language) for a refund the refunds domain refused."""
    code = error.code
    if code is ErrorCode.REFUND_EXCEEDS_REFUNDABLE:
        left = format_fen(int(error.details.get("refundable", 0)))
        return "amount", ctx._("At most %(amount)s of this payment can still be refunded.") % {
            "amount": left}
    if code is ErrorCode.USE_VOID:
        return "", ctx._("Same-day full refund: void the payment on the terminal instead.")
    if code is ErrorCode.REFUND_WINDOW_EXPIRED:
        days = ctx.container.refunds.policy.window_days
        return "", ctx._("Refunds are accepted within %(days)s days of the payment.") % {
            "days": days}
    if code is ErrorCode.REFUND_COUNT_EXCEEDED:
        return "", ctx._("This payment has been refunded too many times.")
    if code is ErrorCode.REFUND_NOT_ALLOWED:
        return "", ctx._("This payment cannot be refunded.")
    if code in (ErrorCode.INVALID_AMOUNT, ErrorCode.INVALID_INPUT, ErrorCode.INVALID_PHONE):
        return "", ctx._("Please check and send the form again.")
    if code is ErrorCode.FILE_NOT_FOUND:
        return FILE_FIELD, ctx._("The file could not be attached. Please choose it again.")
    return None


@router.post("/merchant/refunds", response_class=HTMLResponse)
async def refund_create(request: Request) -> Response:
    ctx = PageContext.of(request)
    principal = ctx.require_merchant().principal
    if _body_too_large(ctx):  # refused before reading it
        payment = _payment_of(ctx, principal)
        refundable = ctx.container.refunds.refundable_amount(principal, payment.id)
        return _refund_form(ctx, payment, _fresh_values(refundable),
                            {FILE_FIELD: ctx._(TOO_LARGE)}, 413)  # fmt: skip
    form = await ctx.form(_upload_limit(ctx))  # CSRF checked before anything is looked up
    payment = _payment_of(ctx, principal)
    values, errors = _refund_values(ctx, form)
    if errors:
        return _refund_form(ctx, payment, values, errors, 422)
    earlier = ctx.container.refunds.find_by_out_refund_no(principal, values["out_refund_no"])
    if earlier is not None:  # the same form sent again: show the refund it made
        return ctx.redirect(f"/merchant/refunds/{earlier.id}")
    evidence = await _stored_evidence(ctx, principal, errors)
    if errors:
        return _refund_form(ctx, payment, values, errors, 422)
    amount = parse_yuan(values["amount"])
    assert amount is not None
    refund_request = RefundRequest(
        payment_id=payment.id, amount=amount, reason=values["reason"],
        reason_text=values["reason_text"], out_refund_no=values["out_refund_no"],
        consumer_phone=values["consumer_phone"] or None, evidence_ids=evidence,
    )  # fmt: skip
    try:
        refund = ctx.container.refunds.request(principal, refund_request)
    except DomainError as error:
        if error.code is ErrorCode.OUT_REFUND_NO_REUSED:  # a concurrent double submit
            return ctx.redirect(f"/merchant/refunds/{error.details['refund_id']}")
        refused = _refusal(ctx, error)
        if refused is None:
            raise
        field, text = refused
        fields = {field: text} if field else {}
        return _refund_form(ctx, payment, values, fields, 422, None if field else text)
    return ctx.redirect(f"/merchant/refunds/{refund.id}")


# -- 退款: list and timeline ----------------------------------------------------------------------
@router.get("/merchant/refunds", response_class=HTMLResponse)
def refunds(request: Request) -> Response:
    ctx = PageContext.of(request)
    principal = ctx.require_merchant().principal
    wanted = request.query_params.get("status", "")
    statuses = {s.value: s for s in RefundStatus}
    if wanted and wanted not in statuses:
        return ctx.render("merchant_payments/refunds.html", status=422, rows=[], wanted="",
                          errors={"status": ctx._("Choose from the list.")}, next_link=None,
                          statuses=list(statuses), **_labels())  # fmt: skip
    found = ctx.container.refunds.list(
        principal, RefundFilters(status=statuses.get(wanted)), PAGE_SIZE + 1, _after(request)
    )
    return ctx.render(
        "merchant_payments/refunds.html", rows=found[:PAGE_SIZE], wanted=wanted, errors={},
        next_link=_next_link("/merchant/refunds", {"status": wanted}, found),
        statuses=list(statuses), **_labels(),
    )  # fmt: skip


def _refund_page(
    ctx: PageContext,
    refund_id: str,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    message: str | None = None,
) -> HTMLResponse:
    principal = ctx.require_merchant().principal
    container = ctx.container
    detail = container.refunds.detail(principal, refund_id)  # another tenant's: 404
    refund = detail.refund
    payment = PaymentOut.of(container.payments.get(principal, refund.payment_id))
    files = [container.files.get(principal, e.file_id) for e in detail.evidence]
    arrival = None if RefundStatus(refund.status) in NO_ARRIVAL else arrival_of(refund)
    return ctx.render(
        "merchant_payments/refund.html", status=status, refund=refund, payment=payment,
        history=detail.history, files=files, arrival=arrival, errors=errors or {},
        values=values or {}, message=message, max_reason=MAX_REASON_TEXT,
        system_notes=SYSTEM_NOTES, internal_notes=INTERNAL_NOTE_PREFIXES, **_labels(),
    )  # fmt: skip


@router.get("/merchant/refunds/{refund_id}", response_class=HTMLResponse)
def refund_detail(request: Request, refund_id: str) -> Response:
    return _refund_page(PageContext.of(request), refund_id)


def _needs_info(refund: Refund) -> bool:
    return refund.status == RefundStatus.NEEDS_INFO.value


@router.post("/merchant/refunds/{refund_id}/evidence", response_class=HTMLResponse)
async def refund_answer(request: Request, refund_id: str) -> Response:
    """The merchant answers a request for information: a note and/or a file, through the
    same ``RefundService.add_evidence`` as ``POST /v1/refunds/{id}/evidence``."""
    ctx = PageContext.of(request)
    principal = ctx.require_merchant().principal
    if _body_too_large(ctx):  # refused before reading it
        refund = ctx.container.refunds.get(principal, refund_id)  # another tenant's: 404
        return _refund_page(ctx, refund.id, 413, {FILE_FIELD: ctx._(TOO_LARGE)})
    form = await ctx.form(_upload_limit(ctx))  # CSRF checked before anything is looked up
    refund = ctx.container.refunds.get(principal, refund_id)  # another tenant's: 404
    values = {"note": form.get("note", "").strip()[:600]}
    if not _needs_info(refund):  # answered already (a second submit) or closed meanwhile
        message = ctx._("This refund is not waiting for information any more.")
        return _refund_page(ctx, refund.id, 409, message=message)
    errors: dict[str, str] = {}
    if len(values["note"]) > MAX_REASON_TEXT:
        errors["note"] = ctx._("At most 500 characters.")
    evidence = () if errors else await _stored_evidence(ctx, principal, errors)
    if not errors and not evidence and not values["note"]:
        errors["note"] = ctx._("Write an answer or attach a file.")
    if errors:
        return _refund_page(ctx, refund.id, 422, errors, values)
    try:
        ctx.container.refunds.add_evidence(principal, refund.id, evidence, values["note"])
    except DomainError as error:
        if error.code is not ErrorCode.INVALID_TRANSITION:
            raise
        message = ctx._("This refund is not waiting for information any more.")
        return _refund_page(ctx, refund.id, 409, message=message)
    return ctx.redirect(f"/merchant/refunds/{refund.id}")


# -- dashboard chart -------------------------------------------------------------------------------
def daily_sales(
    database: Database, clock: Clock, merchant_id: str, days: int = CHART_DAYS
) -> list[Point]:
    """Captured sales of each of the last ``days`` business days (Asia/Shanghai), today
    included, for one merchant: one grouped query, days without sales as 0."""
    today = business_date(clock.now())
    first = today - timedelta(days=days - 1)
    query = (
        select(Payment.business_date, func.sum(Payment.captured_amount))
        .where(
            Payment.merchant_id == merchant_id,
            Payment.status == PaymentStatus.CAPTURED.value,
            Payment.business_date >= first.isoformat(),
            Payment.business_date <= today.isoformat(),
        )
        .group_by(Payment.business_date)
    )
    with database.read() as session:
        totals = {day: int(total or 0) for day, total in session.execute(query)}
    span = (first + timedelta(days=n) for n in range(days))
    return [Point(f"{day:%m-%d}", totals.get(day.isoformat(), 0)) for day in span]


def sales_chart(ctx: PageContext, merchant_id: str) -> Markup:
    """The dashboard's chart of the last 30 days' sales (server-side SVG)."""
    points = daily_sales(ctx.container.database, ctx.container.clock, merchant_id)
    return bar_chart(ctx._("Sales, last 30 days"), points, show=format_fen)
