"""API shapes of reconciliation (pydantic). Amounts are integer fen, signed where they are a
difference (+: the channel owes us more than we booked)."""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from shoudan.reconciliation.domain import (
    MAX_NOTE_LENGTH,
    Channel,
    ExceptionClass,
    ExceptionStatus,
    Resolution,
)
from shoudan.reconciliation.models import (
    ReconciliationException,
    ReconciliationNote,
    ReconciliationRun,
)


class ClassCounts(BaseModel):
    matched: int
    missing_in_ours: int = Field(description="长款: on the statement, not in our records.")
    missing_in_channel: int = Field(description="短款: in our records, not on the statement.")
    amount_mismatch: int
    status_mismatch: int


class ReconciliationOut(BaseModel):
    id: str
    channel: Channel
    file_name: str
    file_sha256: str
    encoding: str = Field(description="utf-8 or gbk, as detected.")
    period_start: str
    period_end: str
    statement_lines: int
    our_records: int
    counts: ClassCounts
    statement_net: int = Field(description="Sales − refunds on the statement, fen.")
    our_net: int = Field(description="Sales − refunds in our records, fen.")
    net_difference: int = Field(description="statement_net − our_net: the exceptions' sum.")
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, run: ReconciliationRun) -> ReconciliationOut:
        counts = ClassCounts(
            matched=run.matched,
            **{c.value: getattr(run, c.value) for c in ExceptionClass},
        )
        return cls(
            id=run.id, channel=Channel(run.channel), file_name=run.file_name,
            file_sha256=run.file_sha256, encoding=run.encoding, period_start=run.period_start,
            period_end=run.period_end, statement_lines=run.statement_lines,
            our_records=run.our_records, counts=counts, statement_net=run.statement_net,
            our_net=run.our_net, net_difference=run.net_difference, created_by=run.created_by,
            created_at=run.created_at,
        )  # fmt: skip


class NoteOut(BaseModel):
    author: str
    text: str
    created_at: datetime

    @classmethod
    def of(cls, note: ReconciliationNote) -> NoteOut:
        return cls(author=note.author, text=note.text, created_at=note.created_at)


class ExceptionOut(BaseModel):
    id: str
    run_id: str
    exception_class: ExceptionClass
    record_kind: str = Field(description="payment or refund")
    match_key: str
    our_ref: str | None = Field(description="Our payment or refund id, when we have one.")
    merchant_id: str | None
    their_line: int | None = Field(description="Line number in the statement file.")
    their_values: dict[str, str] | None = Field(description="The statement line, by column.")
    their_amount: int | None
    our_amount: int | None
    their_status: str | None
    our_status: str | None
    amount_difference: int = Field(description="Theirs − ours in money moved, signed fen.")
    status: ExceptionStatus
    resolution: Resolution | None
    resolution_reason: str | None
    ledger_entry_id: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    created_at: datetime
    notes: list[NoteOut] | None = Field(default=None, description="On single reads only.")

    @classmethod
    def of(
        cls, found: ReconciliationException, notes: list[ReconciliationNote] | None = None
    ) -> ExceptionOut:
        return cls(
            id=found.id, run_id=found.run_id,
            exception_class=ExceptionClass(found.exception_class),
            record_kind=found.record_kind, match_key=found.match_key, our_ref=found.our_ref,
            merchant_id=found.merchant_id, their_line=found.their_line,
            their_values=json.loads(found.their_values) if found.their_values else None,
            their_amount=found.their_amount, our_amount=found.our_amount,
            their_status=found.their_status, our_status=found.our_status,
            amount_difference=found.amount_difference, status=ExceptionStatus(found.status),
            resolution=Resolution(found.resolution) if found.resolution else None,
            resolution_reason=found.resolution_reason, ledger_entry_id=found.ledger_entry_id,
            resolved_by=found.resolved_by, resolved_at=found.resolved_at,
            created_at=found.created_at,
            notes=None if notes is None else [NoteOut.of(note) for note in notes],
        )  # fmt: skip


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Resolution
    reason: StrictStr | None = Field(
        default=None, max_length=500, description="Required for write_off."
    )
    note: StrictStr | None = Field(default=None, max_length=MAX_NOTE_LENGTH)


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(min_length=1, max_length=MAX_NOTE_LENGTH)
