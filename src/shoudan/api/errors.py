"""The HTTP edge's one mapping from domain errors to RFC 9457 problem details.

Domain code raises ``DomainError`` with a stable ``ErrorCode`` and knows nothing of HTTP; this
module is the single place that decides the status code and the ``application/problem+json``
body. Clients switch on ``code`` (stable), not on ``title`` or ``detail`` (prose).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoudan.core.errors import DomainError, ErrorCode

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://shoudan.dev/problems/"


class Problem(BaseModel):
    """RFC 9457 problem details, with shoudan's stable ``code``; more members may follow
    (for example ``errors`` on invalid input, or the field a rule refused)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


def _problem_response(description: str) -> dict[str, Any]:
    schema = Problem.model_json_schema()
    return {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}


# Documented on every /v1 route, so the OpenAPI says what clients really receive (FastAPI's
# default 422 schema would describe a body we never send).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_response("No valid API key (`unauthenticated`)."),
    403: _problem_response("Staff only, or a role this operation needs (`forbidden`)."),
    404: _problem_response("Not found — also for another tenant's objects."),
    409: _problem_response("Conflicts with the current state, or a reused Idempotency-Key."),
    422: _problem_response("Invalid input or refused by a business rule; see `code`."),
    429: _problem_response("Too many requests from this client (`rate_limited`)."),
}
DEFAULT_STATUS = 422

# One table, every code: a new ErrorCode without an entry here gets DEFAULT_STATUS.
STATUS_BY_CODE: dict[ErrorCode, int] = {
    # input
    ErrorCode.INVALID_INPUT: 422,
    ErrorCode.INVALID_AMOUNT: 422,
    ErrorCode.INVALID_CURRENCY: 422,
    ErrorCode.CURRENCY_MISMATCH: 422,
    ErrorCode.NOT_FOUND: 404,
    # ledger
    ErrorCode.ACCOUNT_NOT_FOUND: 404,
    ErrorCode.ACCOUNT_EXISTS: 409,
    ErrorCode.ACCOUNT_CONFLICT: 409,
    ErrorCode.ENTRY_UNBALANCED: 422,
    ErrorCode.ENTRY_TOO_FEW_POSTINGS: 422,
    ErrorCode.ENTRY_ID_CONFLICT: 409,
    ErrorCode.LIMIT_EXCEEDED: 422,
    ErrorCode.HOLD_NOT_FOUND: 404,
    ErrorCode.HOLD_ALREADY_RESOLVED: 409,
    ErrorCode.HOLD_EXPIRED: 422,
    ErrorCode.HOLD_AMOUNT_EXCEEDED: 422,
    ErrorCode.HOLD_PARTIAL_NOT_SUPPORTED: 422,
    ErrorCode.LINKED_ENTRY_FAILED: 422,
    # audit / outbox: the client did nothing wrong
    ErrorCode.AUDIT_CHAIN_BROKEN: 500,
    ErrorCode.UNKNOWN_EVENT_TOPIC: 500,
    # auth and API edge
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 409,
    ErrorCode.IDEMPOTENCY_KEY_IN_USE: 409,
    # merchants, terminals, pricing
    ErrorCode.MERCHANT_NOT_FOUND: 404,
    ErrorCode.MERCHANT_INACTIVE: 422,
    ErrorCode.TERMINAL_NOT_FOUND: 404,
    ErrorCode.TERMINAL_EXISTS: 409,
    ErrorCode.TERMINAL_INACTIVE: 422,
    ErrorCode.TERMINAL_MERCHANT_MISMATCH: 422,
    ErrorCode.FEE_PLAN_NOT_FOUND: 422,
    ErrorCode.INVALID_PHONE: 422,
    ErrorCode.INVALID_MCC: 422,
    ErrorCode.INVALID_AREA_CODE: 422,
    # payments
    ErrorCode.PAYMENT_NOT_FOUND: 404,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.INVALID_CARD: 422,
    ErrorCode.INVALID_AUTH_CODE: 422,
    ErrorCode.UNSUPPORTED_METHOD: 422,
    ErrorCode.VOID_NOT_ALLOWED: 409,
    ErrorCode.CAPTURE_NOT_ALLOWED: 409,
    ErrorCode.CAPTURE_EXCEEDS_AUTHORIZED: 422,
    ErrorCode.CHANNEL_UNAVAILABLE: 503,
    # refunds
    ErrorCode.REFUND_NOT_FOUND: 404,
    ErrorCode.REFUND_EXCEEDS_REFUNDABLE: 422,
    ErrorCode.REFUND_NOT_ALLOWED: 422,
    ErrorCode.REFUND_WINDOW_EXPIRED: 422,
    ErrorCode.REFUND_COUNT_EXCEEDED: 422,
    ErrorCode.USE_VOID: 422,
    ErrorCode.OUT_REFUND_NO_REUSED: 409,
    ErrorCode.SELF_APPROVAL: 403,
    ErrorCode.ALREADY_APPROVED: 409,
    ErrorCode.REDEMPTION_EXCEEDS_REMAINDER: 422,
    ErrorCode.NOT_A_PREPAYMENT: 422,
    ErrorCode.INVALID_BANK_ACCOUNT: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    # files
    ErrorCode.FILE_NOT_FOUND: 404,
    ErrorCode.FILE_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_FILE_TYPE: 415,
    ErrorCode.FILE_CONTENT_MISMATCH: 422,
    # webhooks
    ErrorCode.WEBHOOK_ENDPOINT_NOT_FOUND: 404,
    ErrorCode.INVALID_WEBHOOK_URL: 422,
    ErrorCode.UNKNOWN_EVENT_TYPE: 422,
    # deposits
    ErrorCode.DEPOSIT_NOT_FOUND: 404,
    ErrorCode.DEPOSIT_REFUND_NOT_FOUND: 404,
    ErrorCode.DEPOSIT_MATERIALS_MISMATCH: 422,
    ErrorCode.DEPOSIT_REFUND_DEADLINE_PASSED: 422,
    ErrorCode.DEPOSIT_REFUND_IN_PROGRESS: 409,
    ErrorCode.DEPOSIT_NOT_REFUNDABLE: 409,
    ErrorCode.SETTLEMENT_ACCOUNT_NOT_VERIFIED: 422,
    # onboarding and contracts
    ErrorCode.INVALID_ID_NUMBER: 422,
    ErrorCode.INVALID_CREDIT_CODE: 422,
    ErrorCode.VERIFICATION_CODE_INVALID: 422,
    ErrorCode.VERIFICATION_CODE_EXPIRED: 422,
    ErrorCode.TOO_MANY_ATTEMPTS: 429,
    ErrorCode.TOO_MANY_CODES: 429,
    ErrorCode.RESEND_TOO_SOON: 429,
    ErrorCode.APPLICATION_NOT_FOUND: 404,
    ErrorCode.CONTRACT_NOT_FOUND: 404,
    ErrorCode.CONTRACT_NOT_ACCEPTED: 409,
    ErrorCode.CONTRACT_ALREADY_ACCEPTED: 409,
    # reconciliation
    ErrorCode.STATEMENT_INVALID: 422,
    ErrorCode.RECONCILIATION_NOT_FOUND: 404,
    ErrorCode.RECONCILIATION_EXCEPTION_NOT_FOUND: 404,
    ErrorCode.EXCEPTION_ALREADY_RESOLVED: 409,
    # settlement and payouts
    ErrorCode.SETTLEMENT_DATE_IN_FUTURE: 422,
    ErrorCode.PAYOUT_NOT_FOUND: 404,
    ErrorCode.BANK_FILE_INVALID: 422,
    # infrastructure
    ErrorCode.CONFIGURATION_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}

