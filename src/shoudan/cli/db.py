"""``shoudan db …``: schema migrations."""

from __future__ import annotations

import typer

from shoudan import migrations
from shoudan.bootstrap import bootstrap
from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.core.db import Database

app = typer.Typer(no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Migrate the configured database to the newest schema (or REVISION)."""
    url = settings(database_url).resolved_database_url()
    migrations.upgrade(url, revision)
    if revision == "head":
        database = Database(url)
        try:
            bootstrap(database)  # platform accounts and default fee plans
        finally:
            database.dispose()
    typer.echo(f"database at revision {migrations.current(url)}")


@app.command("current")
def current(database_url: str | None = DATABASE_URL_OPTION) -> None:
    """Print the database's schema revision."""
    typer.echo(migrations.current(settings(database_url).resolved_database_url()) or "empty")
