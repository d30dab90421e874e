"""The merchant platform's 我的设备 (terminals, deposits, 退押金), 结算 (settlements, payouts,
statements) and 开发者 (API keys, webhook endpoints and their delivery logs).

Handlers hold no business rules: every figure and every check comes from the domain services
the API uses (deposits, terminals, settlement, auth, webhooks), called with the signed-in
merchant's principal, so tenant scoping is theirs. Another merchant's serial number, request,
key or endpoint answers 404 (``DomainError`` not-found codes, or ``HTTPException(404)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from shoudan.auth import service as auth_service
from shoudan.auth.domain import ApiKeyView, Principal
from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.deposits.models import DepositRefundRequest
from shoudan.deposits.schemas import DepositOut, DepositRefundOut
from shoudan.deposits.service import RefundRequestInput
from shoudan.settlement.service import SettlementService
from shoudan.settlement.statements import FORMATS, MEDIA_TYPES
from shoudan.terminals import service as terminals_service
from shoudan.terminals.service import DeviceView, TerminalView
from shoudan.web.context import MerchantIdentity, PageContext
from shoudan.web.i18n import N_

router = APIRouter(include_in_schema=False)

MAX_TERMINALS = 500  # a merchant platform list, not a warehouse: no paging needed below this
_SERIAL = re.compile(r"[A-Za-z0-9-]{4,32}")
_ID = re.compile(r"[A-Za-z0-9_]{1,40}")
NO_STORE = {"Cache-Control": "no-store"}  # pages carrying a secret shown once

TERMINAL_STATUS = {
    "inactive": N_("Not activated"), "active": N_("Active"), "suspended": N_("Suspended"),
    "retired": N_("Retired"),
}  # fmt: skip
PRODUCT = {"epos": N_("E-signature POS"), "smart": N_("Smart POS"),
           "traditional": N_("Traditional POS")}  # fmt: skip
DEPOSIT_STATUS = {
    "charged": N_("Charged, not fully paid"), "held": N_("Paid, held"),
    "in_review": N_("Refund in review"), "blocked_debt": N_("Refund waits for your debt"),
    "refunded": N_("Refunded"), "forfeited": N_("Kept, nothing to refund"),
}  # fmt: skip
REQUEST_STATUS = {"in_review": N_("In review"), "approved": N_("Approved"),
                  "rejected": N_("Rejected")}  # fmt: skip
BASIS = {"target_reached": N_("Activation target reached"),
         "cooling_off": N_("Returned unused within the cooling-off period"),
         "termination": N_("Terminated: penalty and depreciation kept")}  # fmt: skip
DEVICE_EVENT = {
    "import": N_("In stock"), "allocate": N_("Allocated to you"), "ship": N_("Shipped"),
    "deliver": N_("Delivered"), "activate": N_("Activated at first sign-on"),
    "suspend": N_("Suspended"), "resume": N_("Resumed"), "return": N_("Returned"),
    "terminate": N_("Terminated"),
}  # fmt: skip
PAYOUT_STATUS = {
    "blocked": N_("Blocked"), "pending": N_("Waiting for the bank batch"),
    "exported": N_("Sent to the bank"), "paid": N_("Paid to your card"),
    "rejected": N_("Rejected by the bank"),
    "cancelled": N_("Cancelled, paid with the next settlement"),
}  # fmt: skip
DELIVERY_STATUS = {"succeeded": N_("Delivered"), "failed": N_("Failed")}
LABELS = {
    "terminal": TERMINAL_STATUS, "product": PRODUCT, "deposit": DEPOSIT_STATUS,
    "request": REQUEST_STATUS, "basis": BASIS, "event": DEVICE_EVENT, "payout": PAYOUT_STATUS,
    "delivery": DELIVERY_STATUS,
}  # fmt: skip

# the deposits domain names the material that did not match: the message goes under that field
MISMATCH = {
    "phone": N_("This is not the phone number bound to your account."),
    "id_number": N_("This ID number does not match the one on your application."),
    "bank_card_last4": N_("These are not the last four digits of your settlement card."),
}
# refusals about the deposit itself: shown under the serial number
SERIAL_REFUSALS = {
    ErrorCode.DEPOSIT_NOT_FOUND: N_("No deposit for this serial number among your terminals."),
    ErrorCode.DEPOSIT_REFUND_IN_PROGRESS: N_("A refund of this deposit is already in review."),
    ErrorCode.DEPOSIT_NOT_REFUNDABLE: N_("This deposit can no longer be asked for."),
    ErrorCode.DEPOSIT_REFUND_DEADLINE_PASSED: N_("The time limit to ask for it has passed."),
}
REFUND_FIELDS = ("serial_number", "phone", "id_number", "bank_card_last4", "reason")


def _not_found() -> HTTPException:
    return HTTPException(status_code=404)


def _checked_id(value: str) -> str:
    """An id from a URL: anything but ASCII letters, digits and "_" is not ours (404), and never
    reaches the database."""
    if not _ID.fullmatch(value):
        raise _not_found()
    return value


# -- 我的设备: terminals and their deposits ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class TerminalRow:
    terminal: TerminalView
    device: DeviceView | None
    deposit: DepositOut | None
    requests: list[DepositRefundRequest]

    @property
    def activated_at(self) -> datetime | None:
        if self.device is not None and self.device.activated_at is not None:
            return self.device.activated_at
        return self.deposit.activated_at if self.deposit is not None else None


def terminal_rows(ctx: PageContext, merchant: MerchantIdentity) -> list[TerminalRow]:
    """The merchant's terminals with their device (activation) and latest deposit."""
    container = ctx.container
    with container.database.read() as session:
        page = terminals_service.list_terminals(session, merchant.merchant_id,
                                                limit=MAX_TERMINALS)  # fmt: skip
        devices = terminals_service.merchant_devices(session, merchant.merchant_id)
    deposits = container.deposits.merchant_deposits(merchant.principal)
    rows = []
    for view in page.items:
        detail = deposits.get(view.serial_number)
        deposit = DepositOut.of(detail) if detail is not None else None
        requests = list(detail.requests) if detail is not None else []
        rows.append(TerminalRow(view, devices.get(view.serial_number), deposit, requests))
    return rows


