"""SMS: mainland mobiles only, length rules, and the development inbox — phone encrypted at
rest, found by keyed hash, shown masked — read with ``shoudan sms inbox``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from shoudan.cli.main import app
from shoudan.container import Container
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings, get_settings
from shoudan.core.crypto import Vault
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.sms import domain
from shoudan.sms.service import PHONE_CONTEXT, DevInboxProvider, build_provider

KEY_HEX = "44" * 32
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
PHONE = "13812341234"
OTHER = "15900001111"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def vault() -> Vault:
    return Vault.from_master(bytes.fromhex(KEY_HEX))


@pytest.fixture
def inbox(database, vault: Vault, clock: FixedClock) -> DevInboxProvider:
    return DevInboxProvider(database, vault, clock)


# -- rules ----------------------------------------------------------------------------------------


def test_mainland_mobiles_only() -> None:
    assert domain.validate_mobile(" 13812341234 ") == PHONE
    for bad in ("1381234123", "23812341234", "12812341234", "+8613812341234", "138 1234 1234", 1):
        with pytest.raises(DomainError) as caught:
            domain.validate_mobile(bad)
        assert caught.value.code is ErrorCode.INVALID_PHONE
        assert "1381234" not in caught.value.message  # the number stays out of errors


def test_length_rules() -> None:
    assert domain.parts("退" * 70) == 1
    assert domain.parts("退" * 71) == 2
    assert domain.parts("退" * 134) == 2
    assert domain.parts("退" * 135) == 3
    assert domain.validate_text("  您的退款已到账。 ") == "您的退款已到账。"
    assert domain.validate_text("x" * domain.MAX_TEXT_LENGTH)
    for bad in ("", "   ", "x" * (domain.MAX_TEXT_LENGTH + 1), None):
        with pytest.raises(DomainError) as caught:
            domain.validate_text(bad)
        assert caught.value.code is ErrorCode.INVALID_INPUT
    assert domain.validate_purpose("refund.succeeded") == "refund.succeeded"
    for bad in ("", "R", "Refund", "x" * 33, "otp code"):
        with pytest.raises(DomainError):
            domain.validate_purpose(bad)


# -- the development inbox ----------------------------------------------------------------------


def test_inbox_stores_the_phone_encrypted_and_shows_it_masked(
    inbox: DevInboxProvider, database, vault: Vault, clock: FixedClock
) -> None:
    first = inbox.send(PHONE, "【收单】您的退款¥50.00已受理。", "refund")
    clock.advance(timedelta(minutes=1))
    second = inbox.send(OTHER, "【收单】验证码 123456，5分钟内有效。", "otp")
    clock.advance(timedelta(minutes=1))
    third = inbox.send(PHONE, "【收单】您的退款¥50.00已到账。", "refund")
    assert first.startswith("sms_") and len({first, second, third}) == 3

    with database.read() as session:
        rows = session.execute(
            text("SELECT id, phone_enc, phone_hash, phone_masked FROM sms_messages ORDER BY id")
        ).all()
    for row in rows:
        assert PHONE.encode() not in bytes(row.phone_enc)
        assert OTHER.encode() not in bytes(row.phone_enc)
    stored = {row.id: row for row in rows}[first]
    assert vault.decrypt(bytes(stored.phone_enc), PHONE_CONTEXT) == PHONE
    assert stored.phone_hash == vault.lookup_hash(PHONE, PHONE_CONTEXT)
    assert stored.phone_masked == "138****1234"

    everything = inbox.list_inbox()
    assert [m.id for m in everything] == [third, second, first]  # newest first
    mine = inbox.list_inbox(PHONE)
    assert [m.id for m in mine] == [third, first]
    assert {m.phone_masked for m in mine} == {"138****1234"}
    assert [m.id for m in inbox.list_inbox(limit=1)] == [third]
    assert inbox.list_inbox("13700000000") == []


def test_refused_messages_store_nothing(inbox: DevInboxProvider) -> None:
    with pytest.raises(DomainError) as caught:
        inbox.send("12345", "hello", "otp")
    assert caught.value.code is ErrorCode.INVALID_PHONE
    with pytest.raises(DomainError):
        inbox.send(PHONE, "", "otp")
    with pytest.raises(DomainError):
        inbox.send(PHONE, "hello", "Not A Purpose")
    with pytest.raises(DomainError):
        inbox.list_inbox(limit=0)
    assert inbox.list_inbox() == []


def test_the_container_provides_the_dev_inbox(sqlite_database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key=KEY_HEX)
    vault = Vault.from_master(bytes.fromhex(KEY_HEX))
    container = Container(settings, sqlite_database, vault, FixedClock(NOW))
    provider = container.sms
    assert isinstance(provider, DevInboxProvider)
    message_id = provider.send(PHONE, "【收单】测试", "refund")
    assert [m.id for m in provider.list_inbox()] == [message_id]
    unknown = settings.model_copy(update={"sms_provider": "carrier_pigeon"})
    with pytest.raises(DomainError) as caught:
        build_provider(unknown, sqlite_database, vault, FixedClock(NOW))
    assert caught.value.code is ErrorCode.CONFIGURATION_ERROR


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads its master key from the environment, like production."""
    monkeypatch.setenv("SHOUDAN_SECRET_KEY", KEY_HEX)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_prints_the_inbox_newest_first_masked(
    inbox: DevInboxProvider, clock: FixedClock, db_url: str, cli_key: None
) -> None:
    inbox.send(PHONE, "【收单】您的退款已受理。", "refund")
    clock.advance(timedelta(hours=14))  # past midnight in Shanghai
    inbox.send(OTHER, "【收单】验证码 654321。", "otp")
    runner = CliRunner()

    result = runner.invoke(app, ["sms", "inbox", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        "2026-11-24 00:00:00\t159****1111\totp\t【收单】验证码 654321。",
        "2026-11-23 10:00:00\t138****1234\trefund\t【收单】您的退款已受理。",
    ]
    assert PHONE not in result.output and OTHER not in result.output

    only = runner.invoke(app, ["sms", "inbox", "--phone", PHONE, "--database-url", db_url])
    assert only.exit_code == 0, only.output
    assert only.output.strip().splitlines() == [lines[1]]
    newest = runner.invoke(app, ["sms", "inbox", "--limit", "1", "--database-url", db_url])
    assert newest.output.strip().splitlines() == [lines[0]]
    nobody = runner.invoke(
        app, ["sms", "inbox", "--phone", "13700000000", "--database-url", db_url]
    )
    assert nobody.output.strip() == "no messages"


def test_a_dedupe_key_is_texted_once(database) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from shoudan.core.clock import FixedClock
    from shoudan.core.crypto import Vault
    from shoudan.sms.models import SmsMessage
    from shoudan.sms.service import DevInboxProvider

    provider = DevInboxProvider(database, Vault.from_master(b"\x07" * 32), FixedClock(NOW))
    first = provider.send("13800001234", "退款已受理", "refund", dedupe_key="rf_1:sms:created")
    again = provider.send("13800001234", "退款已受理", "refund", dedupe_key="rf_1:sms:created")
    other = provider.send("13800001234", "退款已退回", "refund", dedupe_key="rf_1:sms:done")
    assert first == again != other
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(SmsMessage)) == 2
