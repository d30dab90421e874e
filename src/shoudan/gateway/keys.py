"""Keys, MAC and PIN blocks of the terminal spec (section 4). Pure cryptography, no I/O.

- The terminal master key (TMK, double-length 3DES) comes from the terminal's record
  (``terminals.service.load_master_key``); sign-on issues a fresh PIN key (PIK) and MAC key
  (MAK), each sent as ``E(TMK, key)`` + ``KCV(key)`` in field 62 (40 bytes).
- ``KCV(K)`` = the first 4 bytes of ``E(K, 00…00)``.
- MAC: ANSI X9.19 retail MAC (ISO 9797-1 MAC algorithm 3, padding method 1): single-DES CBC
  under K1 over every block, then the last block decrypted under K2 and encrypted under K1.
- PIN: ISO 9564 format 0 (PIN field XOR PAN field), 3DES-ECB under the PIK. The clear PIN
  exists only in memory, for the one request that carries it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography ≥ 43 moved 3DES to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[attr-defined,no-redef,unused-ignore]

from shoudan.terminals.domain import TMK_BYTES
from shoudan.terminals.keys import generate_master_key

BLOCK: Final = 8
KCV_BYTES: Final = 4
KEY_DATA_BYTES: Final = 2 * (TMK_BYTES + KCV_BYTES)  # field 62 of the sign-on response
PIN_BLOCK_FORMAT_0: Final = 0x0
PIN_LENGTHS: Final = range(4, 13)
# field 53: PIN block format 0 ("2"), double-length key ("6"), then zeros to 16 digits
SECURITY_CONTROL: Final = "26".ljust(16, "0")


class KeyMaterialError(ValueError):
    """Key material that does not check out (wrong length, wrong check value)."""


class PinBlockError(ValueError):
    """A PIN block that does not decrypt to a format 0 block (wrong PIK, wrong PAN, garbage)."""


def _des3(key: bytes) -> TripleDES:
    """3DES keyed with a single (K1 → K1K1K1, i.e. DES) or double (K1K2 → K1K2K1) length key."""
    if len(key) == BLOCK:
        return TripleDES(key * 3)
    if len(key) == TMK_BYTES:
        return TripleDES(key + key[:BLOCK])
    raise KeyMaterialError("a DES key is 8 or 16 bytes")


def encrypt_ecb(key: bytes, data: bytes) -> bytes:
    if len(data) % BLOCK:
        raise ValueError("ECB data is whole 8-byte blocks")
    encryptor = Cipher(_des3(key), modes.ECB()).encryptor()  # noqa: S305 (the spec's mode)
    return encryptor.update(data) + encryptor.finalize()


def decrypt_ecb(key: bytes, data: bytes) -> bytes:
    if len(data) % BLOCK:
        raise ValueError("ECB data is whole 8-byte blocks")
    decryptor = Cipher(_des3(key), modes.ECB()).decryptor()  # noqa: S305
    return decryptor.update(data) + decryptor.finalize()


def check_value(key: bytes) -> bytes:
    """The spec's KCV: first 4 bytes of E(K, 8 zero bytes)."""
    return encrypt_ecb(key, bytes(BLOCK))[:KCV_BYTES]


@dataclass(frozen=True, slots=True)
class WorkingKeys:
    """A terminal's PIN and MAC keys, in clear: held in memory only (``repr`` hides them)."""

    pik: bytes = field(repr=False)
    mak: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.pik) != TMK_BYTES or len(self.mak) != TMK_BYTES:
            raise KeyMaterialError("working keys are double length (16 bytes)")


def issue_working_keys() -> WorkingKeys:
    """Fresh random PIK and MAK (odd parity, distinct halves), as on every sign-on."""
    return WorkingKeys(bytes.fromhex(generate_master_key()), bytes.fromhex(generate_master_key()))


def key_data(tmk: bytes, keys: WorkingKeys) -> bytes:
    """Field 62 of the sign-on response: E(TMK, PIK) KCV(PIK) E(TMK, MAK) KCV(MAK)."""
    return (
        encrypt_ecb(tmk, keys.pik)
        + check_value(keys.pik)
        + encrypt_ecb(tmk, keys.mak)
        + check_value(keys.mak)
    )


