"""File use cases: store an upload, read its metadata, open its bytes, check attachments.

The bytes go to ``data_dir/files/<yyyy>/<mm>/<sha256[:2]>/<file_id>``, written atomically
(temporary file, fsync, rename, fsync of the directory) **before** the row is committed: a
committed row always has its bytes. A crash between the two leaves an orphan file with no row,
which nothing can reach (harmless; a sweep may delete it). Every read re-checks the size and
SHA-256 recorded in the row, so bytes changed on disk are detected, logged and refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.core.clock import Clock
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.files.domain import (
    DEFAULT_PURPOSE,
    FILE_ID_PREFIX,
    Caller,
    can_see,
    clean_purpose,
    file_not_found,
    inspect_upload,
    is_file_id,
    is_storage_key,
    merchant_not_found,
    owner_of_upload,
    storage_key,
)
from shoudan.files.models import StoredFile

log = logging.getLogger(__name__)

FILE_MODE = 0o640
DIRECTORY_MODE = 0o750


@dataclass(frozen=True, slots=True)
class StoredFileView:
    id: str
    merchant_id: str | None
    uploaded_by: str
    content_type: str
    size_bytes: int
    sha256: str
    original_name: str
    purpose: str
    created_at: datetime


def _view(row: StoredFile) -> StoredFileView:
    return StoredFileView(
        id=row.id, merchant_id=row.merchant_id, uploaded_by=row.uploaded_by,
        content_type=row.content_type, size_bytes=row.size_bytes, sha256=row.sha256,
        original_name=row.original_name, purpose=row.purpose, created_at=row.created_at,
    )  # fmt: skip


def _visible_row(session: Session, caller: Caller, file_id: str) -> StoredFile:
    """The file if the caller may see it; another tenant's file is simply not found."""
    row = session.get(StoredFile, file_id) if is_file_id(file_id) else None
    if row is None or not can_see(caller, row.merchant_id):
        raise file_not_found(file_id)
    return row


def check_attachable(session: Session, merchant_id: str, file_ids: Sequence[str]) -> None:
    """Every id is a stored file of ``merchant_id``, or ``file_not_found`` naming the first
    that is not. For other use cases (refunds) to call inside their own transaction; stored
    files never change or disappear, so nothing needs locking."""
    wanted = list(dict.fromkeys(file_ids))
    candidates = [file_id for file_id in wanted if is_file_id(file_id)]
    found = set(
        session.scalars(
            select(StoredFile.id).where(
                StoredFile.id.in_(candidates), StoredFile.merchant_id == merchant_id
            )
        )
        if candidates
        else ()
    )
    for file_id in wanted:
        if file_id not in found:
            raise file_not_found(file_id)


class FileService:
    def __init__(self, database: Database, clock: Clock, data_dir: Path, max_bytes: int) -> None:
        self.database = database
        self.clock = clock
        self.data_dir = data_dir
        self.max_bytes = max_bytes

    def store(
        self,
        principal: Caller,
        data: bytes,
        declared_type: str | None,
        filename: str | None,
        merchant_id: str | None = None,
        purpose: str = DEFAULT_PURPOSE,
    ) -> StoredFileView:
        """Check an upload by its content, write it to disk, then record it."""
        owner = owner_of_upload(principal, merchant_id)
        checked = inspect_upload(data, declared_type, filename, self.max_bytes)
        purpose = clean_purpose(purpose)
        file_id = new_id(FILE_ID_PREFIX)
        now = self.clock.now()
        key = storage_key(file_id, checked.sha256, now)
        path = self.data_dir / key
        _write_atomically(path, data)
        committing = False
        try:
            with self.database.transaction() as session:
                row = StoredFile(
                    id=file_id, merchant_id=owner, uploaded_by=principal.id,
                    content_type=checked.kind.value, size_bytes=checked.size_bytes,
                    sha256=checked.sha256, original_name=checked.display_name,
                    storage_key=key, purpose=purpose, created_at=now,
                )  # fmt: skip
                _insert(session, row)
                record(
                    session, actor=principal.id, action="file.upload", subject_type="file",
                    subject_id=file_id, after=_audit_view(row), clock=self.clock,
                )  # fmt: skip
                view = _view(row)
                committing = True  # leaving the block commits
        except BaseException:
            # A failed COMMIT may still have committed (connection lost): keep the bytes
            # then, since an orphan file is harmless and a row without its file is not.
            if not committing:
                _remove(path)
            raise
        log.info("stored file %s (%s, %d bytes)", file_id, view.content_type, view.size_bytes)
        return view

    def get(self, principal: Caller, file_id: str) -> StoredFileView:
        with self.database.read() as session:
            return _view(_visible_row(session, principal, file_id))

    def open(self, principal: Caller, file_id: str) -> tuple[StoredFileView, bytes]:
        """The file's metadata and its bytes, verified against the recorded size and hash."""
        with self.database.read() as session:
            row = _visible_row(session, principal, file_id)
            view, key = _view(row), row.storage_key
        return view, self._read_verified(view, key)

    def _read_verified(self, view: StoredFileView, key: str) -> bytes:
        if not is_storage_key(key):
            raise _corrupted(view.id, f"storage key {key[:160]!r} is not one we make")
        try:
            with (self.data_dir / key).open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != view.size_bytes:  # checked first: never read an unbounded file
                    raise _corrupted(view.id, f"{size} bytes on disk, {view.size_bytes} recorded")
                data = handle.read(view.size_bytes + 1)
        except FileNotFoundError:
            raise _corrupted(view.id, "missing on disk") from None
        if hashlib.sha256(data).hexdigest() != view.sha256:
            raise _corrupted(view.id, "SHA-256 differs from the recorded one")
        return data


def _insert(session: Session, row: StoredFile) -> None:
    session.add(row)
    try:
        session.flush()
    except IntegrityError as error:
        if row.merchant_id is None:
            raise
        # the row's one foreign key: staff named a merchant that does not exist
        raise merchant_not_found(row.merchant_id) from error


def _audit_view(row: StoredFile) -> dict[str, object]:
    return {
        "merchant_id": row.merchant_id, "content_type": row.content_type,
        "size_bytes": row.size_bytes, "sha256": row.sha256, "purpose": row.purpose,
    }  # fmt: skip


def _corrupted(file_id: str, reason: str) -> DomainError:
    log.error("stored file %s failed its integrity check: %s", file_id, reason)
    return DomainError(
        ErrorCode.INTERNAL_ERROR, "the stored file failed its integrity check", file_id=file_id
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that it either does not exist or holds all of ``data``, durably."""
    path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    _fsync_directory(path.parent)  # the rename itself must survive a power loss


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.warning("could not remove %s", path, exc_info=True)
