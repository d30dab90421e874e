"""Audit use cases: append a record inside the caller's transaction, verify the chain.

``record`` never opens its own transaction: the audit row commits (or rolls back) together with
the change it describes. Appends are serialised on the single ``audit_head`` row, which gives
gap-free sequence numbers and a linear chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shoudan.audit.domain import (
    GENESIS_HASH,
    ChainVerifier,
    Head,
    Problem,
    ProblemKind,
    canonical_json,
    chain_hash,
    record_fields,
)
from shoudan.audit.models import AuditHead, AuditRecord
from shoudan.core.clock import Clock, SystemClock
from shoudan.core.db import is_sqlite
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id

HEAD_ID = 1
VERIFY_CHUNK = 5000

_LIMITS = {"actor": 128, "action": 64, "subject_type": 64, "subject_id": 128}


@dataclass(frozen=True, slots=True)
class _Row:
    """A detached row for verification (Core rows, so a million of them never enter the
    session's identity map)."""

    seq: int
    id: str
    occurred_at: datetime
    actor: str
    action: str
    subject_type: str
    subject_id: str
    before: str | None
    after: str | None
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    rows_checked: int
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0  # all problems, even beyond the ones kept in ``problems``
    head_seq: int | None = None
    head_hash: str | None = None

    def raise_if_broken(self) -> None:
        if not self.ok:
            first = self.problems[0] if self.problems else None
            raise DomainError(
                ErrorCode.AUDIT_CHAIN_BROKEN,
                f"audit chain broken: {self.problem_count} problem(s)"
                + (f", first at seq {first.seq} ({first.kind})" if first else ""),
                problem_count=self.problem_count,
            )


def _validated_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError(ErrorCode.INVALID_INPUT, f"audit {name} must be a non-empty string")
    if len(value) > _LIMITS[name]:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"audit {name} longer than {_LIMITS[name]} characters"
        )
    return value


def _validated_json(name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"audit {name} is not JSON-serialisable: {exc}"
        ) from exc


def _lock_head(session: Session) -> AuditHead:
    """The head row, locked for the rest of the transaction; created on first use.

    PostgreSQL: ``SELECT ... FOR UPDATE`` serialises concurrent appenders. SQLite: write
    transactions start with ``BEGIN IMMEDIATE``, so this transaction is already the only writer.
    """
    query = (
        select(AuditHead)
        .where(AuditHead.id == HEAD_ID)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    head = session.execute(query).scalar_one_or_none()
    if head is not None:
        return head
    values = {"id": HEAD_ID, "last_seq": 0, "last_hash": GENESIS_HASH}
    # ON CONFLICT DO NOTHING: two first appenders may race to create the head; the loser
    # waits for the winner's commit, inserts nothing, and locks the winner's head below.
    insert = sqlite_insert if is_sqlite(session) else pg_insert
    created = session.execute(
        insert(AuditHead).values(**values).on_conflict_do_nothing().returning(AuditHead.id)
    ).first()
    if created is not None and session.execute(
        select(AuditRecord.seq).limit(1)
    ).first() is not None:
        # We had to create the head although rows exist: someone deleted it. Refuse to
        # start a new chain (raising rolls our insert back).
        raise DomainError(
            ErrorCode.AUDIT_CHAIN_BROKEN, "audit_head is missing but audit_log has rows"
        )
    return session.execute(query).scalar_one()


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    before: Any = None,
    after: Any = None,
    clock: Clock | None = None,
) -> AuditRecord:
    """Append one audit record in the caller's transaction and return it (flushed).

    ``before``/``after`` are any JSON-serialisable values (datetimes, Decimals and enums are
    accepted and written canonically); they are stored as canonical JSON text.
    """
    fields_in = {
        "actor": _validated_text("actor", actor),
        "action": _validated_text("action", action),
        "subject_type": _validated_text("subject_type", subject_type),
        "subject_id": _validated_text("subject_id", subject_id),
    }
    before_json = _validated_json("before", before)
    after_json = _validated_json("after", after)
    occurred_at = (clock or SystemClock()).now()
    if occurred_at.tzinfo is None:
        raise DomainError(ErrorCode.INVALID_INPUT, "clock returned a naive datetime")

    head = _lock_head(session)
    seq = head.last_seq + 1
    record_id = new_id()
    digest = chain_hash(
        head.last_hash,
        record_fields(
            seq=seq,
            id=record_id,
            occurred_at=occurred_at,
            before=before_json,
            after=after_json,
            **fields_in,
        ),
    )
    row = AuditRecord(
        seq=seq,
        id=record_id,
        occurred_at=occurred_at,
        before=before_json,
        after=after_json,
        prev_hash=head.last_hash,
        hash=digest,
        **fields_in,
    )
    session.add(row)
    head.last_seq = seq
    head.last_hash = digest
    session.flush()
    return row


def _read_head(session: Session) -> Head | None:
    found = session.execute(
        select(AuditHead.last_seq, AuditHead.last_hash).where(AuditHead.id == HEAD_ID)
    ).first()
    return None if found is None else Head(int(found.last_seq), str(found.last_hash))


