"""Cursor pagination, one shape for every list endpoint: ``{data: [...], next_cursor}``.

A cursor is an opaque, URL-safe token wrapping the sort key of the last row returned
(``created_at`` and ``id``); clients pass it back as ``cursor`` and never parse it.
Keyset pagination stays correct while rows are added, unlike offsets.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from shoudan.core.errors import DomainError, ErrorCode

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; null on the last."
    )


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        when, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None or not isinstance(row_id, str):
            raise ValueError("bad cursor")
    except (ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DomainError(ErrorCode.INVALID_INPUT, "cursor is not valid") from exc
    return moment, row_id
