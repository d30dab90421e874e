"""Terminal master key material: generation and the key check value (KCV)."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography ≥ 43 moved 3DES to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[attr-defined,no-redef,unused-ignore]

from shoudan.terminals.domain import TMK_BYTES, with_odd_parity

KCV_BYTES = 3
TMK_CONTEXT = "terminal:tmk"  # the vault context the master key is encrypted under


def generate_master_key() -> str:
    """A random double-length 3DES key (odd parity, distinct halves), as 32 capital hex."""
    while True:
        key = with_odd_parity(os.urandom(TMK_BYTES))
        if key[:8] != key[8:]:
            return key.hex().upper()


def key_check_value(key_hex: str) -> str:
    """First 3 bytes of 3DES-ECB(key, 8 zero bytes), as 6 capital hex digits: the standard
    way to confirm a key was loaded correctly without revealing it."""
    key = bytes.fromhex(key_hex)
    if len(key) == TMK_BYTES:  # double length K1K2 is keying option 2: K1K2K1
        key += key[:8]
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()  # noqa: S305
    block = encryptor.update(bytes(8)) + encryptor.finalize()
    return block[:KCV_BYTES].hex().upper()
