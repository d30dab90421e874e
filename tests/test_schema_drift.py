"""The migrations build exactly the schema the models describe, on both engines (a model
changed without a migration, or the reverse, fails here)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import shoudan.migrations.env_models  # noqa: F401  (every table registered)
from shoudan.core.db import Base


def test_models_and_migrations_agree(database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
