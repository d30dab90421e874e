"""Onboarding over HTTP and through the services, on SQLite and PostgreSQL: apply → verify the
phone → KYC → review → contract accepted; every refusal changes nothing."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shoudan.api.app import create_app
from shoudan.api.ratelimit import RateLimiter
from shoudan.audit.models import AuditRecord
from shoudan.auth.domain import Role
from shoudan.auth.service import create_api_key
from shoudan.bootstrap import bootstrap
from shoudan.channels.sandbox import SandboxChannel
from shoudan.container import Container
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.merchants.service import MerchantInput, create_merchant, get_merchant
from shoudan.onboarding import service
from shoudan.onboarding.models import Application, Contract, PhoneCode, StatusHistory
from shoudan.sms.models import SmsMessage

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
PHONE = "13812345678"
ID_NUMBER = "440305199003071236"  # well formed (Shenzhen Nanshan, 1990-03-07)
KYC_FAIL_ID = "440305199003079991"  # sequence code 999: the sandbox says name ≠ ID
CARD = "6217000010012345677"  # CCB, passes Luhn
BAD_LUHN_CARD = "6217000010012345678"
CREDIT_CODE = "91110000600037341L"


@dataclass
class World:
    container: Container
    clock: FixedClock
    client: TestClient
    admin: str
    reviewer: str
    cs_agent: str

    def staff(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.reviewer}"}

    def apply(self, expect: int = 201, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "applicant_name": "张三", "phone": PHONE, "province": "广东", "city": "深圳",
            "product": "smart", "merchant_type": "small_business", "id_number": ID_NUMBER,
            "bank_card": CARD, "business_name": "张三便利店",
            "business_address": "深圳市南山区科技园路 1 号",
        }  # fmt: skip
        body.update(overrides)
        response = self.client.post("/v1/applications", json=body)
        assert response.status_code == expect, response.text
        return response.json()

    def last_code(self, phone: str = PHONE) -> str:
        texts = self.container.sms.list_inbox(phone, limit=1)  # type: ignore[attr-defined]
        match = re.search(r"\d{6}", texts[0].text)
        assert match is not None
        return match.group()

    def verify(self, app_id: str, token: str, code: str, expect: int = 200) -> dict[str, Any]:
        response = self.client.post(
            f"/v1/applications/{app_id}/verify-phone", json={"code": code},
            headers={"X-Application-Token": token},
        )  # fmt: skip
        assert response.status_code == expect, response.text
        return response.json()

    def resend(self, app_id: str, token: str, expect: int = 200) -> dict[str, Any]:
        response = self.client.post(
            f"/v1/applications/{app_id}/send-code", headers={"X-Application-Token": token}
        )
        assert response.status_code == expect, response.text
        return response.json()

    def applied_and_verified(self, **overrides: Any) -> tuple[str, str]:
        submitted = self.apply(**overrides)
        app_id, token = submitted["application"]["id"], submitted["application_token"]
        self.verify(app_id, token, self.last_code(overrides.get("phone", PHONE)))
        return app_id, token

    def review(self, app_id: str, action: str, expect: int = 200, key: str | None = None,
               **body: Any) -> dict[str, Any]:  # fmt: skip
        response = self.client.post(
            f"/v1/applications/{app_id}/{action}", json=body, headers=self.staff(key)
        )
        assert response.status_code == expect, response.text
        return response.json()

    def count(self, model: Any) -> int:
        with self.container.database.read() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    clock = FixedClock(NOW)
    settings = Settings(data_dir=tmp_path, secret_key="11" * 32, public_rate_limit_per_minute=1000)
    channel = SandboxChannel(latency_seconds=0.0, timeout_seconds=0.01, clock=clock)
    container = Container(settings, database, Vault.from_master(b"\x11" * 32), clock, channel)
    bootstrap(database)
    with database.transaction() as session:
        admin = create_api_key(session, role=Role.ADMIN, name="admin")[1]
        reviewer = create_api_key(session, role=Role.REVIEWER, name="reviewer")[1]
        cs_agent = create_api_key(session, role=Role.CS_AGENT, name="cs")[1]
    client = TestClient(create_app(container=container), raise_server_exceptions=False)
    return World(container, clock, client, admin, reviewer, cs_agent)


def snapshot(world: World) -> tuple[int, ...]:
    return tuple(
        world.count(m) for m in (Application, PhoneCode, Contract, StatusHistory, SmsMessage)
    )


# -- the whole path ------------------------------------------------------------------------------
def test_apply_verify_review_and_accept_the_contract(world: World) -> None:
    submitted = world.apply(credit_code=CREDIT_CODE)
    application, token = submitted["application"], submitted["application_token"]
    assert application["status"] == "phone_pending" and application["kyc_status"] == "pending"
    assert application["phone"] == "138****5678"
    assert application["id_number"] == "4403**********1236"
    assert application["bank_card"] == "621700*********5677"
    assert application["applicant_name"] == "张*"
    assert application["bank_name"] == "中国建设银行" and application["warnings"] == []
    assert token.startswith("apt_") and submitted["code"]["phone"] == "138****5678"
    with world.container.database.read() as session:
        row = session.get(Application, application["id"])
        assert row is not None and token not in row.token_hash
        stored = b"".join([row.phone_enc, row.id_number_enc, row.card_enc])
        assert PHONE.encode() not in stored and ID_NUMBER.encode() not in stored
        code_row = session.scalars(select(PhoneCode)).one()
        assert world.last_code() not in code_row.code_hash

    verified = world.verify(application["id"], token, world.last_code())
    assert verified["status"] == "in_review" and verified["kyc_status"] == "passed"
    assert verified["phone_verified_at"] is not None

    approved = world.review(application["id"], "approve")
    assert approved["status"] == "approved"
    merchant_id, contract_id = approved["merchant_id"], approved["contract_id"]
    assert merchant_id.startswith("898" + "5840" + "5411")  # Shenzhen, the default MCC
    with world.container.database.read() as session:
        merchant = get_merchant(session, merchant_id)
    assert merchant.legal_name == "张三便利店" and merchant.contact_phone == "138****5678"
    assert merchant.settlement_account is not None
    assert merchant.settlement_account.verified  # KYC passed
    assert merchant.settlement_account.bank_name == "中国建设银行"

    headers = {"X-Application-Token": token, "User-Agent": "pytest-browser/1.0"}
    contract = world.client.get(f"/v1/contracts/{contract_id}", headers=headers).json()
    assert contract["status"] == "generated" and contract["terms"]["deposit_amount"] == 49_900
    assert contract["sha256"] == hashlib.sha256(contract["text"].encode()).hexdigest()
    download = world.client.get(f"/v1/contracts/{contract_id}/text", headers=headers)
    assert download.status_code == 200
    assert download.headers["content-type"] == "text/plain; charset=utf-8"
    assert "attachment" in download.headers["content-disposition"]
    assert hashlib.sha256(download.content).hexdigest() == contract["sha256"]

    world.clock.advance(timedelta(minutes=3))
    accepted = world.client.post(
        f"/v1/contracts/{contract_id}/accept", json={"sha256": contract["sha256"]},
        headers=headers,
    ).json()  # fmt: skip
    assert accepted["status"] == "accepted"
    assert accepted["accepted_at"].startswith("2026-11-23T02:03:00")
    assert accepted["accepted_ip"] == "testclient"
    assert accepted["accepted_user_agent"] == "pytest-browser/1.0"
    assert accepted["accepted_sha256"] == contract["sha256"]

    again = world.client.post(f"/v1/contracts/{contract_id}/accept", headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "contract_already_accepted"

    with world.container.database.read() as session:
        assert service.accepted_contract(session, contract_id, merchant_id=merchant_id).sha256 \
            == contract["sha256"]  # fmt: skip
        latest = service.latest_accepted_contract(session, merchant_id, "smart")
        assert latest is not None and latest.contract_id == contract_id
        assert service.latest_accepted_contract(session, merchant_id, "epos") is None
        moves = [(c.subject_type, c.to_status) for c in service.history(session, application["id"])]
        assert moves == [("application", "phone_pending"), ("application", "in_review"),
                         ("kyc", "passed"), ("application", "approved")]  # fmt: skip
        contract_moves = [c.to_status for c in service.history(session, contract_id)]
        assert contract_moves == ["generated", "accepted"]
        actions = set(session.scalars(select(AuditRecord.action)))
    assert {"application.submit", "application.verify_phone", "application.kyc",
            "application.approve", "merchant.create", "merchant.settlement_account.verify",
            "contract.generate", "contract.accept"} <= actions  # fmt: skip


# -- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "code", "check"),
    [
        ({"id_number": "440305199003071237"}, "invalid_id_number", "checksum"),
        ({"id_number": "440305199013071236"}, "invalid_id_number", "birth_date"),
        ({"merchant_type": "enterprise"}, "invalid_credit_code", "missing"),
        ({"credit_code": "91110000600037341M"}, "invalid_credit_code", "checksum"),
        ({"phone": "12345"}, "invalid_phone", None),
        ({"product": "mpos"}, "invalid_input", None),
        ({"bank_card": "9999990000000000"}, "invalid_input", None),  # unknown BIN, no name
    ],
)
def test_invalid_applications_are_refused_precisely_and_store_nothing(
    world: World, overrides: dict[str, str], code: str, check: str | None
) -> None:
    before = snapshot(world)
    problem = world.apply(expect=422, **overrides)
    assert problem["code"] == code
    if check:
        assert problem["check"] == check
    assert snapshot(world) == before


def test_a_card_failing_luhn_is_a_warning_then_kyc_and_approval_say_no(world: World) -> None:
    submitted = world.apply(bank_card=BAD_LUHN_CARD)
    assert submitted["application"]["warnings"] == ["card_checksum"]
    app_id, token = submitted["application"]["id"], submitted["application_token"]
    verified = world.verify(app_id, token, world.last_code())
    assert verified["kyc_status"] == "failed" and verified["kyc_reasons"] == ["card_not_found"]
    before = snapshot(world)
    assert world.review(app_id, "approve", expect=422)["code"] == "invalid_card"
    assert snapshot(world) == before
    assert world.client.get(f"/v1/applications/{app_id}", headers=world.staff()).json()[
        "status"] == "in_review"  # fmt: skip


def test_unknown_bin_takes_the_given_bank_name(world: World) -> None:
    submitted = world.apply(bank_card="6011000990139424", bank_name="某某农商银行")
    assert submitted["application"]["bank_name"] == "某某农商银行"


# -- SMS codes -----------------------------------------------------------------------------------
def test_wrong_codes_count_and_the_sixth_try_is_refused(world: World) -> None:
    submitted = world.apply()
    app_id, token = submitted["application"]["id"], submitted["application_token"]
    right = world.last_code()
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for left in (4, 3, 2, 1, 0):
        problem = world.verify(app_id, token, wrong, expect=422)
        assert problem["code"] == "verification_code_invalid"
        assert problem["attempts_left"] == left
    assert world.verify(app_id, token, right, expect=429)["code"] == "too_many_attempts"
    # a new code (60 s later) works again
    world.clock.advance(timedelta(seconds=60))
    world.resend(app_id, token)
    assert world.verify(app_id, token, world.last_code())["status"] == "in_review"


def test_code_expires_after_five_minutes(world: World) -> None:
    submitted = world.apply()
    app_id, token = submitted["application"]["id"], submitted["application_token"]
    code = world.last_code()
    world.clock.advance(timedelta(minutes=5))
    before = snapshot(world)
    assert world.verify(app_id, token, code, expect=422)["code"] == "verification_code_expired"
    assert snapshot(world) == before
    world.clock.advance(timedelta(seconds=-1))  # 4:59: still valid
    assert world.verify(app_id, token, code)["status"] == "in_review"


def test_resend_waits_60_seconds_and_replaces_the_code(world: World) -> None:
    submitted = world.apply()
    app_id, token = submitted["application"]["id"], submitted["application_token"]
    first = world.last_code()
    world.clock.advance(timedelta(seconds=59))
    problem = world.resend(app_id, token, expect=429)
    assert problem["code"] == "resend_too_soon" and problem["retry_after"] == 1
    world.clock.advance(timedelta(seconds=1))
    sent = world.resend(app_id, token)
    assert sent["resend_after"].startswith("2026-11-23T02:02:00")
    second = world.last_code()
    if first != second:  # the old code no longer works
        assert world.verify(app_id, token, first, expect=422)["code"] == (
            "verification_code_invalid"
        )
    assert world.verify(app_id, token, second)["status"] == "in_review"
    assert world.resend(app_id, token, expect=409)["code"] == "invalid_transition"


def test_ten_codes_a_day_per_phone_then_the_next_shanghai_day(world: World) -> None:
    submitted = world.apply()  # code 1
    app_id, token = submitted["application"]["id"], submitted["application_token"]
    for _ in range(9):  # codes 2..10
        world.clock.advance(timedelta(seconds=60))
        world.resend(app_id, token)
    world.clock.advance(timedelta(seconds=60))
    assert world.resend(app_id, token, expect=429)["code"] == "too_many_codes"
    before = snapshot(world)
    assert world.apply(expect=429)["code"] == "too_many_codes"  # another application, same phone
    assert snapshot(world) == before
    world.clock.set(datetime(2026, 11, 23, 16, 0, tzinfo=UTC))  # midnight in Shanghai
    world.resend(app_id, token)


def test_twenty_codes_a_day_from_one_address_whatever_the_phones(world: World) -> None:
    """SMS pumping: one visitor may not text thousands of phones at the acquirer's cost."""
    from shoudan.sms.models import SmsAddressBudget

    for n in range(20):
        world.apply(phone=f"1380013{n:04d}")
    before = snapshot(world)
    refused = world.apply(expect=429, phone="13900139000")
    assert refused["code"] == "rate_limited" and "network address" in refused["detail"]
    assert snapshot(world) == before  # nothing stored, nothing texted
    with world.container.database.read() as session:
        budget = session.scalars(select(SmsAddressBudget)).one()
    assert (budget.day, budget.codes) == ("2026-11-23", 20)  # the refusal counted nothing
    world.clock.set(datetime(2026, 11, 23, 16, 0, tzinfo=UTC))  # midnight in Shanghai
    world.apply(phone="13900139000")


