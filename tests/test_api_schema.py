"""Schemathesis drives the OpenAPI contract with generated requests, on SQLite and PostgreSQL:
no request — valid or not — may produce a 5xx, and every response must match the schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.payments_world import build_world

EXAMPLES_PER_OPERATION = 25


def test_no_server_errors_and_responses_match_the_schema(database, tmp_path) -> None:
    world = build_world(database, tmp_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.client.app)
    headers = {"Authorization": f"Bearer {world.admin_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # the whole contract, not a corner of it
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case) -> None:
            response = case.call(headers=headers)
            calls.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text)
            case.validate_response(
                response, checks=[schemathesis.checks.response_schema_conformance]
            )

        exercise()
    # generated requests reached the app: some were accepted, many refused as 4xx
    assert len(calls) >= 5 * len(operations)
    assert any(200 <= c < 300 for c in calls) and any(400 <= c < 500 for c in calls)
    report = world.container.ledger.verify()
    assert report.ok, report.violations[:5]