def iter_rows(
    session: Session, *, up_to: int | None = None, chunk: int = VERIFY_CHUNK
) -> Iterator[_Row]:
    """Rows in seq order, fetched ``chunk`` at a time by keyset pagination (``seq > last``),
    which works the same on both engines and never holds a million rows at once."""
    table = AuditRecord.__table__
    after = None
    while True:
        query = select(table).order_by(table.c.seq).limit(chunk)
        if after is not None:
            query = query.where(table.c.seq > after)
        if up_to is not None:
            query = query.where(table.c.seq <= up_to)
        batch = session.execute(query).all()
        for found in batch:
            yield _Row(**found._asdict())
        if len(batch) < chunk:
            return
        after = batch[-1].seq


def verify(session: Session, *, chunk: int = VERIFY_CHUNK) -> AuditReport:
    """Check the whole chain: every hash, every link, no gaps, and the head.

    Reads the head first and verifies rows up to it, so appends committed while verification
    runs (READ COMMITTED on PostgreSQL) are not mistaken for tampering; a final check makes sure
    no row lies beyond the head as it is at the end.
    """
    head = _read_head(session)
    verifier = ChainVerifier()
    up_to = head.last_seq if head is not None else None
    for row in iter_rows(session, up_to=up_to, chunk=chunk):
        verifier.feed(row)
    problems = verifier.finish(head)
    if head is not None:
        # Read max(seq) before the head again: an append commits both together, so a row seen
        # here is always covered by the head read afterwards, unless the head was tampered with.
        max_seq = session.execute(select(func.max(AuditRecord.seq))).scalar_one_or_none()
        later = _read_head(session)
        if max_seq is not None and (later is None or max_seq > later.last_seq):
            verifier.problem_count += 1
            problems.append(
                Problem(
                    head.last_seq + 1,
                    ProblemKind.HEAD_MISMATCH,
                    f"rows beyond the head: log reaches seq {max_seq}, head says "
                    f"{later.last_seq if later else 'nothing'}",
                )
            )
    return AuditReport(
        ok=verifier.problem_count == 0,
        rows_checked=verifier.rows_checked,
        problems=problems,
        problem_count=verifier.problem_count,
        head_seq=head.last_seq if head else None,
        head_hash=head.last_hash if head else None,
    )


def tail(session: Session, n: int = 20) -> list[AuditRecord]:
    """The last ``n`` records, oldest first."""
    if n < 1:
        raise DomainError(ErrorCode.INVALID_INPUT, "n must be at least 1")
    rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(n))
    return list(reversed(rows.scalars().all()))


# -- reads for the staff console ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuditFilters:
    """What a staff member may narrow the log by; ``None`` means any. ``occurred_to`` is
    exclusive."""

    actor: str | None = None
    action: str | None = None
    subject_type: str | None = None
    subject_id: str | None = None
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None


def search(
    session: Session, filters: AuditFilters, *, limit: int, before_seq: int | None = None
) -> list[AuditRecord]:
    """Records matching ``filters``, newest first, ``limit`` at a time; ``before_seq`` is the
    seq of the last record of the previous page (keyset pagination on seq)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DomainError(ErrorCode.INVALID_INPUT, "limit must be a positive integer")
    query = select(AuditRecord)
    exact = {
        AuditRecord.actor: filters.actor, AuditRecord.action: filters.action,
        AuditRecord.subject_type: filters.subject_type,
        AuditRecord.subject_id: filters.subject_id,
    }  # fmt: skip
    for column, wanted in exact.items():
        if wanted:
            query = query.where(column == wanted)
    if filters.occurred_from is not None:
        query = query.where(AuditRecord.occurred_at >= filters.occurred_from)
    if filters.occurred_to is not None:
        query = query.where(AuditRecord.occurred_at < filters.occurred_to)
    if before_seq is not None:
        query = query.where(AuditRecord.seq < before_seq)
    return list(session.scalars(query.order_by(AuditRecord.seq.desc()).limit(limit)))


def latest(session: Session, action: str) -> AuditRecord | None:
    """The most recent record of ``action`` (e.g. the last chain verification)."""
    query = select(AuditRecord).where(AuditRecord.action == action)
    return session.scalars(query.order_by(AuditRecord.seq.desc()).limit(1)).first()


def head_seq(session: Session) -> int:
    """The seq of the last record (0 for an empty log)."""
    head = _read_head(session)
    return 0 if head is None else head.last_seq


def for_subjects(
    session: Session, subjects: list[tuple[str, str]], *, limit: int
) -> list[AuditRecord]:
    """The latest records about any of ``subjects`` ((subject_type, subject_id) pairs),
    newest first: e.g. a terminal and its device, in one history."""
    if not subjects:
        return []
    wanted = [
        (AuditRecord.subject_type == kind) & (AuditRecord.subject_id == ident)
        for kind, ident in subjects
    ]
    query = select(AuditRecord).where(or_(*wanted)).order_by(AuditRecord.seq.desc())
    return list(session.scalars(query.limit(limit)))
