"""``shoudan ledger …``: check the invariants, export the books."""

from __future__ import annotations

from pathlib import Path

import typer

from shoudan.cli.common import DATABASE_URL_OPTION, open_database
from shoudan.ledger.service import Ledger

app = typer.Typer(no_args_is_help=True)


@app.command("verify")
def verify(database_url: str | None = DATABASE_URL_OPTION) -> None:
    """Check every ledger invariant; exit 1 and list the violations if any fails."""
    database = open_database(database_url)
    try:
        report = Ledger(database).verify()
    finally:
        database.dispose()
    typer.echo(
        f"checked {report.accounts} accounts, {report.entries} entries, "
        f"{report.postings} postings"
    )
    if report.ok:
        typer.echo("ledger OK: zero sums, balances replay, limits, holds resolved at most once")
        return
    for violation in report.violations:
        typer.echo(f"VIOLATION {violation.invariant} {violation.subject}: {violation.message}")
    raise typer.Exit(1)


@app.command("export")
def export(
    file: Path = typer.Argument(..., help="Output file ('-' for standard output)."),
    fmt: str = typer.Option("beancount", "--format", help="Only 'beancount' for now."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Write the ledger as a beancount file that bean-check accepts."""
    if fmt != "beancount":
        typer.echo(f"error: unknown format {fmt!r}; supported: beancount", err=True)
        raise typer.Exit(2)
    database = open_database(database_url)
    try:
        ledger = Ledger(database)
        if str(file) == "-":
            import sys

            count = ledger.export_beancount(sys.stdout)
        else:
            with file.open("w", encoding="utf-8") as out:
                count = ledger.export_beancount(out)
            typer.echo(f"wrote {count} transactions to {file}", err=True)
    finally:
        database.dispose()
