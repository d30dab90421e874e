"""/v1/terminals: register (staff), read and list (staff, or the owning merchant); the device
lifecycle by serial number (import, allocate, ship, deliver, suspend, resume, return,
terminate: admin); /v1/public/verify-terminal, the anti-counterfeit check (no login).

A generated terminal master key is returned once, in the 201 response to its creation
(``Cache-Control: no-store``), and never again: reads carry only its key check value.
Another merchant's terminal answers ``404 terminal_not_found``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.errors import PROBLEM_JSON
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.api.ratelimit import RateLimiter
from shoudan.auth.domain import Principal, Role
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.merchants.service import get_merchant, merchant_not_found
from shoudan.terminals import lifecycle, service, stock
from shoudan.terminals.domain import (
    DeviceEvent,
    DeviceStatus,
    Product,
    ReturnCondition,
    TerminalStatus,
)

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


# -- device lifecycle (by serial number) ------------------------------------------------------
public_router = APIRouter(prefix="/v1/public", tags=["public"])

SerialNumber = Annotated[str, Path(description="Printed on the device: 4–32 of [A-Za-z0-9-].")]
STAFF_WRITE: dict[int | str, dict[str, Any]] = {
    **COMMON,
    403: _problem("Acquirer staff with the admin role only (`forbidden`)."),
    404: _problem("No such serial number (`terminal_not_found`)."),
    409: _problem("Not allowed from the device's status (`invalid_transition`)."),
}


def _refuse_replayable(request: Request, secret: str) -> None:
    """The idempotency middleware stores a response to replay it; a response carrying a
    secret shown once must exist nowhere at rest in clear."""
    if getattr(request.state, "idempotency_key", None) is not None:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"this response carries {secret}, shown once and never stored: send no "
            "Idempotency-Key (a repeat is refused by the device's status anyway)",
        )


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=500, description="Why (kept in history).")


class AllocateIn(NoteIn):
    merchant_id: str = Field(description="The merchant's 15-digit number.")
    contract_id: str | None = Field(
        default=None,
        description="Its accepted contract for this product; default: the latest accepted one.",
    )
    terminal_id: str | None = Field(
        default=None, description="8 characters [0-9A-Z]; default: a free one is assigned."
    )


class ShipIn(NoteIn):
    carrier: str = Field(description="Courier, e.g. SF Express.", examples=["SF"])
    tracking_number: str = Field(description="4–40 letters, digits or hyphens.")


class ReturnIn(NoteIn):
    condition: ReturnCondition


class HistoryOut(BaseModel):
    event: DeviceEvent
    from_status: DeviceStatus | None
    to_status: DeviceStatus
    actor: str
    note: str | None
    details: dict[str, Any]
    created_at: datetime


class DeviceOut(BaseModel):
    serial_number: str
    product: Product
    model: str | None
    batch: str | None
    status: DeviceStatus
    terminal_id: str | None
    merchant_id: str | None
    contract_id: str | None
    carrier: str | None
    tracking_number: str | None
    allocated_at: datetime | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    activated_at: datetime | None
    returned_at: datetime | None
    return_condition: ReturnCondition | None
    terminated_at: datetime | None
    created_at: datetime
    history: list[HistoryOut] | None = Field(
        default=None, description="Status changes, oldest first (on GET only)."
    )

    @classmethod
    def of(
        cls, view: service.DeviceView, history: list[service.HistoryEntry] | None = None
    ) -> DeviceOut:
        fields = {name: getattr(view, name) for name in service.DeviceView.__slots__}
        entries = None if history is None else [HistoryOut(**asdict(h)) for h in history]
        return cls(**fields, history=entries)


class AllocatedOut(DeviceOut):
    tmk_kcv: str = Field(description="Key check value of the master key (6 hex digits).")
    master_key: str = Field(description="The generated master key (32 hex), shown this once.")


def _staff_write(principal: Principal) -> None:
    principal.require_staff(Role.ADMIN)


@router.post(
    "/terminals/{serial_number}/allocate", response_model=AllocatedOut, responses=STAFF_WRITE,
    summary="Allocate an in-stock device to a merchant (admin)",
)  # fmt: skip
def allocate(
    serial_number: SerialNumber, body: AllocateIn, request: Request, response: Response,
    principal: PrincipalDep, container: ContainerDep,
) -> AllocatedOut:  # fmt: skip
    """Needs the merchant's accepted contract for the device's product (`contract_not_accepted`
    otherwise). Creates the terminal `inactive` (it may sign on, not pay; its first sign-on
    activates it) and returns its master key this once: load it into the device now."""
    _staff_write(principal)
    _refuse_replayable(request, "the terminal master key")
    with container.database.transaction() as session:
        done = service.allocate_device(
            session, container.vault, serial_number, merchant_id=body.merchant_id,
            contract_id=body.contract_id, terminal_id=body.terminal_id, note=body.note,
            actor=principal.id, clock=container.clock,
        )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"
    out = DeviceOut.of(done.device).model_dump()
    return AllocatedOut(**out, tmk_kcv=done.tmk_kcv, master_key=done.master_key)


@router.post(
    "/terminals/{serial_number}/ship", response_model=DeviceOut, responses=STAFF_WRITE,
    summary="Record the shipment of an allocated device (admin)",
)  # fmt: skip
def ship(
    serial_number: SerialNumber, body: ShipIn, principal: PrincipalDep, container: ContainerDep
) -> DeviceOut:
    _staff_write(principal)
    with container.database.transaction() as session:
        view = service.ship_device(
            session, serial_number, carrier=body.carrier, tracking_number=body.tracking_number,
            note=body.note, actor=principal.id, clock=container.clock,
        )  # fmt: skip
    return DeviceOut.of(view)


@router.post(
    "/terminals/{serial_number}/return", response_model=DeviceOut, responses=STAFF_WRITE,
    summary="Record a device sent back: unused, used or damaged (admin)",
)  # fmt: skip
def return_(
    serial_number: SerialNumber, body: ReturnIn, principal: PrincipalDep, container: ContainerDep
) -> DeviceOut:
    """From delivered, activated or suspended. The terminal is retired (no more payments)."""
    _staff_write(principal)
    with container.database.transaction() as session:
        view = service.return_device(
            session, serial_number, condition=body.condition, note=body.note,
            actor=principal.id, clock=container.clock,
        )  # fmt: skip
    return DeviceOut.of(view)


SIMPLE_MOVES = {
    "deliver": (service.deliver_device, "Record the delivery of a shipped device (admin)"),
    "suspend": (service.suspend_device, "Suspend an activated terminal: payments stop (admin)"),
    "resume": (service.resume_device, "Resume a suspended terminal (admin)"),
    "terminate": (
        service.terminate_device,
        "Terminate: from returned, activated or suspended; final (admin)",
    ),
}


def _simple_route(name: str, move: Callable[..., service.DeviceView], summary: str) -> None:
    def endpoint(
        serial_number: SerialNumber,
        principal: PrincipalDep,
        container: ContainerDep,
        body: NoteIn | None = None,
    ) -> DeviceOut:
        _staff_write(principal)
        note = None if body is None else body.note
        with container.database.transaction() as session:
            view = move(session, serial_number, note=note, actor=principal.id,
                        clock=container.clock)  # fmt: skip
        return DeviceOut.of(view)

    endpoint.__name__ = f"{name}_device"
    router.post(
        f"/terminals/{{serial_number}}/{name}", response_model=DeviceOut, responses=STAFF_WRITE,
        summary=summary,
    )(endpoint)  # fmt: skip


for _name, (_move, _summary) in SIMPLE_MOVES.items():
    _simple_route(_name, _move, _summary)


@router.get(
    "/terminals/{serial_number}/device",
    response_model=DeviceOut,
    responses={**COMMON, 404: _problem("No such serial number, or not yours.")},
    summary="A device and its history (staff, or the merchant it is allocated to)",
)
def get_device(
    serial_number: SerialNumber, principal: PrincipalDep, container: ContainerDep
) -> DeviceOut:
    with container.database.read() as session:
        view = service.get_device(session, serial_number)
        if view.merchant_id is None and not principal.is_staff:
            raise lifecycle.device_not_found(serial_number)
        if view.merchant_id is not None and not principal.can_see(view.merchant_id):
            raise lifecycle.device_not_found(serial_number)  # as if it did not exist
        history = service.device_history(session, serial_number)
    return DeviceOut.of(view, history)


# -- inventory import ---------------------------------------------------------------------------
class LabelOut(BaseModel):
    serial_number: str
    product: Product
    model: str | None
    verification_code: str = Field(description="The anti-counterfeit code: print it now.")


class ImportOut(BaseModel):
    import_id: str
    count: int
    devices: list[LabelOut]


IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


@router.post(
    "/terminals/import", status_code=201, response_model=ImportOut, openapi_extra=IMPORT_BODY,
    responses={**COMMON, 403: _problem("Admin only (`forbidden`).")},
    summary="Import devices from a CSV file, all or nothing (admin)",
)  # fmt: skip
async def import_devices(
    request: Request, response: Response, principal: PrincipalDep, container: ContainerDep
) -> ImportOut:
    """CSV with a header row: `serial_number`, `product` and optionally `model`, `batch`; as
    the body (`text/csv`) or the field `file` of a `multipart/form-data` form. Any error in
    any row imports nothing: `422 invalid_input` lists every error as
    `errors: [{row, field, message}]` (the header is row 1). The response carries each
    device's verification code, shown this once (labels can be printed again with
    `shoudan terminals labels`)."""
    _staff_write(principal)
    _refuse_replayable(request, "verification codes")
    text = await _csv_text(request)

    def run() -> stock.ImportResult:
        with container.database.transaction() as session:
            return stock.import_devices(
                session, container.vault, text, actor=principal.id, clock=container.clock
            )

    result = await run_in_threadpool(run)
    response.headers["Cache-Control"] = "no-store"
    return ImportOut(
        import_id=result.import_id,
        count=len(result.labels),
        devices=[LabelOut(**asdict(label)) for label in result.labels],
    )


async def _csv_text(request: Request) -> str:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise DomainError(ErrorCode.INVALID_INPUT, "the form has no file in 'file'")
            data = await upload.read()
    elif media_type in ("text/csv", "text/plain", "application/csv"):
        data = await request.body()
    else:
        raise DomainError(
            ErrorCode.INVALID_INPUT, "send the CSV as text/csv, or multipart/form-data 'file'"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DomainError(ErrorCode.INVALID_INPUT, "the CSV file must be UTF-8") from None


# -- anti-counterfeit ---------------------------------------------------------------------------
class VerificationOut(BaseModel):
    genuine: bool
    product: Product | None = None
    first_checked_at: datetime | None = Field(default=None, description="The first check.")
    check_count: int | None = Field(default=None, description="Checks so far, this one too.")


@public_router.get(
    "/verify-terminal", response_model=VerificationOut, response_model_exclude_none=True,
    responses={429: _problem("Too many checks from this address (`rate_limited`).")},
    summary="Is this terminal genuine? (no login)",
)  # fmt: skip
def verify_terminal(
    request: Request,
    container: ContainerDep,
    serial_number: Annotated[str, Query(max_length=64, description="Printed on the device.")],
    code: Annotated[str, Query(max_length=32, description="The verification code (防伪码).")],
) -> VerificationOut:
    """Genuine: the product, when the code was first checked and how many times it has been
    (a high count on a new device suggests a copied label). An unknown serial number and a
    wrong code both answer only `{"genuine": false}`."""
    limiter: RateLimiter = request.app.state.public_limiter
    limiter.hit(request.client.host if request.client else "unknown")
    with container.database.transaction() as session:
        result = stock.verify_terminal(
            session, container.vault, serial_number, code, clock=container.clock
        )
    return VerificationOut(**asdict(result))
