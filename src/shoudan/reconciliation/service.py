"""Reconciliation use cases: import a channel statement (match, classify, record the run and
its exceptions), read runs and exceptions, resolve an exception, add a note.

An import reads the whole statement and classifies it before it writes anything: a bad file
is refused with its file, line and column, and nothing is half-imported. The same file (by
SHA-256) imported twice answers the first run and writes nothing. Only finance staff (and
admins) reconcile.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Select, case, func, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shoudan.audit.service import record as audit
from shoudan.auth.domain import Principal, Role
from shoudan.core.clock import SHANGHAI, Clock
from shoudan.core.db import Database, Keyset, newest_first
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.ledger import chart
from shoudan.ledger.domain import Posting, Transfer
from shoudan.ledger.service import Ledger
from shoudan.payments.models import Payment
from shoudan.reconciliation import source, statement
from shoudan.reconciliation.domain import (
    MAX_NOTE_LENGTH,
    PAYMENT_STATUS_IN_CHANNEL,
    REFUND_STATUS_IN_CHANNEL,
    Channel,
    ChannelStatus,
    ExceptionClass,
    ExceptionStatus,
    Period,
    RecordKind,
    Resolution,
    StatementError,
    check_resolution,
)
from shoudan.reconciliation.layouts import (
    KEY_SEPARATOR,
    PAYMENT_KEY,
    REFUND_KEY,
    Layout,
    layout_for,
)
from shoudan.reconciliation.matching import Difference, Matcher, OurRow
from shoudan.reconciliation.models import (
    ReconciliationException,
    ReconciliationNote,
    ReconciliationRun,
)
from shoudan.refunds.models import Refund

FETCH: Final = 10_000
LOOKUP_CHUNK: Final = 500

# (stage, count so far): "scan" (lines in the file, once), "statement", "ours", "exceptions"
Progress = Callable[[str, int], None]


def _no_progress(stage: str, count: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class StatementUpload:
    path: Path
    file_name: str
    channel: Channel
    period: Period | None = None  # None: the dates the statement covers


@dataclass(frozen=True, slots=True)
class ImportResult:
    run: ReconciliationRun
    created: bool  # False: this file was imported before; the earlier run is answered


@dataclass(frozen=True, slots=True)
class ExceptionFilters:
    status: ExceptionStatus | None = None
    run_id: str | None = None
    exception_class: ExceptionClass | None = None


class ReconciliationService:
    def __init__(
        self, database: Database, ledger: Ledger, clock: Clock, scratch_dir: Path | None = None
    ) -> None:
        self.database = database
        self.ledger = ledger
        self.clock = clock
        self.scratch_dir = scratch_dir

    # -- import -----------------------------------------------------------------------------
    def import_statement(
        self, principal: Principal, upload: StatementUpload, progress: Progress | None = None
    ) -> ImportResult:
        principal.require_staff(Role.FINANCE)
        report = progress or _no_progress
        scan = source.scan(upload.path, upload.file_name)
        report("scan", scan.lines)
        existing = self._run_by_digest(upload.channel, scan.sha256)
        if existing is not None:
            return ImportResult(existing, created=False)
        scratch = tempfile.TemporaryDirectory(prefix="shoudan-recon-", dir=self.scratch_dir)
        with scratch as tmp, Matcher(Path(tmp)) as matcher:
            text = source.utf8_copy(upload.path, scan.encoding, Path(tmp))
            layout = layout_for(upload.channel)
            read = statement.load(matcher.db, text, upload.file_name, layout, upload.period)
            report("statement", scan.lines)
            period = upload.period or _covered(read, upload.file_name)
            self._load_ours(upload.channel, period, matcher, report)
            counts = matcher.classify()
            return self._record(principal, upload, scan, period, counts, matcher, report)

    def _load_ours(
        self, channel: Channel, period: Period, matcher: Matcher, report: Progress
    ) -> None:
        def counted(batches: Iterable[Sequence[OurRow]]) -> Iterator[Sequence[OurRow]]:
            for batch in batches:
                yield batch
                report("ours", matcher.ours_written)

        with self.database.read() as session:
            connection = session.connection()
            matcher.add_ours(counted(_driver_batches(connection, _payments_query(channel, period))))
            matcher.add_ours(counted(_driver_batches(connection, _refunds_query(channel, period))))
            late = [key.removeprefix(REFUND_KEY) for key in matcher.unknown_refund_keys()]
            for start in range(0, len(late), LOOKUP_CHUNK):
                query = _refunds_by_id_query(channel, late[start : start + LOOKUP_CHUNK])
                matcher.add_late_ours(_stream(connection, query))

    def _record(
        self, principal: Principal, upload: StatementUpload, scan: source.Scan, period: Period,
        counts: dict[str, int], matcher: Matcher, report: Progress,
    ) -> ImportResult:  # fmt: skip
        now = self.clock.now()
        run_id = new_id("rcn_")
        layout = layout_for(upload.channel)
        tallies = matcher.tallies()
        try:
            with self.database.transaction() as session:
                if (found := _find_run(session, upload.channel, scan.sha256)) is not None:
                    return ImportResult(found, created=False)  # a concurrent twin won
                run = ReconciliationRun(
                    id=run_id, channel=upload.channel.value, file_name=upload.file_name[:255],
                    file_sha256=scan.sha256, encoding=scan.encoding,
                    period_start=period.start.isoformat(), period_end=period.end.isoformat(),
                    statement_lines=tallies.statement_lines, our_records=tallies.our_records,
                    matched=counts.get("matched", 0),
                    **{c.value: counts.get(c.value, 0) for c in ExceptionClass},
                    statement_net=tallies.statement_net, our_net=tallies.our_net,
                    net_difference=0,
                    created_by=principal.id, created_at=now,
                )  # fmt: skip
                session.add(run)
                session.flush()
                run.net_difference = self._write_exceptions(
                    session, run_id, layout, matcher.differences(), now, report
                )
                audit(
                    session, actor=principal.id, action="reconciliation.imported",
                    subject_type="reconciliation_run", subject_id=run_id,
                    after=run_summary(run), clock=self.clock,
                )  # fmt: skip
        except IntegrityError:
            found = self._run_by_digest(upload.channel, scan.sha256)
            if found is None:
                raise
            return ImportResult(found, created=False)
        return ImportResult(run, created=True)

    def _write_exceptions(
        self, session: Session, run_id: str, layout: Layout,
        differences: Iterator[Difference], now: datetime, report: Progress,
    ) -> int:  # fmt: skip
        total, batch, written = 0, [], 0
        for difference in differences:
            row = _exception_row(run_id, layout, difference, now)
            total += row["amount_difference"]
            batch.append(row)
            if len(batch) == FETCH:
                session.execute(insert(ReconciliationException), batch)
                written += len(batch)
                report("exceptions", written)
                batch = []
        if batch:
            session.execute(insert(ReconciliationException), batch)
            written += len(batch)
        report("exceptions", written)
        return total

    def _run_by_digest(self, channel: Channel, digest: str) -> ReconciliationRun | None:
        with self.database.read() as session:
            return _find_run(session, channel, digest)

    # -- reading ----------------------------------------------------------------------------
    def get_run(self, principal: Principal, run_id: str) -> ReconciliationRun:
        principal.require_staff(Role.FINANCE)
        with self.database.read() as session:
            run = session.get(ReconciliationRun, run_id)
            if run is None:
                raise DomainError(ErrorCode.RECONCILIATION_NOT_FOUND, "reconciliation not found")
            return run

    def list_runs(
        self, principal: Principal, channel: Channel | None, limit: int, after: Keyset | None
    ) -> list[ReconciliationRun]:
        principal.require_staff(Role.FINANCE)
        query = select(ReconciliationRun)
        if channel is not None:
            query = query.where(ReconciliationRun.channel == channel.value)
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, ReconciliationRun, limit, after)))

    def list_exceptions(
        self, principal: Principal, filters: ExceptionFilters, limit: int, after: Keyset | None
    ) -> list[ReconciliationException]:
        principal.require_staff(Role.FINANCE)
        model = ReconciliationException
        query = select(model)
        if filters.status is not None:
            query = query.where(model.status == filters.status.value)
        if filters.run_id is not None:
            query = query.where(model.run_id == filters.run_id)
        if filters.exception_class is not None:
            query = query.where(model.exception_class == filters.exception_class.value)
        with self.database.read() as session:
            return list(session.scalars(newest_first(query, model, limit, after)))

    def get_exception(
        self, principal: Principal, exception_id: str
    ) -> tuple[ReconciliationException, list[ReconciliationNote]]:
        principal.require_staff(Role.FINANCE)
        with self.database.read() as session:
            found = _exception(session, exception_id)
            return found, _notes(session, exception_id)

    # -- resolving --------------------------------------------------------------------------
    def resolve(
        self, principal: Principal, exception_id: str, action: Resolution,
        reason: str | None = None, note: str | None = None,
    ) -> tuple[ReconciliationException, list[ReconciliationNote]]:  # fmt: skip
        """Resolve once: ``adjust`` posts the difference to suspense, ``write_off`` to a
        gain or loss account (with a reason), ``mark_resolved`` moves no money."""
        principal.require_staff(Role.FINANCE)
        reason = (reason or "").strip() or None
        if reason is not None and len(reason) > 500:
            raise DomainError(ErrorCode.INVALID_INPUT, "reason is longer than 500 characters")
        with self.database.transaction() as session:
            found = _exception(session, exception_id, lock=True)
            check_resolution(found.status, action, found.amount_difference, reason)
            before = exception_summary(found)
            if action is not Resolution.MARK_RESOLVED:
                channel = session.get_one(ReconciliationRun, found.run_id).channel
                self.ledger.ensure_accounts(session, chart.reconciliation_accounts())
                entry = resolution_entry(found, channel, action)
                self.ledger.post(session, entry)
                found.ledger_entry_id = entry.id
            now = self.clock.now()
            found.status = ExceptionStatus.RESOLVED.value
            found.resolution = action.value
            found.resolution_reason = reason
            found.resolved_by = principal.id
            found.resolved_at = now
            if note:
                _add_note(session, exception_id, principal.id, note, now)
            audit(
                session, actor=principal.id, action=f"reconciliation.{action.value}",
                subject_type="reconciliation_exception", subject_id=exception_id,
                before=before, after=exception_summary(found), clock=self.clock,
            )  # fmt: skip
            session.flush()
            return found, _notes(session, exception_id)

    def add_note(self, principal: Principal, exception_id: str, text: str) -> ReconciliationNote:
        principal.require_staff(Role.FINANCE)
        with self.database.transaction() as session:
            _exception(session, exception_id)
            note = _add_note(session, exception_id, principal.id, text, self.clock.now())
            audit(
                session, actor=principal.id, action="reconciliation.note_added",
                subject_type="reconciliation_exception", subject_id=exception_id,
                after={"text": note.text}, clock=self.clock,
            )  # fmt: skip
            return note


# -- our records --------------------------------------------------------------------------------
# Built by the database itself (key, status in the channel's words, amount), so that a million
# rows go from the driver to the scratch file without a Python call per row.
def _channel_status_sql(column: Any, table: dict[str, ChannelStatus]) -> Any:
    mapping = {ours: theirs.value for ours, theirs in table.items()}
    return case(mapping, value=column, else_=literal(ChannelStatus.NOT_SENT.value))


def _payments_query(channel: Channel, period: Period) -> Select[Any]:
    reference = Payment.rrn if channel is Channel.UNIONPAY else func.coalesce(
        Payment.channel_reference, Payment.id
    )
    key = literal(PAYMENT_KEY) + reference + literal(KEY_SEPARATOR) + Payment.business_date
    amount = case((Payment.status == "captured", Payment.captured_amount), else_=Payment.amount)
    return select(
        literal(RecordKind.PAYMENT.value), key, Payment.id, Payment.merchant_id, amount,
        _channel_status_sql(Payment.status, PAYMENT_STATUS_IN_CHANNEL),
    ).where(
        Payment.network == channel.value,
        Payment.business_date >= period.start.isoformat(),
        Payment.business_date <= period.end.isoformat(),
    )  # fmt: skip


def _refund_columns() -> tuple[Any, ...]:
    return (
        literal(RecordKind.REFUND.value), literal(REFUND_KEY) + Refund.id, Refund.id,
        Refund.merchant_id, Refund.amount,
        _channel_status_sql(Refund.status, REFUND_STATUS_IN_CHANNEL),
    )  # fmt: skip


def _refunds_query(channel: Channel, period: Period) -> Select[Any]:
    """Refunds sent through the channel whose last movement (completion, else last attempt,
    else creation) falls in the period, Shanghai days."""
    when = func.coalesce(Refund.completed_at, Refund.last_attempt_at, Refund.created_at)
    start = datetime.combine(period.start, time(), SHANGHAI)
    end = datetime.combine(period.end + timedelta(days=1), time(), SHANGHAI)
    return select(*_refund_columns()).where(
        Refund.network == channel.value, Refund.route == "original", when >= start, when < end
    )


def _refunds_by_id_query(channel: Channel, ids: list[str]) -> Select[Any]:
    return select(*_refund_columns()).where(
        Refund.id.in_(ids), Refund.network == channel.value, Refund.route == "original"
    )


def _stream(connection: Connection, query: Select[Any]) -> Iterator[Sequence[OurRow]]:
    result = connection.execution_options(stream_results=True, yield_per=FETCH).execute(query)
    yield from result.partitions(FETCH)


def _driver_batches(connection: Connection, query: Select[Any]) -> Iterator[list[OurRow]]:
    """The rows of ``query`` as the driver's plain tuples, FETCH at a time, from its own
    cursor (a server-side one on PostgreSQL): no SQLAlchemy row per record. Parameters go
    through their types' bind processors, as SQLAlchemy would send them."""
    dialect = connection.dialect
    compiled = query.compile(dialect=dialect)
    values = compiled.construct_params()
    for name, bind in compiled.binds.items():
        processor = bind.type._cached_bind_processor(dialect)
        if processor is not None and name in values:
            values[name] = processor(values[name])
    positions = compiled.positiontup
    params = tuple(values[name] for name in positions) if positions is not None else values
    driver: Any = connection.connection.driver_connection
    sqlite = dialect.name == "sqlite"
    cursor = driver.cursor() if sqlite else driver.cursor(name=new_id("recon_").lower())
    try:
        cursor.execute(compiled.string, params)
        while batch := cursor.fetchmany(FETCH):
            yield batch
    finally:
        cursor.close()


