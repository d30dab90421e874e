"""Personal data at rest: AES-256-GCM encryption, keyed hashes for look-ups, masking.

One master key (``load_secret_key``) is never used directly: HKDF derives a separate key per
purpose (``"pii"`` for encryption, ``"lookup"`` for hashes, ``"pan"`` for card tokens), so a
leaked look-up hash key does not decrypt anything. Ciphertexts carry a version byte so keys
can be rotated later.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoudan.core.errors import DomainError, ErrorCode

VERSION = b"\x01"
NONCE_BYTES = 12


def _derive(master: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        master
    )


@dataclass(frozen=True)
class Vault:
    """Encrypts and hashes personal data with keys derived from the master key."""

    encryption_key: bytes
    lookup_key: bytes
    pan_key: bytes

    @classmethod
    def from_master(cls, master: bytes) -> Vault:
        if len(master) != 32:
            raise DomainError(ErrorCode.CONFIGURATION_ERROR, "the master key must be 32 bytes")
        return cls(_derive(master, "pii"), _derive(master, "lookup"), _derive(master, "pan"))

    def encrypt(self, plaintext: str, context: str) -> bytes:
        """AES-GCM with a random nonce; ``context`` (e.g. ``"merchant:bank_card"``) is bound
        as associated data, so a ciphertext copied into another column does not decrypt."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.encryption_key).encrypt(nonce, plaintext.encode(), context.encode())
        return VERSION + nonce + sealed

    def decrypt(self, blob: bytes, context: str) -> str:
        if not blob or blob[:1] != VERSION:
            raise DomainError(ErrorCode.INTERNAL_ERROR, "unknown ciphertext version")
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            plain = AESGCM(self.encryption_key).decrypt(nonce, sealed, context.encode())
        except Exception as exc:  # InvalidTag: wrong key, wrong context or tampered data
            raise DomainError(ErrorCode.INTERNAL_ERROR, "ciphertext does not authenticate") from exc
        return plain.decode()

    def lookup_hash(self, value: str, context: str) -> str:
        """Deterministic keyed hash (HMAC-SHA256, hex) to find a row by an encrypted value."""
        message = f"{context}\x1f{value}".encode()
        return hmac.new(self.lookup_key, message, hashlib.sha256).hexdigest()

    def pan_token(self, pan: str) -> str:
        """The only thing stored for a card number besides BIN and last four."""
        return hmac.new(self.pan_key, pan.encode(), hashlib.sha256).hexdigest()


def mask_phone(phone: str) -> str:
    """``13812341234`` → ``138****1234``."""
    digits = phone.strip()
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:3]}{'*' * (len(digits) - 7)}{digits[-4:]}"


def mask_card(number: str) -> str:
    """``6217001234567890123`` → ``621700*********0123`` (BIN and last four visible)."""
    digits = number.strip()
    if len(digits) < 10:
        return "*" * len(digits)
    return f"{digits[:6]}{'*' * (len(digits) - 10)}{digits[-4:]}"
