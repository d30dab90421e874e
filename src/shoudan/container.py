"""The application's parts, wired once: settings, database, vault, clock, ledger, channel.

Every edge (HTTP app, CLI, gateway, worker) builds one ``Container`` and hands its parts to
the services; tests build one with a fixed clock and a test database. Nothing here holds a
business rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from shoudan.core.clock import Clock, SystemClock
from shoudan.core.config import Settings, get_settings, load_secret_key
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.ledger.service import Ledger

if TYPE_CHECKING:
    from shoudan.channels.domain import Channel
    from shoudan.payments.service import PaymentService


@dataclass
class Container:
    settings: Settings
    database: Database
    vault: Vault
    clock: Clock = field(default_factory=SystemClock)
    channel: Channel | None = None  # None: the sandbox simulator
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.database, self.clock)
        if self.channel is None:
            from shoudan.channels.sandbox import SandboxChannel

            self.channel = SandboxChannel(
                latency_seconds=self.settings.sandbox_latency_seconds,
                timeout_seconds=self.settings.upstream_timeout_seconds,
                clock=self.clock,
            )

    @cached_property
    def payments(self) -> PaymentService:
        from shoudan.payments.service import PaymentService

        assert self.channel is not None
        return PaymentService(self.database, self.ledger, self.vault, self.channel, self.clock)

    def dispose(self) -> None:
        self.database.dispose()


def build_container(
    settings: Settings | None = None,
    database: Database | None = None,
    clock: Clock | None = None,
) -> Container:
    settings = settings or get_settings()
    database = database or Database(settings.resolved_database_url())
    vault = Vault.from_master(load_secret_key(settings))
    return Container(settings, database, vault, clock or SystemClock())
