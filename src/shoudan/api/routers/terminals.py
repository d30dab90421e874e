"""/v1/terminals: register (staff), read and list (staff, or the owning merchant).

A generated terminal master key is returned once, in the 201 response to its creation
(``Cache-Control: no-store``), and never again: reads carry only its key check value.
Another merchant's terminal answers ``404 terminal_not_found``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.errors import PROBLEM_JSON
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.merchants.service import get_merchant, merchant_not_found
from shoudan.terminals import service
from shoudan.terminals.domain import Product, TerminalStatus

router = APIRouter(prefix="/v1", tags=["terminals"])


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


COMMON: dict[int | str, dict[str, Any]] = {
    401: _problem("No valid API key (`unauthenticated`)."),
    422: _problem("Invalid request (`invalid_input`)."),
}


class TerminalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serial_number: str = Field(description="Printed on the device: 4–32 of [A-Za-z0-9-].")
    terminal_id: str = Field(description="8 characters [0-9A-Z].", examples=["10000001"])
    product: Product
    merchant_id: str = Field(description="The owning merchant's 15-digit number.")
    master_key: str | None = Field(
        default=None,
        description="TMK, 32 hex digits (double-length 3DES). Omit to have one generated.",
    )


class TerminalOut(BaseModel):
    terminal_id: str
    serial_number: str
    product: Product
    merchant_id: str
    status: TerminalStatus
    tmk_kcv: str = Field(description="Key check value of the master key (6 hex digits).")
    created_at: datetime

    @classmethod
    def of(cls, view: service.TerminalView) -> TerminalOut:
        return cls(
            terminal_id=view.terminal_id,
            serial_number=view.serial_number,
            product=view.product,
            merchant_id=view.merchant_id,
            status=view.status,
            tmk_kcv=view.tmk_kcv,
            created_at=view.created_at,
        )


class TerminalCreated(TerminalOut):
    master_key: str | None = Field(
        description="The generated master key, shown this once; null when one was provided."
    )


@router.post(
    "/terminals",
    status_code=201,
    response_model=TerminalCreated,
    responses={
        **COMMON,
        403: _problem("Acquirer staff only (`forbidden`)."),
        404: _problem("No such merchant (`merchant_not_found`)."),
        409: _problem("Terminal id or serial number taken (`terminal_exists`)."),
    },
    summary="Register a terminal for a merchant (staff)",
)
def create_terminal(
    body: TerminalCreate,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    container: ContainerDep,
) -> TerminalCreated:
    """The terminal is active at once. When `master_key` is omitted a random one is generated
    and returned in this response only: store it in the key-injection system now.

    A generated key cannot be combined with `Idempotency-Key`: a replayable response would
    have to be stored, and the key with it, in clear."""
    principal.require_staff()
    if body.master_key is None and getattr(request.state, "idempotency_key", None) is not None:
        # The idempotency middleware stores the response to replay it; this one carries a
        # secret that must exist nowhere at rest except encrypted.
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "a generated master key is returned once and never stored: send master_key, or "
            "no Idempotency-Key",
            field="master_key",
        )
    data = service.TerminalInput(
        serial_number=body.serial_number,
        terminal_id=body.terminal_id,
        product=body.product,
        merchant_id=body.merchant_id,
        master_key=body.master_key,
    )
    with container.database.transaction() as session:
        view, key = service.create_terminal(
            session, container.vault, data, actor=principal.id, clock=container.clock
        )
    response.headers["Cache-Control"] = "no-store"
    return TerminalCreated(**TerminalOut.of(view).model_dump(), master_key=key)


@router.get(
    "/terminals",
    response_model=Page[TerminalOut],
    responses={**COMMON, 404: _problem("No such merchant, or not yours (`merchant_not_found`).")},
    summary="List terminals (staff: all or one merchant's; a merchant: its own)",
)
def list_terminals(
    principal: PrincipalDep,
    container: ContainerDep,
    merchant_id: Annotated[str | None, Query(description="Only this merchant's.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the last page.")] = None,
) -> Page[TerminalOut]:
    if not principal.is_staff:
        if merchant_id is not None and merchant_id != principal.merchant_id:
            raise merchant_not_found(merchant_id)
        merchant_id = principal.merchant_id
    after = None if cursor is None else decode_cursor(cursor)
    with container.database.read() as session:
        if merchant_id is not None:
            get_merchant(session, merchant_id)  # merchant_not_found
        page = service.list_terminals(session, merchant_id, limit=limit, cursor=after)
    return Page[TerminalOut](
        data=[TerminalOut.of(v) for v in page.items],
        next_cursor=None if page.next_cursor is None else encode_cursor(*page.next_cursor),
    )


@router.get(
    "/terminals/{terminal_id}",
    response_model=TerminalOut,
    responses={**COMMON, 404: _problem("No such terminal, or not yours (`terminal_not_found`).")},
    summary="Read a terminal (staff, or the owning merchant)",
)
def get_terminal(
    terminal_id: Annotated[str, Path(description="8 characters [0-9A-Z].")],
    principal: PrincipalDep,
    container: ContainerDep,
) -> TerminalOut:
    """The master key is never returned here, only its check value."""
    with container.database.read() as session:
        view = service.get_terminal(session, terminal_id)
    if not principal.can_see(view.merchant_id):
        raise service.terminal_not_found(terminal_id)  # as if it did not exist
    return TerminalOut.of(view)
