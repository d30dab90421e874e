"""Payments end to end over HTTP, on SQLite and PostgreSQL: every sandbox card, pre-auth and
completion, void, reversal, limits, bad input, tenant isolation, pagination — and the ledger
verified after every scenario."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.payments_world import CREDIT, DEBIT, PIN, World, build_world, check_day_totals


@pytest.fixture
def world(database, tmp_path):
    world = build_world(database, tmp_path)
    yield world
    report = world.container.ledger.verify()
    assert report.ok, report.violations[:5]
    check_day_totals(world)


def card(pan: str = DEBIT, pin: str | None = PIN, mode: str = "chip", expiry: str = "2912"):
    data = {"pan": pan, "expiry": expiry, "entry_mode": mode}
    if pin is not None:
        data["pin"] = pin
    return data


def payment_count(world: World) -> int:
    with world.container.database.read() as session:
        return session.execute(text("SELECT COUNT(*) FROM payments")).scalar_one()


def balance(world: World, merchant_id: str, key: str | None = None) -> dict:
    response = world.client.get(
        f"/v1/merchants/{merchant_id}/balance", headers=world.headers(key or world.admin_key)
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_debit_sale_posts_fee_and_net_to_the_ledger(world: World) -> None:
    paid = world.pay(amount=10_000)
    assert paid["status"] == "captured"
    assert (paid["amount"], paid["fee"], paid["net"]) == (10_000, 50, 9_950)  # 0.50 %
    assert len(paid["rrn"]) == 12 and paid["rrn"].isdigit()
    assert len(paid["auth_code"]) == 6
    assert paid["card"] == {
        "bin": "622202", "last4": "0018", "masked": "622202*********0018", "funding": "debit",
    }  # fmt: skip
    assert balance(world, world.merchant_a)["unsettled"] == 9_950
    ledger = world.container.ledger
    assert ledger.account("revenue:fees:card").credit_balance == 50
    assert ledger.account("asset:channel:unionpay:receivable").balance == 10_000


def test_credit_sale_and_debit_cap(world: World) -> None:
    credit = world.pay(amount=10_000, card=card(CREDIT, pin=None))
    assert (credit["fee"], credit["card"]["funding"]) == (60, "credit")  # 0.60 %
    big = world.pay(amount=5_000_000)  # ¥50,000 debit: 0.50 % would be ¥250, capped at ¥20
    assert (big["fee"], big["net"]) == (2_000, 4_998_000)
    traditional = world.pay(terminal_id=world.terminal_a2, amount=10_000)
    assert traditional["fee"] == 55  # 传统大POS debit 0.55 %


def test_contactless_small_amount_needs_no_pin_and_gets_its_rate(world: World) -> None:
    tap = world.pay(amount=100_000, card=card(pin=None, mode="contactless"))
    assert (tap["status"], tap["fee"]) == ("captured", 380)  # 0.38 % up to ¥1,000
    above = world.pay(amount=100_001, card=card(mode="contactless"))
    assert above["fee"] == 500  # debit rate above ¥1,000 (0.50 % of 1000.01 = 5.00005)
    no_pin = world.pay(amount=100_001, card=card(pin=None, mode="contactless"))
    assert (no_pin["status"], no_pin["decline_code"]) == ("declined", "55")


@pytest.mark.parametrize(
    ("pan", "pin", "status", "code"),
    [
        ("6222020000000000018", PIN, "captured", None),
        ("6258070000000017", None, "captured", None),
        ("6222020000000000513", PIN, "declined", "51"),
        ("6258070000000546", None, "declined", "54"),
        ("6222020000000000414", PIN, "declined", "41"),
        ("6258070000000918", None, "declined", "91"),
        ("6222020000000000984", PIN, "declined", "98"),
        ("6222020000000000778", PIN, "captured", None),
        ("6258070000000785", None, "captured", None),
        ("6222020000000000019", PIN, "declined", "14"),  # fails the Luhn check
        ("6222020000000000018", "000000", "declined", "55"),
        ("4111111111111111", None, "captured", None),  # any other Luhn-valid card
    ],
)
def test_every_sandbox_card(world: World, pan: str, pin: str | None, status: str, code) -> None:
    paid = world.pay(card=card(pan, pin))
    assert (paid["status"], paid["decline_code"]) == (status, code)
    unsettled = balance(world, world.merchant_a)["unsettled"]
    assert unsettled == (paid["net"] if status == "captured" else 0)
    if status == "declined":
        assert paid["auth_code"] is None and paid["fee"] == 0


def test_timeout_card_is_reversed_upstream(world: World) -> None:
    paid = world.pay(card=card("6222020000000000984"))
    assert paid["decline_code"] == "98"
    assert "reversed" in paid["decline_message"]


def test_open_to_buy_card_runs_out(world: World) -> None:
    otb = card("6258070000000108", pin=None)
    first = world.pay(amount=60_000, card=otb)
    second = world.pay(amount=60_000, card=otb)
    assert (first["status"], second["decline_code"]) == ("captured", "51")
    voided = world.client.post(
        f"/v1/payments/{first['id']}/void", headers=world.headers(world.key_a)
    )
    assert voided.status_code == 200
    assert world.pay(amount=60_000, card=otb)["status"] == "captured"  # the void restored it


def test_expired_card_is_declined(world: World) -> None:
    paid = world.pay(card=card(expiry="2510"))
    assert (paid["status"], paid["decline_code"]) == ("declined", "54")


@pytest.mark.parametrize(
    ("method", "code", "status", "decline"),
    [
        ("wechat", "134567890123456789", "captured", None),
        ("alipay", "284567890123456789", "captured", None),
        ("unionpay_qr", "624567890123456789", "captured", None),
        ("wechat", "134567890123456751", "declined", "51"),
    ],
)
def test_qr_payments(world: World, method, code, status, decline) -> None:
    paid = world.pay(method=method, auth_code=code, amount=10_000)
    assert (paid["status"], paid["decline_code"]) == (status, decline)
    if status == "captured":
        assert paid["fee"] == 38  # 0.38 %
        assert paid["card"] is None


def test_qr_code_of_another_wallet_is_refused(world: World) -> None:
    response = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_a, "amount": 100, "method": "alipay",
              "auth_code": "134567890123456789"},
        headers=world.headers(world.key_a),
    )  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (422, "invalid_auth_code")


def test_preauth_completion_and_limits(world: World) -> None:
    auth = world.pay(amount=10_000, capture=False)
    assert auth["status"] == "authorized"
    assert balance(world, world.merchant_a)["unsettled"] == 0  # reserved, not earned
    receivable = world.container.ledger.account("asset:channel:unionpay:receivable")
    assert receivable.debits_pending == 10_000
    url = f"/v1/payments/{auth['id']}/capture"
    headers = world.headers(world.key_a)
    too_much = world.client.post(url, json={"amount": 11_501}, headers=headers)
    assert (too_much.status_code, too_much.json()["code"]) == (422, "capture_exceeds_authorized")
    done = world.client.post(url, json={"amount": 11_500}, headers=headers)
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["captured_amount"]) == ("captured", 11_500)
    assert done.json()["fee"] == 58  # 0.50 % of 115.00 = 0.575 → 0.58 (half-up)
    again = world.client.post(url, json={"amount": 100}, headers=headers)
    assert (again.status_code, again.json()["code"]) == (409, "capture_not_allowed")
    assert balance(world, world.merchant_a)["unsettled"] == 11_500 - 58
    receivable = world.container.ledger.account("asset:channel:unionpay:receivable")
    assert (receivable.debits_pending, receivable.balance) == (0, 11_500)


def test_preauth_void_releases_the_hold(world: World) -> None:
    auth = world.pay(amount=10_000, capture=False)
    voided = world.client.post(
        f"/v1/payments/{auth['id']}/void", headers=world.headers(world.key_a)
    )
    assert voided.json()["status"] == "voided"
    receivable = world.container.ledger.account("asset:channel:unionpay:receivable")
    assert (receivable.debits_pending, receivable.balance) == (0, 0)


def test_void_rules(world: World) -> None:
    paid = world.pay(amount=10_000)
    url = f"/v1/payments/{paid['id']}/void"
    headers = world.headers(world.key_a)
    voided = world.client.post(url, headers=headers)
    assert (voided.status_code, voided.json()["status"]) == (200, "voided")
    assert balance(world, world.merchant_a)["unsettled"] == 0
    assert world.container.ledger.account("revenue:fees:card").credit_balance == 0
    twice = world.client.post(url, headers=headers)
    assert (twice.status_code, twice.json()["code"]) == (409, "void_not_allowed")

    yesterday = world.pay(amount=10_000)
    world.clock.advance(timedelta(days=1))
    late = world.client.post(f"/v1/payments/{yesterday['id']}/void", headers=headers)
    assert (late.status_code, late.json()["code"]) == (409, "void_not_allowed")
    assert "refund" in late.json()["detail"]


def test_void_after_settlement_is_refused(world: World) -> None:
    paid = world.pay(amount=10_000)
    with world.container.database.transaction() as session:
        session.execute(
            text("UPDATE payments SET settled_at = created_at WHERE id = :id"), {"id": paid["id"]}
        )
    late = world.client.post(
        f"/v1/payments/{paid['id']}/void", headers=world.headers(world.key_a)
    )
    assert (late.status_code, late.json()["code"]) == (409, "void_not_allowed")


def test_reversal_is_idempotent(world: World) -> None:
    paid = world.pay(amount=10_000)
    url = f"/v1/payments/{paid['id']}/reverse"
    headers = world.headers(world.key_a)
    first = world.client.post(url, headers=headers)
    second = world.client.post(url, headers=headers)
    assert first.json()["status"] == second.json()["status"] == "reversed"
    assert balance(world, world.merchant_a)["unsettled"] == 0
    declined = world.pay(card=card("6222020000000000513"))
    acked = world.client.post(f"/v1/payments/{declined['id']}/reverse", headers=headers)
    assert (acked.status_code, acked.json()["status"]) == (200, "declined")


def test_limits_refuse_and_write_nothing(world: World) -> None:
    headers = world.headers(world.key_a)
    over = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_a, "amount": 5_000_001, "method": "card",
              "card": card()},
        headers=headers,
    )  # fmt: skip
    assert (over.status_code, over.json()["code"]) == (422, "limit_exceeded")
    assert payment_count(world) == 0
    for _ in range(4):  # ¥200,000 per card per day
        assert world.pay(amount=5_000_000)["status"] == "captured"
    fifth = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_a, "amount": 1, "method": "card", "card": card()},
        headers=headers,
    )
    assert (fifth.status_code, fifth.json()["code"]) == (422, "limit_exceeded")
    assert payment_count(world) == 4
    # another card still works
    assert world.pay(amount=100, card=card(CREDIT, pin=None))["status"] == "captured"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": 0}, 422, "invalid_amount"),
        ({"amount": -5}, 422, "invalid_amount"),
        ({"amount": "100"}, 422, "invalid_input"),
        ({"amount": 1.5}, 422, "invalid_input"),
        ({"currency": "USD"}, 422, "invalid_currency"),
        ({"surprise": 1}, 422, "invalid_input"),
        ({"terminal_id": "NOPE0000"}, 404, "terminal_not_found"),
        ({"card": {"pan": "62220200", "expiry": "2912", "entry_mode": "chip"}}, 422,
         "invalid_card"),
        ({"card": {"pan": DEBIT, "expiry": "2913", "entry_mode": "chip"}}, 422, "invalid_card"),
        ({"method": "wechat"}, 422, "invalid_auth_code"),
        ({"method": "bitcoin"}, 422, "invalid_input"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(world: World, body, status, code) -> None:
    payload = {"terminal_id": world.terminal_a, "amount": 100, "method": "card", "card": card()}
    payload.update(body)
    if payload["method"] != "card":
        payload.pop("card")
    response = world.client.post("/v1/payments", json=payload, headers=world.headers(world.key_a))
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert payment_count(world) == 0
    assert DEBIT not in response.text


def test_malformed_json_and_missing_key(world: World) -> None:
    raw = world.client.post(
        "/v1/payments", content=b"{not json", headers=world.headers(world.key_a,
        **{"Content-Type": "application/json"}),
    )  # fmt: skip
    assert (raw.status_code, raw.json()["code"]) == (422, "invalid_input")
    anonymous = world.client.post("/v1/payments", json={})
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")


def test_tenant_isolation_on_every_route(world: World) -> None:
    paid = world.pay(amount=1_000)
    auth = world.pay(amount=1_000, capture=False)
    b = world.headers(world.key_b)
    for method, url, body in [
        ("get", f"/v1/payments/{paid['id']}", None),
        ("post", f"/v1/payments/{paid['id']}/void", None),
        ("post", f"/v1/payments/{paid['id']}/reverse", None),
        ("post", f"/v1/payments/{auth['id']}/capture", {"amount": 100}),
        ("get", f"/v1/merchants/{world.merchant_a}", None),
        ("get", f"/v1/merchants/{world.merchant_a}/balance", None),
        ("get", f"/v1/terminals/{world.terminal_a}", None),
    ]:
        response = world.client.request(method, url, json=body, headers=b)
        assert response.status_code == 404, (url, response.text)
    # B cannot take payments on A's terminal either: it does not exist for B
    foreign = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_a, "amount": 100, "method": "card", "card": card()},
        headers=b,
    )
    assert (foreign.status_code, foreign.json()["code"]) == (404, "terminal_not_found")
    listed = world.client.get("/v1/payments", headers=b).json()
    assert listed == {"data": [], "next_cursor": None}
    assert world.client.get(f"/v1/payments/{paid['id']}", headers=world.headers(
        world.admin_key)).status_code == 200  # fmt: skip


def test_list_pagination_and_filters(world: World) -> None:
    ids = []
    for n in range(5):
        world.clock.advance(timedelta(seconds=1))
        ids.append(world.pay(amount=100 + n)["id"])
    declined = world.pay(card=card("6222020000000000513"))
    headers = world.headers(world.key_a)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = world.client.get("/v1/payments", params=params, headers=headers).json()
        seen += [p["id"] for p in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [declined["id"], *reversed(ids)]
    only = world.client.get("/v1/payments", params={"status": "declined"}, headers=headers)
    assert [p["id"] for p in only.json()["data"]] == [declined["id"]]
    by_rrn = world.client.get("/v1/payments", params={"rrn": declined["rrn"]}, headers=headers)
    assert [p["id"] for p in by_rrn.json()["data"]] == [declined["id"]]
    bad = world.client.get("/v1/payments", params={"cursor": "garbage"}, headers=headers)
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_input")


def test_no_card_secret_is_stored(world: World) -> None:
    world.pay(card=card(DEBIT, PIN))
    with world.container.database.read() as session:
        rows = session.execute(text("SELECT * FROM payments")).all()
        history = session.execute(text("SELECT * FROM payment_status_history")).all()
        events = session.execute(text("SELECT payload FROM outbox_events")).all()
    dump = repr(rows) + repr(history) + repr(events)
    assert DEBIT not in dump
    assert "622202000000" not in dump
    assert PIN not in dump.replace(world.merchant_a, "")


def test_rrns_are_unique_and_payments_emit_events(world: World) -> None:
    rrns = {world.pay(amount=100 + n)["rrn"] for n in range(10)}
    assert len(rrns) == 10
    with world.container.database.read() as session:
        topics = session.execute(text("SELECT topic FROM outbox_events")).scalars().all()
    assert topics.count("payment.captured") == 10


def test_same_idempotency_key_in_the_service_charges_once(world: World) -> None:
    """Two requests with one key that both reach the service (the middleware bypassed, as
    after a lock takeover) still make one payment: both are sent under the key's upstream
    reference, which the network counts once, and the loser answers with the winner."""
    from concurrent.futures import ThreadPoolExecutor

    from shoudan.auth.domain import Principal, Role
    from shoudan.payments.domain import EntryMode, Method
    from shoudan.payments.service import CardInput, PaymentRequest

    principal = Principal("k", Role.MERCHANT, world.merchant_a)
    request = PaymentRequest(
        world.terminal_a, 4_321, Method.CARD,
        card=CardInput(CREDIT, "2912", EntryMode.CHIP), idempotency_key="takeover-1",
    )  # fmt: skip
    with ThreadPoolExecutor(max_workers=4) as pool:
        payments = list(pool.map(lambda _: world.container.payments.create(principal, request),
                                 range(4)))  # fmt: skip
    assert len({p.id for p in payments}) == 1
    assert payment_count(world) == 1
    assert balance(world, world.merchant_a)["unsettled"] == 4_321 - 26  # 0.60 %


def test_ids_are_in_time_order_and_the_network_knows_a_keyed_payment_by_its_key(
    world: World,
) -> None:
    """A payment id is a fresh ULID, so the indexes that hold it grow at their end. With an
    Idempotency-Key the network's reference is derived from the merchant and the key, not
    from the id: a retry after a crash, or a reversal of a payment never recorded, names the
    same upstream transaction. A void reaches the network under that reference."""
    from ulid import ULID

    from shoudan.channels.domain import TxnState
    from shoudan.payments.domain import keyed_reference

    channel = world.container.channel
    body = {"terminal_id": world.terminal_a, "amount": 2_500, "method": "card", "card": card()}
    ids = []
    for n in range(3):
        headers = world.headers(world.key_a, **{"Idempotency-Key": f"order-{n}"})
        response = world.client.post("/v1/payments", json=body, headers=headers)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    moments = [ULID.from_str(payment_id.removeprefix("pay_")).milliseconds for payment_id in ids]
    assert moments == sorted(moments)
    references = [keyed_reference(world.merchant_a, f"order-{n}") for n in range(3)]
    assert not set(ids) & set(references)
    assert all(channel.query(payment_id) is None for payment_id in ids)  # never sent upstream
    assert [channel.query(reference).state for reference in references] == [TxnState.CAPTURED] * 3

    with world.container.database.read() as session:
        stored = session.execute(
            text("SELECT id, upstream_reference FROM payments WHERE id IN (:a, :b, :c)"),
            dict(zip("abc", ids, strict=True)),
        ).all()
    assert sorted(stored) == sorted(zip(ids, references, strict=True))
    voided = world.client.post(f"/v1/payments/{ids[0]}/void", headers=world.headers(world.key_a))
    assert (voided.status_code, voided.json()["status"]) == (200, "voided")
    assert channel.query(references[0]).state is TxnState.VOIDED
    # a payment without a key is known upstream by its own id
    plain = world.pay(amount=1_000)
    assert channel.query(plain["id"]).state is TxnState.CAPTURED
    with world.container.database.read() as session:
        assert session.execute(
            text("SELECT upstream_reference FROM payments WHERE id = :id"), {"id": plain["id"]}
        ).scalar_one() is None  # NULL: the id


def test_completion_is_held_to_the_limits(world: World) -> None:
    auth = world.pay(amount=5_000_000, capture=False)  # ¥50,000, the per-transaction limit
    over = world.client.post(
        f"/v1/payments/{auth['id']}/capture", json={"amount": 5_750_000},
        headers=world.headers(world.key_a),
    )  # fmt: skip
    assert (over.status_code, over.json()["code"]) == (422, "limit_exceeded")
    assert world.client.get(
        f"/v1/payments/{auth['id']}", headers=world.headers(world.key_a)
    ).json()["status"] == "authorized"


def test_another_tenants_suspended_terminal_is_simply_not_found(world: World) -> None:
    from shoudan.terminals.domain import TerminalStatus
    from shoudan.terminals.service import set_terminal_status

    with world.container.database.transaction() as session:
        set_terminal_status(
            session, world.terminal_b, TerminalStatus.SUSPENDED, actor="test", clock=world.clock
        )
    foreign = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_b, "amount": 100, "method": "card", "card": card()},
        headers=world.headers(world.key_a),
    )
    assert (foreign.status_code, foreign.json()["code"]) == (404, "terminal_not_found")
    own = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_b, "amount": 100, "method": "card", "card": card()},
        headers=world.headers(world.key_b),
    )
    assert (own.status_code, own.json()["code"]) == (422, "terminal_inactive")
    assert own.json()["terminal_status"] == "suspended"


def test_a_reused_key_with_another_request_is_refused_even_from_another_api_key(
    world: World,
) -> None:
    from shoudan.auth.domain import Role
    from shoudan.auth.service import create_api_key

    with world.container.database.transaction() as session:
        second_key = create_api_key(session, role=Role.MERCHANT, merchant_id=world.merchant_a)[1]
        third_key = create_api_key(session, role=Role.MERCHANT, merchant_id=world.merchant_a)[1]
    first = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_a, "amount": 100, "method": "card", "card": card()},
        headers=world.headers(world.key_a, **{"Idempotency-Key": "order-1"}),
    )
    assert first.status_code == 201
    other = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_a, "amount": 99_999, "method": "card",
              "card": card()},
        headers=world.headers(second_key, **{"Idempotency-Key": "order-1"}),
    )  # fmt: skip
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
    # the same request under the same key from yet another of the merchant's keys: the
    # payment is the merchant's, so it is answered with the original, not charged again
    same = world.client.post(
        "/v1/payments",
        json={"terminal_id": world.terminal_a, "amount": 100, "method": "card", "card": card()},
        headers=world.headers(third_key, **{"Idempotency-Key": "order-1"}),
    )
    assert same.status_code == 201, same.text
    assert same.json()["id"] == first.json()["id"]
    assert payment_count(world) == 1


def test_staff_actions_on_payments_are_audited(world: World) -> None:
    paid = world.pay(amount=1_000)
    voided = world.client.post(
        f"/v1/payments/{paid['id']}/void", headers=world.headers(world.admin_key)
    )
    assert voided.json()["status"] == "voided"
    with world.container.database.read() as session:
        rows = session.execute(
            text("SELECT action, subject_id FROM audit_log WHERE subject_type = 'payment'")
        ).all()
    assert [tuple(r) for r in rows] == [("payment.voided", paid["id"])]
