"""``shoudan worker``: the background loop (outbox relay, expiry of due ledger holds)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType

import typer

from shoudan.auth.service import IDEMPOTENCY_RETENTION, purge_idempotency_keys
from shoudan.cli.common import DATABASE_URL_OPTION, open_database, settings
from shoudan.cli.settle import service as settlement_service
from shoudan.cli.settle import summary as settlement_summary
from shoudan.container import build_container
from shoudan.core.clock import Clock, SystemClock
from shoudan.core.db import Database
from shoudan.handlers import build_registry
from shoudan.notifications.service import Relay, RelayStats

log = logging.getLogger(__name__)

ExpireHook = Callable[[Database, Clock], object]

PURGE_EVERY = timedelta(hours=1)
FUNDS_CHECK_EVERY = timedelta(minutes=1)


def _expire_hook() -> ExpireHook | None:
    """``shoudan.ledger.service.expire_due_holds`` when the ledger provides it. A missing module
    is tolerated; an import error inside an existing one is not hidden."""
    if importlib.util.find_spec("shoudan.ledger.service") is None:
        return None
    module = importlib.import_module("shoudan.ledger.service")
    hook: ExpireHook | None = getattr(module, "expire_due_holds", None)
    return hook


def _describe(stats: RelayStats) -> str:
    text = f"outbox delivered={stats.delivered} retried={stats.retried} dead={stats.dead}"
    return text + (f" released={stats.released}" if stats.released else "")


def _install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT ask the loop to stop after the current batch; a second signal gets the
    previous behaviour (Ctrl-C twice kills). Returns a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        typer.echo(f"worker: {signal.Signals(signum).name}, stopping after this batch", err=True)
        restore()
        # Event.set takes a lock the interrupted main thread may hold: set it from a thread.
        threading.Thread(target=stop.set, daemon=True).start()

    for sig in previous:
        signal.signal(sig, on_signal)
    return restore


def worker(
    database_url: str | None = DATABASE_URL_OPTION,
    once: bool = typer.Option(False, "--once", help="Run one batch and exit."),
    poll: float | None = typer.Option(
        None, "--poll", min=0.01, help="Seconds between polls when idle (default: settings)."
    ),
) -> None:
    """Deliver outbox events and expire due ledger holds until SIGTERM/SIGINT."""
    config = settings(database_url)
    database = open_database(database_url)
    clock = SystemClock()
    container = build_container(config, database, clock)
    relay = Relay(
        database,
        build_registry(container),
        clock=clock,
        batch_size=config.outbox_batch_size,
        max_attempts=config.outbox_max_attempts,
    )
    expire = _expire_hook()
    totals = RelayStats()
    last_purge: datetime | None = None
    last_funds_check: datetime | None = None

    def each_loop(stats: RelayStats) -> None:
        nonlocal totals, last_purge
        totals += stats
        expired = expire(database, clock) if expire is not None else None
        now = clock.now()
        if last_purge is None or now - last_purge >= PURGE_EVERY:
            # Idempotency-Keys are honoured for a day; older records only take space.
            with database.transaction() as session:
                purged = purge_idempotency_keys(session, now - IDEMPOTENCY_RETENTION)
            last_purge = now
            if purged:
                typer.echo(f"idempotency keys purged: {purged}")
        if stats.claimed or once:
            typer.echo(_describe(stats))
        if expired:
            typer.echo(f"ledger holds expired: {expired}")
        nonlocal last_funds_check
        if last_funds_check is None or now - last_funds_check >= FUNDS_CHECK_EVERY:
            # refunds waiting for the merchant's balance: fund them, or fail them after N days
            funded = container.refunds.retry_pending_funds()
            last_funds_check = now
            if funded:
                typer.echo(f"refunds waiting for funds moved on: {funded}")
            # deposits: activation targets reached, deposits blocked by debt now clear
            checked = container.deposits.run_checks()
            if checked.refunded or checked.resumed:
                typer.echo(f"deposits refunded: {checked.refunded}, resumed: {checked.resumed}")
            # settlement: the current D0 slot, and T+1 for the latest date past its cut-off
            for run in settlement_service(container).run_due():
                if run.merchants:
                    typer.echo(settlement_summary(run))

    try:
        if once:
            each_loop(relay.run_once())
            return
        typer.echo(f"worker {relay.worker_id} started (poll {poll or config.outbox_poll_seconds}s)")
        stop = threading.Event()
        restore = _install_stop_handlers(stop)
        try:
            relay.run_forever(stop, poll or config.outbox_poll_seconds, each_loop=each_loop)
        finally:
            restore()
        typer.echo(f"worker stopped; total {_describe(totals)}")
    finally:
        database.dispose()
