"""Sortable identifiers (ULID): unique, time-ordered, safe to generate anywhere."""

from __future__ import annotations

import hashlib

from ulid import ULID


def new_id(prefix: str = "") -> str:
    """A new 26-character ULID, optionally prefixed (``evt_01J...``) to show its kind."""
    return f"{prefix}{ULID()}"


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def derived_id(prefix: str, *parts: str) -> str:
    """A 26-character id (ULID alphabet) derived from ``parts``: the same parts always give
    the same id. For an object that must have the same id however often its creation is
    retried — so that a reference sent to another system before we recorded anything can be
    named again after a crash."""
    digest = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:17], "big")
    chars = []
    for _ in range(26):
        digest, index = divmod(digest, 32)
        chars.append(_CROCKFORD[index])
    return prefix + "".join(chars)
