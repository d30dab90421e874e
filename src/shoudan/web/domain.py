"""Pure rules of the web console's accounts: passwords, lockout, sessions, TOTP replay.

Standard library only (import-linter): the service applies these rules to rows.

Passwords are hashed with the standard library's ``hashlib.scrypt`` (N=2**14, r=8, p=1, a
16-byte random salt, 32-byte key), stored as ``scrypt$N$r$p$salt$hash`` so the parameters can
be raised later without invalidating old hashes. argon2 (DESIGN.md §5) would need a compiled
dependency that is not installed; scrypt is memory-hard too and ships with Python.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=12)  # absolute: a stolen cookie dies the same day
SESSION_IDLE = timedelta(hours=2)  # no request for this long: signed out
LAST_SEEN_RESOLUTION = timedelta(minutes=1)  # do not write on every page view
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 128
SESSION_TOKEN_BYTES = 32

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2**14, 8, 1, 32
_SALT_BYTES = 16
_MOBILE = re.compile(r"1[0-9]{10}")
_USERNAME = re.compile(r"[a-z0-9._-]{3,64}")
_INITIAL_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")


class SessionKind(StrEnum):
    MERCHANT = "merchant"
    STAFF = "staff"


class PasswordProblem(StrEnum):
    """Why a new password is refused (the web shows each in the user's language)."""

    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    ALL_DIGITS = "all_digits"
    TOO_FEW_KINDS = "too_few_kinds"  # letters and digits (or symbols) both needed
    CONTAINS_IDENTITY = "contains_identity"  # the phone number or user name
    SAME_AS_OLD = "same_as_old"


def password_problems(
    password: str, *, identities: tuple[str, ...] = (), old_password: str | None = None
) -> list[PasswordProblem]:
    """Every rule the password breaks (empty: acceptable). ``identities``: the phone number,
    the user name — a password that contains one is guessable by anyone who knows it."""
    problems: list[PasswordProblem] = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(PasswordProblem.TOO_SHORT)
    if len(password) > MAX_PASSWORD_LENGTH:
        problems.append(PasswordProblem.TOO_LONG)
    if password.isdigit():
        problems.append(PasswordProblem.ALL_DIGITS)
    elif not (any(c.isalpha() for c in password) and any(not c.isalpha() for c in password)):
        problems.append(PasswordProblem.TOO_FEW_KINDS)
    lowered = password.lower()
    if any(identity and identity.lower() in lowered for identity in identities):
        problems.append(PasswordProblem.CONTAINS_IDENTITY)
    if old_password is not None and password == old_password:
        problems.append(PasswordProblem.SAME_AS_OLD)
    return problems


def initial_password(length: int = 14) -> str:
    """A random first password that passes the policy (letters and digits, no look-alikes)."""
    while True:
        candidate = "".join(secrets.choice(_INITIAL_ALPHABET) for _ in range(length))
        if not password_problems(candidate):
            return candidate


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=_SCRYPT_LEN, maxmem=64 * 1024 * 1024
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


# Checked against when the account does not exist, so that an unknown phone number takes as
# long to refuse as a wrong password (no account enumeration by timing).
DUMMY_PASSWORD_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class LockState:
    failed_count: int
    locked_until: datetime | None

    def is_locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def after_failure(self, now: datetime) -> LockState:
        """The fifth failure in a row locks the account for 15 minutes and starts a new
        count; a locked account's attempts are not counted (they are refused unchecked)."""
        count = self.failed_count + 1
        if count >= MAX_FAILED_LOGINS:
            return LockState(0, now + LOCKOUT)
        return LockState(count, self.locked_until)

    @staticmethod
    def after_success() -> LockState:
        return LockState(0, None)


def new_session_token() -> str:
    return secrets.token_urlsafe(SESSION_TOKEN_BYTES)


def session_alive(
    now: datetime, expires_at: datetime, last_seen_at: datetime, revoked_at: datetime | None
) -> bool:
    return revoked_at is None and now < expires_at and now - last_seen_at < SESSION_IDLE


def totp_step_acceptable(step: int, last_used_step: int | None) -> bool:
    """A TOTP code is used once: a step at or before the last accepted one is a replay."""
    return last_used_step is None or step > last_used_step


def normalize_phone(raw: str) -> str | None:
    """A mainland mobile number: 11 digits starting with 1 (spaces and dashes dropped)."""
    digits = raw.strip().replace(" ", "").replace("-", "")
    if digits.startswith("+86"):
        digits = digits[3:]
    return digits if _MOBILE.fullmatch(digits) else None


def normalize_username(raw: str) -> str | None:
    name = raw.strip().lower()
    return name if _USERNAME.fullmatch(name) else None
