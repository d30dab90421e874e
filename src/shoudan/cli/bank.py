"""``shoudan bank …``: the payout batch file and the bank's answer (docs/settlement.md).

``export`` writes the pending payouts as a batch file (``--batch`` writes an exported batch's file
again); ``simulate`` plays the bank and writes a confirmation file; ``import`` applies a
confirmation file (all or nothing). The batch and confirmation files hold account numbers in
clear: they are created owner-only (0600).
"""

from __future__ import annotations

from pathlib import Path

import typer

from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.container import Container, build_container
from shoudan.settlement.bankfile import parse_confirmations, write_batch, yuan
from shoudan.settlement.payouts import PayoutService
from shoudan.settlement.private_file import write_private
from shoudan.settlement.simulator import simulate as simulate_bank

app = typer.Typer(no_args_is_help=True)


def _payouts(database_url: str | None) -> tuple[PayoutService, Container]:
    container = build_container(settings(database_url))
    service = PayoutService(container.database, container.ledger, container.vault,
                            container.clock)  # fmt: skip
    return service, container


@app.command("export")
def export(
    out: Path = typer.Option(Path("."), "--out", help="Directory for the batch file."),
    batch_id: str | None = typer.Option(
        None, "--batch", help="Write an exported batch's file again (after a failed write)."
    ),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Put every pending payout in a new batch file, or write batch --batch again. The file
    holds account numbers in clear: it is created owner-only (0600) and goes to the bank only."""
    service, container = _payouts(database_url)
    try:
        batch = service.batch_file(batch_id) if batch_id else service.export_batch("cli")
    finally:
        container.dispose()
    if batch is None:
        typer.echo("no payout to send")
        return
    for payout_id, reason in batch.cancelled:
        typer.echo(f"cancelled {payout_id} (the next run pays it again): {reason}", err=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{batch.batch_id}.csv"
    try:
        write_private(path, lambda stream: write_batch(batch.lines, stream))
    except OSError as error:
        typer.echo(f"{path}: {error.strerror or error}; the batch {batch.batch_id} is recorded: "
                   f"write it again with `shoudan bank export --batch {batch.batch_id}`",
                   err=True)  # fmt: skip
        raise typer.Exit(1) from None
    typer.echo(f"{path}: {len(batch.lines)} lines, ¥{yuan(batch.total)}")


@app.command("simulate")
def simulate(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A batch file."),
    out: Path | None = typer.Option(None, "--out", help="Confirmation file to write."),
) -> None:
    """Play the bank: pay or reject each line (sandbox rules), write a confirmation file."""
    target = out or file.with_name(file.stem + ".confirmation.csv")
    paid, rejected = simulate_bank(file, target)
    typer.echo(f"{target}: {paid} paid, {rejected} rejected")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A confirmation file."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Apply the bank's confirmation: paid lines are done, rejected ones go back to the
    merchant's balance (and the merchant is told). A bad file imports nothing."""
    rows = parse_confirmations(file.name, file.read_text(encoding="utf-8"))
    service, container = _payouts(database_url)
    try:
        result = service.import_confirmations(file.name, rows, "cli")
    finally:
        container.dispose()
    typer.echo(
        f"{file.name}: {result.lines} lines, {result.paid} paid, {result.rejected} rejected "
        f"(¥{yuan(result.returned_amount)} back to balances), {result.unchanged} unchanged"
    )
