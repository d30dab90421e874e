"""Merchants: pure rules, the service on both engines (encryption at rest, ledger accounts,
audit, balances from the ledger), and the HTTP API with real API keys (staff-only creation,
tenant isolation, masked output, precise error codes)."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select, text

from shoudan.api.app import create_app
from shoudan.audit.models import AuditRecord
from shoudan.audit.service import verify as verify_audit
from shoudan.auth.domain import Role
from shoudan.auth.service import create_api_key
from shoudan.bootstrap import bootstrap
from shoudan.container import Container
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger import chart
from shoudan.ledger.domain import Posting, Transfer, hold, transfer
from shoudan.ledger.models import LedgerAccount
from shoudan.ledger.service import Ledger
from shoudan.merchants import domain, service
from shoudan.merchants.domain import MerchantStatus, MerchantType
from shoudan.merchants.models import Merchant, MerchantSettlementAccount, MerchantStatusHistory
from shoudan.merchants.service import MerchantInput, SettlementAccountInput

HTTPX_NOTICE = r".*httpx.*starlette\.testclient.*"
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=HTTPX_NOTICE)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings(f"ignore:{HTTPX_NOTICE}")

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
PHONE = "13812345678"
CARD = "6222020000000000018"
CARD_2 = "6258070000000017"
MASTER = b"k" * 32


def merchant_input(**changes: Any) -> MerchantInput:
    base = MerchantInput(
        legal_name="老王面馆",
        merchant_type=MerchantType.INDIVIDUAL,
        mcc="5812",
        area_code="3100",
        contact_phone=PHONE,
        settlement_account=SettlementAccountInput("王大明", "中国工商银行", CARD),
    )
    return replace(base, **changes)


@dataclass
class Env:
    database: Database
    vault: Vault
    ledger: Ledger
    clock: FixedClock

    def create(self, data: MerchantInput | None = None, **changes: Any) -> service.MerchantView:
        with self.database.transaction() as session:
            return service.create_merchant(
                session, self.vault, self.ledger, data or merchant_input(**changes),
                actor="staff:alice", clock=self.clock,
            )  # fmt: skip

    def count(self, model: Any) -> int:
        with self.database.read() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def env(database: Database) -> Env:
    bootstrap(database)  # platform accounts and default fee plans
    clock = FixedClock(NOW)
    return Env(database, Vault.from_master(MASTER), Ledger(database, clock), clock)


def scan_for(database: Database, *needles: str) -> list[str]:
    """Every (table, column) holding any of ``needles`` in clear, as text or inside bytes."""
    found = []
    with database.read() as session:
        meta = MetaData()
        meta.reflect(session.connection())
        for table in meta.sorted_tables:
            for row in session.execute(select(table)).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    raw = bytes(value) if isinstance(value, bytes | memoryview) else None
                    as_text = str(value)
                    for needle in needles:
                        if needle in as_text or (raw is not None and needle.encode() in raw):
                            found.append(f"{table.name}.{column}")
    return found


# -- pure rules ----------------------------------------------------------------------------------
def test_merchant_id_is_acquirer_area_mcc_serial() -> None:
    mid = domain.compose_merchant_id("3100", "5812", 7)
    assert mid == "898310058120007"
    assert len(mid) == domain.MERCHANT_ID_LENGTH
    parts = domain.parse_merchant_id(mid)
    assert parts == domain.MerchantIdParts("898", "3100", "5812", 7)
    assert domain.compose_merchant_id("3100", "5812", 9999).endswith("9999")


@pytest.mark.parametrize("serial", [0, 10_000, -1, True])
def test_merchant_id_serial_bounds(serial: int) -> None:
    with pytest.raises(DomainError) as caught:
        domain.compose_merchant_id("3100", "5812", serial)
    assert caught.value.code is ErrorCode.INVALID_INPUT


@pytest.mark.parametrize("bad", ["581", "58120", "58a2", "", "５８１２", " 5812", None])
def test_mcc_and_area_code_are_four_ascii_digits(bad: Any) -> None:
    with pytest.raises(DomainError) as caught:
        domain.validate_mcc(bad)
    assert caught.value.code is ErrorCode.INVALID_MCC
    assert caught.value.details["field"] == "mcc"
    with pytest.raises(DomainError) as caught:
        domain.validate_area_code(bad)
    assert caught.value.code is ErrorCode.INVALID_AREA_CODE


@pytest.mark.parametrize(
    "bad", ["89831005812000", "8983100581200011", "123310058120001", "898310058120000", "x" * 15]
)
def test_parse_refuses_malformed_merchant_ids(bad: str) -> None:
    assert not domain.is_merchant_id(bad)
    with pytest.raises(DomainError):
        domain.parse_merchant_id(bad)


def test_next_serial() -> None:
    assert domain.next_serial(None) == 1
    assert domain.next_serial("898310058120041") == 42
    with pytest.raises(DomainError, match="no merchant number left"):
        domain.next_serial("898310058129999")


@pytest.mark.parametrize("good", ["13812345678", "19912345678", " 15000000000 "])
def test_mainland_mobile_numbers(good: str) -> None:
    assert domain.validate_phone(good) == good.strip()


@pytest.mark.parametrize(
    "bad",
    ["12812345678", "1381234567", "138123456789", "+8613812345678", "138-1234-5678",
     "１３８１２３４５６７８", "02112345678", "", None, 13812345678],
)  # fmt: skip
def test_phone_validation_refuses(bad: Any) -> None:
    with pytest.raises(DomainError) as caught:
        domain.validate_phone(bad)
    assert caught.value.code is ErrorCode.INVALID_PHONE
    assert caught.value.details == {"field": "contact_phone"}
    assert str(bad) not in caught.value.message or bad in ("", None)


def test_luhn() -> None:
    for number in (CARD, CARD_2, "4111111111111111", "79927398713"):
        assert domain.luhn_valid(number)
    for number in ("6222020000000000017", "4111111111111112", "", "abc", "٣"):
        assert not domain.luhn_valid(number)


def test_card_number_validation() -> None:
    assert domain.validate_card_number("6222 0200 0000 0000 018") == CARD
    assert domain.validate_card_number("4111111111111111") == "4111111111111111"
    for bad in ("79927398713", "4" * 20, "6222020000000000017", "6222-0200-0000-0000-018", 42):
        with pytest.raises(DomainError) as caught:
            domain.validate_card_number(bad)
        assert caught.value.code is ErrorCode.INVALID_CARD
        assert CARD not in caught.value.message


def test_legal_name() -> None:
    assert domain.validate_legal_name("  老王面馆 ") == "老王面馆"
    assert domain.validate_legal_name("名" * 100) == "名" * 100
    for bad in ("", "   ", "名" * 101, "a\nb", None):
        with pytest.raises(DomainError) as caught:
            domain.validate_legal_name(bad)
        assert caught.value.code is ErrorCode.INVALID_INPUT
        assert caught.value.details["field"] == "legal_name"


def test_status_transitions_table() -> None:
    allowed = {
        (MerchantStatus.ACTIVE, MerchantStatus.SUSPENDED),
        (MerchantStatus.ACTIVE, MerchantStatus.CLOSED),
        (MerchantStatus.SUSPENDED, MerchantStatus.ACTIVE),
        (MerchantStatus.SUSPENDED, MerchantStatus.CLOSED),
    }
    for current in MerchantStatus:
        for target in MerchantStatus:
            if (current, target) in allowed:
                assert domain.transition(current, target) is target
            else:
                with pytest.raises(DomainError) as caught:
                    domain.transition(current, target)
                assert caught.value.code is ErrorCode.INVALID_TRANSITION
    with pytest.raises(DomainError) as caught:
        domain.transition("active", "deleted")
    assert caught.value.code is ErrorCode.INVALID_INPUT


def test_daily_limit_and_type() -> None:
    assert domain.validate_daily_limit(None) is None
    assert domain.validate_daily_limit(5_000_000) == 5_000_000
    for bad in (0, -1, 1.5, True, "100"):
        with pytest.raises(DomainError) as caught:
            domain.validate_daily_limit(bad)
        assert caught.value.code is ErrorCode.INVALID_AMOUNT
    assert domain.validate_merchant_type("enterprise") is MerchantType.ENTERPRISE
    with pytest.raises(DomainError):
        domain.validate_merchant_type("charity")


# -- the service, on both engines ----------------------------------------------------------------
def test_create_merchant(env: Env) -> None:
    view = env.create()
    assert view.merchant_id == "898310058120001"
    assert (view.legal_name, view.merchant_type, view.mcc, view.area_code) == (
        "老王面馆", MerchantType.INDIVIDUAL, "5812", "3100",
    )  # fmt: skip
    assert view.status is MerchantStatus.ACTIVE
    assert view.fee_plan_code == "standard"
    assert view.daily_limit is None
    assert view.contact_phone == "138****5678"
    account = view.settlement_account
    assert account is not None
    assert account.card_number == "622202*********0018"
    assert (account.holder_name, account.bank_name, account.verified) == (
        "王大明", "中国工商银行", False,
    )  # fmt: skip
    assert view.created_at == NOW
    with env.database.read() as session:
        assert service.get_merchant(session, view.merchant_id) == view


def test_personal_data_is_encrypted_at_rest(env: Env) -> None:
    view = env.create()
    assert scan_for(env.database, PHONE, CARD) == []
    # ...and it is really there, under its own context
    with env.database.read() as session:
        row = session.get(Merchant, view.merchant_id)
        assert row is not None
        assert env.vault.decrypt(row.contact_phone_enc, service.PHONE_CONTEXT) == PHONE
        with pytest.raises(DomainError):
            env.vault.decrypt(row.contact_phone_enc, service.CARD_CONTEXT)
        assert row.contact_phone_hash == env.vault.lookup_hash(PHONE, service.PHONE_CONTEXT)
        account = session.scalars(select(MerchantSettlementAccount)).one()
        assert env.vault.decrypt(account.card_number_enc, service.CARD_CONTEXT) == CARD
        assert account.card_masked == "622202*********0018"
        assert service.contact_phone(session, env.vault, view.merchant_id) == PHONE
        assert [m.merchant_id for m in service.find_merchants_by_phone(
            session, env.vault, PHONE
        )] == [view.merchant_id]  # fmt: skip


def test_merchant_ledger_accounts_created(env: Env) -> None:
    view = env.create()
    mid = view.merchant_id
    with env.database.read() as session:
        rows = session.execute(
            select(LedgerAccount.id, LedgerAccount.owner_type)
            .where(LedgerAccount.owner_id == mid)
            .order_by(LedgerAccount.id)
        ).all()
    expected = sorted(spec.id for spec in chart.merchant_accounts(mid))
    assert [r.id for r in rows] == expected
    assert all(r.owner_type == "merchant" for r in rows)


def test_create_writes_audit_and_history(env: Env) -> None:
    view = env.create()
    with env.database.read() as session:
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "merchant.create")
        ).one()
        assert audit.actor == "staff:alice"
        assert audit.subject_id == view.merchant_id
        assert audit.after is not None and "138****5678" in audit.after
        history = service.status_history(session, view.merchant_id)
        assert verify_audit(session).ok
    assert [(h.from_status, h.to_status, h.actor) for h in history] == [
        (None, MerchantStatus.ACTIVE, "staff:alice")
    ]


def test_serials_count_per_area_and_mcc(env: Env) -> None:
    first = env.create().merchant_id
    second = env.create().merchant_id
    other_mcc = env.create(mcc="5411").merchant_id
    other_area = env.create(area_code="5810").merchant_id
    assert (first, second) == ("898310058120001", "898310058120002")
    assert other_mcc == "898310054110001"
    assert other_area == "898581058120001"


def test_serial_after_the_highest_not_the_count(env: Env) -> None:
    """A gap (e.g. a number imported from elsewhere) never makes two merchants share one."""
    env.create()
    with env.database.transaction() as session:
        session.add(
            Merchant(
                merchant_id="898310058120040", legal_name="imported", merchant_type="enterprise",
                mcc="5812", area_code="3100", status="active", fee_plan_code="standard",
                daily_limit=None, contact_phone_enc=b"x", contact_phone_hash="x",
                contact_phone_masked="x", created_at=NOW, updated_at=NOW,
            )
        )  # fmt: skip
    assert env.create().merchant_id == "898310058120041"


BAD_INPUTS = [
    (dict(contact_phone="12345"), ErrorCode.INVALID_PHONE, "contact_phone"),
    (dict(mcc="58"), ErrorCode.INVALID_MCC, "mcc"),
    (dict(area_code="31000"), ErrorCode.INVALID_AREA_CODE, "area_code"),
    (
        dict(settlement_account=SettlementAccountInput("王大明", "工行", "6222020000000000017")),
        ErrorCode.INVALID_CARD,
        "settlement_account.card_number",
    ),
    (
        dict(settlement_account=SettlementAccountInput("", "工行", CARD)),
        ErrorCode.INVALID_INPUT,
        "settlement_account.holder_name",
    ),
    (dict(legal_name=" "), ErrorCode.INVALID_INPUT, "legal_name"),
    (dict(merchant_type="charity"), ErrorCode.INVALID_INPUT, "merchant_type"),
    (dict(daily_limit=0), ErrorCode.INVALID_AMOUNT, "daily_limit"),
    (dict(fee_plan_code="no-such-plan"), ErrorCode.FEE_PLAN_NOT_FOUND, None),
]


@pytest.mark.parametrize(("changes", "code", "field"), BAD_INPUTS, ids=lambda v: str(v)[:30])
def test_invalid_input_writes_nothing(
    env: Env, changes: dict[str, Any], code: ErrorCode, field: str | None
) -> None:
    with pytest.raises(DomainError) as caught:
        env.create(**changes)
    assert caught.value.code is code
    if field is not None:
        assert caught.value.details["field"] == field
    assert env.count(Merchant) == 0
    assert env.count(MerchantSettlementAccount) == 0
    assert env.count(AuditRecord) == 0
    with env.database.read() as session:
        owned = session.scalar(
            select(func.count()).select_from(LedgerAccount).where(LedgerAccount.owner_id != None)  # noqa: E711
        )
    assert owned == 0


def test_fee_plan_and_daily_limit_are_stored(env: Env) -> None:
    view = env.create(fee_plan_code="d0", daily_limit=20_000_000, settlement_account=None)
    assert (view.fee_plan_code, view.daily_limit, view.settlement_account) == (
        "d0", 20_000_000, None,
    )  # fmt: skip


def test_get_merchant_not_found(env: Env) -> None:
    with env.database.read() as session:
        for missing in ("898310058120001", "nope", "", "8" * 200):
            with pytest.raises(DomainError) as caught:
                service.get_merchant(session, missing)
            assert caught.value.code is ErrorCode.MERCHANT_NOT_FOUND


def test_list_merchants_pages(env: Env) -> None:
    created = []
    for _ in range(5):
        created.append(env.create().merchant_id)
        env.clock.advance(timedelta(seconds=1))
    seen: list[str] = []
    cursor = None
    with env.database.read() as session:
        while True:
            page = service.list_merchants(session, limit=2, cursor=cursor)
            seen.extend(v.merchant_id for v in page.items)
            assert all(v.contact_phone == "138****5678" for v in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == created
        with pytest.raises(DomainError):
            service.list_merchants(session, limit=0)


def test_list_merchants_same_instant(env: Env) -> None:
    """Ties on created_at (one fixed clock) are broken by the merchant number."""
    created = [env.create().merchant_id for _ in range(3)]
    with env.database.read() as session:
        first = service.list_merchants(session, limit=2)
        assert first.next_cursor is not None
        second = service.list_merchants(session, limit=2, cursor=first.next_cursor)
    assert [v.merchant_id for v in first.items + second.items] == created
    assert second.next_cursor is None


def test_balance_comes_from_the_ledger(env: Env) -> None:
    mid = env.create().merchant_id
    receivable = chart.channel_receivable("unionpay")
    payable = chart.channel_payable("unionpay")
    unsettled, settled = chart.merchant_unsettled(mid), chart.merchant_settled(mid)
    with env.database.read() as session:
        assert service.merchant_balance(session, env.ledger, mid) == service.MerchantBalance(
            mid, 0, 0, 0, 0, 0
        )
    with env.database.transaction() as session:
        sale = Transfer(
            "sale:1",
            (
                Posting(receivable, 10_000),
                Posting(unsettled, -9_940),
                Posting(chart.fee_revenue("card"), -60),
            ),
        )
        env.ledger.post(session, sale)
        env.ledger.post(session, transfer("settle:1", unsettled, settled, 5_000))
        env.ledger.post(session, hold("refund:1", unsettled, payable, 1_000))
        env.ledger.post(session, transfer("deposit:1", settled, chart.merchant_deposit(mid), 2_000))
        env.ledger.post(session, transfer("debt:1", chart.merchant_debt(mid), settled, 300))
    with env.database.read() as session:
        balance = service.merchant_balance(session, env.ledger, mid)
    assert balance == service.MerchantBalance(
        merchant_id=mid, unsettled=4_940, settled=3_300, pending_refunds=1_000,
        deposit_held=2_000, debt=300,
    )  # fmt: skip
    with env.database.read() as session, pytest.raises(DomainError) as caught:
        service.merchant_balance(session, env.ledger, "898310058129999")
    assert caught.value.code is ErrorCode.MERCHANT_NOT_FOUND


def test_set_status(env: Env) -> None:
    mid = env.create().merchant_id
    with env.database.transaction() as session:
        view = service.set_status(
            session, mid, "suspended", actor="staff:risk", reason="chargebacks", clock=env.clock
        )
    assert view.status is MerchantStatus.SUSPENDED and not view.is_active
    with env.database.transaction() as session:
        service.set_status(
            session, mid, "closed", actor="staff:risk", reason="ended", clock=env.clock
        )
    with pytest.raises(DomainError) as caught, env.database.transaction() as session:
        service.set_status(session, mid, "active", actor="staff:risk", reason="x", clock=env.clock)
    assert caught.value.code is ErrorCode.INVALID_TRANSITION
    with pytest.raises(DomainError) as caught, env.database.transaction() as session:
        service.set_status(session, mid, "closed", actor="staff:risk", reason=" ", clock=env.clock)
    assert caught.value.code is ErrorCode.INVALID_INPUT
    with env.database.read() as session:
        history = service.status_history(session, mid)
        actions = session.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)).all()
    assert [(h.from_status, h.to_status, h.reason) for h in history] == [
        (None, MerchantStatus.ACTIVE, "created"),
        (MerchantStatus.ACTIVE, MerchantStatus.SUSPENDED, "chargebacks"),
        (MerchantStatus.SUSPENDED, MerchantStatus.CLOSED, "ended"),
    ]
    assert actions == ["merchant.create", "merchant.status", "merchant.status"]


def test_verify_and_replace_settlement_account(env: Env) -> None:
    mid = env.create().merchant_id
    bare = env.create(settlement_account=None).merchant_id
    with env.database.transaction() as session:
        view = service.verify_settlement_account(session, mid, actor="staff:bob", clock=env.clock)
    assert view.settlement_account is not None
    assert view.settlement_account.verified
    assert view.settlement_account.verified_at == NOW
    with env.database.transaction() as session:  # again: nothing changes, no second audit
        service.verify_settlement_account(session, mid, actor="staff:bob", clock=env.clock)
        assert service.settlement_card_number(session, env.vault, mid) == CARD
    with pytest.raises(DomainError) as caught, env.database.transaction() as session:
        service.verify_settlement_account(session, bare, actor="staff:bob", clock=env.clock)
    assert caught.value.code is ErrorCode.NOT_FOUND

    with env.database.transaction() as session:
        replaced = service.add_settlement_account(
            session, env.vault, mid, SettlementAccountInput("王大明", "招商银行", CARD_2),
            actor="staff:bob", clock=env.clock,
        )  # fmt: skip
    account = replaced.settlement_account
    assert account is not None
    assert (account.card_number, account.verified) == ("625807******0017", False)
    with env.database.read() as session:
        # the new account is unverified: no payout card until staff check it
        with pytest.raises(DomainError):
            service.settlement_card_number(session, env.vault, mid)
        replaced_flags = sorted(
            r.replaced_at is None
            for r in session.scalars(
                select(MerchantSettlementAccount).where(
                    MerchantSettlementAccount.merchant_id == mid
                )
            )
        )
        actions = session.scalars(select(AuditRecord.action)).all()
    assert replaced_flags == [False, True]
    assert actions.count("merchant.settlement_account.verify") == 1
    assert scan_for(env.database, PHONE, CARD, CARD_2) == []


def test_one_current_settlement_account_per_merchant(env: Env) -> None:
    """The database itself refuses a second current account."""
    mid = env.create().merchant_id
    with pytest.raises(Exception, match=r"(?i)unique"), env.database.transaction() as session:
        session.add(
            MerchantSettlementAccount(
                id="x" * 26, merchant_id=mid, holder_name="h", bank_name="b",
                card_number_enc=b"x", card_number_hash="h", card_masked="m", verified=False,
                verified_at=None, verified_by=None, created_at=NOW, replaced_at=None,
            )
        )  # fmt: skip


def test_status_history_and_settlement_accounts_restrict_deletes(env: Env) -> None:
    env.create()
    with pytest.raises(Exception, match=r"(?i)foreign key"), env.database.transaction() as s:
        s.execute(text("DELETE FROM merchants"))
    assert env.count(Merchant) == 1
    assert env.count(MerchantStatusHistory) == 1


def test_concurrent_creations_get_distinct_numbers(pg_database: Database) -> None:
    """PostgreSQL: a creation that loses the race for a number takes the next one."""
    bootstrap(pg_database)
    clock = FixedClock(NOW)
    vault, ledger = Vault.from_master(MASTER), Ledger(pg_database, clock)
    results: list[str] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with pg_database.transaction() as session:
                results.append(
                    service.create_merchant(
                        session, vault, ledger, merchant_input(), actor="b", clock=clock
                    ).merchant_id
                )
        except BaseException as exc:
            errors.append(exc)

    with pg_database.transaction() as session:
        first = service.create_merchant(
            session, vault, ledger, merchant_input(), actor="a", clock=clock
        )
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)  # the second creation now waits on our uncommitted number
    thread.join(timeout=30)
    assert not errors, errors
    assert first.merchant_id == "898310058120001"
    assert results == ["898310058120002"]


def test_models_match_the_migration(db_url: str) -> None:
    """Autogenerate finds nothing to change for these tables: the hand-written migration is
    the schema the models describe."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from shoudan.core.db import Base, create_engine

    mine = {"merchants", "merchant_settlement_accounts", "merchant_status_history", "terminals"}
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert [d for d in diff if any(name in str(d) for name in mine)] == []