def read_key_data(tmk: bytes, data: bytes) -> WorkingKeys:
    """The terminal's side of sign-on: decrypt field 62 and check both check values."""
    if len(data) != KEY_DATA_BYTES:
        raise KeyMaterialError(f"key data is {KEY_DATA_BYTES} bytes")
    half = TMK_BYTES + KCV_BYTES
    keys = []
    for part in (data[:half], data[half:]):
        key = decrypt_ecb(tmk, part[:TMK_BYTES])
        if not hmac.compare_digest(check_value(key), part[TMK_BYTES:]):
            raise KeyMaterialError("check value mismatch: wrong master key or damaged key data")
        keys.append(key)
    return WorkingKeys(keys[0], keys[1])


# -- MAC -----------------------------------------------------------------------------------------
def retail_mac(mak: bytes, data: bytes) -> bytes:
    """ANSI X9.19 (ISO 9797-1 algorithm 3, padding method 1) with a double-length MAK."""
    if len(mak) != TMK_BYTES:
        raise KeyMaterialError("the MAK is double length (16 bytes)")
    padded = data + bytes(-len(data) % BLOCK) if data else bytes(BLOCK)
    head, last = padded[:-BLOCK], padded[-BLOCK:]
    chained = bytes(BLOCK)
    if head:  # single-DES CBC under K1 over every block but the last
        chain = Cipher(_des3(mak[:BLOCK]), modes.CBC(bytes(BLOCK))).encryptor()
        chained = chain.update(head)[-BLOCK:]
    # the last block's E(K1), D(K2), E(K1) is one 3DES (EDE, K1K2K1) encryption: one cipher
    # context where three steps took three (the MAC is computed twice per request)
    return encrypt_ecb(mak, bytes(a ^ b for a, b in zip(chained, last, strict=True)))


def mac_matches(mak: bytes, data: bytes, mac: bytes | None) -> bool:
    return mac is not None and hmac.compare_digest(retail_mac(mak, data), mac)


# -- PIN blocks ----------------------------------------------------------------------------------
def _pan_field(pan: str) -> bytes:
    """``0000`` + the 12 rightmost PAN digits without the check digit."""
    if not pan.isdigit() or len(pan) < 12:
        raise PinBlockError("a PAN of 12 digits or more")
    return bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0"))


def clear_pin_block(pin: str, pan: str) -> bytes:
    """ISO 9564 format 0, before encryption."""
    if not pin.isdigit() or len(pin) not in PIN_LENGTHS:
        raise PinBlockError("a PIN is 4 to 12 digits")
    pin_field = bytes.fromhex(f"{PIN_BLOCK_FORMAT_0:X}{len(pin):X}{pin}".ljust(16, "F"))
    return bytes(a ^ b for a, b in zip(pin_field, _pan_field(pan), strict=True))


def encrypt_pin(pik: bytes, pin: str, pan: str) -> bytes:
    """Field 52 as a terminal sends it."""
    return encrypt_ecb(pik, clear_pin_block(pin, pan))


def decrypt_pin(pik: bytes, block: bytes, pan: str) -> str:
    """The clear PIN from field 52 — only ever handed to the channel for verification."""
    if len(block) != BLOCK:
        raise PinBlockError("a PIN block is 8 bytes")
    clear = decrypt_ecb(pik, block)
    digits = bytes(a ^ b for a, b in zip(clear, _pan_field(pan), strict=True)).hex().upper()
    control, length = int(digits[0], 16), int(digits[1], 16)
    if control != PIN_BLOCK_FORMAT_0 or length not in PIN_LENGTHS:
        raise PinBlockError("not a format 0 PIN block")
    pin, filler = digits[2 : 2 + length], digits[2 + length :]
    if not pin.isdigit() or filler != "F" * len(filler):
        raise PinBlockError("not a format 0 PIN block")
    return pin