# -- helpers ----------------------------------------------------------------------------------
def _covered(read: statement.Statement, file: str) -> Period:
    try:
        return Period(date.fromisoformat(read.first_day), date.fromisoformat(read.last_day))
    except DomainError as exc:
        raise StatementError(file, 1, f"the statement's dates: {exc.message}") from None


def _find_run(session: Session, channel: Channel, digest: str) -> ReconciliationRun | None:
    query = select(ReconciliationRun).where(
        ReconciliationRun.channel == channel.value, ReconciliationRun.file_sha256 == digest
    )
    return session.scalars(query).one_or_none()


def _exception(session: Session, exception_id: str, lock: bool = False) -> ReconciliationException:
    query = select(ReconciliationException).where(ReconciliationException.id == exception_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    found = session.scalars(query).one_or_none()
    if found is None:
        raise DomainError(ErrorCode.RECONCILIATION_EXCEPTION_NOT_FOUND, "exception not found")
    return found


def _notes(session: Session, exception_id: str) -> list[ReconciliationNote]:
    query = (
        select(ReconciliationNote)
        .where(ReconciliationNote.exception_id == exception_id)
        .order_by(ReconciliationNote.id)
    )
    return list(session.scalars(query))


def _add_note(
    session: Session, exception_id: str, author: str, text: str, now: datetime
) -> ReconciliationNote:
    text = text.strip()
    if not text or len(text) > MAX_NOTE_LENGTH:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"a note has 1 to {MAX_NOTE_LENGTH} characters"
        )
    note = ReconciliationNote(exception_id=exception_id, author=author, text=text, created_at=now)
    session.add(note)
    session.flush()
    return note