# -- HTTP ----------------------------------------------------------------------------------------
@dataclass
class Api:
    client: TestClient
    container: Container
    merchant_a: str
    merchant_b: str
    keys: dict[str, str]

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def get(self, path: str, who: str, **params: Any) -> Any:
        return self.client.get(path, headers=self.headers(who), params=params)

    def post(self, path: str, who: str, body: dict[str, Any]) -> Any:
        return self.client.post(path, headers=self.headers(who), json=body)


def build_api(database: Database, tmp_path: Path) -> Iterator[Api]:
    clock = FixedClock(NOW)
    container = Container(
        Settings(data_dir=tmp_path, database_url=database.url), database,
        Vault.from_master(MASTER), clock,
    )  # fmt: skip
    bootstrap(database)
    with database.transaction() as session:
        a = service.create_merchant(
            session, container.vault, container.ledger, merchant_input(), actor="t", clock=clock
        ).merchant_id
        b = service.create_merchant(
            session, container.vault, container.ledger,
            merchant_input(legal_name="便利小店", mcc="5411", contact_phone="13912345678"),
            actor="t", clock=clock,
        ).merchant_id  # fmt: skip
        keys = {
            role.value: create_api_key(session, role=role, clock=clock)[1]
            for role in (Role.ADMIN, Role.REVIEWER, Role.CS_AGENT, Role.RISK, Role.FINANCE)
        }
        keys["a"] = create_api_key(session, role=Role.MERCHANT, merchant_id=a, clock=clock)[1]
        keys["b"] = create_api_key(session, role=Role.MERCHANT, merchant_id=b, clock=clock)[1]
    with TestClient(create_app(container=container), raise_server_exceptions=False) as client:
        yield Api(client, container, a, b, keys)


