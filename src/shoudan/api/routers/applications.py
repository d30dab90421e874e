"""/v1/applications: merchant onboarding. The applicant (no API key) submits, verifies the
phone by SMS code and answers requests for information with the ``X-Application-Token``
returned once at submission; staff (admin, reviewer) list, approve, reject or ask for more.

The public steps are rate limited per client address, like /v1/public/refund-status. A wrong
or missing token answers ``404 application_not_found``, as for an application that does not
exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials

from shoudan.api.deps import ContainerDep, bearer, require_principal
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.api.ratelimit import RateLimiter
from shoudan.auth.domain import Principal, Role
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.onboarding import service
from shoudan.onboarding.domain import ApplicationStatus
from shoudan.onboarding.schemas import (
    ApplicationIn,
    ApplicationOut,
    ApproveIn,
    CodeSentOut,
    MaterialsIn,
    RejectIn,
    RequestInfoIn,
    SubmittedOut,
    VerifyPhoneIn,
)

router = APIRouter(prefix="/v1/applications", tags=["onboarding"])

ApplicationToken = Annotated[
    str | None,
    Header(alias="X-Application-Token", max_length=128,
           description="The applicant's token, returned once by POST /v1/applications."),
]  # fmt: skip
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ApplicationId = Annotated[str, Path(max_length=32, examples=["app_01JD0000000000000000000000"])]
REVIEW_ROLES = (Role.REVIEWER,)  # and admin


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _limit(request: Request) -> None:
    limiter: RateLimiter = request.app.state.public_limiter
    limiter.hit(f"applications:{_client(request)}")  # its own budget, apart from tracking


def _require_token(token: str | None) -> str:
    if not token:
        raise DomainError(ErrorCode.UNAUTHENTICATED, "the X-Application-Token header is required")
    return token


def _staff(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    principal = require_principal(request, credentials)
    principal.require_staff(*REVIEW_ROLES)
    return principal


@router.post("", status_code=201, response_model=SubmittedOut, summary="Apply (public)")
def submit(body: ApplicationIn, request: Request, container: ContainerDep) -> SubmittedOut:
    """No API key. Validates the identifiers (ID number, credit code; a card failing Luhn is
    a warning), texts a 6-digit code to the phone and returns the application token once."""
    _limit(request)
    submitted = service.submit_application(
        container.database, container.vault, container.sms, body.to_input(),
        clock=container.clock, client=_client(request),
    )  # fmt: skip
    return SubmittedOut(
        application=ApplicationOut.of(submitted.application),
        application_token=submitted.application_token,
        code=CodeSentOut.of(submitted.code),
    )


@router.post(
    "/{application_id}/send-code", response_model=CodeSentOut, summary="Text a new code"
)
def send_code(
    application_id: ApplicationId, request: Request, container: ContainerDep,
    token: ApplicationToken = None,
) -> CodeSentOut:  # fmt: skip
    """60 s after the previous code at the earliest (`resend_too_soon`), at most 10 codes a
    day per phone (`too_many_codes`) and 20 a day from one network address
    (`rate_limited`); the previous code stops working."""
    _limit(request)
    sent = service.send_code(
        container.database, container.vault, container.sms, application_id,
        _require_token(token), clock=container.clock, client=_client(request),
    )  # fmt: skip
    return CodeSentOut.of(sent)


@router.post(
    "/{application_id}/verify-phone", response_model=ApplicationOut, summary="Verify the phone"
)
def verify_phone(
    application_id: ApplicationId, body: VerifyPhoneIn, request: Request,
    container: ContainerDep, token: ApplicationToken = None,
) -> ApplicationOut:  # fmt: skip
    """The code is valid 5 minutes, 5 attempts; then the real-name check (KYC) runs and the
    application waits for review."""
    _limit(request)
    view = service.verify_phone(
        container.database, container.vault, container.real_name_verifier, application_id,
        _require_token(token), body.code, clock=container.clock,
    )  # fmt: skip
    return ApplicationOut.of(view)


@router.post(
    "/{application_id}/materials", response_model=ApplicationOut, summary="Answer request-info"
)
def submit_materials(
    application_id: ApplicationId, body: MaterialsIn, request: Request,
    container: ContainerDep, token: ApplicationToken = None,
) -> ApplicationOut:  # fmt: skip
    """Only while information is requested: the fields given replace the application's, the
    real-name check runs again and the application returns to review."""
    _limit(request)
    view = service.submit_materials(
        container.database, container.vault, container.real_name_verifier, application_id,
        _require_token(token), body.to_update(), clock=container.clock,
    )  # fmt: skip
    return ApplicationOut.of(view)


@router.get("/{application_id}", response_model=ApplicationOut, summary="Read an application")
def get_application(
    application_id: ApplicationId, request: Request, container: ContainerDep,
    credentials: Credentials, token: ApplicationToken = None,
) -> ApplicationOut:  # fmt: skip
    """The applicant (`X-Application-Token`) or staff (admin, reviewer)."""
    with container.database.read() as session:
        if token:
            view = service.get_application(session, application_id, token)
        else:
            _staff(request, credentials)
            view = service.application_for_staff(session, application_id)
    return ApplicationOut.of(view)


@router.get("", response_model=Page[ApplicationOut], summary="List applications (staff)")
def list_applications(
    request: Request, container: ContainerDep, credentials: Credentials,
    status: ApplicationStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[ApplicationOut]:  # fmt: skip
    """Newest first; the review queue is `status=in_review`."""
    _staff(request, credentials)
    after = decode_cursor(cursor) if cursor else None
    with container.database.read() as session:
        page = service.list_applications(session, status=status, limit=limit, cursor=after)
    return Page[ApplicationOut](
        data=[ApplicationOut.of(v) for v in page.items],
        next_cursor=None if page.next_cursor is None else encode_cursor(*page.next_cursor),
    )


@router.post(
    "/{application_id}/approve", response_model=ApplicationOut, summary="Approve (staff)"
)
def approve(
    application_id: ApplicationId, request: Request, container: ContainerDep,
    credentials: Credentials, body: ApproveIn | None = None,
) -> ApplicationOut:  # fmt: skip
    """Creates the merchant with its settlement account (verified when KYC passed) and the
    contract for the product; the applicant then reads and accepts the contract."""
    principal = _staff(request, credentials)
    body = body or ApproveIn()
    with container.database.transaction() as session:
        view = service.approve_application(
            session, container.vault, container.ledger, application_id, actor=principal.id,
            clock=container.clock, mcc=body.mcc, area_code=body.area_code,
        )  # fmt: skip
    return ApplicationOut.of(view)


@router.post("/{application_id}/reject", response_model=ApplicationOut, summary="Reject (staff)")
def reject(
    application_id: ApplicationId, body: RejectIn, request: Request, container: ContainerDep,
    credentials: Credentials,
) -> ApplicationOut:  # fmt: skip
    principal = _staff(request, credentials)
    with container.database.transaction() as session:
        view = service.reject_application(
            session, application_id, reason=body.reason, actor=principal.id,
            clock=container.clock,
        )  # fmt: skip
    return ApplicationOut.of(view)


@router.post(
    "/{application_id}/request-info", response_model=ApplicationOut,
    summary="Ask the applicant for more information (staff)",
)  # fmt: skip
def request_info(
    application_id: ApplicationId, body: RequestInfoIn, request: Request,
    container: ContainerDep, credentials: Credentials,
) -> ApplicationOut:  # fmt: skip
    principal = _staff(request, credentials)
    with container.database.transaction() as session:
        view = service.request_info(
            session, application_id, message=body.message, actor=principal.id,
            clock=container.clock,
        )  # fmt: skip
    return ApplicationOut.of(view)
