"""Alembic environment: runs migrations online against the configured URL."""

from alembic import context

import shoudan.audit.models
import shoudan.auth.models
import shoudan.ledger.models
import shoudan.merchants.models
import shoudan.notifications.models
import shoudan.payments.models
import shoudan.pricing.models
import shoudan.terminals.models  # noqa: F401  (register tables)
from shoudan.core.db import Base, create_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations_online()
