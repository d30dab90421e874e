"""Configuration from the environment (``SHOUDAN_*``) with safe development defaults."""

from __future__ import annotations

import logging
import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shoudan.core.errors import DomainError, ErrorCode

log = logging.getLogger(__name__)

KEY_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOUDAN_", env_file=None, extra="ignore")

    data_dir: Path = Path("var")
    database_url: str = ""  # empty: a SQLite file in data_dir
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    access_log: bool = True  # one line per HTTP request (uvicorn's access log)
    iso_host: str = "127.0.0.1"
    iso_port: int = Field(default=8583, ge=1, le=65535)
    # ISO 8583 gateway (gateway/server.py): idle connections closed after this many seconds;
    # connections beyond the maximum are closed on arrival; blocking service calls run on
    # iso_workers threads; field 32 of every response is iso_acquirer_id
    iso_idle_timeout_seconds: float = Field(default=60.0, gt=0)
    iso_max_connections: int = Field(default=1000, ge=1)
    iso_workers: int = Field(default=32, ge=1, le=1024)
    # gateway processes behind iso_port (the supervisor hands them the connections)
    iso_processes: int = Field(default=1, ge=1, le=64)
    iso_shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    iso_acquirer_id: str = Field(default="898", pattern=r"^[0-9]{1,11}$")
    # Master secret for encryption at rest and keyed hashes (hex, 32 bytes). When absent it is
    # read from key_file, and in development generated there on first use.
    secret_key: SecretStr | None = None
    key_file: Path | None = None
    environment: str = "development"
    # upstream networks (the sandbox simulator stands in for them; see channels/sandbox.py)
    upstream_timeout_seconds: float = Field(default=10.0, gt=0)
    sandbox_latency_seconds: float = Field(default=0.0, ge=0)
    # the sandbox network's and bank's own books, shared by every process (channels/store.py):
    # empty for data_dir/sandbox-network.sqlite3, ":memory:" for one process's memory
    sandbox_state_path: str = ""
    # outbox relay
    outbox_batch_size: int = Field(default=100, ge=1, le=10_000)
    outbox_max_attempts: int = Field(default=8, ge=1, le=100)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    # refunds (DESIGN.md §4): review thresholds in fen, execution retry schedule in seconds
    refund_review_amount: int = Field(default=500_000, ge=0)  # ¥5,000
    refund_review_score: int = Field(default=50, ge=0)
    refund_two_approvals_amount: int = Field(default=5_000_000, ge=0)  # ¥50,000
    refund_window_days: int = Field(default=180, ge=1, le=365)
    refund_max_per_payment: int = Field(default=50, ge=1)
    refund_pending_funds_days: int = Field(default=7, ge=1)
    refund_retry_seconds: tuple[int, ...] = (15, 30, 60, 300, 1800, 7200, 21600)
    # risk rules: weight of each rule (0 turns it off) and its threshold
    risk_weight_quick_refund: int = 30
    risk_quick_refund_minutes: int = 10
    risk_weight_refund_ratio: int = 25
    risk_refund_ratio_percent: int = 30
    risk_weight_large_ticket: int = 20
    risk_large_ticket_multiple: int = 3
    risk_weight_card_velocity: int = 40
    risk_card_velocity_count: int = 3
    risk_weight_off_hours: int = 15
    risk_business_hours: str = "08:00-22:00"
    risk_weight_round_amount: int = 15
    risk_round_amount_min: int = 1_000_000  # ¥10,000
    risk_round_amount_unit: int = Field(default=100_000, ge=1)  # whole ¥1,000
    # expected arrival of a refund, in working days (QR wallets: instant)
    refund_arrival_debit_days: tuple[int, int] = (1, 3)
    refund_arrival_credit_days: tuple[int, int] = (3, 7)
    # public refund tracking: requests per client address per minute
    public_rate_limit_per_minute: int = Field(default=30, ge=1)
    # webhooks
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # SMS: "dev_inbox" keeps texts in a table for `shoudan sms inbox` (the only provider yet)
    sms_provider: str = "dev_inbox"
    # evidence files
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)

    # SQLite: how many concurrent write transactions may share one commit (0 or 1: off)
    sqlite_group_commit: int = Field(default=64, ge=0, le=4096)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'shoudan.db').as_posix()}"

    def resolved_key_file(self) -> Path:
        return self.key_file or self.data_dir / "secret.key"

    def resolved_sandbox_state_path(self) -> str:
        return self.sandbox_state_path or str(self.data_dir / "sandbox-network.sqlite3")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def load_secret_key(settings: Settings) -> bytes:
    """The master key: from SHOUDAN_SECRET_KEY, else the key file, else (development only)
    a new random key written to the key file with a loud warning."""
    if settings.secret_key is not None:
        return _decode_key(settings.secret_key.get_secret_value(), "SHOUDAN_SECRET_KEY")
    path = settings.resolved_key_file()
    if path.exists():
        return _decode_key(path.read_text().strip(), str(path))
    if settings.environment != "development":
        raise DomainError(
            ErrorCode.CONFIGURATION_ERROR,
            "no secret key: set SHOUDAN_SECRET_KEY or SHOUDAN_KEY_FILE",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    log.warning(
        "generated a development secret key in %s; set SHOUDAN_SECRET_KEY in production "
        "and keep a backup: data encrypted with it cannot be read without it",
        path,
    )
    return key


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise DomainError(ErrorCode.CONFIGURATION_ERROR, f"{where}: key is not hex") from exc
    if len(key) != KEY_BYTES:
        raise DomainError(
            ErrorCode.CONFIGURATION_ERROR, f"{where}: key must be {KEY_BYTES} bytes of hex"
        )
    return key
