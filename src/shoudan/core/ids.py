"""Sortable identifiers (ULID): unique, time-ordered, safe to generate anywhere."""

from __future__ import annotations

from ulid import ULID


def new_id(prefix: str = "") -> str:
    """A new 26-character ULID, optionally prefixed (``evt_01J...``) to show its kind."""
    return f"{prefix}{ULID()}"
