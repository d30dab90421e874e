"""/v1/files: upload evidence (JPEG, PNG, PDF), read its metadata, download its bytes.

The upload is parsed here rather than by FastAPI's ``File()``/``Form()`` parameters: those
read the whole body before any dependency runs, so a caller without an API key could make us
spool gigabytes to disk before hearing 401. Here the API key is checked first, a declared
``Content-Length`` over the limit is refused before a byte is read, and the body stream is
cut off once it passes the limit (for chunked uploads that declare no length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message, Receive

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.errors import PROBLEM_JSON, Problem
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.files.domain import DEFAULT_PURPOSE, FileKind, file_too_large
from shoudan.files.schemas import FileOut

router = APIRouter(prefix="/v1/files", tags=["files"])

# Room for the multipart framing and the small text fields around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FORM_FIELDS = 4

_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A JPEG, PNG or PDF (checked by content).",
                        },
                        "merchant_id": {
                            "type": "string",
                            "description": "Staff only: the merchant the file belongs to.",
                        },
                        "purpose": {"type": "string", "default": DEFAULT_PURPOSE},
                    },
                }
            }
        },
    }
}


def _problem(description: str) -> dict[str, Any]:
    schema = Problem.model_json_schema()
    return {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}


UPLOAD_PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: _problem("Not a well-formed multipart/form-data body."),
    413: _problem("Larger than the upload limit (`file_too_large`)."),
    415: _problem("Not a JPEG, PNG or PDF (`unsupported_file_type`)."),
}
CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The bytes, with the stored content type, as an attachment.",
        "content": {kind.value: _BINARY for kind in FileKind},
    },
    500: _problem("The stored bytes failed their integrity check (`internal_error`)."),
}


@dataclass(frozen=True, slots=True)
class _Upload:
    data: bytes
    declared_type: str | None
    filename: str | None
    merchant_id: str | None
    purpose: str


@router.post(
    "", status_code=201, response_model=FileOut, openapi_extra=UPLOAD_BODY,
    responses=UPLOAD_PROBLEMS,
)  # fmt: skip
async def upload_file(
    request: Request, principal: PrincipalDep, container: ContainerDep
) -> FileOut:
    """Upload evidence (receipt, return slip, contract) as ``multipart/form-data``: the field
    ``file``, and for staff optionally ``merchant_id``; ``purpose`` defaults to ``evidence``.
    The type is detected from the content; a contradicting Content-Type or file extension is
    refused (``file_content_mismatch``)."""
    files = container.files
    upload = await _read_upload(request, files.max_bytes)
    view = await run_in_threadpool(
        files.store, principal, upload.data, upload.declared_type, upload.filename,
        upload.merchant_id, upload.purpose,
    )  # fmt: skip
    return FileOut.of(view)


@router.get("/{file_id}", response_model=FileOut)
def get_file(file_id: str, principal: PrincipalDep, container: ContainerDep) -> FileOut:
    """A file's metadata. Merchants see only their own files."""
    return FileOut.of(container.files.get(principal, file_id))


@router.get("/{file_id}/content", response_class=Response, responses=CONTENT_RESPONSES)
def get_file_content(file_id: str, principal: PrincipalDep, container: ContainerDep) -> Response:
    """Download the bytes. Always an attachment, never rendered by the browser as a page."""
    view, data = container.files.open(principal, file_id)
    headers = {
        "Content-Disposition": attachment(view.original_name),
        "X-Content-Type-Options": "nosniff",
        # a PDF may carry script: if a browser renders it anyway, it runs sandboxed
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
        "ETag": f'"{view.sha256}"',
    }
    return Response(data, media_type=view.content_type, headers=headers)


def attachment(name: str) -> str:
    """``Content-Disposition: attachment`` with an ASCII fallback and the UTF-8 name
    (RFC 6266 / RFC 8187)."""
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "_" for ch in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _read_upload(request: Request, max_bytes: int) -> _Upload:
    limit = max_bytes + MULTIPART_OVERHEAD
    declared_length = request.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > limit:
        raise file_too_large(max_bytes)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        raise DomainError(
            ErrorCode.INVALID_INPUT, "send multipart/form-data with the file in the field 'file'"
        )
    bounded = Request(request.scope, _bounded_receive(request.receive, limit, max_bytes))
    async with bounded.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise DomainError(ErrorCode.INVALID_INPUT, "the form has no file in the field 'file'")
        data = await upload.read(max_bytes + 1)  # one byte more than allowed is enough to tell
        return _Upload(
            data, upload.content_type, upload.filename, _text_field(form, "merchant_id"),
            _text_field(form, "purpose") or DEFAULT_PURPOSE,
        )  # fmt: skip


def _bounded_receive(receive: Receive, limit: int, max_bytes: int) -> Receive:
    """``receive`` that stops the upload once the body passes ``limit`` bytes."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise file_too_large(max_bytes)
        return message

    return bounded


def _text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise DomainError(ErrorCode.INVALID_INPUT, f"the field {name!r} must be text")
    if value is None or not value.strip():
        return None
    return value.strip()

