"""Edge guards that apply to every route before any router runs.

``RejectNulMiddleware``: a NUL character in the path or query string is never meaningful, and
PostgreSQL text columns refuse it (a 500 deep in a query); answer 422 ``invalid_input`` at
the edge instead, for every router at once.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from shoudan.api.errors import problem
from shoudan.core.errors import ErrorCode


class RejectNulMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope.get("path", "").encode()
            query = scope.get("query_string", b"")
            if b"\x00" in unquote_to_bytes(raw_path) or b"\x00" in unquote_to_bytes(query):
                response = problem(
                    ErrorCode.INVALID_INPUT, 422, "NUL characters are not allowed in URLs",
                    instance=scope.get("path"),
                )  # fmt: skip
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
