"""``shoudan settle --date YYYY-MM-DD``: run (or resume) a date's T+1 settlement; ``--d0`` runs
the current D0 slot instead. A progress bar on a terminal, a summary at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.container import Container, build_container
from shoudan.settlement.bankfile import yuan
from shoudan.settlement.domain import RunStatus, parse_run_date
from shoudan.settlement.models import SettlementRun
from shoudan.settlement.service import SettlementService


def service(container: Container) -> SettlementService:
    return SettlementService(
        container.database, container.ledger, container.vault, container.clock
    )


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar when stderr is a terminal; silent otherwise (logs, CI)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total: None
        return
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:  # fmt: skip
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def summary(run: SettlementRun) -> str:
    return (
        f"settlement {run.run_key} {run.status}: {run.merchants} merchants, "
        f"{run.payments} payments, settled ¥{yuan(run.settled_amount)}, D0 fees "
        f"¥{yuan(run.d0_fees)}, debt collected ¥{yuan(run.debt_collected)}, carried "
        f"¥{yuan(run.debt_carried)}, {run.payouts} payouts ¥{yuan(run.payout_amount)}, "
        f"{run.blocked} blocked"
    )


def settle(
    date: str | None = typer.Option(None, "--date", help="Settlement date, YYYY-MM-DD."),
    d0: bool = typer.Option(False, "--d0", help="Run the current D0 (秒到) slot instead."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Settle T+1 merchants for a date (from the 23:00 cut-off of the last trade date due on
    it: Tuesday's from Monday 23:00), or the D0 slot. Running a completed date again changes
    nothing; an interrupted one, or one where some merchant failed, resumes."""
    if (date is None) == (not d0):
        raise typer.BadParameter("give --date YYYY-MM-DD or --d0")
    container = build_container(settings(database_url))
    try:
        settlement = service(container)
        with progress_bar("settling merchants") as progress:
            if d0:
                run = settlement.run_d0(actor="cli", progress=progress)
            else:
                assert date is not None
                run = settlement.run_t1(parse_run_date(date), actor="cli", progress=progress)
        typer.echo(summary(run))
    finally:
        container.dispose()
    if run.status != RunStatus.COMPLETED.value:
        typer.echo("some merchants failed (see the log); run the same command again to settle "
                   "them", err=True)  # fmt: skip
        raise typer.Exit(1)
