"""``shoudan audit …``: verify the hash chain, show the latest records."""

from __future__ import annotations

import sys

import typer

from shoudan.audit import service
from shoudan.cli.common import DATABASE_URL_OPTION, open_database

app = typer.Typer(no_args_is_help=True)


@app.command("verify")
def verify(database_url: str | None = DATABASE_URL_OPTION) -> None:
    """Check every hash, link and the head; exit 1 and list the problems if any."""
    database = open_database(database_url)
    try:
        with database.read() as session:
            report = service.verify(session)
    finally:
        database.dispose()
    head = (
        f"head seq {report.head_seq} hash {report.head_hash}"
        if report.head_seq is not None
        else "no head (empty log)"
    )
    if report.ok:
        typer.echo(f"audit log OK: {report.rows_checked} rows checked; {head}")
        return
    typer.echo(
        f"audit log BROKEN: {report.problem_count} problem(s) in {report.rows_checked} rows "
        f"checked; {head}"
    )
    for problem in report.problems:
        typer.echo(f"  seq {problem.seq}: {problem.kind}: {problem.message}")
    hidden = report.problem_count - len(report.problems)
    if hidden > 0:
        typer.echo(f"  … and {hidden} more")
    sys.exit(1)


@app.command("tail")
def tail(
    n: int = typer.Option(20, "-n", "--lines", min=1, help="How many records."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Print the last N records, oldest first."""
    database = open_database(database_url)
    try:
        with database.read() as session:
            rows = service.tail(session, n)
            for row in rows:
                typer.echo(
                    f"{row.seq}\t{row.occurred_at.isoformat()}\t{row.actor}\t{row.action}\t"
                    f"{row.subject_type}:{row.subject_id}"
                )
    finally:
        database.dispose()