@pytest.fixture
def api(database: Database, tmp_path: Path) -> Iterator[Api]:
    yield from build_api(database, tmp_path)


def create_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "legal_name": "小李水果店",
        "merchant_type": "small_business",
        "mcc": "5411",
        "area_code": "5810",
        "contact_phone": "13700001111",
        "settlement_account": {
            "holder_name": "李小龙", "bank_name": "中国建设银行", "card_number": CARD_2,
        },
    }  # fmt: skip
    body.update(changes)
    return body


@pytest.mark.parametrize("who", ["admin", "reviewer"])
def test_http_create_merchant(api: Api, who: str) -> None:
    response = api.post("/v1/merchants", who, create_body())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "merchant_id": "898581054110001",
        "legal_name": "小李水果店",
        "merchant_type": "small_business",
        "mcc": "5411",
        "area_code": "5810",
        "status": "active",
        "fee_plan_code": "standard",
        "daily_limit": None,
        "contact_phone": "137****1111",
        "settlement_account": {
            "holder_name": "李小龙", "bank_name": "中国建设银行",
            "card_number": "625807******0017", "verified": False, "verified_at": None,
        },
        "created_at": body["created_at"],
    }  # fmt: skip
    assert datetime.fromisoformat(body["created_at"].replace("Z", "+00:00")) == NOW
    assert "13700001111" not in response.text and CARD_2 not in response.text
    assert scan_for(api.container.database, "13700001111", CARD_2) == []
    fetched = api.get("/v1/merchants/898581054110001", "cs_agent")
    assert fetched.status_code == 200
    assert fetched.json() == body