def _exception_row(
    run_id: str, layout: Layout, d: Difference, now: datetime
) -> dict[str, Any]:
    values = None
    if d.text is not None:
        line = statement.values_of(layout, d.text)
        values = json.dumps(dict(zip(layout.columns, line, strict=False)), ensure_ascii=False)
    return {
        "id": new_id("rce_"), "run_id": run_id, "exception_class": d.exception_class.value,
        "record_kind": d.kind, "match_key": d.key[:128], "our_ref": d.ref,
        "merchant_id": d.merchant_id, "their_line": d.line, "their_values": values,
        "their_amount": d.their_amount, "our_amount": d.our_amount,
        "their_status": d.their_status, "our_status": d.our_status,
        "amount_difference": d.difference, "status": ExceptionStatus.OPEN.value,
        "resolution": None, "resolution_reason": None, "ledger_entry_id": None,
        "resolved_by": None, "resolved_at": None, "created_at": now,
    }  # fmt: skip


def resolution_entry(
    found: ReconciliationException, channel: str, action: Resolution
) -> Transfer:
    """The difference (theirs − ours, signed: + the channel owes us more) onto the channel's
    account — the receivable for sales, the payable for refunds — against suspense (adjust)
    or a write-off gain or loss."""
    difference = found.amount_difference
    if found.record_kind == RecordKind.PAYMENT:
        account = chart.channel_receivable(channel)
    else:
        account = chart.channel_payable(channel)
    if action is Resolution.ADJUST:
        counter = chart.RECONCILIATION_SUSPENSE
    elif difference > 0:
        counter = chart.RECONCILIATION_WRITE_OFF_GAIN
    else:
        counter = chart.RECONCILIATION_WRITE_OFF_LOSS
    return Transfer(
        id=f"reconciliation:{found.id}",
        postings=(Posting(account, difference), Posting(counter, -difference)),
        code=f"reconciliation_{action.value}",
        description=f"{found.exception_class} {found.match_key}"[:255],
    )


def run_summary(run: ReconciliationRun) -> dict[str, Any]:
    return {
        "channel": run.channel, "file_sha256": run.file_sha256,
        "period": [run.period_start, run.period_end], "statement_lines": run.statement_lines,
        "our_records": run.our_records, "matched": run.matched,
        **{c.value: getattr(run, c.value) for c in ExceptionClass},
        "statement_net": run.statement_net, "our_net": run.our_net,
        "net_difference": run.net_difference,
    }  # fmt: skip


def exception_summary(found: ReconciliationException) -> dict[str, Any]:
    return {
        "status": found.status, "resolution": found.resolution,
        "reason": found.resolution_reason, "ledger_entry_id": found.ledger_entry_id,
        "amount_difference": found.amount_difference,
    }  # fmt: skip

