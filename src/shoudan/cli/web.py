"""``shoudan web user …``: create console logins. The initial password (and a staff user's
TOTP secret and provisioning URI) is printed once; only hashes and ciphertexts are stored."""

from __future__ import annotations

import typer

from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.container import build_container
from shoudan.web.service import WebAccounts, parse_roles

app = typer.Typer(no_args_is_help=True)
users = typer.Typer(no_args_is_help=True)
app.add_typer(users, name="user", help="Console users (merchant and staff).")


@users.command("create-merchant")
def create_merchant(
    merchant: str = typer.Option(..., "--merchant", metavar="MID", help="Merchant number."),
    phone: str = typer.Option(..., "--phone", metavar="P", help="The phone bound to the login."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    container = build_container(settings(database_url))
    try:
        accounts = WebAccounts(container.database, container.vault, container.clock)
        user = accounts.create_merchant_user(merchant, phone)
    finally:
        container.dispose()
    typer.echo(f"merchant login {user.user_id} for {user.merchant_id} ({user.phone_masked}); "
               "initial password (shown once):")  # fmt: skip
    typer.echo(user.password)


@users.command("create-staff")
def create_staff(
    username: str = typer.Option(..., "--username", metavar="U"),
    role: list[str] = typer.Option(..., "--role", help="A staff role; repeat for several."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    container = build_container(settings(database_url))
    try:
        accounts = WebAccounts(container.database, container.vault, container.clock)
        user = accounts.create_staff_user(username, parse_roles(role))
    finally:
        container.dispose()
    typer.echo(f"staff login {user.user_id} {user.username} ({', '.join(user.roles)}); "
               "shown once:")  # fmt: skip
    typer.echo(f"password: {user.password}")
    typer.echo(f"totp secret: {user.totp_secret}")
    typer.echo(f"totp uri: {user.totp_uri}")
