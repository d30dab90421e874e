"""Evidence files: what an upload is, decided by its bytes (pure rules, no I/O).

A file's type comes from its content — magic bytes and a minimal structure — never from its
name or the Content-Type a client declared. The declaration is only checked against the
content: a PNG sent as ``application/pdf`` or named ``receipt.pdf`` is refused, because a
client that mislabels a file is either broken or trying to slip something past a reviewer.

Only JPEG, PNG and PDF are accepted: receipts, return slips and contracts come as photos or
scans, and a short list of formats is a short list of parsers to trust.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from shoudan.core.errors import DomainError, ErrorCode

FILE_ID_PREFIX = "file_"
DEFAULT_PURPOSE = "evidence"
MAX_NAME_LENGTH = 255
MAX_MERCHANT_ID_LENGTH = 15  # the merchants.merchant_id column

_FILE_ID = re.compile(r"file_[0-9A-HJKMNP-TV-Z]{26}")
_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_STORAGE_KEY = re.compile(r"files/\d{4}/\d{2}/[0-9a-f]{2}/file_[0-9A-HJKMNP-TV-Z]{26}")


class FileKind(StrEnum):
    """A supported format; the value is the content type it is stored and served with."""

    JPEG = "image/jpeg"
    PNG = "image/png"
    PDF = "application/pdf"

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self][0]


_EXTENSIONS: dict[FileKind, tuple[str, ...]] = {
    FileKind.JPEG: ("jpg", "jpeg", "jpe", "jfif"),
    FileKind.PNG: ("png",),
    FileKind.PDF: ("pdf",),
}
_CONTENT_TYPES: dict[FileKind, frozenset[str]] = {
    FileKind.JPEG: frozenset({"image/jpeg", "image/jpg", "image/pjpeg"}),
    FileKind.PNG: frozenset({"image/png", "image/x-png"}),
    FileKind.PDF: frozenset({"application/pdf", "application/x-pdf"}),
}
# Declarations that say nothing about the format (a client that does not know).
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# Extensions that name a format. Any other suffix ("scan.2026", "receipt.final") is just part
# of the name and contradicts nothing.
_OTHER_FORMATS = (
    "gif webp heic heif bmp tif tiff svg ico avif txt csv rtf html htm xhtml xml json js mjs "
    "css php exe dll bat cmd com sh ps1 msi apk jar doc docx xls xlsx ppt pptx odt ods zip rar "
    "7z gz tar"
)
_KNOWN_EXTENSIONS = frozenset(_OTHER_FORMATS.split()).union(*_EXTENSIONS.values())

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
PDF_END = b"%%EOF"
PDF_TAIL = 1024  # where %%EOF must appear (readers look this far from the end)
_PDF_HEADER = re.compile(rb"%PDF-[12]\.\d")


class Caller(Protocol):
    """Who is asking, as this domain needs it (``shoudan.auth.domain.Principal`` fits; files
    sit below auth in the layers, so they name only the shape)."""

    @property
    def id(self) -> str: ...
    @property
    def merchant_id(self) -> str | None: ...
    @property
    def is_staff(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class CheckedUpload:
    kind: FileKind
    display_name: str
    size_bytes: int
    sha256: str


def sniff(data: bytes) -> FileKind | None:
    """The format of ``data`` by magic bytes and minimal structure, or None."""
    if _is_png(data):
        return FileKind.PNG
    if _is_jpeg(data):
        return FileKind.JPEG
    if _is_pdf(data):
        return FileKind.PDF
    return None


def _is_png(data: bytes) -> bool:
    # signature, then the IHDR chunk first: length 13, type, 13 bytes of data, CRC
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE):
        return False
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    crc = int.from_bytes(data[29:33], "big")
    return width > 0 and height > 0 and zlib.crc32(data[12:29]) == crc


def _is_jpeg(data: bytes) -> bool:
    # SOI then a marker (0xC0..0xFE); EOI at the end, ignoring the NUL padding some devices add
    if len(data) < 6 or not data.startswith(JPEG_START) or not 0xC0 <= data[3] <= 0xFE:
        return False
    return data.rstrip(b"\x00").endswith(JPEG_END)


def _is_pdf(data: bytes) -> bool:
    return _PDF_HEADER.match(data) is not None and PDF_END in data[-PDF_TAIL:]


def inspect_upload(
    data: bytes, declared_type: str | None, filename: str | None, max_bytes: int
) -> CheckedUpload:
    """Accept an upload or say why not: too large, empty, not a supported format, or
    declared (by Content-Type or name) as something it is not."""
    if len(data) > max_bytes:
        raise file_too_large(max_bytes)
    if not data:
        raise DomainError(ErrorCode.INVALID_INPUT, "the file is empty")
    kind = sniff(data)
    if kind is None:
        raise DomainError(
            ErrorCode.UNSUPPORTED_FILE_TYPE, "only JPEG, PNG and PDF files are accepted"
        )
    name = display_name(filename, kind)
    _check_declared_type(declared_type, kind)
    _check_extension(name, kind)
    return CheckedUpload(kind, name, len(data), hashlib.sha256(data).hexdigest())


def _check_declared_type(declared_type: str | None, kind: FileKind) -> None:
    declared = (declared_type or "").split(";", 1)[0].strip().lower()
    if declared in _GENERIC_TYPES or declared in _CONTENT_TYPES[kind]:
        return
    raise DomainError(
        ErrorCode.FILE_CONTENT_MISMATCH,
        f"declared as {declared[:64]!r} but the content is {kind.value}",
        detected_type=kind.value,
    )


def _check_extension(name: str, kind: FileKind) -> None:
    _stem, dot, extension = name.rpartition(".")
    extension = extension.lower()
    if not dot or extension not in _KNOWN_EXTENSIONS or extension in _EXTENSIONS[kind]:
        return
    raise DomainError(
        ErrorCode.FILE_CONTENT_MISMATCH,
        f"named .{extension} but the content is {kind.value}",
        detected_type=kind.value,
    )


def display_name(filename: str | None, kind: FileKind) -> str:
    """A name to show and to offer on download — never used as a path: the last path
    component, without control or bidi-override characters, whitespace collapsed, at most
    255 characters (keeping the extension)."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = unicodedata.normalize("NFC", name)
    name = " ".join(name.split())  # tabs and newlines become spaces first
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    if not name.strip("."):
        return f"upload.{kind.extension}"
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, extension = name.rpartition(".")
        suffix = dot + extension if dot and stem and len(extension) <= 16 else ""
        name = name[: MAX_NAME_LENGTH - len(suffix)] + suffix
    return name