@router.get("/merchant/terminals", response_class=HTMLResponse)
def terminals(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    rows = terminal_rows(ctx, merchant)
    return ctx.render("merchant_account/terminals.html", rows=rows, labels=LABELS)


@router.get("/merchant/terminals/{serial_number}", response_class=HTMLResponse)
def terminal_detail(request: Request, serial_number: str) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    if not _SERIAL.fullmatch(serial_number):
        raise _not_found()
    row = next((r for r in terminal_rows(ctx, merchant)
                if r.terminal.serial_number == serial_number), None)  # fmt: skip
    if row is None:
        raise _not_found()
    history = []
    if row.device is not None:
        with ctx.container.database.read() as session:
            history = terminals_service.device_history(session, serial_number)
    return ctx.render("merchant_account/terminal.html", row=row, history=history, labels=LABELS)


# -- 退押金: the request form and its progress -------------------------------------------------
def _refund_form(
    ctx: PageContext, values: dict[str, str], errors: dict[str, str], status: int = 200
) -> Response:
    return ctx.render("merchant_account/deposit_refund_form.html", status=status,
                      values=values, errors=errors)  # fmt: skip


@router.get("/merchant/deposit-refunds/new", response_class=HTMLResponse)
def deposit_refund_form(request: Request, serial: str = "") -> Response:
    ctx = PageContext.of(request)
    ctx.require_merchant()
    values = {"serial_number": serial if _SERIAL.fullmatch(serial) else ""}
    return _refund_form(ctx, values, {})


def _request_errors(ctx: PageContext, error: DomainError) -> dict[str, str]:
    """The domain's refusal as a message under the field it concerns (or ``{}``: not ours)."""
    field = str(error.details.get("field", ""))
    if error.code is ErrorCode.DEPOSIT_MATERIALS_MISMATCH and field in MISMATCH:
        return {field: ctx._(MISMATCH[field])}
    if error.code is ErrorCode.INVALID_INPUT and field == "reason":
        return {"reason": ctx._("Say why, in at most 500 characters.")}
    if error.code in SERIAL_REFUSALS:
        message = ctx._(SERIAL_REFUSALS[error.code])
        if error.code is ErrorCode.DEPOSIT_REFUND_DEADLINE_PASSED:
            message = f"{message} ({error.details.get('deadline', '')})"
        return {"serial_number": message}
    return {}


@router.post("/merchant/deposit-refunds/new", response_class=HTMLResponse)
async def request_deposit_refund(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    form = await ctx.form()
    typed = {k: form.get(k, "").strip() for k in REFUND_FIELDS}
    # the ID number is personal data: a refused form never sends it back (it is re-typed)
    values = {k: v for k, v in typed.items() if k != "id_number"}
    errors = {k: ctx._("Required.") for k, v in typed.items() if not v}
    if typed["serial_number"] and not _SERIAL.fullmatch(typed["serial_number"]):
        errors["serial_number"] = ctx._("4 to 32 letters, digits or dashes, as printed.")
    if typed["bank_card_last4"] and not (
        len(typed["bank_card_last4"]) == 4 and typed["bank_card_last4"].isascii()
        and typed["bank_card_last4"].isdigit()
    ):  # fmt: skip
        errors["bank_card_last4"] = ctx._("Enter the last four digits of the card.")
    if len(typed["phone"]) > 20 or len(typed["id_number"]) > 18 or len(typed["reason"]) > 500:
        errors.setdefault("reason", ctx._("Say why, in at most 500 characters."))
    if errors:
        return _refund_form(ctx, values, errors, 422)
    data = RefundRequestInput(**typed)
    try:
        created = ctx.container.deposits.request_refund(merchant.principal, data)
    except DomainError as error:
        errors = _request_errors(ctx, error)
        if not errors:
            raise
        return _refund_form(ctx, values, errors, 422)
    return ctx.redirect(f"/merchant/deposit-refunds/{created.id}")


@router.get("/merchant/deposit-refunds", response_class=HTMLResponse)
def deposit_refunds(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    requests = ctx.container.deposits.list_requests(merchant.principal, None, 100, None)
    return ctx.render("merchant_account/deposit_refunds.html", requests=requests, labels=LABELS)


@router.get("/merchant/deposit-refunds/{request_id}", response_class=HTMLResponse)
def deposit_refund(request: Request, request_id: str) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    found, detail = ctx.container.deposits.get_request(merchant.principal,
                                                       _checked_id(request_id))  # fmt: skip
    progress = DepositRefundOut.of(found, detail)
    return ctx.render("merchant_account/deposit_refund.html", progress=progress, labels=LABELS)


# -- 结算: settlements, payouts, statements ----------------------------------------------------
def _settlement(ctx: PageContext) -> SettlementService:
    c = ctx.container
    return SettlementService(c.database, c.ledger, c.vault, c.clock)


def _this_month(ctx: PageContext) -> str:
    return ctx.container.clock.now().astimezone(SHANGHAI).strftime("%Y-%m")


def _settlements_page(
    ctx: PageContext, principal: Principal, values: dict[str, str], errors: dict[str, str],
    status: int = 200,
) -> Response:  # fmt: skip
    settlement = _settlement(ctx)
    assert principal.merchant_id is not None
    period = values["period"] if not errors else _this_month(ctx)
    summary = settlement.statement_summary(principal, principal.merchant_id, period)
    items = settlement.merchant_items(principal, None)
    payouts = settlement.list_payouts(principal, None, 100, None)
    return ctx.render("merchant_account/settlements.html", status=status, values=values,
                      errors=errors, summary=summary, items=items, payouts=payouts,
                      formats=FORMATS, labels=LABELS, wide=True)  # fmt: skip


@router.get("/merchant/settlements", response_class=HTMLResponse)
def settlements(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    values = {"period": _this_month(ctx), "format": "csv"}
    return _settlements_page(ctx, merchant.principal, values, {})


@router.get("/merchant/statements")
def statement(request: Request, period: str = "", format: str = "csv") -> Response:
    """The signed-in merchant's statement file: the same code as
    ``GET /v1/merchants/{id}/statements``, with the merchant taken from the session only."""
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    values = {"period": period.strip()[:10], "format": format}
    errors = {}
    if format not in FORMATS:
        errors["format"] = ctx._("Choose CSV, XLSX or PDF.")
    try:
        if not errors:
            name, body = _settlement(ctx).statement(merchant.principal, merchant.merchant_id,
                                                    values["period"], format)  # fmt: skip
            disposition = f"attachment; filename*=UTF-8''{quote(name)}"
            return Response(body, media_type=MEDIA_TYPES[format],
                            headers={"Content-Disposition": disposition})  # fmt: skip
    except DomainError as error:
        if error.code is not ErrorCode.INVALID_INPUT:
            raise
        errors["period"] = ctx._("A month (2026-11) or a day (2026-11-23).")
    return _settlements_page(ctx, merchant.principal, values, errors, 422)


# -- 开发者: API keys and webhook endpoints ----------------------------------------------------
def _developers_page(
    ctx: PageContext, merchant: MerchantIdentity, *, status: int = 200,
    errors: dict[str, str] | None = None, values: dict[str, str] | None = None,
    new_key: tuple[ApiKeyView, str] | None = None, new_secret: str | None = None,
) -> Response:  # fmt: skip
    with ctx.container.database.read() as session:
        keys = auth_service.list_api_keys(session, merchant.merchant_id)
    endpoints = ctx.container.webhooks.list_endpoints(merchant.principal, 100)
    response = ctx.render(
        "merchant_account/developers.html", status=status, keys=keys, endpoints=endpoints,
        errors=errors or {}, values=values or {"event_types": "*"}, new_key=new_key,
        new_secret=new_secret, wide=True,
    )  # fmt: skip
    if new_key is not None or new_secret is not None:
        response.headers.update(NO_STORE)
    return response


@router.get("/merchant/developers", response_class=HTMLResponse)
def developers(request: Request) -> Response:
    ctx = PageContext.of(request)
    return _developers_page(ctx, ctx.require_merchant())


@router.post("/merchant/developers/keys", response_class=HTMLResponse)
async def create_key(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    form = await ctx.form()
    name = form.get("name", "").strip()
    if len(name) > 255:
        errors = {"name": ctx._("At most 255 characters.")}
        return _developers_page(ctx, merchant, status=422, errors=errors, values={"name": name})
    with ctx.container.database.transaction() as session:
        created = auth_service.create_own_api_key(session, merchant.principal, name,
                                                  ctx.container.clock)  # fmt: skip
    return _developers_page(ctx, merchant, new_key=created)


@router.post("/merchant/developers/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    await ctx.form()
    with ctx.container.database.transaction() as session:
        auth_service.revoke_own_api_key(session, merchant.principal, _checked_id(key_id),
                                        ctx.container.clock)  # fmt: skip
    return ctx.redirect("/merchant/developers")


WEBHOOK_FIELD_MESSAGES = {
    "url": N_("Use an https:// address with a host, without a user name, password or #."),
    "event_types": N_("Unknown event type. Use e.g. refund.succeeded, refund.* or *."),
    "description": N_("One line of at most 255 characters."),
}


def _endpoint_errors(ctx: PageContext, error: DomainError, events: list[str]) -> dict[str, str]:
    """The webhooks domain's refusal under the field it names (its own URL and event rules)."""
    field = str(error.details.get("field", ""))
    if field in WEBHOOK_FIELD_MESSAGES:
        return {field: ctx._(WEBHOOK_FIELD_MESSAGES[field])}
    if error.code is not ErrorCode.INVALID_INPUT:
        return {}
    if not events:
        return {"event_types": ctx._("Required.")}
    # the per-merchant limits (endpoints, event types per endpoint)
    return {"event_types": ctx._("At most 16 active endpoints and 32 event types each.")}


@router.post("/merchant/developers/webhooks", response_class=HTMLResponse)
async def create_endpoint(request: Request) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    form = await ctx.form()
    values = {k: form.get(k, "").strip() for k in ("url", "event_types", "description")}
    events = [e for e in re.split(r"[\s,]+", values["event_types"]) if e]
    try:
        created = ctx.container.webhooks.create_endpoint(
            merchant.principal, values["url"], events, values["description"]
        )
    except DomainError as error:
        errors = _endpoint_errors(ctx, error, events)
        if not errors:
            raise
        return _developers_page(ctx, merchant, status=422, errors=errors, values=values)
    return _developers_page(ctx, merchant, new_secret=created.secret)


@router.get("/merchant/developers/webhooks/{endpoint_id}", response_class=HTMLResponse)
def endpoint_detail(request: Request, endpoint_id: str) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    endpoint_id = _checked_id(endpoint_id)
    webhooks = ctx.container.webhooks
    endpoint = webhooks.get_endpoint(merchant.principal, endpoint_id)
    log = webhooks.delivery_log(merchant.principal, endpoint_id, 50)
    return ctx.render("merchant_account/endpoint.html", endpoint=endpoint, log=log,
                      labels=LABELS, wide=True)  # fmt: skip


@router.post("/merchant/developers/webhooks/{endpoint_id}/disable")
async def disable_endpoint(request: Request, endpoint_id: str) -> Response:
    ctx = PageContext.of(request)
    merchant = ctx.require_merchant()
    await ctx.form()
    ctx.container.webhooks.disable_endpoint(merchant.principal, _checked_id(endpoint_id))
    return ctx.redirect(f"/merchant/developers/webhooks/{endpoint_id}")