# Problem members a DomainError's details must not overwrite.
_RESERVED = frozenset({"type", "title", "status", "detail", "instance", "code"})


def status_for(code: ErrorCode) -> int:
    return STATUS_BY_CODE.get(code, DEFAULT_STATUS)


def title_for(code: ErrorCode | str) -> str:
    """A short, stable, human title per problem type (RFC 9457: same for every occurrence)."""
    return str(code).replace("_", " ").capitalize()


def problem(
    code: ErrorCode | str,
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + str(code),
        "title": title_for(code),
        "status": status,
        "detail": detail,
        "code": str(code),
    }
    if instance:
        body["instance"] = instance
    for key, value in extensions.items():
        if key not in _RESERVED:
            body[key] = jsonable_encoder(value)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = status_for(exc.code)
    if status >= 500:
        log.error("domain error %s on %s: %s", exc.code, request.url.path, exc.message)
    # details may not shadow the problem's own members (a detail named "status" would)
    extensions = {k: v for k, v in exc.details.items() if k not in _RESERVED}
    return problem(exc.code, status, exc.message, instance=request.url.path, **extensions)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Location, message and type only: echoing the input back could leak a card number.
    errors = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    return problem(
        ErrorCode.INVALID_INPUT,
        422,
        "the request is not valid",
        instance=request.url.path,
        errors=errors,
    )


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Routing errors (unknown path, wrong method) in the same problem+json shape."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        code = ErrorCode.NOT_FOUND
    elif exc.status_code >= 500:
        code = ErrorCode.INTERNAL_ERROR
    else:
        code = ErrorCode.INVALID_INPUT
    response = problem(code, exc.status_code, str(exc.detail), instance=request.url.path)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Last resort: a bug becomes a 500 problem without leaking its message to the client."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(ErrorCode.INTERNAL_ERROR, 500, "internal error", instance=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