def clean_purpose(purpose: str | None) -> str:
    """What the file is for (``evidence`` unless told): a short lower-case slug."""
    value = (purpose or DEFAULT_PURPOSE).strip()
    if not _PURPOSE.fullmatch(value):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "purpose must be 1-32 characters of a-z, 0-9 and _, starting with a letter",
        )
    return value


def owner_of_upload(caller: Caller, merchant_id: str | None) -> str | None:
    """The merchant a new file belongs to: a merchant uploads for itself (naming another
    merchant is "not found", as for any other tenant's data); staff may name a merchant, or
    none for a file of their own."""
    if not caller.is_staff:
        if caller.merchant_id is None:
            raise DomainError(ErrorCode.FORBIDDEN, "only merchants and staff upload files")
        if merchant_id not in (None, caller.merchant_id):
            raise merchant_not_found(merchant_id)
        return caller.merchant_id
    if merchant_id is not None and not 0 < len(merchant_id) <= MAX_MERCHANT_ID_LENGTH:
        raise merchant_not_found(merchant_id)
    return merchant_id


def can_see(caller: Caller, owner: str | None) -> bool:
    """Staff see every file; a merchant only its own (not staff files tied to no merchant)."""
    return caller.is_staff or (owner is not None and owner == caller.merchant_id)


def merchant_not_found(merchant_id: str | None) -> DomainError:
    return DomainError(
        ErrorCode.MERCHANT_NOT_FOUND, "merchant not found", merchant_id=str(merchant_id)[:32]
    )


def is_file_id(value: str) -> bool:
    return _FILE_ID.fullmatch(value) is not None


def storage_key(file_id: str, sha256: str, created_at: datetime) -> str:
    """Where the bytes live, relative to the data directory: by month (easy to back up and
    prune by date), then by hash prefix (no directory grows past a few thousand entries)."""
    return f"files/{created_at:%Y}/{created_at:%m}/{sha256[:2]}/{file_id}"


def is_storage_key(value: str) -> bool:
    """A key ``storage_key`` could have made: relative, no ``..``, nothing a row edited in the
    database could use to point outside the data directory."""
    return _STORAGE_KEY.fullmatch(value) is not None


def file_too_large(max_bytes: int) -> DomainError:
    return DomainError(
        ErrorCode.FILE_TOO_LARGE, f"files are limited to {max_bytes} bytes", max_bytes=max_bytes
    )


def file_not_found(file_id: str) -> DomainError:
    return DomainError(ErrorCode.FILE_NOT_FOUND, "file not found", file_id=file_id[:64])
