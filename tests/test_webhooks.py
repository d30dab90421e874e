"""Webhooks: the signature recipe, endpoint rules, publish with de-duplication, delivery to a
real HTTP receiver on loopback through the outbox relay (retries, delivery log, fan-out),
tenant isolation, and the HTTP API."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from shoudan.auth.domain import Principal, Role
from shoudan.core.clock import FixedClock
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.handlers import build_registry
from shoudan.notifications.domain import BackoffPolicy, EventStatus
from shoudan.notifications.models import OutboxEvent
from shoudan.notifications.service import DeliveredEvent, HandlerRegistry, Relay
from shoudan.webhooks import domain
from shoudan.webhooks.models import Event, WebhookDelivery
from shoudan.webhooks.service import (
    DELIVER_TOPIC,
    DISPATCH_TOPIC,
    SECRET_CONTEXT,
    WebhookSender,
    publish,
    register_handlers,
)
from tests.payments_world import World, build_world

SECRET = "whsec_" + "A" * 43
BODY = b'{"id":"evt_1","type":"refund.succeeded","data":{"amount":100}}'
T = 1_795_000_000


def independent_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The documented recipe, written again with the hmac module alone."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def independent_verify(secret: str, header: str, body: bytes, now: int) -> bool:
    fields = dict(item.split("=", 1) for item in header.split(","))
    timestamp = int(fields["t"])
    expected = independent_signature(secret, timestamp, body)
    return abs(now - timestamp) <= 300 and hmac.compare_digest(expected, fields["v1"])


# -- signatures ---------------------------------------------------------------------------------


def test_signature_matches_an_independent_implementation() -> None:
    header = domain.signature_header(SECRET, T, BODY)
    assert header == f"t={T},v1={independent_signature(SECRET, T, BODY)}"
    assert independent_verify(SECRET, header, BODY, T + 10)
    # str and bytes bodies sign the same UTF-8 bytes
    text_body = '{"note":"退款"}'
    assert domain.signature_header(SECRET, T, text_body) == domain.signature_header(
        SECRET, T, text_body.encode()
    )


def test_verify_signature_accepts_fresh_and_refuses_old_or_tampered() -> None:
    header = f"t={T},v1={independent_signature(SECRET, T, BODY)}"
    assert domain.verify_signature(SECRET, header, BODY, T)
    assert domain.verify_signature(SECRET, header, BODY, T + 300)  # at the tolerance
    assert domain.verify_signature(SECRET, header, BODY, datetime.fromtimestamp(T + 5, UTC))
    assert not domain.verify_signature(SECRET, header, BODY, T + 301)  # too old: a replay
    assert not domain.verify_signature(SECRET, header, BODY, T - 301)  # from the future
    assert domain.verify_signature(SECRET, header, BODY, T + 500, tolerance=600)
    assert not domain.verify_signature("whsec_other", header, BODY, T)
    assert not domain.verify_signature(SECRET, header, BODY + b" ", T)
    for malformed in ("", "garbage", f"t={T}", "v1=abc", f"t=x{T},v1=00", f"t={T},v1"):
        assert not domain.verify_signature(SECRET, malformed, BODY, T)
    # while rotating, a sender may sign with two secrets: either matches
    two = f"t={T},v1={independent_signature('whsec_old', T, BODY)},v1=" + header.split("v1=")[1]
    assert domain.verify_signature(SECRET, two, BODY, T)


def test_secrets_are_random_and_shaped() -> None:
    secrets = {domain.generate_secret() for _ in range(20)}
    assert len(secrets) == 20
    assert all(s.startswith("whsec_") and len(s) == 6 + 43 for s in secrets)


# -- endpoint rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "development"),
    [
        ("https://shop.example.com/hooks", False),
        ("https://shop.example.com:8443/hooks?token=abc", False),
        ("http://shop.example.com/hooks", True),
        ("http://127.0.0.1:9000/hook", False),
        ("http://localhost/hook", False),
        ("http://[::1]:8080/hook", False),
    ],
)
def test_valid_urls(url: str, development: bool) -> None:
    assert domain.validate_url(url, allow_plain_http=development) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://shop.example.com/hooks",  # plain http outside development, not loopback
        "ftp://shop.example.com/x",
        "https://user:pass@shop.example.com/x",
        "https://token@shop.example.com/x",
        "https:///no-host",
        "https://shop.example.com/x#frag",
        "https://shop.example.com/a b",
        "https://shop.example.com:99999/x",
        "https://例子.中国/x",
        "https://shop.example.com/" + "x" * 2048,
        "javascript:alert(1)",
    ],
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(DomainError) as caught:
        domain.validate_url(url, allow_plain_http=False)
    assert caught.value.code is ErrorCode.INVALID_WEBHOOK_URL
    assert "pass" not in caught.value.message  # the URL stays out of the message


def test_subscriptions_and_matching() -> None:
    assert domain.validate_subscriptions(["refund.failed", "refund.*", "refund.failed"]) == [
        "refund.*",
        "refund.failed",
    ]
    for bad in (["refund.exploded"], ["bogus.*"], ["refund"], [""]):
        with pytest.raises(DomainError) as caught:
            domain.validate_subscriptions(bad)
        assert caught.value.code is ErrorCode.UNKNOWN_EVENT_TYPE
    for bad_shape in ([], "refund.*"):
        with pytest.raises(DomainError) as caught:
            domain.validate_subscriptions(bad_shape)
        assert caught.value.code is ErrorCode.INVALID_INPUT
    assert domain.matches(["refund.*"], "refund.succeeded")
    assert not domain.matches(["refund.*"], "payment.captured")
    assert domain.matches(["*"], "payment.captured")
    assert domain.matches(["payment.voided", "refund.failed"], "refund.failed")
    assert not domain.matches(["refund.failed"], "refund.failed_twice")
    expected = {
        "refund.created", "refund.review_required", "refund.approved", "refund.rejected",
        "refund.processing", "refund.succeeded", "refund.failed", "refund.abnormal",
        "refund.pending_funds", "refund.canceled", "refund.needs_info",
    }  # fmt: skip
    assert expected <= domain.EVENT_TYPES


# -- a world, a receiver, a relay ----------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """A real HTTP server on loopback: checks every signature with the documented recipe,
    records what it got, and answers 500 to the first ``failures[path]`` requests."""

    clock: FixedClock
    secrets: dict[str, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[bytes]:
        with self.lock:
            return [r.body for r in self.received if r.path == path]

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        secret = self.secrets.get(path, "")
        now = int(self.clock.now().timestamp())
        header = headers.get("Shoudan-Signature", "t=0,v1=")
        verified = independent_verify(secret, header, body, now)
        with self.lock:
            self.received.append(Received(path, headers, body, verified))
            if self.failures.get(path, 0) > 0:
                self.failures[path] -= 1
                return 500
        return 200


@pytest.fixture
def world(database, tmp_path: Path) -> World:
    return build_world(database, tmp_path)


@pytest.fixture
def receiver(world: World) -> Iterator[Receiver]:
    state = Receiver(world.clock)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.handle(self.path, dict(self.headers.items()), body)
            answer = b"ok" if status == 200 else b"boom: try again later"
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback deliveries must not be routed through a proxy the machine may define."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


POLICY = BackoffPolicy(base=timedelta(seconds=10), cap=timedelta(minutes=5), jitter=0)


def relay_for(world: World, max_attempts: int = 8) -> Relay:
    registry = HandlerRegistry()
    c = world.container
    register_handlers(registry, c.database, c.vault, c.clock, c.settings)
    return Relay(
        c.database, registry, clock=world.clock, backoff=POLICY, max_attempts=max_attempts
    )


def merchant(world: World, which: str = "a") -> Principal:
    merchant_id = world.merchant_a if which == "a" else world.merchant_b
    return Principal(f"key_{which}", Role.MERCHANT, merchant_id)


def endpoint(world: World, receiver: Receiver, path: str, types: list[str], who: str = "a") -> str:
    created = world.container.webhooks.create_endpoint(
        merchant(world, who), receiver.url(path), types, description=path
    )
    receiver.secrets[path] = created.secret
    return created.endpoint.id


def publish_now(
    world: World, event_type: str, data: dict, key: str | None = None, mid: str | None = None
) -> str:
    with world.container.database.transaction() as session:
        return publish(
            session, mid or world.merchant_a, event_type, data, dedupe_key=key, clock=world.clock
        )


def deliveries(world: World, endpoint_id: str) -> list[tuple[int, str, int | None]]:
    views = world.container.webhooks.list_deliveries(merchant(world), endpoint_id, 50)
    return [(v.attempt, v.status.value, v.http_status) for v in views]


# -- delivery -------------------------------------------------------------------------------------


def test_retries_until_the_endpoint_answers_and_others_get_it_once(
    world: World, receiver: Receiver
) -> None:
    receiver.failures["/flaky"] = 2
    flaky = endpoint(world, receiver, "/flaky", ["refund.*"])
    steady = endpoint(world, receiver, "/steady", ["refund.succeeded"])
    endpoint(world, receiver, "/unsubscribed", ["payment.captured", "refund.failed"])
    endpoint(world, receiver, "/tenant-b", ["*"], who="b")
    relay = relay_for(world)
    data = {"refund_id": "re_1", "amount": 5000, "status": "succeeded"}
    first = publish_now(world, "refund.succeeded", data, key="refund:re_1:succeeded")
    again = publish_now(world, "refund.succeeded", data, key="refund:re_1:succeeded")
    assert again == first

    assert relay.run_once().delivered == 1  # the dispatch: one deliver event per endpoint
    stats = relay.run_once()
    assert (stats.delivered, stats.retried) == (1, 1)
    assert len(receiver.bodies("/steady")) == 1
    assert len(receiver.bodies("/flaky")) == 1
    assert relay.run_once().claimed == 0  # the retry waits for its backoff
    for _ in range(2):
        world.clock.advance(timedelta(minutes=5))
        relay.run_once()
    world.clock.advance(timedelta(hours=2))
    assert relay.run_once().claimed == 0  # nothing left

    flaky_bodies = receiver.bodies("/flaky")
    assert len(flaky_bodies) == 3 and len(set(flaky_bodies)) == 1  # the same event, retried
    assert receiver.bodies("/steady") == flaky_bodies[:1]  # exactly once
    assert receiver.bodies("/unsubscribed") == []
    assert receiver.bodies("/tenant-b") == []  # another merchant's endpoint
    assert all(r.verified for r in receiver.received)
    document = json.loads(flaky_bodies[0])
    assert document == {
        "id": first, "type": "refund.succeeded", "created_at": "2026-11-23T02:00:00Z",
        "merchant_id": world.merchant_a, "data": data,
    }  # fmt: skip
    headers = receiver.received[0].headers
    assert headers["Shoudan-Event-Id"] == first
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("shoudan-webhooks/")

    assert deliveries(world, flaky) == [
        (3, "succeeded", 200), (2, "failed", 500), (1, "failed", 500),
    ]  # fmt: skip
    assert deliveries(world, steady) == [(1, "succeeded", 200)]
    log = world.container.webhooks.list_deliveries(merchant(world), flaky, 50)
    assert log[0].response_excerpt == "ok" and log[0].error is None
    assert log[1].response_excerpt == "boom: try again later"
    assert log[1].error == "endpoint answered HTTP 500"
    assert all(entry.event_id == first and entry.duration_ms >= 0 for entry in log)
    with world.container.database.read() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 1


def test_transport_errors_are_logged_retried_then_dead_lettered(world: World) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    created = world.container.webhooks.create_endpoint(
        merchant(world), f"http://127.0.0.1:{port}/gone", ["*"]
    )
    relay = relay_for(world, max_attempts=2)
    publish_now(world, "refund.failed", {"refund_id": "re_2"})
    relay.run_once()
    assert relay.run_once().retried == 1
    world.clock.advance(timedelta(minutes=1))
    assert relay.run_once().dead == 1
    log = world.container.webhooks.list_deliveries(merchant(world), created.endpoint.id, 50)
    assert [(d.attempt, d.status.value, d.http_status) for d in log] == [
        (2, "failed", None),
        (1, "failed", None),
    ]
    assert all("ConnectError" in (d.error or "") for d in log)


def test_disabled_endpoint_is_skipped_without_retry(world: World, receiver: Receiver) -> None:
    endpoint_id = endpoint(world, receiver, "/soon-off", ["*"])
    relay = relay_for(world)
    publish_now(world, "refund.created", {"refund_id": "re_3"})
    relay.run_once()  # fanned out while the endpoint was enabled
    world.container.webhooks.disable_endpoint(merchant(world), endpoint_id)
    assert relay.run_once().delivered == 1  # the deliver event: skipped, not retried
    assert receiver.bodies("/soon-off") == []
    assert deliveries(world, endpoint_id) == []
    publish_now(world, "refund.approved", {"refund_id": "re_3"})
    relay.run_once()
    with world.container.database.read() as session:
        topics = session.scalars(select(OutboxEvent.topic)).all()
    assert topics.count(DELIVER_TOPIC) == 1  # nothing fanned out to a disabled endpoint


def test_dispatch_twice_fans_out_once(world: World, receiver: Receiver) -> None:
    endpoint(world, receiver, "/one", ["*"])
    event_id = publish_now(world, "refund.processing", {"refund_id": "re_4"})
    c = world.container
    sender = WebhookSender(c.database, c.vault, c.clock, c.settings)
    payload = {"event_id": event_id}
    redelivered = DeliveredEvent("obx_1", DISPATCH_TOPIC, payload, event_id, 2, world.clock.now())
    sender.dispatch(redelivered)
    sender.dispatch(redelivered)  # the relay delivers at least once
    with c.database.read() as session:
        keys = session.scalars(
            select(OutboxEvent.dedupe_key).where(OutboxEvent.topic == DELIVER_TOPIC)
        ).all()
    assert len(keys) == 1 and keys[0].startswith(f"{event_id}:we_")


def test_publish_rules(world: World) -> None:
    one = publish_now(world, "refund.created", {"n": 1})
    two = publish_now(world, "refund.created", {"n": 1})  # no dedupe key: two events
    assert one != two
    keyed = publish_now(world, "refund.created", {"n": 1}, key="k1")
    # the same key for another merchant is another event
    assert publish_now(world, "refund.created", {"n": 1}, key="k1", mid=world.merchant_b) != keyed
    with pytest.raises(DomainError) as caught:
        publish_now(world, "refund.exploded", {})
    assert caught.value.code is ErrorCode.UNKNOWN_EVENT_TYPE
    with pytest.raises(DomainError):
        publish_now(world, "refund.created", {"when": datetime.now(UTC)})  # not plain JSON
    with pytest.raises(DomainError):
        publish_now(world, "refund.created", {}, key="x" * 129)
    with world.container.database.read() as session:
        events = session.scalar(select(func.count()).select_from(Event))
        dispatches = session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.topic == DISPATCH_TOPIC)
        )
    assert events == dispatches == 4


def test_the_worker_registry_runs_the_webhook_handlers(world: World) -> None:
    registry = build_registry(world.container)
    assert {DISPATCH_TOPIC, DELIVER_TOPIC} <= set(registry.topics())


# -- the HTTP API and tenant isolation -----------------------------------------------------------


def create_via_api(world: World, key: str, **body: object):  # type: ignore[no-untyped-def]
    payload = {"url": "https://a.example.com/hook", "event_types": ["refund.*"], **body}
    return world.client.post("/v1/webhook-endpoints", json=payload, headers=world.headers(key))


def test_secret_shown_once_and_stored_encrypted(world: World) -> None:
    response = create_via_api(world, world.key_a, description="shop")
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["merchant_id"] == world.merchant_a and created["enabled"] is True
    assert created["event_types"] == ["refund.*"] and created["description"] == "shop"
    h = world.headers(world.key_a)
    one = world.client.get(f"/v1/webhook-endpoints/{created['id']}", headers=h)
    listed = world.client.get("/v1/webhook-endpoints", headers=h)
    assert one.status_code == listed.status_code == 200
    assert "secret" not in one.json() and secret not in one.text
    assert [e["id"] for e in listed.json()["data"]] == [created["id"]]
    assert secret not in listed.text
    with world.container.database.read() as session:
        row = session.execute(text("SELECT * FROM webhook_endpoints")).one()
        blob = session.execute(text("SELECT secret_enc FROM webhook_endpoints")).scalar_one()
        audit = session.execute(text("SELECT action, after FROM audit_log")).all()
    assert secret not in repr(row) and secret.encode() not in bytes(blob)
    assert world.container.vault.decrypt(bytes(blob), SECRET_CONTEXT) == secret
    assert ("webhook_endpoint.created" in [a for a, _ in audit]) and secret not in repr(audit)


def test_endpoint_input_rules(world: World) -> None:
    def code(response) -> tuple[int, str]:  # type: ignore[no-untyped-def]
        return response.status_code, response.json()["code"]

    assert code(create_via_api(world, world.key_a, url="ftp://x.example.com")) == (
        422, "invalid_webhook_url",
    )  # fmt: skip
    assert code(create_via_api(world, world.key_a, event_types=["refund.nope"])) == (
        422, "unknown_event_type",
    )  # fmt: skip
    assert code(create_via_api(world, world.key_a, event_types=[])) == (422, "invalid_input")
    # a merchant cannot create for another merchant; staff must name one that exists
    assert code(create_via_api(world, world.key_a, merchant_id=world.merchant_b)) == (
        404, "merchant_not_found",
    )  # fmt: skip
    assert code(create_via_api(world, world.admin_key)) == (422, "invalid_input")
    assert code(create_via_api(world, world.admin_key, merchant_id="898999999999999")) == (
        404, "merchant_not_found",
    )  # fmt: skip
    by_staff = create_via_api(world, world.admin_key, merchant_id=world.merchant_b)
    assert by_staff.status_code == 201 and by_staff.json()["merchant_id"] == world.merchant_b
    # an Idempotency-Key would store the secret in clear with the response: refused
    keyed = world.client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://a.example.com/hook", "event_types": ["*"]},
        headers=world.headers(world.key_a, **{"Idempotency-Key": "k-1"}),
    )
    assert code(keyed) == (422, "invalid_input")
    listed = world.client.get("/v1/webhook-endpoints", headers=world.headers(world.key_a))
    assert listed.json()["data"] == []


def test_tenant_isolation_of_endpoints_deliveries_and_events(world: World) -> None:
    endpoint_id = create_via_api(world, world.key_a).json()["id"]
    event_id = publish_now(world, "refund.succeeded", {"refund_id": "re_9"})
    hb = world.headers(world.key_b)
    for path in (
        f"/v1/webhook-endpoints/{endpoint_id}",
        f"/v1/webhook-endpoints/{endpoint_id}/deliveries",
        f"/v1/events/{event_id}",
    ):
        response = world.client.get(path, headers=hb)
        assert response.status_code == 404, path
    refused = world.client.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=hb)
    assert refused.status_code == 404
    assert world.client.get("/v1/webhook-endpoints", headers=hb).json()["data"] == []
    assert world.client.get("/v1/events", headers=hb).json()["data"] == []
    # staff see both merchants' and may filter
    ha = world.headers(world.admin_key)
    staff_events = world.client.get(f"/v1/events?merchant_id={world.merchant_b}", headers=ha)
    assert staff_events.json()["data"] == []
    assert world.client.get(f"/v1/events/{event_id}", headers=ha).status_code == 200
    # the owner still has it all, and disabling is idempotent
    ours = world.headers(world.key_a)
    assert world.client.get(f"/v1/events/{event_id}", headers=ours).json()["data"] == {
        "refund_id": "re_9"
    }
    for _ in range(2):
        gone = world.client.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=ours)
        assert gone.status_code == 200 and gone.json()["enabled"] is False
    assert gone.json()["disabled_at"] == "2026-11-23T02:00:00Z"
    deliveries = world.client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=ours)
    assert deliveries.status_code == 200 and deliveries.json()["data"] == []


def test_event_log_filters_and_pages_newest_first(world: World) -> None:
    ids = []
    for n, event_type in enumerate(["refund.created", "refund.approved", "refund.succeeded"]):
        ids.append(publish_now(world, event_type, {"n": n}))
        world.clock.advance(timedelta(seconds=1))
    publish_now(world, "refund.created", {"n": 99}, mid=world.merchant_b)
    h = world.headers(world.key_a)
    first = world.client.get("/v1/events?limit=2", headers=h).json()
    assert [e["id"] for e in first["data"]] == ids[::-1][:2]
    rest = world.client.get(f"/v1/events?limit=2&cursor={first['next_cursor']}", headers=h).json()
    assert [e["id"] for e in rest["data"]] == ids[:1] and rest["next_cursor"] is None
    only = world.client.get("/v1/events?type=refund.approved", headers=h).json()["data"]
    assert [e["id"] for e in only] == [ids[1]]
    assert only[0] == {
        "id": ids[1], "type": "refund.approved", "created_at": "2026-11-23T02:00:01Z",
        "merchant_id": world.merchant_a, "data": {"n": 1},
    }  # fmt: skip
    family = world.client.get("/v1/events?type=refund.*", headers=h).json()["data"]
    assert len(family) == 3
    assert world.client.get("/v1/events?type=payment.*", headers=h).json()["data"] == []
    bad = world.client.get("/v1/events?type=refund.exploded", headers=h)
    assert (bad.status_code, bad.json()["code"]) == (422, "unknown_event_type")
    assert world.client.get("/v1/events?cursor=nonsense", headers=h).status_code == 422
    assert world.client.get("/v1/events/evt_nope", headers=h).status_code == 404


def test_staff_roles_that_may_manage_endpoints(world: World) -> None:
    service = world.container.webhooks
    risk = Principal("staff_risk", Role.RISK)
    with pytest.raises(DomainError) as caught:
        service.create_endpoint(risk, "https://x.example.com", ["*"], merchant_id=world.merchant_a)
    assert caught.value.code is ErrorCode.FORBIDDEN
    agent = Principal("staff_cs", Role.CS_AGENT)
    created = service.create_endpoint(
        agent, "https://x.example.com", ["*"], merchant_id=world.merchant_a
    )
    assert service.get_endpoint(risk, created.endpoint.id).merchant_id == world.merchant_a
    assert repr(created) == f"CreatedEndpoint({created.endpoint.id})"  # no secret in logs


def test_plain_http_is_refused_outside_development(world: World) -> None:
    production = world.container.settings.model_copy(update={"environment": "production"})
    c = world.container
    from shoudan.webhooks.service import WebhookService

    service = WebhookService(c.database, c.vault, c.clock, production)
    with pytest.raises(DomainError) as caught:
        service.create_endpoint(merchant(world), "http://shop.example.com/hook", ["*"])
    assert caught.value.code is ErrorCode.INVALID_WEBHOOK_URL
    local = service.create_endpoint(merchant(world), "http://127.0.0.1:9/hook", ["*"])
    assert local.endpoint.url == "http://127.0.0.1:9/hook"


def test_a_plain_success_is_logged_and_the_outbox_drained(
    world: World, receiver: Receiver
) -> None:
    endpoint_id = endpoint(world, receiver, "/x", ["*"])
    relay = relay_for(world)
    publish_now(world, "refund.abnormal", {"refund_id": "re_5"})
    relay.run_once()
    relay.run_once()
    with world.container.database.read() as session:
        rows = session.scalars(select(WebhookDelivery)).all()
        outbox = session.scalars(select(OutboxEvent.status)).all()
    assert [(r.endpoint_id, r.status, r.http_status) for r in rows] == [
        (endpoint_id, "succeeded", 200)
    ]
    assert set(outbox) == {EventStatus.DELIVERED.value}