@pytest.mark.parametrize("who", ["a", "cs_agent", "finance"])
def test_http_create_merchant_is_for_reviewers(api: Api, who: str) -> None:
    response = api.post("/v1/merchants", who, create_body())
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert len(api.get("/v1/merchants", "admin").json()["data"]) == 2


def test_http_needs_a_key(api: Api) -> None:
    response = api.client.get(f"/v1/merchants/{api.merchant_a}")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    bad = api.client.get(
        f"/v1/merchants/{api.merchant_a}", headers={"Authorization": "Bearer sk_m_nope"}
    )
    assert bad.status_code == 401


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        (dict(contact_phone="1381234567"), "invalid_phone"),
        (dict(mcc="54x1"), "invalid_mcc"),
        (dict(area_code="58"), "invalid_area_code"),
        (
            dict(settlement_account={"holder_name": "李", "bank_name": "建行",
                                     "card_number": "6258070000000018"}),
            "invalid_card",
        ),
        (dict(fee_plan_code="gold"), "fee_plan_not_found"),
        (dict(daily_limit=-5), "invalid_amount"),
        (dict(daily_limit="100"), "invalid_input"),
        (dict(daily_limit=1.5), "invalid_input"),
        (dict(merchant_type="charity"), "invalid_input"),
        (dict(legal_name=""), "invalid_input"),
        (dict(nickname="x"), "invalid_input"),
        (dict(settlement_account={"holder_name": "李", "bank_name": "建行",
                                  "card_number": CARD_2, "cvv": "123"}), "invalid_input"),
    ],
    ids=lambda v: str(v)[:40],
)  # fmt: skip
def test_http_create_refusals_are_precise_and_write_nothing(
    api: Api, changes: dict[str, Any], code: str
) -> None:
    body = create_body(**changes)
    response = api.post("/v1/merchants", "admin", body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert "6258070000000018" not in response.text
    listed = api.get("/v1/merchants", "admin").json()["data"]
    assert sorted(m["merchant_id"] for m in listed) == sorted([api.merchant_a, api.merchant_b])


def test_http_missing_field_is_invalid_input(api: Api) -> None:
    body = create_body()
    del body["contact_phone"]
    response = api.post("/v1/merchants", "admin", body)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"


def test_http_tenant_isolation(api: Api) -> None:
    own = api.get(f"/v1/merchants/{api.merchant_a}", "a")
    assert own.status_code == 200
    assert own.json()["contact_phone"] == "138****5678"
    missing = api.get("/v1/merchants/898999999999999", "a")
    for path in (f"/v1/merchants/{api.merchant_b}", f"/v1/merchants/{api.merchant_b}/balance"):
        other = api.get(path, "a")
        assert other.status_code == 404, path
        assert other.json()["code"] == "merchant_not_found"
        # indistinguishable from a merchant that does not exist
        assert {k: v for k, v in other.json().items() if k not in ("instance", "merchant_id")} == {
            k: v for k, v in missing.json().items() if k not in ("instance", "merchant_id")
        }
    assert api.get("/v1/merchants", "a").status_code == 403
    assert api.get(f"/v1/merchants/{api.merchant_b}", "b").status_code == 200


def test_http_balance(api: Api) -> None:
    mid = api.merchant_a
    with api.container.database.transaction() as session:
        api.container.ledger.post(
            session,
            transfer("sale:http", chart.channel_receivable("wechat"), chart.merchant_unsettled(mid),
                     12_345),
        )  # fmt: skip
    for who in ("a", "finance"):
        response = api.get(f"/v1/merchants/{mid}/balance", who)
        assert response.status_code == 200
        assert response.json() == {
            "merchant_id": mid, "currency": "CNY", "unsettled": 12_345, "settled": 0,
            "pending_refunds": 0, "deposit_held": 0, "debt": 0,
        }  # fmt: skip
    assert api.get("/v1/merchants/898310058129999/balance", "admin").status_code == 404


def test_http_list_merchants_paginates(api: Api) -> None:
    for i in range(3):
        assert api.post("/v1/merchants", "admin", create_body(mcc=f"100{i}")).status_code == 201
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = api.get("/v1/merchants", "admin", **params)
        assert response.status_code == 200
        page = response.json()
        ids.extend(m["merchant_id"] for m in page["data"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert len(ids) == len(set(ids)) == 5
    assert api.get("/v1/merchants", "admin", limit=0).status_code == 422
    bad = api.get("/v1/merchants", "admin", cursor="garbage")
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_input")


def test_http_status_and_verification(api: Api) -> None:
    mid = api.merchant_a
    path = f"/v1/merchants/{mid}"
    suspend = {"status": "suspended", "reason": "x"}
    assert api.post(f"{path}/status", "reviewer", suspend).json()["code"] == "forbidden"
    assert api.post(f"{path}/status", "a", suspend).status_code == 403
    suspended = api.post(f"{path}/status", "risk", {"status": "suspended", "reason": "risk"})
    assert suspended.status_code == 200
    assert suspended.json()["status"] == "suspended"
    again = api.post(f"{path}/status", "risk", {"status": "suspended", "reason": "risk"})
    assert (again.status_code, again.json()["code"]) == (409, "invalid_transition")

    assert api.post(f"{path}/settlement-account/verify", "a", {}).status_code == 403
    verified = api.post(f"{path}/settlement-account/verify", "reviewer", {})
    assert verified.status_code == 200
    assert verified.json()["settlement_account"]["verified"] is True


def test_openapi_describes_the_merchant_api(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    create = paths["/v1/merchants"]["post"]
    assert {"201", "401", "403", "422"} <= set(create["responses"])
    schema = spec["components"]["schemas"]["MerchantCreate"]
    assert schema["additionalProperties"] is False
    assert "/v1/merchants/{merchant_id}/balance" in paths
    assert "BalanceOut" in spec["components"]["schemas"]
