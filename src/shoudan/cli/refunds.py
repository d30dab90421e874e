"""``shoudan refunds …``: the review queue from a terminal — list, show, approve, reject.

Every command acts as the holder of an API key (``--key`` or ``SHOUDAN_API_KEY``), exactly as
the HTTP API would: a merchant key sees its own refunds, a staff key approves with its role,
and maker-checker applies (nobody approves their own request). Amounts print as ¥.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from shoudan.auth.domain import Principal
from shoudan.auth.service import authenticate
from shoudan.cli.common import DATABASE_URL_OPTION, settings
from shoudan.container import Container, build_container
from shoudan.core.money import Money
from shoudan.refunds.domain import RefundStatus
from shoudan.refunds.models import Refund
from shoudan.refunds.service import RefundFilters

app = typer.Typer(no_args_is_help=True)

KEY_OPTION = typer.Option(
    ..., "--key", envvar="SHOUDAN_API_KEY", help="API key to act as (sk_…).", show_default=False
)


@contextmanager
def _acting(key: str, database_url: str | None) -> Iterator[tuple[Container, Principal]]:
    container = build_container(settings(database_url))
    try:
        with container.database.read() as session:
            principal = authenticate(session, key, clock=container.clock)
        yield container, principal
    finally:
        container.dispose()


def _yuan(fen: int) -> str:
    return Money(fen).format()


def _line(refund: Refund) -> str:
    return (
        f"{refund.id}  {refund.status:<13} {_yuan(refund.amount):>14}  "
        f"payment {refund.payment_id}  risk {refund.risk_score:>3}  "
        f"{refund.created_at:%Y-%m-%d %H:%M}Z"
    )


@app.command("list")
def list_refunds(
    key: str = KEY_OPTION,
    status: RefundStatus | None = typer.Option(None, "--status", help="e.g. in_review"),
    payment: str | None = typer.Option(None, "--payment", help="Only this payment's."),
    limit: int = typer.Option(50, "--limit", min=1, max=500),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Newest first."""
    with _acting(key, database_url) as (container, principal):
        rows = container.refunds.list(principal, RefundFilters(payment, status), limit, None)
    for refund in rows:
        typer.echo(_line(refund))
    if not rows:
        typer.echo("no refunds")


@app.command("show")
def show(
    refund_id: str, key: str = KEY_OPTION, database_url: str | None = DATABASE_URL_OPTION
) -> None:
    """A refund with its risk reasons, approvals and timeline."""
    import json

    with _acting(key, database_url) as (container, principal):
        detail = container.refunds.detail(principal, refund_id)
    refund = detail.refund
    typer.echo(_line(refund))
    typer.echo(f"reason: {refund.reason} {refund.reason_text}".rstrip())
    typer.echo(
        f"expected arrival: {refund.expected_earliest} – {refund.expected_latest} "
        f"({refund.expected_basis})"
    )
    for reason in json.loads(refund.risk_reasons):
        typer.echo(f"risk +{reason['weight']} {reason['rule']}: {reason['fact']}")
    typer.echo(f"approvals: {len(detail.approvals)} of {refund.approvals_required}")
    for step in detail.history:
        typer.echo(f"  {step.created_at:%Y-%m-%d %H:%M:%S}Z  {step.to_status:<13} "
                   f"{step.actor}  {step.note}")  # fmt: skip


@app.command("approve")
def approve(
    refund_id: str,
    note: str = typer.Option("", "--note"),
    key: str = KEY_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Approve as the key's holder (reviewer or approver; never one's own request)."""
    with _acting(key, database_url) as (container, principal):
        refund = container.refunds.approve(principal, refund_id, note)
    typer.echo(_line(refund))


@app.command("reject")
def reject(
    refund_id: str,
    note: str = typer.Option(..., "--note", help="The reason, shown to the merchant."),
    key: str = KEY_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Reject with a reason; the held money is released."""
    with _acting(key, database_url) as (container, principal):
        refund = container.refunds.reject(principal, refund_id, note)
    typer.echo(_line(refund))
