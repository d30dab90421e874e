"""Pure rules of the hash-chained audit log: canonical JSON, the chain hash, verification.

Each record's hash covers its own fields *and* its predecessor's hash, so editing, deleting or
reordering any row changes every hash after it. ``audit_head`` stores the last sequence number
and hash, so deleting rows at the tail (which leaves a valid but shorter chain) is detected too.

What a hash chain cannot do on its own: someone with write access to the database can rewrite
the whole chain *and* the head. Anchor the head hash elsewhere (``shoudan audit verify`` prints
it) when that matters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any, Protocol

GENESIS_HASH = "0" * 64
# A badly broken chain (say, a million rewritten rows) must not exhaust memory: keep the first
# problems, count the rest.
MAX_PROBLEMS = 1000
# How many rows with a bad hash are kept to tell an edit from a reorder (swapped seq numbers).
_MAX_SUSPECTS = 200


def iso_utc(moment: datetime) -> str:
    """A datetime as fixed-width ISO 8601 in UTC (microseconds, ``Z``): one spelling per instant."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime refused: use timezone-aware UTC")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: never through float
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """One byte-exact text per value: sorted keys, no whitespace, UTF-8 kept, no NaN.

    Raises ``TypeError``/``ValueError`` for values JSON cannot represent faithfully.
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


class ChainRow(Protocol):
    """What verification needs of a row (``AuditRecord`` and plain dataclasses both fit)."""

    @property
    def seq(self) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def subject_type(self) -> str: ...
    @property
    def subject_id(self) -> str: ...
    @property
    def before(self) -> str | None: ...
    @property
    def after(self) -> str | None: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...


class ChainHead(Protocol):
    @property
    def last_seq(self) -> int: ...
    @property
    def last_hash(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Head:
    last_seq: int
    last_hash: str


def record_fields(
    *,
    seq: int,
    id: str,
    occurred_at: datetime,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    before: str | None,
    after: str | None,
) -> dict[str, Any]:
    """The hashed fields of a record. ``before``/``after`` are the stored canonical JSON text,
    hashed as stored, so verification never depends on re-serialising."""
    return {
        "seq": seq,
        "id": id,
        "occurred_at": iso_utc(occurred_at),
        "actor": actor,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "before": before,
        "after": after,
    }


def fields_of(row: ChainRow, *, seq: int | None = None) -> dict[str, Any]:
    return record_fields(
        seq=row.seq if seq is None else seq,
        id=row.id,
        occurred_at=row.occurred_at,
        actor=row.actor,
        action=row.action,
        subject_type=row.subject_type,
        subject_id=row.subject_id,
        before=row.before,
        after=row.after,
    )


def chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of the fields together with the previous hash."""
    if "prev_hash" in fields:
        raise ValueError("fields must not contain prev_hash")
    document = canonical_json({**fields, "prev_hash": prev_hash})
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


class ProblemKind(StrEnum):
    EDITED = "edited"  # the row's content no longer matches its hash
    BROKEN_LINK = "broken_link"  # prev_hash is not the previous row's hash
    MISSING = "missing"  # a gap in seq: rows deleted
    REORDERED = "reordered"  # rows out of order or seq numbers swapped
    TRUNCATED = "truncated"  # the head is ahead of the last row: tail deleted
    HEAD_MISMATCH = "head_mismatch"  # the head disagrees with the rows
    HEAD_MISSING = "head_missing"  # rows exist but the head row is gone


@dataclass(frozen=True, slots=True)
class Problem:
    seq: int
    kind: ProblemKind
    message: str


@dataclass(slots=True)
class _Suspect:
    seq: int
    stored_hash: str
    prev_hash: str
    fields: dict[str, Any]


