"""Terminals: id and key formats, the key check value, the service on both engines (the
master key encrypted at rest and returned once), payment eligibility, and the HTTP API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shoudan.audit.models import AuditRecord
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.merchants import service as merchants
from shoudan.pricing.domain import Product as PricingProduct
from shoudan.terminals import domain, service
from shoudan.terminals.domain import Product, TerminalStatus
from shoudan.terminals.keys import generate_master_key, key_check_value
from shoudan.terminals.models import Terminal
from shoudan.terminals.service import TerminalInput
from tests.test_merchants import Api, Env, build_api, merchant_input, scan_for
from tests.test_merchants import env as env  # noqa: PLC0414  (the fixture)

pytestmark = pytest.mark.filterwarnings(r"ignore:.*httpx.*starlette\.testclient.*")

KEY = "0123456789ABCDEFFEDCBA9876543210"  # the classic test key; KCV 08D7B4


def terminal_input(owner: str, **changes: Any) -> TerminalInput:
    return replace(TerminalInput("SN-0001", "T0000001", "epos", owner, None), **changes)


def add(env: Env, data: TerminalInput) -> tuple[service.TerminalView, str | None]:
    with env.database.transaction() as session:
        return service.create_terminal(session, env.vault, data, actor="staff:t", clock=env.clock)


# -- pure rules ----------------------------------------------------------------------------------
def test_products_are_the_fee_plan_products() -> None:
    assert Product is PricingProduct
    assert {p.value for p in Product} == {"epos", "smart", "traditional"}


def test_terminal_id_format() -> None:
    for good in ("T0000001", "12345678", "ABCDEFGH"):
        assert domain.validate_terminal_id(good) == good
    for bad in ("t0000001", "T000001", "T00000001", "T000-001", "", None, "Ｔ0000001"):
        assert not domain.is_terminal_id(bad)
        with pytest.raises(DomainError) as caught:
            domain.validate_terminal_id(bad)
        assert caught.value.details["field"] == "terminal_id"


def test_serial_number_format() -> None:
    for good in ("SN-1", "abcd", "A" * 32, "P30-2026-000001"):
        assert domain.validate_serial_number(good) == good
    for bad in ("SN1", "A" * 33, "SN 0001", "SN_0001", "", None):
        with pytest.raises(DomainError):
            domain.validate_serial_number(bad)


def test_master_key_format() -> None:
    assert domain.validate_master_key(KEY.lower()) == KEY
    for bad in (KEY[:-1], KEY + "0", "G" * 32, "", None, "0123456789ABCDEF" * 2):
        with pytest.raises(DomainError) as caught:
            domain.validate_master_key(bad)
        assert caught.value.code is ErrorCode.INVALID_INPUT
        assert caught.value.details["field"] == "master_key"
        assert "0123456789ABCDEF" not in caught.value.message


def test_key_check_value_known_answers() -> None:
    assert key_check_value(KEY) == "08D7B4"
    assert key_check_value("0123456789ABCDEF" * 2) == "D5D44F"  # = single DES of 0123…EF


def test_generated_keys_are_odd_parity_with_distinct_halves() -> None:
    keys = {generate_master_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert domain.validate_master_key(key) == key
        raw = bytes.fromhex(key)
        assert all(bin(b).count("1") % 2 == 1 for b in raw)
    assert domain.with_odd_parity(bytes(2)) == b"\x01\x01"


def test_terminal_transitions() -> None:
    assert domain.transition("active", "suspended") is TerminalStatus.SUSPENDED
    assert domain.transition("suspended", "active") is TerminalStatus.ACTIVE
    assert domain.transition("suspended", "retired") is TerminalStatus.RETIRED
    for current, target in (("retired", "active"), ("active", "active")):
        with pytest.raises(DomainError) as caught:
            domain.transition(current, target)
        assert caught.value.code is ErrorCode.INVALID_TRANSITION


# -- the service, on both engines ----------------------------------------------------------------
def test_create_terminal_generates_a_key_returned_once(env: Env) -> None:
    mid = env.create().merchant_id
    view, key = add(env, terminal_input(mid))
    assert key is not None and domain.validate_master_key(key) == key
    assert (view.terminal_id, view.serial_number, view.product, view.merchant_id) == (
        "T0000001", "SN-0001", Product.EPOS, mid,
    )  # fmt: skip
    assert view.status is TerminalStatus.ACTIVE
    assert view.tmk_kcv == key_check_value(key)
    assert view.created_at == env.clock.now()
    with env.database.read() as session:
        assert service.get_terminal(session, "T0000001") == view
        assert service.load_master_key(session, env.vault, "T0000001") == bytes.fromhex(key)
        row = session.get(Terminal, "T0000001")
        assert row is not None
        with pytest.raises(DomainError):  # bound to its context
            env.vault.decrypt(row.tmk_enc, merchants.PHONE_CONTEXT)
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "terminal.create")
        ).one()
        assert audit.after is not None and '"tmk_source":"generated"' in audit.after
    # nowhere in clear: not in hex (either case), not as raw bytes
    assert scan_for(env.database, key, key.lower()) == []
    assert not _raw_bytes_anywhere(env.database, bytes.fromhex(key))


def _raw_bytes_anywhere(database: Database, needle: bytes) -> bool:
    with database.read() as session:
        for (blob,) in session.execute(select(Terminal.tmk_enc)):
            if needle in bytes(blob):
                return True
    return False


def test_create_terminal_with_a_given_key(env: Env) -> None:
    mid = env.create().merchant_id
    view, key = add(env, terminal_input(mid, master_key=KEY.lower(), product="traditional"))
    assert key is None
    assert view.tmk_kcv == "08D7B4"
    assert view.product is Product.TRADITIONAL
    with env.database.read() as session:
        assert service.load_master_key(session, env.vault, view.terminal_id) == bytes.fromhex(KEY)
    assert scan_for(env.database, KEY, KEY.lower()) == []


def test_duplicates_are_refused(env: Env) -> None:
    mid = env.create().merchant_id
    add(env, terminal_input(mid))
    for changes in ({"serial_number": "SN-0002"}, {"terminal_id": "T0000002"}):
        with pytest.raises(DomainError) as caught:
            add(env, terminal_input(mid, **changes))
        assert caught.value.code is ErrorCode.TERMINAL_EXISTS
    with env.database.read() as session:
        assert len(session.scalars(select(Terminal)).all()) == 1


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"terminal_id": "t1"}, ErrorCode.INVALID_INPUT),
        ({"serial_number": "x"}, ErrorCode.INVALID_INPUT),
        ({"product": "mpos"}, ErrorCode.INVALID_INPUT),
        ({"master_key": "00" * 15}, ErrorCode.INVALID_INPUT),
        ({"merchant_id": "898310058129999"}, ErrorCode.MERCHANT_NOT_FOUND),
    ],
)
def test_create_terminal_refusals(env: Env, changes: dict[str, Any], code: ErrorCode) -> None:
    mid = env.create().merchant_id
    with pytest.raises(DomainError) as caught:
        add(env, terminal_input(mid, **changes))
    assert caught.value.code is code
    with env.database.read() as session:
        assert session.scalars(select(Terminal)).all() == []


def test_no_terminal_for_a_closed_merchant(env: Env) -> None:
    mid = env.create().merchant_id
    with env.database.transaction() as session:
        merchants.set_status(session, mid, "closed", actor="r", reason="gone", clock=env.clock)
    with pytest.raises(DomainError) as caught:
        add(env, terminal_input(mid))
    assert caught.value.code is ErrorCode.MERCHANT_INACTIVE


def test_payment_point(env: Env) -> None:
    mid = env.create().merchant_id
    add(env, terminal_input(mid))
    with env.database.read() as session:
        assert service.payment_point(session, "T0000001")[0].is_active
        with pytest.raises(DomainError) as caught:
            service.payment_point(session, "T9999999")
        assert caught.value.code is ErrorCode.TERMINAL_NOT_FOUND

    with env.database.transaction() as session:
        merchants.set_status(session, mid, "suspended", actor="r", reason="x", clock=env.clock)
    with env.database.read() as session, pytest.raises(DomainError) as caught:
        service.payment_point(session, "T0000001")
    assert caught.value.code is ErrorCode.MERCHANT_INACTIVE

    with env.database.transaction() as session:
        merchants.set_status(session, mid, "active", actor="r", reason="ok", clock=env.clock)
        service.set_terminal_status(session, "T0000001", "suspended", actor="r", clock=env.clock)
    with env.database.read() as session, pytest.raises(DomainError) as caught:
        service.payment_point(session, "T0000001")
    assert caught.value.code is ErrorCode.TERMINAL_INACTIVE


def test_get_terminal_not_found(env: Env) -> None:
    with env.database.read() as session:
        for missing in ("T0000001", "bad", "x" * 100):
            with pytest.raises(DomainError) as caught:
                service.get_terminal(session, missing)
            assert caught.value.code is ErrorCode.TERMINAL_NOT_FOUND


def test_list_terminals(env: Env) -> None:
    a = env.create().merchant_id
    b = env.create(merchant_input(mcc="5411")).merchant_id
    for i in range(5):
        add(env, terminal_input(a if i % 2 == 0 else b, terminal_id=f"T000000{i}",
                                serial_number=f"SN-{i:04d}"))  # fmt: skip
        env.clock.advance(timedelta(seconds=1))
    with env.database.read() as session:
        everything: list[str] = []
        cursor = None
        while True:
            page = service.list_terminals(session, limit=2, cursor=cursor)
            everything.extend(t.terminal_id for t in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        only_b = service.list_terminals(session, b, limit=10)
    assert everything == [f"T000000{i}" for i in range(5)]
    assert [t.terminal_id for t in only_b.items] == ["T0000001", "T0000003"]
    assert only_b.next_cursor is None


# -- HTTP ----------------------------------------------------------------------------------------
@pytest.fixture
def api(database: Database, tmp_path: Path) -> Iterator[Api]:
    yield from build_api(database, tmp_path)


def body_for(merchant_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "serial_number": "P30-0001", "terminal_id": "A0000001", "product": "smart",
        "merchant_id": merchant_id,
    }  # fmt: skip
    body.update(changes)
    return body


def test_http_create_terminal_returns_the_generated_key_once(api: Api) -> None:
    response = api.post("/v1/terminals", "admin", body_for(api.merchant_a))
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    key = created.pop("master_key")
    assert domain.validate_master_key(key) == key
    assert created == {
        "terminal_id": "A0000001", "serial_number": "P30-0001", "product": "smart",
        "merchant_id": api.merchant_a, "status": "active", "tmk_kcv": key_check_value(key),
        "created_at": created["created_at"],
    }  # fmt: skip
    for who in ("admin", "a"):
        fetched = api.get("/v1/terminals/A0000001", who)
        assert fetched.status_code == 200
        assert fetched.json() == created  # no master_key member at all
        assert key not in fetched.text
    listed = api.get("/v1/terminals", "a").text
    assert key not in listed and key.lower() not in listed
    assert scan_for(api.container.database, key, key.lower()) == []


def test_http_generated_key_is_never_stored_for_idempotent_replay(api: Api) -> None:
    """The idempotency middleware stores responses to replay them: a generated TMK must not
    be in one, so that combination is refused and a provided key is fine."""
    headers = {**api.headers("admin"), "Idempotency-Key": "terminal-1"}
    refused = api.client.post("/v1/terminals", headers=headers, json=body_for(api.merchant_a))
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_input")
    assert api.get("/v1/terminals", "admin").json()["data"] == []
    given = body_for(api.merchant_a, master_key=KEY)
    headers["Idempotency-Key"] = "terminal-2"
    first = api.client.post("/v1/terminals", headers=headers, json=given)
    replay = api.client.post("/v1/terminals", headers=headers, json=given)
    assert first.status_code == replay.status_code == 201
    assert replay.headers.get("idempotent-replayed") == "true"
    assert first.json()["master_key"] is None
    assert scan_for(api.container.database, KEY, KEY.lower()) == []


def test_http_create_terminal_with_a_given_key_echoes_nothing(api: Api) -> None:
    response = api.post("/v1/terminals", "reviewer", body_for(api.merchant_a, master_key=KEY))
    assert response.status_code == 201
    assert response.json()["master_key"] is None
    assert response.json()["tmk_kcv"] == "08D7B4"
    assert KEY not in response.text


def test_http_create_terminal_refusals(api: Api) -> None:
    merchant_key = api.post("/v1/terminals", "a", body_for(api.merchant_a))
    assert (merchant_key.status_code, merchant_key.json()["code"]) == (403, "forbidden")
    unknown = api.post("/v1/terminals", "admin", body_for(api.merchant_a, colour="red"))
    assert (unknown.status_code, unknown.json()["code"]) == (422, "invalid_input")
    product = api.post("/v1/terminals", "admin", body_for(api.merchant_a, product="mpos"))
    assert (product.status_code, product.json()["code"]) == (422, "invalid_input")
    bad_key = api.post("/v1/terminals", "admin", body_for(api.merchant_a, master_key="zz" * 16))
    assert (bad_key.status_code, bad_key.json()["code"]) == (422, "invalid_input")
    assert "zz" * 16 not in bad_key.text
    no_merchant = api.post("/v1/terminals", "admin", body_for("898310058129999"))
    assert (no_merchant.status_code, no_merchant.json()["code"]) == (404, "merchant_not_found")
    assert api.post("/v1/terminals", "admin", body_for(api.merchant_a)).status_code == 201
    again = api.post("/v1/terminals", "admin", body_for(api.merchant_b, terminal_id="A0000002"))
    assert (again.status_code, again.json()["code"]) == (409, "terminal_exists")
    assert len(api.get("/v1/terminals", "admin").json()["data"]) == 1


def test_http_terminal_tenant_isolation(api: Api) -> None:
    assert api.post("/v1/terminals", "admin", body_for(api.merchant_a)).status_code == 201
    assert (
        api.post(
            "/v1/terminals", "admin",
            body_for(api.merchant_b, terminal_id="B0000001", serial_number="P30-0002"),
        ).status_code
        == 201
    )  # fmt: skip
    theirs = api.get("/v1/terminals/B0000001", "a")
    missing = api.get("/v1/terminals/Z0000001", "a")
    assert (theirs.status_code, theirs.json()["code"]) == (404, "terminal_not_found")
    strip = ("instance", "terminal_id")
    assert {k: v for k, v in theirs.json().items() if k not in strip} == {
        k: v for k, v in missing.json().items() if k not in strip
    }
    own = api.get("/v1/terminals", "a").json()
    assert [t["terminal_id"] for t in own["data"]] == ["A0000001"]
    assert [t["terminal_id"] for t in api.get("/v1/terminals", "b").json()["data"]] == ["B0000001"]
    other = api.get("/v1/terminals", "a", merchant_id=api.merchant_b)
    assert (other.status_code, other.json()["code"]) == (404, "merchant_not_found")
    staff_all = api.get("/v1/terminals", "cs_agent").json()["data"]
    assert sorted(t["terminal_id"] for t in staff_all) == ["A0000001", "B0000001"]
    staff_b = api.get("/v1/terminals", "cs_agent", merchant_id=api.merchant_b).json()["data"]
    assert [t["terminal_id"] for t in staff_b] == ["B0000001"]
    nobody = api.get("/v1/terminals", "admin", merchant_id="898310058129999")
    assert nobody.status_code == 404


def test_http_list_terminals_paginates(api: Api) -> None:
    for i in range(3):
        body = body_for(api.merchant_a, terminal_id=f"A000000{i}", serial_number=f"P30-{i:04d}")
        assert api.post("/v1/terminals", "admin", body).status_code == 201
    first = api.get("/v1/terminals", "a", limit=2).json()
    assert len(first["data"]) == 2 and first["next_cursor"]
    rest = api.get("/v1/terminals", "a", limit=2, cursor=first["next_cursor"]).json()
    assert [t["terminal_id"] for t in first["data"] + rest["data"]] == [
        "A0000000", "A0000001", "A0000002",
    ]  # fmt: skip
    assert rest["next_cursor"] is None


def test_openapi_describes_the_terminal_api(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    create = spec["paths"]["/v1/terminals"]["post"]
    assert {"201", "403", "404", "409", "422"} <= set(create["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["TerminalCreate"]["additionalProperties"] is False
    assert "master_key" in schemas["TerminalCreated"]["properties"]
    assert "master_key" not in schemas["TerminalOut"]["properties"]
