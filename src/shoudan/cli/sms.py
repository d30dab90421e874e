"""``shoudan sms inbox``: read the texts the development SMS provider kept instead of sending.

Phones are shown masked (``138****1234``); ``--phone`` finds one number's messages through the
keyed hash, so the full number is never printed.
"""

from __future__ import annotations

import typer

from shoudan.cli.common import DATABASE_URL_OPTION, open_database, settings
from shoudan.core.clock import SHANGHAI, SystemClock
from shoudan.core.config import load_secret_key
from shoudan.core.crypto import Vault
from shoudan.sms.service import DevInboxProvider

app = typer.Typer(no_args_is_help=True)


@app.command("inbox")
def inbox(
    phone: str | None = typer.Option(None, "--phone", metavar="P", help="Only this number's."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="How many, newest first."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Newest first: time (Asia/Shanghai), masked phone, purpose, text."""
    vault = Vault.from_master(load_secret_key(settings(database_url)))  # for --phone's hash
    database = open_database(database_url)
    try:
        messages = DevInboxProvider(database, vault, SystemClock()).list_inbox(phone, limit)
    finally:
        database.dispose()
    if not messages:
        typer.echo("no messages")
    for message in messages:
        when = message.created_at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{when}\t{message.phone_masked}\t{message.purpose}\t{message.text}")