@dataclass
class ChainVerifier:
    """Incremental verifier: ``feed`` rows in ascending seq order, then ``finish(head)``.

    Holds O(1) state per row (plus a bounded list of suspects), so a caller can stream any
    number of rows through it.
    """

    max_problems: int = MAX_PROBLEMS
    rows_checked: int = 0
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    _last_seq: int = 0
    _last_hash: str = GENESIS_HASH
    _suspects: list[_Suspect] = field(default_factory=list)
    _finished: bool = False

    def _add(self, seq: int, kind: ProblemKind, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(seq, kind, message))

    def feed(self, row: ChainRow) -> None:
        if self._finished:
            raise RuntimeError("verifier already finished")
        self.rows_checked += 1
        seq = row.seq
        gap = False
        if seq <= self._last_seq:
            self._add(
                seq,
                ProblemKind.REORDERED,
                f"seq {seq} comes after seq {self._last_seq} (duplicate or out of order)",
            )
        elif seq != self._last_seq + 1:
            gap = True
            first, last = self._last_seq + 1, seq - 1
            span = f"seq {first}" if first == last else f"seq {first}..{last}"
            self._add(first, ProblemKind.MISSING, f"{span} missing (rows deleted)")
        fields = fields_of(row)
        if chain_hash(row.prev_hash, fields) != row.hash:
            self._add(seq, ProblemKind.EDITED, f"seq {seq}: content does not match its hash")
            if len(self._suspects) < _MAX_SUSPECTS:
                self._suspects.append(_Suspect(seq, row.hash, row.prev_hash, fields))
        # After a gap the link is necessarily broken; one problem says it.
        if not gap and row.prev_hash != self._last_hash:
            self._add(
                seq,
                ProblemKind.BROKEN_LINK,
                f"seq {seq}: prev_hash does not match the hash of the row before it",
            )
        self._last_seq = max(self._last_seq, seq)
        self._last_hash = row.hash

    def finish(self, head: ChainHead | None) -> list[Problem]:
        """Check the head, classify swaps, and return the problems sorted by seq."""
        if self._finished:
            raise RuntimeError("verifier already finished")
        self._finished = True
        self._classify_reorders()
        if head is None:
            if self.rows_checked:
                self._add(self._last_seq, ProblemKind.HEAD_MISSING, "audit_head row is missing")
        elif head.last_seq > self._last_seq:
            self._add(
                self._last_seq + 1,
                ProblemKind.TRUNCATED,
                f"head says the last seq is {head.last_seq} but the log ends at "
                f"{self._last_seq} (tail deleted)",
            )
        elif head.last_seq < self._last_seq:
            self._add(
                head.last_seq + 1,
                ProblemKind.HEAD_MISMATCH,
                f"rows beyond the head: head at seq {head.last_seq}, log at {self._last_seq}",
            )
        elif head.last_hash != self._last_hash:
            self._add(
                head.last_seq,
                ProblemKind.HEAD_MISMATCH,
                f"seq {head.last_seq}: hash differs from the head's last_hash",
            )
        self.problems.sort(key=lambda p: (p.seq, p.kind.value))
        return self.problems

    def _classify_reorders(self) -> None:
        # A row whose hash matches once given another suspect's seq was moved, not edited.
        moved: dict[int, int] = {}
        for suspect in self._suspects:
            for other in self._suspects:
                if other is suspect:
                    continue
                fields = {**suspect.fields, "seq": other.seq}
                if chain_hash(suspect.prev_hash, fields) == suspect.stored_hash:
                    moved[suspect.seq] = other.seq
                    break
        if not moved:
            return
        for index, problem in enumerate(self.problems):
            if problem.kind is ProblemKind.EDITED and problem.seq in moved:
                self.problems[index] = Problem(
                    problem.seq,
                    ProblemKind.REORDERED,
                    f"seq {problem.seq}: this row was written as seq {moved[problem.seq]}",
                )

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def verify_chain(rows: Iterable[ChainRow], head: ChainHead | None) -> list[Problem]:
    """Every problem found in ``rows`` (ascending seq) against ``head``; empty when intact."""
    verifier = ChainVerifier()
    for row in rows:
        verifier.feed(row)
    return verifier.finish(head)
