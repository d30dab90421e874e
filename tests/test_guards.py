"""The edge guard: NUL characters are refused before any router or database sees them."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from shoudan.api.guards import RejectNulMiddleware, has_json_nul


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (json.dumps({"a": "x\x00y"}).encode(), True),  # json.dumps writes \u0000
        (json.dumps({"a": "x\\u0000"}).encode(), False),  # the literal text \u0000
        (json.dumps({"a": "x\\\x00"}).encode(), True),  # a backslash, then a NUL
        (json.dumps({"u0000": 1}).encode(), False),
        (b"{}", False),
    ],
)
def test_json_nul_detection(body: bytes, expected: bool) -> None:
    assert has_json_nul(body) is expected


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    seen: list[object] = []

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, object]:
        payload = await request.json()
        seen.append(payload)
        return {"got": payload}

    app.add_middleware(RejectNulMiddleware)
    app.state.seen = seen
    return TestClient(app)


def test_a_json_string_with_nul_is_refused_before_the_route(client: TestClient) -> None:
    response = client.post("/echo", content=json.dumps({"serial_number": "\x00"}),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert client.app.state.seen == []  # type: ignore[attr-defined]


def test_clean_json_reaches_the_route_unchanged(client: TestClient) -> None:
    body = {"text": "x\\u0000 is text", "n": [1, 2]}
    response = client.post("/echo", json=body)
    assert response.status_code == 200
    assert response.json() == {"got": body}


def test_nul_in_the_query_string_is_refused(client: TestClient) -> None:
    response = client.post("/echo?x=%00", json={})
    assert response.status_code == 422
