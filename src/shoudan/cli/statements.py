"""``shoudan statements --period 2026-11``: merchant statements as files, one per merchant
(all merchants, or ``--merchant``), with a progress bar; one statement in memory at a time."""

from __future__ import annotations

from pathlib import Path

import typer

from shoudan.auth.domain import Principal, Role
from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.cli.settle import progress_bar, service
from shoudan.container import Container, build_container
from shoudan.merchants.service import list_merchants

OPERATOR = Principal(id="cli", role=Role.ADMIN, merchant_id=None)


def statements(
    period: str = typer.Option(..., "--period", help="YYYY-MM (monthly) or YYYY-MM-DD (daily)."),
    merchant: str | None = typer.Option(None, "--merchant", help="Only this merchant."),
    fmt: str = typer.Option("pdf", "--format", help="csv, xlsx or pdf."),
    out: Path = typer.Option(Path("statements"), "--out", help="Directory to write to."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Write merchant statements: opening balance, sales, fees, refunds, deposits, payouts,
    closing balance, day by day — every figure from the ledger."""
    container = build_container(settings(database_url))
    try:
        settlement = service(container)
        out.mkdir(parents=True, exist_ok=True)
        ids = [merchant] if merchant else _all_merchants(container)
        written = 0
        with progress_bar("writing statements") as progress:
            for done, merchant_id in enumerate(ids, 1):
                name, body = settlement.statement(OPERATOR, merchant_id, period, fmt)
                (out / name).write_bytes(body)
                written += 1
                progress(done, len(ids))
        typer.echo(f"{written} statements for {period} in {out}")
    finally:
        container.dispose()


def _all_merchants(container: Container) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        with container.database.read() as session:
            page = list_merchants(session, limit=500, cursor=cursor)
        ids.extend(m.merchant_id for m in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
