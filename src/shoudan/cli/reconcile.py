"""``shoudan reconcile FILE --channel …``: import a channel statement and reconcile it, with a
progress bar on a terminal (Rich) and the run's summary at the end.

Acts as the holder of an API key (``--key`` or ``SHOUDAN_API_KEY``), like the HTTP API: only
finance staff and admins reconcile. The same file imported twice prints the earlier run.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from shoudan.auth.service import authenticate
from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.container import build_container
from shoudan.core.money import Money
from shoudan.reconciliation.domain import Channel, ExceptionClass, parse_period
from shoudan.reconciliation.models import ReconciliationRun
from shoudan.reconciliation.service import ReconciliationService, StatementUpload

KEY_OPTION = typer.Option(
    ..., "--key", envvar="SHOUDAN_API_KEY", help="API key to act as (sk_…).", show_default=False
)
_LABELS = {
    "statement": "reading the statement",
    "ours": "loading our records",
    "exceptions": "writing exceptions",
}
_CLASS_LABELS = {
    ExceptionClass.MISSING_IN_OURS: "missing in ours (长款)",
    ExceptionClass.MISSING_IN_CHANNEL: "missing in the channel's (短款)",
    ExceptionClass.AMOUNT_MISMATCH: "amount mismatch",
    ExceptionClass.STATUS_MISMATCH: "status mismatch",
}


def reconcile(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    channel: Channel = typer.Option(..., "--channel", help="Whose statement this is."),
    start: str | None = typer.Option(
        None, "--from", help="First day of the run (YYYY-MM-DD); default: the statement's."
    ),
    end: str | None = typer.Option(None, "--to", help="Last day of the run (default: --from)."),
    key: str = KEY_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Match a channel statement against our payments and refunds; print the summary."""
    period = parse_period(start, end) if start else None
    console = Console(stderr=True)
    container = build_container(settings(database_url))
    try:
        with container.database.read() as session:
            principal = authenticate(session, key, clock=container.clock)
        service = ReconciliationService(container.database, container.ledger, container.clock)
        upload = StatementUpload(file, file.name, channel, period)
        with _ProgressBar(console) as report:
            result = service.import_statement(principal, upload, report)
    finally:
        container.dispose()
    if not result.created:
        typer.echo(f"already imported: this file is run {result.run.id} (nothing changed)")
    Console().print(summary_table(result.run))


class _ProgressBar:
    """The Rich bar, driven by the service's (stage, count) reports; silent off a terminal."""

    def __init__(self, console: Console) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
            disable=not console.is_terminal,
        )  # fmt: skip
        self.tasks: dict[str, TaskID] = {}
        self.total: int | None = None

    def __enter__(self) -> _ProgressBar:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, stage: str, count: int) -> None:
        if stage == "scan":
            self.total = count
            return
        if stage not in self.tasks:
            total = self.total if stage == "statement" else None
            self.tasks[stage] = self.bar.add_task(_LABELS.get(stage, stage), total=total)
        self.bar.update(self.tasks[stage], completed=count)


def summary_table(run: ReconciliationRun) -> Table:
    table = Table(title=f"reconciliation {run.id} · {run.channel} · "
                        f"{run.period_start} → {run.period_end}")  # fmt: skip
    table.add_column("")
    table.add_column("lines", justify="right")
    table.add_row("statement lines", f"{run.statement_lines:,}")
    table.add_row("our records", f"{run.our_records:,}")
    table.add_row("matched", f"{run.matched:,}")
    for cls, label in _CLASS_LABELS.items():
        table.add_row(label, f"{getattr(run, cls.value):,}")
    table.add_row("statement net", Money(run.statement_net).format())
    table.add_row("our net", Money(run.our_net).format())
    table.add_row("difference", Money(run.net_difference).format())
    return table
