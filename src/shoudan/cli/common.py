"""Helpers every command shares: settings, the database handle, error reporting."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from shoudan.core.config import Settings, get_settings
from shoudan.core.db import Database
from shoudan.core.errors import DomainError


def settings(database_url: str | None = None) -> Settings:
    base = get_settings()
    if database_url:
        return base.model_copy(update={"database_url": database_url})
    return base


def open_database(database_url: str | None = None) -> Database:
    config = settings(database_url)
    return Database(config.resolved_database_url(), group_commit=config.sqlite_group_commit)


def fail(error: DomainError | str, exit_code: int = 1) -> NoReturn:
    message = str(error)
    typer.echo(f"error: {message}", err=True)
    sys.exit(exit_code)


DATABASE_URL_OPTION = typer.Option(
    None, "--database-url", envvar="SHOUDAN_DATABASE_URL", help="Database URL."
)
