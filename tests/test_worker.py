"""``shoudan worker`` housekeeping: Idempotency-Key records older than a day are purged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from typer.testing import CliRunner

from shoudan.auth.models import IdempotencyKey
from shoudan.cli.main import app


def _record(key: str, age: timedelta) -> IdempotencyKey:
    created = datetime.now(UTC) - age
    return IdempotencyKey(
        id=f"idem_{key}", scope="s" * 64, key=key, request_hash="h" * 64, status="completed",
        response_status=201, response_body="{}", response_body_encoding="utf-8",
        response_headers="[]", created_at=created, completed_at=created, locked_until=None,
    )  # fmt: skip


def test_worker_purges_idempotency_keys_older_than_a_day(database, db_url) -> None:
    with database.transaction() as session:
        session.add_all([_record("old", timedelta(days=2)), _record("new", timedelta(hours=1))])
    result = CliRunner().invoke(app, ["worker", "--once", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    assert "idempotency keys purged: 1" in result.output
    with database.read() as session:
        keys = session.execute(text("SELECT key FROM idempotency_keys")).scalars().all()
    assert keys == ["new"]
