"""The migrations build the schema on both engines, and the storage guarantees hold.

These run the real migrations (not the per-session template copy), check that history tables
refuse UPDATE and DELETE at the database level, and that SQLite runs with the durability and
locking settings money needs.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, insert, inspect, text
from sqlalchemy.exc import DBAPIError

from shoudan import migrations
from shoudan.core.db import SQLITE_BUSY_TIMEOUT_MS, Database, create_engine

APPEND_ONLY = ["ledger_entries", "ledger_postings", "audit_log"]
CORE_TABLES = {
    "ledger_accounts",
    "ledger_entries",
    "ledger_postings",
    "audit_log",
    "audit_head",
    "outbox_events",
}


def head_revision(url: str) -> str:
    head = ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()
    assert head is not None
    return head


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(blank_db_url: str) -> None:
    """Every migration must be reversible, and re-applicable after a full downgrade."""
    head = head_revision(blank_db_url)
    assert migrations.current(blank_db_url) is None

    migrations.upgrade(blank_db_url)
    assert migrations.current(blank_db_url) == head
    assert table_names(blank_db_url) >= CORE_TABLES

    migrations.downgrade(blank_db_url, "base")
    assert migrations.current(blank_db_url) is None
    assert table_names(blank_db_url) - {"alembic_version"} == set()

    migrations.upgrade(blank_db_url)
    assert migrations.current(blank_db_url) == head
    assert table_names(blank_db_url) >= CORE_TABLES


def test_template_copy_is_at_head(db_url: str) -> None:
    """The per-test copies really carry the migrated schema."""
    assert migrations.current(db_url) == head_revision(db_url)
    assert table_names(db_url) >= CORE_TABLES


def _row(table: Table, **known: Any) -> dict[str, Any]:
    """A valid row for ``table``: the values given, plus a plain value for every other
    required column, so this test survives columns being added to the schema."""
    row = dict(known)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None:
            continue
        python_type = _python_type(column.type)
        if python_type is str:
            length = getattr(column.type, "length", None) or 64
            row[column.name] = ("x" * 64)[:length]
        elif python_type is int:
            row[column.name] = 1
        elif python_type is datetime:
            row[column.name] = datetime.now(UTC)
        elif python_type is bool:
            row[column.name] = False
    return row


def _python_type(column_type: Any) -> type | None:
    try:
        return column_type.python_type  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def _seed_history(database: Database) -> None:
    """One row in each append-only table, written with SQLAlchemy Core on the reflected schema
    so this test depends on the migrations only, not on the ledger and audit services."""
    with database.transaction() as session:
        meta = MetaData()
        meta.reflect(session.connection(), only=["ledger_accounts", *APPEND_ONLY])
        accounts = meta.tables["ledger_accounts"]
        for account_id in ("assets:test:a", "assets:test:b"):
            session.execute(
                insert(accounts).values(
                    _row(
                        accounts, id=account_id, type="asset", currency="CNY", name=account_id,
                        debits_posted=0, credits_posted=0, debits_pending=0, credits_pending=0,
                        max_debit_balance=None, max_credit_balance=None,
                    )
                )
            )  # fmt: skip
        entries = meta.tables["ledger_entries"]
        session.execute(
            insert(entries).values(
                _row(entries, id="e1", kind="transfer", resolves_id=None, expires_at=None)
            )
        )
        postings = meta.tables["ledger_postings"]
        for seq, (account_id, amount) in enumerate(
            [("assets:test:a", 100), ("assets:test:b", -100)], start=1
        ):
            posting = _row(
                postings, entry_id="e1", account_id=account_id, currency="CNY", amount=amount
            )
            if "seq" in postings.c:
                posting["seq"] = seq
            if "id" in postings.c and postings.c.id.autoincrement is not False:
                posting.pop("id", None)
            session.execute(insert(postings).values(posting))
        audit = meta.tables["audit_log"]
        session.execute(insert(audit).values(_row(audit, seq=1, id="a1", before=None, after=None)))


ATTEMPTS = {
    "ledger_entries": (
        "UPDATE ledger_entries SET description = 'rewritten'",
        "DELETE FROM ledger_entries",
    ),
    "ledger_postings": ("UPDATE ledger_postings SET amount = 1", "DELETE FROM ledger_postings"),
    "audit_log": ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"),
}


@pytest.mark.parametrize("table", APPEND_ONLY)
def test_history_tables_are_append_only(database: Database, table: str) -> None:
    """The database itself refuses to rewrite history, whatever the application does."""
    _seed_history(database)
    for statement in ATTEMPTS[table]:
        with pytest.raises(DBAPIError, match="append-only"), database.transaction() as session:
            session.execute(text(statement))
    with database.read() as session:
        count = session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    assert count >= 1


def test_sqlite_connection_pragmas(sqlite_database: Database) -> None:
    """WAL for concurrent readers, FULL sync so a committed payment survives power loss,
    savepoints' sub-journals in memory (temp_store 2)."""
    names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "temp_store")
    with sqlite_database.engine.connect() as conn:
        pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in names}
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
        "temp_store": 2,
    }


