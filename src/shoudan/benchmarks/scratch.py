"""What the benchmarks share: scratch databases on PostgreSQL (``--database-url``), and the
ledger check that ends each run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from shoudan import migrations
from shoudan.core.db import Database, normalize_url
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger.service import Ledger


@contextmanager
def scratch_postgres(database_url: str, *labels: str) -> Iterator[list[str]]:
    """One empty, migrated database per label on the server of ``database_url`` (named
    ``shoudan_bench_<label>_<random>``), dropped afterwards whatever happens. Anything but a
    PostgreSQL URL is refused before anything is created."""
    if make_url(normalize_url(database_url)).get_backend_name() != "postgresql":
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "--database-url names a PostgreSQL server (postgresql://user@host/db); "
            "without it the benchmark runs on a SQLite file of its own",
        )
    admin = Database(database_url, isolation_level="AUTOCOMMIT", poolclass=None)
    suffix = os.urandom(4).hex()
    names = [f"shoudan_bench_{label}_{suffix}" for label in labels]
    base = admin.engine.url
    try:
        with admin.engine.connect() as conn:
            for name in names:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        urls = [base.set(database=n).render_as_string(hide_password=False) for n in names]
        for url in urls:
            migrations.upgrade(url)
        yield urls
    finally:
        with admin.engine.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def ledger_line(bench: str, url: str) -> dict[str, Any]:
    """The closing line of a run: the books the run wrote verify (``Ledger.verify``)."""
    database = Database(url)
    try:
        report = Ledger(database).verify()
        return {"bench": bench, "ledger_verified": report.ok, "entries": report.entries}
    finally:
        database.dispose()
