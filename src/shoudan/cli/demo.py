"""``shoudan demo``: demo data, and the one-command tour (``make demo``)."""

from __future__ import annotations

import json

import typer

from shoudan import demo as demo_data
from shoudan import migrations
from shoudan.cli import serve
from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.container import build_container

app = typer.Typer(invoke_without_command=True)


@app.callback()
def tour(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Try shoudan: migrate the (default SQLite) database, seed the demo data, serve."""
    if ctx.invoked_subcommand is not None:
        return
    seed(database_url)
    serve.serve(host, port, database_url)


@app.command("seed")
def seed(database_url: str | None = DATABASE_URL_OPTION) -> None:
    """Migrate, then seed three merchants, their terminals and ~500 payments (once).

    Prints a merchant API key and a staff admin key (also in var/demo-credentials.json)."""
    config = settings(database_url)
    migrations.upgrade(config.resolved_database_url())
    container = build_container(config)
    try:
        credentials = demo_data.seed(container)
        if credentials is None:
            path = demo_data.credentials_path(container)
            typer.echo("demo data already seeded")
            if not path.exists():
                typer.echo("(its credentials file is gone: create keys with `shoudan apikey`)")
                return
            credentials = json.loads(path.read_text())
        else:
            typer.echo("demo data seeded: 4 merchants (one onboarded end to end), terminals, "
                       "~500 payments, yesterday's settlement and card statement "
                       "reconciled (2 differences in the finance queue)")
        typer.echo(f"credentials file:  {demo_data.credentials_path(container)}")
        typer.echo(f"merchant {credentials['merchant_id']} API key: "
                   f"{credentials['merchant_api_key']}")
        typer.echo(f"staff admin API key: {credentials['admin_api_key']}")
        logins = credentials.get("console_logins")
        if logins is None:  # seeded by an older version: no console logins
            return
        typer.echo(f"web console: {credentials['console_url']} (merchant: /merchant/login, "
                   f"staff: /staff/login)")  # fmt: skip
        typer.echo(f"merchant login: {logins['merchant']['phone']} / "
                   f"{logins['merchant']['password']}")  # fmt: skip
        for name, staff in logins["staff"].items():
            typer.echo(f"staff login: {name} / {staff['password']} "
                       f"(TOTP secret {staff['totp_secret']})")  # fmt: skip
    finally:
        container.dispose()