def test_the_token_is_needed_and_a_wrong_one_finds_nothing(world: World) -> None:
    submitted = world.apply()
    app_id, token = submitted["application"]["id"], submitted["application_token"]
    response = world.client.post(f"/v1/applications/{app_id}/verify-phone", json={"code": "1"})
    assert response.status_code == 401
    assert world.verify(app_id, "apt_wrong", "123456", expect=404)["code"] == (
        "application_not_found"
    )
    assert world.verify("app_missing", token, "123456", expect=404)["code"] == (
        "application_not_found"
    )
    own = world.client.get(f"/v1/applications/{app_id}", headers={"X-Application-Token": token})
    assert own.status_code == 200 and own.json()["phone"] == "138****5678"
    assert world.client.get(f"/v1/applications/{app_id}").status_code == 401


def test_public_endpoints_are_rate_limited(world: World) -> None:
    world.client.app.state.public_limiter = RateLimiter(2)  # type: ignore[attr-defined]
    world.apply()
    world.apply(phone="13912345678")
    assert world.apply(expect=429, phone="13712345678")["code"] == "rate_limited"


# -- review --------------------------------------------------------------------------------------
def test_request_info_materials_and_reject(world: World) -> None:
    app_id, token = world.applied_and_verified(id_number=KYC_FAIL_ID)
    view = world.client.get(f"/v1/applications/{app_id}", headers=world.staff()).json()
    assert view["kyc_status"] == "failed" and view["kyc_reasons"] == ["id_name_mismatch"]
    asked = world.review(app_id, "request-info", message="请上传身份证正反面")
    assert asked["status"] == "info_requested" and asked["info_request"] == "请上传身份证正反面"
    assert world.review(app_id, "approve", expect=409)["code"] == "invalid_transition"

    response = world.client.post(
        f"/v1/applications/{app_id}/materials", json={"id_number": ID_NUMBER},
        headers={"X-Application-Token": token},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "in_review" and response.json()["kyc_status"] == "passed"
    again = world.client.post(
        f"/v1/applications/{app_id}/materials", json={"city": "广州"},
        headers={"X-Application-Token": token},
    )  # fmt: skip
    assert again.status_code == 409  # only while information is requested

    rejected = world.review(app_id, "reject", reason="经营场所与申请不符")
    assert rejected["status"] == "rejected" and rejected["rejection_reason"] == "经营场所与申请不符"
    assert world.review(app_id, "approve", expect=409)["code"] == "invalid_transition"
    queue = world.client.get("/v1/applications?status=rejected", headers=world.staff()).json()
    assert [a["id"] for a in queue["data"]] == [app_id]


def test_kyc_failure_still_approvable_but_the_account_stays_unverified(world: World) -> None:
    app_id, _ = world.applied_and_verified(id_number=KYC_FAIL_ID, city="拉萨")
    assert world.review(app_id, "approve", expect=422)["code"] == "invalid_area_code"
    approved = world.review(app_id, "approve", area_code="7700", mcc="5812", key=world.admin)
    with world.container.database.read() as session:
        merchant = get_merchant(session, approved["merchant_id"])
    assert merchant.area_code == "7700" and merchant.mcc == "5812"
    assert merchant.settlement_account is not None and not merchant.settlement_account.verified


def test_only_reviewers_and_admins_review(world: World) -> None:
    app_id, token = world.applied_and_verified()
    assert world.review(app_id, "approve", expect=403, key=world.cs_agent)["code"] == "forbidden"
    response = world.client.post(
        f"/v1/applications/{app_id}/approve", headers={"X-Application-Token": token}
    )
    assert response.status_code == 401
    assert world.client.get("/v1/applications", headers=world.staff(world.cs_agent)).status_code \
        == 403  # fmt: skip


# -- contracts -----------------------------------------------------------------------------------
def test_contracts_are_visible_only_to_their_merchant_and_applicant(world: World) -> None:
    app_id, token = world.applied_and_verified()
    approved = world.review(app_id, "approve")
    contract_id, merchant_id = approved["contract_id"], approved["merchant_id"]
    other_token = world.apply(phone="13912345678")["application_token"]
    with world.container.database.transaction() as session:
        other = create_merchant(
            session, world.container.vault, world.container.ledger,
            MerchantInput("别家小店", "individual", "5411", "5840", "13700001111"),
            actor="test", clock=world.clock,
        ).merchant_id  # fmt: skip
        key_own = create_api_key(session, role=Role.MERCHANT, merchant_id=merchant_id)[1]
        key_other = create_api_key(session, role=Role.MERCHANT, merchant_id=other)[1]
    url = f"/v1/contracts/{contract_id}"
    for headers in ({"X-Application-Token": other_token}, {"Authorization": f"Bearer {key_other}"}):
        assert world.client.get(url, headers=headers).status_code == 404
        refused = world.client.post(url + "/accept", headers=headers)
        assert refused.status_code == 404 and refused.json()["code"] == "contract_not_found"
    assert world.client.get(url, headers=world.staff()).status_code == 200
    assert world.client.post(url + "/accept", headers=world.staff()).status_code == 403
    assert world.client.get("/v1/contracts/ctr_nope", headers=world.staff()).status_code == 404
    mismatch = world.client.post(
        url + "/accept", json={"sha256": "0" * 64}, headers={"Authorization": f"Bearer {key_own}"}
    )
    assert mismatch.status_code == 422
    accepted = world.client.post(url + "/accept", headers={"Authorization": f"Bearer {key_own}"})
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    assert world.client.get(url, headers={"X-Application-Token": token}).json()["status"] == (
        "accepted"
    )


def test_contract_service_interface(world: World) -> None:
    clock, container = world.clock, world.container
    with container.database.transaction() as session:
        merchant_id = create_merchant(
            session, container.vault, container.ledger,
            MerchantInput("老王面馆", "individual", "5812", "5840", "13812341234"),
            actor="test", clock=clock,
        ).merchant_id  # fmt: skip
        contract = service.generate_contract(
            session, merchant_id=merchant_id, product="epos", clock=clock, actor="test"
        )
    assert contract.application_id is None and contract.terms.deposit_amount == 29_900
    assert "老王面馆" in contract.text and contract.status == "generated"
    with container.database.read() as session:
        with pytest.raises(DomainError) as caught:
            service.accepted_contract(session, contract.contract_id, merchant_id=merchant_id)
        assert caught.value.code is ErrorCode.CONTRACT_NOT_ACCEPTED
        with pytest.raises(DomainError) as caught:
            service.accepted_contract(session, contract.contract_id, merchant_id="898000000000000")
        assert caught.value.code is ErrorCode.CONTRACT_NOT_FOUND
        assert service.latest_accepted_contract(session, merchant_id, "epos") is None
    with container.database.transaction() as session:
        accepted = service.accept_contract(
            session, contract.contract_id, merchant_id=merchant_id, ip="10.0.0.1",
            user_agent="ua", clock=clock,
        )  # fmt: skip
    assert accepted.accepted_sha256 == contract.sha256 and accepted.accepted_ip == "10.0.0.1"
    with container.database.transaction() as session:
        with pytest.raises(DomainError) as caught:
            service.accept_contract(
                session, contract.contract_id, merchant_id=merchant_id, ip="x", user_agent="y",
                clock=clock,
            )  # fmt: skip
        assert caught.value.code is ErrorCode.CONTRACT_ALREADY_ACCEPTED
    with container.database.read() as session:
        assert service.get_contract(session, contract.contract_id).accepted_ip == "10.0.0.1"
        assert service.latest_accepted_contract(session, merchant_id, "epos") == accepted
