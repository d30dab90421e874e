"""/v1/reconciliations and /v1/reconciliation-exceptions: upload a channel statement, read the
run's summary, work the exceptions queue (resolve, notes). Finance staff and admins only.

The upload is read after the API key is checked (as /v1/files does), and within the app's
body limit (``SHOUDAN_MAX_UPLOAD_BYTES``); a bigger statement goes through the CLI,
``shoudan reconcile FILE --channel …``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.auth.domain import Role
from shoudan.container import Container
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.reconciliation.domain import (
    Channel,
    ExceptionClass,
    ExceptionStatus,
    parse_period,
)
from shoudan.reconciliation.schemas import (
    ExceptionOut,
    NoteIn,
    NoteOut,
    ReconciliationOut,
    ResolveIn,
)
from shoudan.reconciliation.service import (
    ExceptionFilters,
    ImportResult,
    ReconciliationService,
    StatementUpload,
)

router = APIRouter(prefix="/v1/reconciliations", tags=["reconciliation"])
exceptions_router = APIRouter(prefix="/v1/reconciliation-exceptions", tags=["reconciliation"])

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "channel"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "The statement (CSV, UTF-8 or GBK)."},
                        "channel": {"type": "string", "enum": [c.value for c in Channel]},
                        "period_start": {"type": "string", "format": "date",
                                         "description": "Default: the statement's first date."},
                        "period_end": {"type": "string", "format": "date"},
                    },
                }
            }
        },
    }
}  # fmt: skip


def service(container: Container) -> ReconciliationService:
    return ReconciliationService(container.database, container.ledger, container.clock)


@router.post(
    "", status_code=201, response_model=ReconciliationOut, openapi_extra=UPLOAD_BODY,
    responses={200: {"description": "This file was imported before: its run, unchanged."}},
)  # fmt: skip
async def upload_statement(
    request: Request, response: Response, principal: PrincipalDep, container: ContainerDep
) -> ReconciliationOut:
    """Import a channel statement and reconcile it: 201 with the run's summary, or 200 with
    the earlier run when the same file (SHA-256) was imported before."""
    principal.require_staff(Role.FINANCE)  # before a byte of the body is read
    with tempfile.TemporaryDirectory(prefix="shoudan-upload-") as tmp:
        upload = await _read_upload(request, Path(tmp))
        result: ImportResult = await run_in_threadpool(
            service(container).import_statement, principal, upload
        )
    if not result.created:
        response.status_code = 200
    return ReconciliationOut.of(result.run)


async def _read_upload(request: Request, folder: Path) -> StatementUpload:
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as exc:  # Starlette raises several types for a malformed body
        raise DomainError(ErrorCode.INVALID_INPUT, "not a well-formed multipart body") from exc
    file, channel = form.get("file"), form.get("channel")
    if not isinstance(file, UploadFile):
        raise DomainError(ErrorCode.INVALID_INPUT, "the statement goes in the field `file`")
    if not isinstance(channel, str) or channel not in {c.value for c in Channel}:
        raise DomainError(
            ErrorCode.INVALID_INPUT, "channel is one of " + ", ".join(c.value for c in Channel)
        )
    start, end = form.get("period_start"), form.get("period_end")
    period = None
    if isinstance(start, str) and start:
        period = parse_period(start, end if isinstance(end, str) and end else None)
    name = Path(file.filename or "statement.csv").name or "statement.csv"
    path = folder / "statement"
    with path.open("wb") as out:
        await run_in_threadpool(shutil.copyfileobj, file.file, out)
    return StatementUpload(path, name, Channel(channel), period)


@router.get("", response_model=Page[ReconciliationOut])
def list_runs(
    principal: PrincipalDep,
    container: ContainerDep,
    channel: Channel | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[ReconciliationOut]:
    """Newest first."""
    after = decode_cursor(cursor) if cursor else None
    rows = service(container).list_runs(principal, channel, limit + 1, after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[ReconciliationOut](
        data=[ReconciliationOut.of(r) for r in page], next_cursor=next_cursor
    )


@router.get("/{run_id}", response_model=ReconciliationOut)
def get_run(run_id: str, principal: PrincipalDep, container: ContainerDep) -> ReconciliationOut:
    """A run's summary: counts per class and the statement's and our totals."""
    return ReconciliationOut.of(service(container).get_run(principal, run_id))


@exceptions_router.get("", response_model=Page[ExceptionOut])
def list_exceptions(
    principal: PrincipalDep,
    container: ContainerDep,
    status: ExceptionStatus | None = None,
    run_id: Annotated[str | None, Query(max_length=32)] = None,
    exception_class: ExceptionClass | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[ExceptionOut]:
    """The exceptions queue, newest first; ``status=open`` for the work still to do."""
    filters = ExceptionFilters(status, run_id, exception_class)
    after = decode_cursor(cursor) if cursor else None
    rows = service(container).list_exceptions(principal, filters, limit + 1, after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[ExceptionOut](data=[ExceptionOut.of(e) for e in page], next_cursor=next_cursor)


@exceptions_router.get("/{exception_id}", response_model=ExceptionOut)
def get_exception(
    exception_id: str, principal: PrincipalDep, container: ContainerDep
) -> ExceptionOut:
    return ExceptionOut.of(*service(container).get_exception(principal, exception_id))


@exceptions_router.post("/{exception_id}/resolve", response_model=ExceptionOut)
def resolve_exception(
    exception_id: str, body: ResolveIn, principal: PrincipalDep, container: ContainerDep
) -> ExceptionOut:
    """``adjust``: an adjusting ledger entry (the difference into reconciliation suspense);
    ``write_off`` (needs ``reason``): the difference to a write-off gain or loss;
    ``mark_resolved``: no money moves. Once only (409 ``exception_already_resolved``)."""
    found, notes = service(container).resolve(
        principal, exception_id, body.action, body.reason, body.note
    )
    return ExceptionOut.of(found, notes)


@exceptions_router.post("/{exception_id}/notes", status_code=201, response_model=NoteOut)
def add_note(
    exception_id: str, body: NoteIn, principal: PrincipalDep, container: ContainerDep
) -> NoteOut:
    return NoteOut.of(service(container).add_note(principal, exception_id, body.text))
