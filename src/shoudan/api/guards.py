"""Edge guards that apply to every route before any router runs.

``RejectNulMiddleware``: a NUL character in the path, the query string or a JSON string
(``\u0000``) is never meaningful, and PostgreSQL text columns refuse it (a 500 deep in a
query); answer 422 ``invalid_input`` at the edge instead, for every router at once.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoudan.api.errors import problem
from shoudan.core.errors import ErrorCode

# ``\u0000`` preceded by an even number of backslashes is an escaped NUL; after an odd number
# it is the literal text "\u0000" (an escaped backslash, then "u0000"), which is allowed.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_json_nul(body: bytes) -> bool:
    return b"u0000" in body and _JSON_NUL.search(body) is not None


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return False


class RejectNulMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope.get("path", "").encode()
            query = scope.get("query_string", b"")
            if b"\x00" in unquote_to_bytes(raw_path) or b"\x00" in unquote_to_bytes(query):
                await _refuse(scope, receive, send, "NUL characters are not allowed in URLs")
                return
            if _is_json(scope):
                checked = await self._checked_body(scope, receive, send)
                if checked is None:
                    return
                receive = checked
        await self.app(scope, receive, send)

    @staticmethod
    async def _checked_body(scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Read the whole JSON body (bodies are capped further in), refuse it if a string holds
        a NUL, else hand the same bytes on as one message. ``None``: already answered."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive  # a disconnect: let the app see it
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if has_json_nul(body):
            await _refuse(scope, receive, send, "NUL characters are not allowed in JSON strings")
            return None
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
    response = problem(ErrorCode.INVALID_INPUT, 422, detail, instance=scope.get("path"))
    await response(scope, receive, send)