def _raw(url: str) -> sqlite3.Connection:
    """A second, independent connection that gives up at once instead of waiting."""
    path = url.removeprefix("sqlite:///")
    return sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)


def test_sqlite_write_transaction_begins_immediate(sqlite_database: Database) -> None:
    """A write transaction takes the write lock at BEGIN, before its first write: two writers
    then queue up instead of one failing with SQLITE_BUSY on a lock upgrade mid-transaction."""
    with closing(_raw(sqlite_database.url)) as other, sqlite_database.transaction() as session:
        session.execute(text("SELECT 1"))  # no write yet
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        # Readers are not blocked by the writer (WAL).
        assert other.execute("SELECT count(*) FROM ledger_accounts").fetchone() == (0,)


def test_sqlite_read_does_not_take_the_write_lock(sqlite_database: Database) -> None:
    with closing(_raw(sqlite_database.url)) as other, sqlite_database.read() as session:
        session.execute(text("SELECT count(*) FROM ledger_accounts")).scalar_one()
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")


def test_sqlite_second_writer_waits_for_the_first(sqlite_database: Database) -> None:
    """With busy_timeout, a second writer blocks until the first commits, then proceeds."""
    first_has_lock = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with sqlite_database.transaction() as session:
            session.execute(text("SELECT 1"))
            first_has_lock.set()
            release.wait(timeout=10)
            order.append("first committed")

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_has_lock.wait(timeout=10)
        timer = threading.Timer(0.3, release.set)
        timer.start()
        with sqlite_database.transaction() as session:
            session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE happens here
            order.append("second began")
    finally:
        release.set()
        thread.join(timeout=10)
    assert order == ["first committed", "second began"]


def test_a_sqlite_database_with_data_upgrades_past_table_copies(tmp_path: Any) -> None:
    """SQLite alters a table by copying it and dropping the old one: with foreign keys on,
    a terminal referenced by a signed-on session stopped the upgrade past 0012 (a demo
    database of an earlier version did). Migrations run with them off, checked after."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrations.upgrade(url, "0011")
    at = "2026-11-23 00:00:00.000000"
    with closing(sqlite3.connect(tmp_path / "old.db")) as connection, connection:
        connection.execute(
            "INSERT INTO merchants VALUES ('898310000000001', 'Old Shop', 'individual', '5411',"
            " '3100', 'active', 'standard', NULL, x'00', 'hash', '138****0000', ?, ?)",
            (at, at),
        )
        connection.execute(
            "INSERT INTO terminals VALUES ('OLD00001', 'SN-OLD-1', 'epos', '898310000000001',"
            " 'active', x'00', 'ABCDEF', ?)",
            (at,),
        )
        connection.execute(
            "INSERT INTO terminal_sessions VALUES ('OLD00001', x'00', x'00', '00000000',"
            " '00000000', '000001', ?, ?)",
            (at, at),
        )
        # as an early demo database: past 0005 before 0005 made the running day totals
        connection.execute("DROP TABLE payment_day_totals")
        for n, (status, amount, captured) in enumerate(
            [("captured", 1_000, 1_000), ("authorized", 500, 0), ("declined", 700, 0)]
        ):
            connection.execute(
                "INSERT INTO payments (id, merchant_id, terminal_id, method, status, currency,"
                " amount, captured_amount, fee, net, refunded_amount, fee_plan_code,"
                " business_date, rrn, network, prepayment, description, request_hash,"
                " card_token, created_at, updated_at) VALUES (?, '898310000000001',"
                " 'OLD00001', 'card', ?, 'CNY', ?, ?, 0, ?, 0, 'standard', '2026-11-20', ?,"
                " 'unionpay', 0, '', 'h', 'tok', ?, ?)",
                (f"pay_old_{n}", status, amount, captured, captured, f"26324000000{n}", at, at),
            )
    migrations.upgrade(url)
    assert migrations.current(url) == head_revision(url)
    with closing(sqlite3.connect(tmp_path / "old.db")) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        assert connection.execute("SELECT terminal_id FROM terminal_sessions").fetchall() == [
            ("OLD00001",)
        ]
        totals = connection.execute(
            "SELECT scope, scope_key, amount FROM payment_day_totals ORDER BY scope"
        ).fetchall()
    assert totals == [("card", "tok", 1_500), ("merchant", "898310000000001", 1_500)]
    # every payment made before 0025 was sent to the network under its id: NULL says so
    with closing(sqlite3.connect(tmp_path / "old.db")) as connection:
        references = connection.execute("SELECT DISTINCT upstream_reference FROM payments")
        assert references.fetchall() == [(None,)]
