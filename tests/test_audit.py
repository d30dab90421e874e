"""The hash-chained audit log: appends, verification, and detection of every kind of tampering.

The database refuses UPDATE and DELETE on ``audit_log`` (triggers), so the tampering tests drop
those triggers first, as an attacker with database access could.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from shoudan.audit import service
from shoudan.audit.domain import (
    GENESIS_HASH,
    ChainVerifier,
    Head,
    ProblemKind,
    canonical_json,
    chain_hash,
    record_fields,
    verify_chain,
)
from shoudan.audit.models import AuditHead, AuditRecord
from shoudan.cli.audit import app as audit_app
from shoudan.core.clock import SHANGHAI, FixedClock
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


# -- pure rules -------------------------------------------------------------------------------


def test_canonical_json_is_one_spelling_per_value() -> None:
    value = {"b": 1, "a": [1, 2], "名": "商户", "at": datetime(2026, 1, 1, 8, tzinfo=UTC)}
    assert canonical_json(value) == (
        '{"a":[1,2],"at":"2026-01-01T08:00:00.000000Z","b":1,"名":"商户"}'
    )
    shanghai = datetime(2026, 1, 1, 16, tzinfo=UTC).astimezone(SHANGHAI)
    assert canonical_json(shanghai) == '"2026-01-01T16:00:00.000000Z"'
    assert canonical_json(Decimal("0.60")) == '"0.60"'


@pytest.mark.parametrize("bad", [float("nan"), object(), datetime(2026, 1, 1)])
def test_canonical_json_refuses_what_it_cannot_spell(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json({"x": bad})


def test_chain_hash_covers_fields_and_predecessor() -> None:
    fields = {"seq": 1, "actor": "alice"}
    h = chain_hash(GENESIS_HASH, fields)
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == chain_hash(GENESIS_HASH, dict(reversed(fields.items())))
    assert h != chain_hash("1" * 64, fields)
    assert h != chain_hash(GENESIS_HASH, {**fields, "actor": "bob"})
    with pytest.raises(ValueError):
        chain_hash(GENESIS_HASH, {"prev_hash": "x"})


@dataclass(frozen=True)
class Row:
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


def make_chain(n: int) -> list[Row]:
    rows: list[Row] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        base = {
            "id": f"id{seq}",
            "occurred_at": T0 + timedelta(seconds=seq),
            "actor": "staff:1",
            "action": "merchant.approve",
            "subject_type": "merchant",
            "subject_id": f"M{seq}",
            "before": None,
            "after": canonical_json({"status": "approved"}),
        }
        digest = chain_hash(prev, record_fields(seq=seq, **base))  # type: ignore[arg-type]
        rows.append(Row(seq=seq, prev_hash=prev, hash=digest, **base))  # type: ignore[arg-type]
        prev = digest
    return rows


def head_of(rows: list[Row]) -> Head:
    return Head(rows[-1].seq, rows[-1].hash)


def kinds(problems: list) -> set[ProblemKind]:  # type: ignore[type-arg]
    return {p.kind for p in problems}


def test_verify_chain_accepts_an_intact_chain_and_an_empty_one() -> None:
    rows = make_chain(5)
    assert verify_chain(rows, head_of(rows)) == []
    assert verify_chain([], None) == []
    assert verify_chain([], Head(0, GENESIS_HASH)) == []


def test_verify_chain_detects_an_edit() -> None:
    rows = make_chain(5)
    rows[2] = replace(rows[2], actor="mallory")
    problems = verify_chain(rows, head_of(rows))
    assert [(p.seq, p.kind) for p in problems] == [(3, ProblemKind.EDITED)]


def test_verify_chain_detects_an_edit_with_a_recomputed_hash() -> None:
    rows = make_chain(5)
    edited = replace(rows[2], actor="mallory")
    rows[2] = replace(edited, hash=chain_hash(edited.prev_hash, record_fields(**_fields(edited))))
    problems = verify_chain(rows, head_of(rows))
    assert [(p.seq, p.kind) for p in problems] == [(4, ProblemKind.BROKEN_LINK)]


def _fields(row: Row) -> dict:  # type: ignore[type-arg]
    return {k: v for k, v in row.__dict__.items() if k not in {"prev_hash", "hash"}}


def test_verify_chain_detects_deleted_rows() -> None:
    rows = make_chain(6)
    del rows[2:4]  # seq 3 and 4
    problems = verify_chain(rows, head_of(rows))
    assert [(p.seq, p.kind) for p in problems] == [(3, ProblemKind.MISSING)]
    assert "seq 3..4" in problems[0].message
    first_gone = make_chain(3)[1:]
    assert [(p.seq, p.kind) for p in verify_chain(first_gone, head_of(first_gone))] == [
        (1, ProblemKind.MISSING)
    ]


def test_verify_chain_detects_swapped_seq_numbers() -> None:
    rows = make_chain(5)
    a, b = rows[1], rows[2]
    rows[1], rows[2] = replace(b, seq=2), replace(a, seq=3)
    problems = verify_chain(rows, head_of(rows))
    reordered = [p for p in problems if p.kind is ProblemKind.REORDERED]
    assert {p.seq for p in reordered} == {2, 3}
    assert ProblemKind.EDITED not in kinds(problems)


def test_verify_chain_detects_rows_out_of_order() -> None:
    rows = make_chain(4)
    rows[1], rows[2] = rows[2], rows[1]
    assert ProblemKind.REORDERED in kinds(verify_chain(rows, Head(4, rows[-1].hash)))


def test_verify_chain_checks_the_head() -> None:
    rows = make_chain(5)
    head = head_of(rows)
    truncated = verify_chain(rows[:3], head)
    assert [(p.seq, p.kind) for p in truncated] == [(4, ProblemKind.TRUNCATED)]
    assert kinds(verify_chain([], head)) == {ProblemKind.TRUNCATED}
    assert kinds(verify_chain(rows, None)) == {ProblemKind.HEAD_MISSING}
    assert kinds(verify_chain(rows, Head(5, "f" * 64))) == {ProblemKind.HEAD_MISMATCH}
    assert kinds(verify_chain(rows, Head(4, rows[3].hash))) == {ProblemKind.HEAD_MISMATCH}


def test_verifier_caps_the_problem_list_but_counts_everything() -> None:
    rows = [replace(r, actor="x") for r in make_chain(30)]
    verifier = ChainVerifier(max_problems=10)
    for row in rows:
        verifier.feed(row)
    problems = verifier.finish(Head(30, rows[-1].hash))
    assert len(problems) == 10
    assert verifier.problem_count == 30
    assert not verifier.ok


# -- service ---------------------------------------------------------------------------------


def add(database: Database, n: int, clock: FixedClock | None = None) -> None:
    clock = clock or FixedClock(T0)
    for i in range(n):
        with database.transaction() as session:
            service.record(
                session,
                actor="staff:alice",
                action="merchant.update",
                subject_type="merchant",
                subject_id=f"M{i}",
                before={"name": "旧名", "limit": Decimal("100.00")},
                after={"name": "新名", "at": clock.now()},
                clock=clock,
            )
        clock.advance(timedelta(seconds=1))


def report(database: Database, chunk: int = service.VERIFY_CHUNK) -> service.AuditReport:
    with database.read() as session:
        return service.verify(session, chunk=chunk)


def test_record_appends_a_linked_chain(database: Database) -> None:
    assert report(database).ok
    add(database, 5)
    with database.read() as session:
        rows = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars().all()
        head = session.get(AuditHead, 1)
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
        assert rows[0].before == '{"limit":"100.00","name":"旧名"}'
        assert rows[0].after == '{"at":"2026-11-23T08:00:00.000000Z","name":"新名"}'
        assert rows[0].occurred_at == T0
        assert head is not None and (head.last_seq, head.last_hash) == (5, rows[-1].hash)
        last_hash = rows[-1].hash
    result = report(database, chunk=2)  # several chunks, one partial
    assert result.ok and result.rows_checked == 5 and result.problems == []
    assert (result.head_seq, result.head_hash) == (5, last_hash)
    result.raise_if_broken()


def test_record_is_part_of_the_callers_transaction(database: Database) -> None:
    add(database, 1)
    with pytest.raises(RuntimeError), database.transaction() as session:
        service.record(session, actor="staff:a", action="x.y", subject_type="t", subject_id="1")
        raise RuntimeError("use case failed")
    with database.read() as session:
        assert session.execute(select(func.count()).select_from(AuditRecord)).scalar() == 1
        head = session.get(AuditHead, 1)
        assert head is not None and head.last_seq == 1
    add(database, 1)
    assert report(database).ok


@pytest.mark.parametrize(
    "overrides",
    [
        {"actor": ""},
        {"actor": "   "},
        {"action": "a" * 65},
        {"subject_id": None},
        {"after": {"x": object()}},
        {"before": {"x": float("inf")}},
    ],
)
def test_record_validates_its_input(database: Database, overrides: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {
        "actor": "staff:a",
        "action": "x.y",
        "subject_type": "t",
        "subject_id": "1",
    }
    kwargs.update(overrides)
    with database.transaction() as session, pytest.raises(DomainError) as info:
        service.record(session, **kwargs)
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_concurrent_appends_stay_one_gap_free_chain(database: Database) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(10):
                with database.transaction() as session:
                    service.record(
                        session,
                        actor=f"staff:{n}",
                        action="t.x",
                        subject_type="t",
                        subject_id=str(i),
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = report(database)
    assert result.ok, result.problems
    assert result.rows_checked == 40 and result.head_seq == 40


def test_tail_returns_the_latest_records_oldest_first(database: Database) -> None:
    add(database, 5)
    with database.read() as session:
        assert [r.seq for r in service.tail(session, 3)] == [3, 4, 5]
        with pytest.raises(DomainError):
            service.tail(session, 0)


# -- tampering --------------------------------------------------------------------------------


def drop_triggers(database: Database) -> None:
    with database.transaction() as session:
        if database.dialect == "sqlite":
            session.execute(text("DROP TRIGGER trg_audit_log_no_update"))
            session.execute(text("DROP TRIGGER trg_audit_log_no_delete"))
        else:
            session.execute(text("DROP TRIGGER trg_audit_log_append_only ON audit_log"))


def tamper(database: Database, *statements: str) -> None:
    drop_triggers(database)
    with database.transaction() as session:
        for statement in statements:
            session.execute(text(statement))


def problem_kinds(database: Database) -> list[tuple[int, ProblemKind]]:
    result = report(database, chunk=3)
    assert not result.ok
    assert result.problem_count == len(result.problems)
    with pytest.raises(DomainError) as info:
        result.raise_if_broken()
    assert info.value.code is ErrorCode.AUDIT_CHAIN_BROKEN
    return [(p.seq, p.kind) for p in result.problems]


def test_triggers_refuse_tampering_in_the_first_place(database: Database) -> None:
    add(database, 2)
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError), database.transaction() as session:
            session.execute(text(statement))
    assert report(database).ok


def test_edited_row_is_detected(database: Database) -> None:
    add(database, 6)
    tamper(database, "UPDATE audit_log SET actor = 'staff:mallory' WHERE seq = 4")
    assert problem_kinds(database) == [(4, ProblemKind.EDITED)]


def test_edited_payload_is_detected(database: Database) -> None:
    add(database, 3)
    tamper(database, """UPDATE audit_log SET "after" = '{"name":"x"}' WHERE seq = 2""")
    assert problem_kinds(database) == [(2, ProblemKind.EDITED)]


def test_deleted_middle_row_is_detected(database: Database) -> None:
    add(database, 6)
    tamper(database, "DELETE FROM audit_log WHERE seq = 3")
    assert problem_kinds(database) == [(3, ProblemKind.MISSING)]


def test_deleted_last_row_is_detected_by_the_head(database: Database) -> None:
    add(database, 6)
    tamper(database, "DELETE FROM audit_log WHERE seq >= 5")
    assert problem_kinds(database) == [(5, ProblemKind.TRUNCATED)]


def test_everything_deleted_is_detected(database: Database) -> None:
    add(database, 3)
    tamper(database, "DELETE FROM audit_log")
    assert problem_kinds(database) == [(1, ProblemKind.TRUNCATED)]


def test_swapped_rows_are_detected(database: Database) -> None:
    add(database, 6)
    tamper(
        database,
        "UPDATE audit_log SET seq = 1000 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 1000",
    )
    found = problem_kinds(database)
    assert (2, ProblemKind.REORDERED) in found and (3, ProblemKind.REORDERED) in found
    assert ProblemKind.EDITED not in {kind for _, kind in found}


def test_deleted_head_is_detected_and_blocks_new_records(database: Database) -> None:
    add(database, 2)
    with database.transaction() as session:
        session.execute(text("DELETE FROM audit_head"))
    assert problem_kinds(database) == [(2, ProblemKind.HEAD_MISSING)]
    with pytest.raises(DomainError) as info, database.transaction() as session:
        service.record(session, actor="a", action="b", subject_type="c", subject_id="d")
    assert info.value.code is ErrorCode.AUDIT_CHAIN_BROKEN


def test_rows_appended_behind_the_heads_back_are_detected(database: Database) -> None:
    add(database, 3)
    with database.transaction() as session:
        session.execute(
            text(
                "UPDATE audit_head SET last_seq = 2, "
                "last_hash = (SELECT hash FROM audit_log WHERE seq = 2)"
            )
        )
    found = problem_kinds(database)
    assert found == [(3, ProblemKind.HEAD_MISMATCH)]


# -- command line ----------------------------------------------------------------------------


def test_cli_verify_exit_codes(database: Database) -> None:
    runner = CliRunner()
    result = runner.invoke(audit_app, ["verify", "--database-url", database.url])
    assert result.exit_code == 0, result.output
    assert "OK: 0 rows" in result.output

    add(database, 4)
    result = runner.invoke(audit_app, ["verify", "--database-url", database.url])
    assert result.exit_code == 0, result.output
    assert "OK: 4 rows checked" in result.output and "head seq 4" in result.output

    tamper(database, "DELETE FROM audit_log WHERE seq = 2")
    result = runner.invoke(audit_app, ["verify", "--database-url", database.url])
    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output
    assert "seq 2: missing" in result.output


def test_cli_tail(database: Database) -> None:
    add(database, 4)
    result = CliRunner().invoke(audit_app, ["tail", "-n", "2", "--database-url", database.url])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["3", "4"]
    assert "merchant:M3" in lines[-1]
