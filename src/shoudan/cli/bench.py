"""``shoudan bench …``: benchmarks that print JSON lines with their own baseline."""

from __future__ import annotations

import json

import typer

from shoudan.benchmarks import api as api_bench
from shoudan.benchmarks import gateway as gateway_bench
from shoudan.benchmarks import ledger as ledger_bench
from shoudan.benchmarks import reconcile as reconcile_bench
from shoudan.benchmarks import settlement as settlement_bench

app = typer.Typer(no_args_is_help=True)


@app.command("ledger")
def ledger(
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        help="Also run on this PostgreSQL server (scratch databases are created and dropped).",
    ),
    batch_sizes: str = typer.Option("1,100,1000", help="Comma-separated batch sizes."),
    transfers: int | None = typer.Option(None, help="Transfers per batch size (default: auto)."),
    clients: int = typer.Option(
        16, help="Concurrent clients for the group-commit runs (1: sequential runs only)."
    ),
) -> None:
    """Transfers/s at each batch size on SQLite (synchronous=FULL), with the raw baseline;
    sequential, then from concurrent clients through the group-commit writer."""
    sizes = tuple(int(size) for size in batch_sizes.split(","))
    counts = {size: max(transfers, size) for size in sizes} if transfers else None
    targets = [None] + ([database_url] if database_url else [])
    for url in targets:
        for line in ledger_bench.run(url, sizes, counts, clients=clients):
            typer.echo(json.dumps(line))


@app.command("api")
def api(
    seconds: float = typer.Option(10.0, help="Duration of each load phase."),
    database_url: str | None = typer.Option(
        None, help="A PostgreSQL server to run on (a scratch database, dropped afterwards)."
    ),
    workers: int = typer.Option(
        1, min=1, help="`shoudan serve --workers N`: HTTP processes behind the port."
    ),
) -> None:
    """Payments/s over HTTP (uvicorn, 32 clients on loopback), p50/p99, against GET /livez."""
    for line in api_bench.run(seconds, database_url=database_url, workers=workers):
        typer.echo(json.dumps(line, ensure_ascii=False))


@app.command("gateway")
def gateway(
    connections: int = typer.Option(50, min=1, help="Concurrent terminals, one connection each."),
    seconds: float = typer.Option(
        20.0, help="Counted duration of each load phase (its rounds together)."
    ),
    merchants: int = typer.Option(
        1, min=1, help="Spread the terminals over this many merchants, each with its own card."
    ),
    database_url: str | None = typer.Option(
        None, help="A PostgreSQL server to run on (a scratch database, dropped afterwards)."
    ),
    processes: int = typer.Option(
        1, min=1, max=64, help="`shoudan gateway --processes N`: gateways behind the port."
    ),
    rounds: int = typer.Option(
        gateway_bench.ROUNDS, min=1, max=100,
        help="Load the echo server and the gateway in turns, this many rounds each.",
    ),
) -> None:
    """Approved ISO 8583 sales/s (MACed, PIN), p50/p99 and peak RSS of `shoudan gateway`,
    against an echo server on the same framing and codec, loaded in turns; then the ledger is
    verified."""
    lines = gateway_bench.run(
        connections, seconds, merchants=merchants, database_url=database_url,
        processes=processes, rounds=rounds,
    )  # fmt: skip
    for line in lines:
        typer.echo(json.dumps(line, ensure_ascii=False))


@app.command("reconcile")
def reconcile(
    lines: int = typer.Option(1_000_000, "--lines", min=100, help="Statement lines / payments."),
) -> None:
    """Wall time and peak RSS to reconcile a card statement of LINES lines against as many
    payments (SQLite), against DuckDB doing only the join over the same data."""
    for line in reconcile_bench.run(lines):
        typer.echo(json.dumps(line, ensure_ascii=False))


@app.command("settlement")
def settlement(
    payments: int = typer.Option(1_000_000, "--payments", min=1, help="Payments to settle."),
    merchants: int = typer.Option(10_000, "--merchants", min=1, help="Merchants they spread over."),
    with_reconcile: bool = typer.Option(
        True, "--with-reconcile/--settlement-only",
        help="Also reconcile a channel statement of as many lines (`bench reconcile`).",
    ),
) -> None:
    """Wall time and peak RSS of a T+1 settlement run over PAYMENTS payments of MERCHANTS
    merchants (SQLite), against DuckDB doing only the per-merchant aggregate and join over the
    same data; then, by default, the reconciliation of a statement of PAYMENTS lines."""
    for line in settlement_bench.run(payments, merchants):
        typer.echo(json.dumps(line, ensure_ascii=False))
    if with_reconcile:
        for line in reconcile_bench.run(max(payments, 100)):
            typer.echo(json.dumps(line, ensure_ascii=False))
