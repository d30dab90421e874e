"""The application's parts, wired once: settings, database, vault, clock, ledger, channel, bank.

Every edge (HTTP app, CLI, gateway, worker) builds one ``Container`` and hands its parts to
the services; tests build one with a fixed clock and a test database. Nothing here holds a
business rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from shoudan.core.baton import releasing
from shoudan.core.clock import Clock, SystemClock
from shoudan.core.config import Settings, get_settings, load_secret_key
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.ledger.service import Ledger

if TYPE_CHECKING:
    from shoudan.channels.domain import BankTransfer, Channel
    from shoudan.deposits.service import DepositService
    from shoudan.files.service import FileService
    from shoudan.gateway.service import GatewayService
    from shoudan.onboarding.domain import RealNameVerifier
    from shoudan.payments.service import PaymentService
    from shoudan.refunds.service import RefundService
    from shoudan.sms.service import SmsProvider
    from shoudan.webhooks.service import WebhookService


@dataclass
class Container:
    settings: Settings
    database: Database
    vault: Vault
    clock: Clock = field(default_factory=SystemClock)
    channel: Channel | None = None  # None: the sandbox simulator
    bank: BankTransfer | None = None  # None: the sandbox bank
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.database, self.clock)
        if self.channel is None or self.bank is None:
            self._build_sandboxes()

    def _build_sandboxes(self) -> None:
        """The sandbox network and bank over one store: their own books, shared by every
        process of the application (settings.sandbox_state_path)."""
        from shoudan.channels.bank import SandboxBank
        from shoudan.channels.sandbox import SandboxChannel
        from shoudan.channels.store import open_store

        store = open_store(self.settings.resolved_sandbox_state_path())
        latency = self.settings.sandbox_latency_seconds
        if self.channel is None:
            self.channel = SandboxChannel(
                latency_seconds=latency,
                timeout_seconds=self.settings.upstream_timeout_seconds,
                clock=self.clock,
                store=store,
            )
        if self.bank is None:
            self.bank = SandboxBank(store=store, latency_seconds=latency)

    def _network(self) -> Channel:
        """The channel as the services call it: with the baton down, for the network's wait
        (core/baton.py)."""
        assert self.channel is not None
        return releasing(self.channel, self.database.baton)

    @cached_property
    def payments(self) -> PaymentService:
        from shoudan.payments.service import PaymentService

        assert self.channel is not None
        return PaymentService(
            self.database, self.ledger, self.vault, self._network(), self.clock
        )

    @cached_property
    def gateway(self) -> GatewayService:
        from shoudan.gateway.service import GatewayService

        assert self.channel is not None
        return GatewayService(
            self.database, self.vault, self.payments, self._network(), self.clock,
            self.settings.iso_acquirer_id, refunds=self.refunds,
        )  # fmt: skip

    @cached_property
    def refunds(self) -> RefundService:
        from shoudan.refunds.service import RefundService

        assert self.channel is not None and self.bank is not None
        return RefundService(
            self.database, self.ledger, self.vault, self._network(), self.bank, self.clock,
            self.settings,
        )  # fmt: skip

    @cached_property
    def deposits(self) -> DepositService:
        from shoudan.deposits.service import DepositService

        return DepositService(self.database, self.ledger, self.vault, self.clock)

    @cached_property
    def files(self) -> FileService:
        from shoudan.files.service import FileService

        return FileService(
            self.database, self.clock, self.settings.data_dir, self.settings.max_upload_bytes
        )

    @cached_property
    def webhooks(self) -> WebhookService:
        from shoudan.webhooks.service import WebhookService

        return WebhookService(self.database, self.vault, self.clock, self.settings)

    @cached_property
    def sms(self) -> SmsProvider:
        """The SMS provider ``settings.sms_provider`` names (the development inbox for now)."""
        from shoudan.sms.service import build_provider

        return build_provider(self.settings, self.database, self.vault, self.clock)

    @cached_property
    def real_name_verifier(self) -> RealNameVerifier:
        """The KYC (real-name) verifier: the deterministic sandbox until a real one is wired."""
        from shoudan.onboarding.domain import SandboxRealNameVerifier

        return SandboxRealNameVerifier()

    def dispose(self) -> None:
        self.database.dispose()


def build_container(
    settings: Settings | None = None,
    database: Database | None = None,
    clock: Clock | None = None,
) -> Container:
    settings = settings or get_settings()
    database = database or Database(
        settings.resolved_database_url(), group_commit=settings.sqlite_group_commit
    )
    vault = Vault.from_master(load_secret_key(settings))
    return Container(settings, database, vault, clock or SystemClock())
