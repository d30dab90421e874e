"""Alembic environment: runs migrations online against the configured URL."""

from alembic import context
from sqlalchemy import Connection

import shoudan.migrations.env_models  # noqa: F401  (register every table)
from shoudan.core.db import Base, create_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                _sqlite_foreign_keys(connection, on=False)
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                _sqlite_foreign_keys(connection, on=True)
    finally:
        engine.dispose()


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """SQLite's batch mode copies a table to alter it and drops the old one; with foreign
    keys enforced, dropping a table that rows of another table reference fails (a database
    with payments, upgraded past 0012, did). So they are off while migrations run — the
    pragma only takes effect outside a transaction, hence the driver connection — and checked
    as a whole afterwards: a migration that broke a reference stops here."""
    driver = connection.connection.dbapi_connection
    assert driver is not None
    if on:
        broken = driver.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the migrations left broken references: {broken[:5]}")
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


run_migrations_online()
