"""/v1/contracts: read, download and accept a merchant's contract.

Who may act: the applicant with the ``X-Application-Token`` of the application the contract
was generated for; the merchant's own API key; staff read any contract but accept none.
Anyone else gets ``404 contract_not_found``, as for a contract that does not exist.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from shoudan.api.deps import ContainerDep, bearer, require_principal
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.onboarding import service
from shoudan.onboarding.schemas import AcceptIn, ContractOut

router = APIRouter(prefix="/v1/contracts", tags=["onboarding"])

ApplicationToken = Annotated[
    str | None,
    Header(alias="X-Application-Token", max_length=128,
           description="The applicant's token (or use a merchant API key)."),
]  # fmt: skip
UserAgent = Annotated[str | None, Header(alias="User-Agent", include_in_schema=False)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ContractId = Annotated[str, Path(max_length=32, examples=["ctr_01JD0000000000000000000000"])]


def _visible(
    session: Session, request: Request, contract_id: str, token: str | None,
    credentials: HTTPAuthorizationCredentials | None,
) -> service.ContractView:  # fmt: skip
    if token:
        return service.applicant_contract(session, contract_id, token)
    principal = require_principal(request, credentials)
    if principal.is_staff:
        return service.get_contract(session, contract_id)
    assert principal.merchant_id is not None
    return service.merchant_contract(session, contract_id, merchant_id=principal.merchant_id)


@router.get("/{contract_id}", response_model=ContractOut, summary="Read a contract")
def get_contract(
    contract_id: ContractId, request: Request, container: ContainerDep,
    credentials: Credentials, token: ApplicationToken = None,
) -> ContractOut:  # fmt: skip
    """The frozen terms, the exact text, its SHA-256 and the acceptance record."""
    with container.database.read() as session:
        view = _visible(session, request, contract_id, token, credentials)
    return ContractOut.of(view)


@router.get(
    "/{contract_id}/text",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "The exact contract text."}},
    summary="Download the contract text",
)
def download_text(
    contract_id: ContractId, request: Request, container: ContainerDep,
    credentials: Credentials, token: ApplicationToken = None,
) -> Response:  # fmt: skip
    """The exact UTF-8 text whose SHA-256 is the contract's (header `X-Content-SHA256`)."""
    with container.database.read() as session:
        view = _visible(session, request, contract_id, token, credentials)
    filename = f"{view.contract_id}.txt"
    return Response(
        view.text.encode("utf-8"),
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
            "X-Content-SHA256": view.sha256,
        },
    )


@router.post("/{contract_id}/accept", response_model=ContractOut, summary="Accept a contract")
def accept(
    contract_id: ContractId, request: Request, container: ContainerDep,
    credentials: Credentials, token: ApplicationToken = None, user_agent: UserAgent = None,
    body: AcceptIn | None = None,
) -> ContractOut:  # fmt: skip
    """Records the time, the client address, the user agent and the SHA-256 of the exact
    text. Twice: `409 contract_already_accepted`; someone else's: `404 contract_not_found`."""
    ip = request.client.host if request.client else "unknown"
    expected = body.sha256 if body else None
    principal = None if token else require_principal(request, credentials)
    if principal is not None and principal.merchant_id is None:
        raise DomainError(ErrorCode.FORBIDDEN, "only the merchant accepts its contract")
    with container.database.transaction() as session:
        if principal is None:
            view = service.accept_contract_as_applicant(
                session, contract_id, token, ip=ip, user_agent=user_agent or "",
                clock=container.clock, expected_sha256=expected,
            )  # fmt: skip
        else:
            assert principal.merchant_id is not None
            view = service.accept_contract(
                session, contract_id, merchant_id=principal.merchant_id, ip=ip,
                user_agent=user_agent or "", clock=container.clock, actor=principal.id,
                expected_sha256=expected,
            )  # fmt: skip
    return ContractOut.of(view)
