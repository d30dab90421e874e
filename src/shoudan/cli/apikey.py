"""``shoudan apikey …``: create, list and revoke API keys.

``create`` prints one human line and then the key alone on the last line of stdout, so a
script can take it with ``tail -n 1``. The key is shown this once: only its hash is stored.
"""

from __future__ import annotations

import typer

from shoudan.auth import service
from shoudan.auth.domain import Role, parse_role
from shoudan.cli.common import DATABASE_URL_OPTION, open_database, settings
from shoudan.container import build_container
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.web.service import WebAccounts

app = typer.Typer(no_args_is_help=True)

STAFF_ROLE_NAMES = ", ".join(sorted(str(role) for role in Role if role is not Role.MERCHANT))


@app.command("create")
def create(
    merchant: str | None = typer.Option(
        None, "--merchant", metavar="MID", help="A merchant key for this merchant number."
    ),
    role: str | None = typer.Option(
        None, "--role", metavar="ROLE", help=f"A staff key with this role ({STAFF_ROLE_NAMES})."
    ),
    name: str = typer.Option("", "--name", help="A label to tell keys apart."),
    staff_user: str | None = typer.Option(
        None,
        "--staff-user",
        metavar="USERNAME",
        help="With --role: the console staff member who holds the key (they must hold the "
        "role); maker-checker then counts their console login and this key as one person.",
    ),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Create a key: either --merchant MID or --role ROLE (exactly one). The key is printed
    once, alone on the last line."""
    if (merchant is None) == (role is None):
        raise typer.BadParameter("give exactly one of --merchant and --role")
    if role is not None:
        chosen = parse_role(role)
        if chosen is Role.MERCHANT:
            raise DomainError(ErrorCode.INVALID_INPUT, "a merchant key is made with --merchant MID")
    else:
        chosen = Role.MERCHANT
    if staff_user is not None and merchant is not None:
        raise typer.BadParameter("--staff-user goes with --role: a merchant key has no staff user")
    person = None if staff_user is None else _staff_member(staff_user, chosen, database_url)
    database = open_database(database_url)
    try:
        with database.transaction() as session:
            view, key = service.create_api_key(
                session, role=chosen, merchant_id=merchant, name=name, person_id=person
            )
    finally:
        database.dispose()
    owner = f" for merchant {view.merchant_id}" if view.merchant_id else ""
    owner += f" held by staff user {staff_user}" if staff_user else ""
    typer.echo(
        f"created API key {view.id} ({view.role}{owner}, prefix {view.prefix}); "
        "store it now, it will not be shown again:"
    )
    typer.echo(key)


def _staff_member(username: str, role: Role, database_url: str | None) -> str:
    container = build_container(settings(database_url))
    try:
        accounts = WebAccounts(container.database, container.vault, container.clock)
        return accounts.staff_member(username, role)
    finally:
        container.dispose()


@app.command("list")
def list_keys(
    merchant: str | None = typer.Option(None, "--merchant", metavar="MID", help="Only these."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """List keys (id, prefix, role, merchant, state, name, staff member holding it); never
    the keys themselves."""
    database = open_database(database_url)
    try:
        with database.read() as session:
            views = service.list_api_keys(session, merchant)
    finally:
        database.dispose()
    for view in views:
        state = "active" if view.active else f"revoked {view.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
        typer.echo(
            f"{view.id}\t{view.prefix}\t{view.role}\t{view.merchant_id or '-'}\t{state}\t"
            f"{view.name}\t{view.person_id or '-'}"
        )


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., metavar="KEY_ID", help="The key's id (key_…)."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Revoke a key; requests made with it are refused at once."""
    database = open_database(database_url)
    try:
        with database.transaction() as session:
            view = service.revoke_api_key(session, key_id)
    finally:
        database.dispose()
    typer.echo(f"revoked API key {view.id} ({view.prefix})")
