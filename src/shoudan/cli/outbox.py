"""``shoudan outbox …``: what the worker still has to deliver, what it gave up on (dead
letters: a webhook endpoint down for too long, a handler bug), and giving a dead event a
fresh set of attempts once the cause is fixed. A requeue is an operator action: audited."""

from __future__ import annotations

import getpass

import typer
from sqlalchemy import select

from shoudan.audit.service import record
from shoudan.cli.common import DATABASE_URL_OPTION, fail, open_database
from shoudan.notifications.domain import EventStatus
from shoudan.notifications.models import OutboxEvent
from shoudan.notifications.service import requeue_dead, stats

app = typer.Typer(no_args_is_help=True)


@app.command("stats")
def show_stats(database_url: str | None = DATABASE_URL_OPTION) -> None:
    """Number of events per status."""
    database = open_database(database_url)
    try:
        with database.read() as session:
            counts = stats(session)
    finally:
        database.dispose()
    typer.echo("  ".join(f"{status}={count}" for status, count in counts.items()))


@app.command("dead")
def dead(
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Dead letters, newest first, with their last error."""
    database = open_database(database_url)
    try:
        with database.read() as session:
            rows = list(session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.status == EventStatus.DEAD.value)
                .order_by(OutboxEvent.created_at.desc(), OutboxEvent.id.desc())
                .limit(limit)
            ))  # fmt: skip
    finally:
        database.dispose()
    for row in rows:
        typer.echo(
            f"{row.id}  {row.topic:<24} attempts {row.attempts:>2}  "
            f"{row.created_at:%Y-%m-%d %H:%M}Z  {(row.last_error or '')[:120]}"
        )
    if not rows:
        typer.echo("no dead events")


@app.command("requeue")
def requeue(
    event_id: str,
    actor: str = typer.Option(
        None, "--actor", help="Who asks (for the audit log) [default: the OS user]."
    ),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Give a dead event a fresh set of attempts, due now."""
    who = actor or f"cli:{getpass.getuser()}"
    database = open_database(database_url)
    try:
        with database.transaction() as session:
            status = session.scalar(select(OutboxEvent.status).where(OutboxEvent.id == event_id))
            if status is not None and status != EventStatus.DEAD.value:
                fail(f"event {event_id} is {status}, not dead: nothing to requeue")
            requeue_dead(session, event_id)
            record(session, actor=who, action="outbox.requeue", subject_type="outbox_event",
                   subject_id=event_id, after={"status": EventStatus.PENDING.value})  # fmt: skip
    finally:
        database.dispose()
    typer.echo(f"requeued {event_id}")
