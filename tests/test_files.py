"""Evidence files: sniffing by content (real minimal JPEG, PNG and PDF built here), the upload
rules, storage on disk with its SHA-256 re-checked on read, tenant isolation, attachment
checks for refunds — through the service and over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from shoudan.audit.models import AuditRecord
from shoudan.auth.domain import Principal, Role
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.files import domain
from shoudan.files.domain import FileKind, display_name, inspect_upload, sniff
from shoudan.files.models import StoredFile
from shoudan.files.service import FileService, check_attachable
from tests.payments_world import World, build_world

MAX = 4096  # the test container's upload limit: the over-size cases stay small
STAFF = Principal("key_staff", Role.ADMIN)


# -- real minimal files ------------------------------------------------------------------------


def png_bytes() -> bytes:
    """A 1×1 grey PNG: signature, IHDR, IDAT, IEND, every CRC right."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1×1, 8-bit greyscale
    pixels = zlib.compress(b"\x00\x80")  # filter byte, one grey pixel
    return (
        domain.PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def jpeg_bytes() -> bytes:
    """An 8×8 mid-grey baseline JPEG: one DC-only block, Huffman tables of one code each."""

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    one_code = bytes([1] + [0] * 15)  # one code of length 1 …
    return (
        b"\xff\xd8"
        + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + segment(0xDB, b"\x00" + b"\x01" * 64)
        + segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
        + segment(0xC4, b"\x00" + one_code + b"\x00")  # … DC: category 0
        + segment(0xC4, b"\x10" + one_code + b"\x00")  # … AC: end of block
        + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + b"\x3f"  # DC "0", EOB "0", padded with ones
        + b"\xff\xd9"
    )


def pdf_bytes() -> bytes:
    """A one-page PDF with a correct cross-reference table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


PNG, JPEG, PDF = png_bytes(), jpeg_bytes(), pdf_bytes()
SAMPLES = {FileKind.PNG: PNG, FileKind.JPEG: JPEG, FileKind.PDF: PDF}
TEXT = b"this is a plain text note, not an image\n"


def refused(code: ErrorCode, call, *args, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as caught:
        call(*args, **kwargs)
    assert caught.value.code is code, caught.value
    return caught.value


# -- pure rules ------------------------------------------------------------------------------


def test_sniffing_goes_by_content_and_structure() -> None:
    assert {kind: sniff(data) for kind, data in SAMPLES.items()} == {k: k for k in SAMPLES}
    assert sniff(TEXT) is None
    assert sniff(b"") is None
    # the magic bytes alone are not enough
    broken_crc = PNG[:29] + bytes([PNG[29] ^ 1]) + PNG[30:]
    assert sniff(broken_crc) is None
    assert sniff(domain.PNG_SIGNATURE + b"\x00" * 40) is None  # no IHDR
    assert sniff(JPEG[:-2]) is None  # no end of image
    assert sniff(JPEG + b"\x00" * 8) is FileKind.JPEG  # NUL padding some devices add
    assert sniff(PDF.replace(b"%%EOF", b"%%EOX")) is None
    assert sniff(b"%PDF-1.4\n" + b" " * 2000 + b"%%EOF" + b" " * 2000) is None  # EOF not at end
    assert sniff(b"%PDF-2.0\n%%EOF\n") is FileKind.PDF
    assert sniff(b"junk" + PDF) is None  # the header must come first


@pytest.mark.parametrize(
    ("data", "declared", "name", "code"),
    [
        (TEXT, "image/png", "note.png", ErrorCode.UNSUPPORTED_FILE_TYPE),
        (b"", "image/png", "empty.png", ErrorCode.INVALID_INPUT),
        (b"\x00" * (MAX + 1), None, None, ErrorCode.FILE_TOO_LARGE),
        (PNG, "application/pdf", "receipt.png", ErrorCode.FILE_CONTENT_MISMATCH),
        (PNG, "image/png", "receipt.pdf", ErrorCode.FILE_CONTENT_MISMATCH),
        (PNG, None, "receipt.PDF", ErrorCode.FILE_CONTENT_MISMATCH),
        (PDF, "text/plain", "contract.pdf", ErrorCode.FILE_CONTENT_MISMATCH),
        (JPEG, None, "photo.html", ErrorCode.FILE_CONTENT_MISMATCH),
    ],
)
def test_uploads_are_refused_with_a_precise_code(data, declared, name, code) -> None:
    refused(code, inspect_upload, data, declared, name, MAX)


@pytest.mark.parametrize(
    ("data", "declared", "name"),
    [
        (PNG, "image/png", "receipt.png"),
        (PNG, "image/x-png; name=receipt", "receipt"),
        (PNG, "application/octet-stream", "receipt.2026"),  # a suffix that names no format
        (PNG, None, None),
        (JPEG, "image/jpeg", "IMG_0001.JPEG"),
        (JPEG, "", "退货单.jpg"),
        (PDF, "application/pdf", "合同 v2.final"),
    ],
)
def test_consistent_or_silent_declarations_are_accepted(data, declared, name) -> None:
    checked = inspect_upload(data, declared, name, MAX)
    assert checked.kind is sniff(data)
    assert checked.size_bytes == len(data)
    assert checked.sha256 == hashlib.sha256(data).hexdigest()


def test_display_names_are_sanitised_and_never_paths() -> None:
    assert display_name("../../etc/passwd.png", FileKind.PNG) == "passwd.png"
    assert display_name("C:\\Users\\wang\\收据.pdf", FileKind.PDF) == "收据.pdf"
    # control characters and a right-to-left override ("gnp.exe" shown as "exe.png")
    assert display_name("a\x00b\r\n\u202egnp.exe", FileKind.PNG) == "ab gnp.exe"
    assert display_name("  two   spaces\t.jpg ", FileKind.JPEG) == "two spaces .jpg"
    assert display_name(None, FileKind.PDF) == "upload.pdf"
    assert display_name("...", FileKind.PNG) == "upload.png"
    long = display_name("发" * 300 + ".pdf", FileKind.PDF)
    assert len(long) == 255 and long.endswith(".pdf")


def test_storage_keys_stay_inside_the_data_directory() -> None:
    from datetime import UTC, datetime

    file_id = "file_01JD2Z5X8Q3V9M4N6P7R8S9T0A"
    key = domain.storage_key(file_id, "ab" + "0" * 62, datetime(2026, 3, 1, tzinfo=UTC))
    assert key == f"files/2026/03/ab/{file_id}" and domain.is_storage_key(key)
    for bad in ("../secret.key", "/etc/passwd", f"files/2026/03/ab/../../{file_id}", ""):
        assert not domain.is_storage_key(bad)


def test_who_owns_an_upload() -> None:
    merchant = Principal("key_a", Role.MERCHANT, "898581054110001")
    assert domain.owner_of_upload(merchant, None) == "898581054110001"
    assert domain.owner_of_upload(merchant, "898581054110001") == "898581054110001"
    refused(ErrorCode.MERCHANT_NOT_FOUND, domain.owner_of_upload, merchant, "898581054110002")
    assert domain.owner_of_upload(STAFF, None) is None
    assert domain.owner_of_upload(STAFF, "898581054110002") == "898581054110002"
    refused(ErrorCode.MERCHANT_NOT_FOUND, domain.owner_of_upload, STAFF, "9" * 16)
    assert domain.can_see(STAFF, None) and domain.can_see(merchant, "898581054110001")
    assert not domain.can_see(merchant, None) and not domain.can_see(merchant, "898581054110002")


def test_purpose_is_a_short_slug() -> None:
    assert domain.clean_purpose(None) == "evidence"
    assert domain.clean_purpose("return_slip") == "return_slip"
    for bad in ("Evidence", "../x", "a" * 33, "证据"):
        refused(ErrorCode.INVALID_INPUT, domain.clean_purpose, bad)


# -- the service, on both databases ---------------------------------------------------------


@pytest.fixture
def world(database, tmp_path) -> World:
    world = build_world(database, tmp_path)
    # before anything builds the file service: a small limit keeps the over-size cases small
    world.container.settings = world.container.settings.model_copy(
        update={"max_upload_bytes": MAX}
    )
    return world


def merchant(world: World, which: str = "a") -> Principal:
    merchant_id = world.merchant_a if which == "a" else world.merchant_b
    return Principal(f"key_{which}", Role.MERCHANT, merchant_id)


def files_on_disk(world: World) -> list[Path]:
    root = world.container.settings.data_dir / "files"
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def row_count(world: World) -> int:
    with world.container.database.read() as session:
        return session.scalar(select(func.count()).select_from(StoredFile)) or 0


def test_files_round_trip_with_their_real_sha256(world: World) -> None:
    files = world.container.files
    assert isinstance(files, FileService) and files.max_bytes == MAX
    for kind, data in SAMPLES.items():
        name = f"evidence.{kind.extension}"
        view = files.store(merchant(world), data, kind.value, name)
        assert view.id.startswith("file_") and view.merchant_id == world.merchant_a
        assert view.content_type == kind.value and view.size_bytes == len(data)
        assert view.sha256 == hashlib.sha256(data).hexdigest()
        assert (view.original_name, view.purpose, view.uploaded_by) == (name, "evidence", "key_a")
        assert view.created_at == world.clock.now()
        assert files.get(merchant(world), view.id) == view
        assert files.open(merchant(world), view.id) == (view, data)
        path = world.container.settings.data_dir / "files/2026/11" / view.sha256[:2] / view.id
        assert path.read_bytes() == data
    assert len(files_on_disk(world)) == row_count(world) == 3  # no temporary file left


def test_tenant_isolation(world: World) -> None:
    files = world.container.files
    mine = files.store(merchant(world, "a"), PNG, "image/png", "a.png")
    staff_only = files.store(STAFF, PDF, "application/pdf", "internal.pdf")
    for_a = files.store(STAFF, JPEG, None, "for-a.jpg", merchant_id=world.merchant_a)
    for file_id in (mine.id, staff_only.id, for_a.id):
        refused(ErrorCode.FILE_NOT_FOUND, files.get, merchant(world, "b"), file_id)
        refused(ErrorCode.FILE_NOT_FOUND, files.open, merchant(world, "b"), file_id)
        assert files.get(STAFF, file_id).id == file_id
    assert files.get(merchant(world, "a"), for_a.id).merchant_id == world.merchant_a
    refused(ErrorCode.FILE_NOT_FOUND, files.get, merchant(world, "a"), staff_only.id)
    for bad in ("file_nope", "x" * 500, ""):
        refused(ErrorCode.FILE_NOT_FOUND, files.get, STAFF, bad)
    # a merchant cannot upload into another merchant's files
    refused(
        ErrorCode.MERCHANT_NOT_FOUND, files.store, merchant(world, "a"), PNG, None, "x.png",
        merchant_id=world.merchant_b,
    )  # fmt: skip
    assert row_count(world) == 3


def test_refused_uploads_leave_nothing_behind(world: World) -> None:
    files = world.container.files
    cases = [
        (ErrorCode.INVALID_INPUT, b"", None, "empty.png"),
        (ErrorCode.FILE_TOO_LARGE, PDF + b"\n" * MAX, None, "big.pdf"),
        (ErrorCode.UNSUPPORTED_FILE_TYPE, TEXT, "image/png", "note.png"),
        (ErrorCode.FILE_CONTENT_MISMATCH, PNG, "application/pdf", "receipt.png"),
        (ErrorCode.FILE_CONTENT_MISMATCH, PNG, None, "receipt.pdf"),
    ]
    for code, data, declared, name in cases:
        refused(code, files.store, merchant(world), data, declared, name)
    # staff naming a merchant that does not exist: the bytes were written, then removed
    refused(
        ErrorCode.MERCHANT_NOT_FOUND, files.store, STAFF, PNG, None, "x.png",
        merchant_id="999999999999999",
    )  # fmt: skip
    refused(ErrorCode.INVALID_INPUT, files.store, STAFF, PNG, None, "x.png", purpose="Bad!")
    assert row_count(world) == 0
    assert files_on_disk(world) == []


def test_a_tampered_file_is_detected_and_logged(world: World, caplog) -> None:
    files = world.container.files
    view = files.store(merchant(world), PDF, "application/pdf", "contract.pdf")
    (path,) = files_on_disk(world)
    caplog.set_level(logging.ERROR, logger="shoudan.files.service")

    path.write_bytes(PDF.replace(b"72 72", b"99 99"))  # same size, other content
    error = refused(ErrorCode.INTERNAL_ERROR, files.open, merchant(world), view.id)
    assert error.details == {"file_id": view.id}
    assert "SHA-256 differs" in caplog.text and view.id in caplog.text

    path.write_bytes(PDF + b"appended")
    refused(ErrorCode.INTERNAL_ERROR, files.open, STAFF, view.id)
    assert "bytes on disk" in caplog.text

    path.unlink()
    refused(ErrorCode.INTERNAL_ERROR, files.open, STAFF, view.id)
    assert "missing on disk" in caplog.text

    # a row edited to point outside the data directory is refused, not followed
    with world.container.database.transaction() as session:
        session.execute(
            text("UPDATE stored_files SET storage_key = '../secret.key' WHERE id = :id"),
            {"id": view.id},
        )
    refused(ErrorCode.INTERNAL_ERROR, files.open, STAFF, view.id)
    assert files.get(merchant(world), view.id) == view  # the metadata is still readable


def test_attachments_must_be_the_merchants_own_files(world: World) -> None:
    files = world.container.files
    a1 = files.store(merchant(world, "a"), PNG, None, None).id
    a2 = files.store(STAFF, PDF, None, None, merchant_id=world.merchant_a).id
    b1 = files.store(merchant(world, "b"), JPEG, None, None).id
    staff_only = files.store(STAFF, PDF, None, None).id
    with world.container.database.transaction() as session:
        check_attachable(session, world.merchant_a, [a1, a2, a1])
        check_attachable(session, world.merchant_a, [])
        for ids, bad in (
            ([a1, b1], b1),
            ([staff_only], staff_only),
            ([a1, "file_01JD2Z5X8Q3V9M4N6P7R8S9T0A"], "file_01JD2Z5X8Q3V9M4N6P7R8S9T0A"),
            (["../../etc/passwd"], "../../etc/passwd"),
        ):
            error = refused(
                ErrorCode.FILE_NOT_FOUND, check_attachable, session, world.merchant_a, ids
            )
            assert error.details == {"file_id": bad}


def test_uploads_are_audited(world: World) -> None:
    view = world.container.files.store(STAFF, PNG, None, "x.png", merchant_id=world.merchant_b)
    with world.container.database.read() as session:
        (entry,) = session.scalars(select(AuditRecord).where(AuditRecord.subject_type == "file"))
    assert (entry.actor, entry.action, entry.subject_id) == ("key_staff", "file.upload", view.id)
    assert view.sha256 in (entry.after or "")


# -- HTTP, on both databases --------------------------------------------------------------


def upload(world: World, key: str, data: bytes, name: str = "receipt.png", **kwargs):
    declared = kwargs.pop("declared", "image/png")
    form = {k: v for k, v in kwargs.items() if k in ("merchant_id", "purpose")}
    headers = world.headers(key, **kwargs.get("headers", {}))
    return world.client.post(
        "/v1/files", files={"file": (name, data, declared)}, data=form, headers=headers
    )


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code, body
    return body


def test_http_upload_metadata_and_download(world: World) -> None:
    created = upload(world, world.key_a, PDF, name="退货单 2026.pdf", declared="application/pdf")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body == {
        "id": body["id"], "merchant_id": world.merchant_a, "content_type": "application/pdf",
        "size_bytes": len(PDF), "sha256": hashlib.sha256(PDF).hexdigest(),
        "original_name": "退货单 2026.pdf", "purpose": "evidence",
        "created_at": "2026-11-23T02:00:00Z",
    }  # fmt: skip
    meta = world.client.get(f"/v1/files/{body['id']}", headers=world.headers(world.key_a))
    assert meta.status_code == 200 and meta.json() == body

    content_path = f"/v1/files/{body['id']}/content"
    content = world.client.get(content_path, headers=world.headers(world.key_a))
    assert content.status_code == 200
    assert content.content == PDF
    assert content.headers["content-type"] == "application/pdf"
    assert content.headers["x-content-type-options"] == "nosniff"
    disposition = content.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=\"___ 2026.pdf\"; filename*=UTF-8''")
    assert disposition.endswith("%E9%80%80%E8%B4%A7%E5%8D%95%202026.pdf")
    assert "sandbox" in content.headers["content-security-policy"]

    # tenant isolation over HTTP: another merchant gets 404 on both routes
    for path in (f"/v1/files/{body['id']}", f"/v1/files/{body['id']}/content"):
        problem(world.client.get(path, headers=world.headers(world.key_b)), 404, "file_not_found")
        assert world.client.get(path, headers=world.headers(world.admin_key)).status_code == 200
        problem(world.client.get(path), 401, "unauthenticated")


def test_http_refusals(world: World) -> None:
    key = world.key_a
    problem(upload(world, key, TEXT, name="note.png"), 415, "unsupported_file_type")
    problem(upload(world, key, PNG, declared="application/pdf"), 422, "file_content_mismatch")
    problem(upload(world, key, PNG, name="receipt.pdf"), 422, "file_content_mismatch")
    problem(upload(world, key, b"", name="empty.png"), 422, "invalid_input")
    # just over the limit: refused after reading at most MAX + 1 bytes of the file
    body = problem(upload(world, key, PNG + b"\x00" * MAX, declared=None), 413, "file_too_large")
    assert body["max_bytes"] == MAX
    problem(upload(world, key, PNG, purpose="../../x"), 422, "invalid_input")
    problem(upload(world, key, PNG, merchant_id=world.merchant_b), 404, "merchant_not_found")
    headers = world.headers(key)
    as_json = world.client.post("/v1/files", json={"file": "x"}, headers=headers)
    problem(as_json, 422, "invalid_input")
    no_file = world.client.post(
        "/v1/files", data={"purpose": "evidence"}, files={"other": ("a", b"1")}, headers=headers
    )
    problem(no_file, 422, "invalid_input")
    two_files = world.client.post(
        "/v1/files", files=[("file", ("a.png", PNG)), ("file", ("b.png", PNG))], headers=headers
    )
    problem(two_files, 400, "invalid_input")
    problem(
        world.client.post("/v1/files", files={"file": ("a.png", PNG, "image/png")}), 401,
        "unauthenticated",
    )  # fmt: skip
    assert row_count(world) == 0 and files_on_disk(world) == []


def test_http_oversized_bodies_are_cut_off_early(world: World) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    huge = 100 * 1024 + MAX  # past the limit and its multipart allowance
    headers = world.headers(
        world.key_a, **{"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )

    def chunks():  # chunked: no Content-Length, so only the stream limit can stop it
        yield head
        for _ in range(huge // 1024):
            yield b"\x00" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    chunked = world.client.post("/v1/files", content=chunks(), headers=headers)
    problem(chunked, 413, "file_too_large")
    declared = world.client.post("/v1/files", content=b"".join(chunks()), headers=headers)
    problem(declared, 413, "file_too_large")
    assert row_count(world) == 0 and files_on_disk(world) == []


def test_http_staff_upload_for_a_merchant(world: World) -> None:
    admin = world.admin_key
    created = upload(world, admin, JPEG, name="slip.jpg", declared="image/jpeg",
                     merchant_id=world.merchant_a, purpose="return_slip")  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["merchant_id"], body["purpose"]) == (world.merchant_a, "return_slip")
    path = f"/v1/files/{body['id']}"
    assert world.client.get(path, headers=world.headers(world.key_a)).status_code == 200
    problem(world.client.get(path, headers=world.headers(world.key_b)), 404, "file_not_found")
    own = upload(world, admin, PNG).json()
    assert own["merchant_id"] is None
    problem(
        upload(world, admin, PNG, merchant_id="999999999999999"), 404, "merchant_not_found"
    )
    assert files_on_disk(world) and len(files_on_disk(world)) == row_count(world) == 2


def test_http_idempotency_key_with_multipart(world: World) -> None:
    """The middleware hashes the raw body, boundary included: a byte-identical retry replays
    the first answer; the same file re-encoded with a new boundary is another request."""

    def raw(boundary: str) -> tuple[bytes, dict[str, str]]:
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="r.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode() + PNG + f"\r\n--{boundary}--\r\n".encode()
        headers = world.headers(
            world.key_a, **{"Content-Type": f"multipart/form-data; boundary={boundary}",
                            "Idempotency-Key": "upload-1"},
        )  # fmt: skip
        return body, headers

    body, headers = raw("one")
    first = world.client.post("/v1/files", content=body, headers=headers)
    again = world.client.post("/v1/files", content=body, headers=headers)
    assert first.status_code == again.status_code == 201, first.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert row_count(world) == 1
    body, headers = raw("two")
    problem(world.client.post("/v1/files", content=body, headers=headers), 409,
            "idempotency_key_reused")  # fmt: skip
    assert row_count(world) == 1
