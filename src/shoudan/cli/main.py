"""Entry point of the ``shoudan`` command. Each command group lives in its own module."""

from __future__ import annotations

import typer

from shoudan.cli import (
    apikey,
    audit,
    bank,
    bench,
    db,
    demo,
    gateway,
    ledger,
    outbox,
    reconcile,
    refunds,
    serve,
    settle,
    sms,
    statements,
    terminal,
    terminals,
    web,
    worker,
)
from shoudan.cli.common import fail
from shoudan.core.errors import DomainError

app = typer.Typer(
    name="shoudan",
    help="shoudan (收单): back office for a POS acquirer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db", help="Database schema: migrations.")
app.add_typer(ledger.app, name="ledger", help="The double-entry ledger: verify, export.")
app.add_typer(outbox.app, name="outbox", help="Outbox: stats, dead letters, requeue.")
app.add_typer(refunds.app, name="refunds", help="Refunds: list, show, approve, reject.")
app.add_typer(audit.app, name="audit", help="The hash-chained audit log.")
app.add_typer(apikey.app, name="apikey", help="API keys.")
app.add_typer(bench.app, name="bench", help="Benchmarks (JSON lines with their own baseline).")
app.command("serve")(serve.serve)
app.add_typer(demo.app, name="demo", help="Demo data and the one-command tour.")
app.command("worker")(worker.worker)
app.command("reconcile")(reconcile.reconcile)
app.command("gateway")(gateway.gateway)
app.add_typer(terminal.app, name="terminal", help="A terminal simulator (ISO 8583 client).")
app.add_typer(terminals.app, name="terminals", help="Device inventory: import, labels.")
app.add_typer(sms.app, name="sms", help="SMS: the development inbox.")
app.command("settle")(settle.settle)
app.add_typer(bank.app, name="bank", help="Payout batch files: export, simulate, import.")
app.command("statements")(statements.statements)
app.add_typer(web.app, name="web", help="Web console: users.")


def main() -> None:
    """The console script: a refused request is one line on stderr and exit status 2, not
    a traceback."""
    try:
        app()
    except DomainError as error:
        fail(error, exit_code=2)


if __name__ == "__main__":  # pragma: no cover
    main()
