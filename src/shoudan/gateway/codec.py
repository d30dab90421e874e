"""The terminal spec's message format (section 2), on top of pyiso8583. Pure: bytes in, bytes out.

A message body is ``MTI (2 bytes BCD) | primary bitmap (8 bytes) | fields``; framing (length,
TPDU, header) is ``framing.py``'s. One table, ``FIELDS``, says how each field is written:

- ``n``: packed BCD, two digits a byte. A fixed field with an odd number of digits gets a
  leading ``0`` nibble; a variable one a trailing ``0`` nibble. Its BCD length counts digits.
- ``z``: track 2, packed like ``n``; the separator ``=`` travels as the nibble ``D``.
- ``an`` / ``ans``: ASCII; a variable one's BCD length counts bytes.
- ``b``: binary; a variable one's BCD length counts bytes.

Decoding is strict: a non-BCD nibble, a wrong pad nibble, a field over its length, a field the
spec does not define, a secondary bitmap or bytes after the last field are format errors. Two
error types tell the gateway what it can still do: ``FormatError`` (the MTI was read: answer
``30``) and ``UnreadableMessage`` (not even that: close the connection).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import iso8583
from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError

Kind = Literal["n", "z", "an", "ans", "b"]
FieldValue = str | bytes

MTI_BYTES: Final = 2
BITMAP_BYTES: Final = 8
MAC_FIELD: Final = 64
MAC_BYTES: Final = 8


@dataclass(frozen=True, slots=True)
class FieldSpec:
    kind: Kind
    max_len: int  # digits for n/z, bytes otherwise
    prefix: int  # length prefix in bytes (BCD): 0 fixed, 1 LLVAR, 2 LLLVAR
    name: str

    @property
    def packed(self) -> bool:
        return self.kind in ("n", "z")


# Section 2 of the terminal spec, field by field.
FIELDS: Final[Mapping[int, FieldSpec]] = {
    2: FieldSpec("n", 19, 1, "primary account number"),
    3: FieldSpec("n", 6, 0, "processing code"),
    4: FieldSpec("n", 12, 0, "amount, fen"),
    11: FieldSpec("n", 6, 0, "system trace audit number"),
    12: FieldSpec("n", 6, 0, "local time hhmmss"),
    13: FieldSpec("n", 4, 0, "local date MMDD"),
    14: FieldSpec("n", 4, 0, "card expiry YYMM"),
    15: FieldSpec("n", 4, 0, "settlement date MMDD"),
    22: FieldSpec("n", 3, 0, "POS entry mode"),
    23: FieldSpec("n", 3, 0, "card sequence number"),
    25: FieldSpec("n", 2, 0, "POS condition code"),
    26: FieldSpec("n", 2, 0, "PIN capture code"),
    32: FieldSpec("n", 11, 1, "acquiring institution id"),
    35: FieldSpec("z", 37, 1, "track 2"),
    37: FieldSpec("an", 12, 0, "retrieval reference number"),
    38: FieldSpec("an", 6, 0, "authorisation id"),
    39: FieldSpec("an", 2, 0, "response code"),
    41: FieldSpec("ans", 8, 0, "terminal id"),
    42: FieldSpec("ans", 15, 0, "merchant id"),
    44: FieldSpec("an", 25, 1, "additional response data"),
    48: FieldSpec("n", 322, 2, "additional data (settlement totals)"),
    49: FieldSpec("an", 3, 0, "currency"),
    52: FieldSpec("b", 8, 0, "PIN block"),
    53: FieldSpec("n", 16, 0, "security control info"),
    54: FieldSpec("an", 20, 2, "balance"),
    55: FieldSpec("b", 255, 2, "ICC data"),
    60: FieldSpec("n", 17, 2, "reserved: message type, batch, network management code"),
    61: FieldSpec("n", 29, 2, "original transaction"),
    62: FieldSpec("b", 512, 2, "key data"),
    63: FieldSpec("ans", 163, 2, "operator number"),
    64: FieldSpec("b", 8, 0, "MAC"),
}


def _pyiso_field(spec: FieldSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "len_type": spec.prefix,
        "len_enc": "bcd",
        "max_len": spec.max_len,
        "desc": spec.name,
    }
    if spec.packed:
        entry.update(data_enc="b", len_count="nibbles")
        entry["right_pad" if spec.prefix else "left_pad"] = "0"
    elif spec.kind == "b":
        entry.update(data_enc="b", len_count="bytes")
    else:
        entry.update(data_enc="ascii", len_count="bytes")
    return entry


# pyiso8583's spec dict: no header (framing strips it), BCD MTI, binary primary bitmap.
SPEC: Final[dict[str, dict[str, Any]]] = {
    "h": {"data_enc": "ascii", "len_type": 0, "max_len": 0, "desc": "header", "len_enc": "ascii"},
    "t": {"data_enc": "b", "len_type": 0, "max_len": 2, "desc": "MTI", "len_enc": "bcd"},
    "p": {"data_enc": "b", "len_type": 0, "max_len": 8, "desc": "bitmap", "len_enc": "bcd"},
    **{str(number): _pyiso_field(spec) for number, spec in FIELDS.items()},
}


class CodecError(ValueError):
    """A message that does not follow the spec."""


class UnreadableMessage(CodecError):
    """Not even the MTI can be read: nobody can be answered; close the connection."""


class FormatError(CodecError):
    """The MTI was read but the rest does not follow the spec: answer ``30``. ``fields`` holds
    what was read cleanly before the fault (to echo 11, 41, 42 … in the answer)."""

    def __init__(self, message: str, mti: str, fields: Mapping[int, FieldValue] | None = None):
        super().__init__(message)
        self.mti = mti
        self.fields: dict[int, FieldValue] = dict(fields or {})


@dataclass(slots=True)
class Message:
    """A decoded or to-be-encoded message: text fields as ``str``, binary ones as ``bytes``.
    ``repr`` names the fields present and never shows a value (card data may be inside)."""

    mti: str
    fields: dict[int, FieldValue] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Message(mti={self.mti!r}, fields={sorted(self.fields)})"

    def has(self, number: int) -> bool:
        return number in self.fields

    def text(self, number: int) -> str | None:
        value = self.fields.get(number)
        if isinstance(value, bytes):
            raise TypeError(f"field {number} is binary")
        return value

    def binary(self, number: int) -> bytes | None:
        value = self.fields.get(number)
        if isinstance(value, str):
            raise TypeError(f"field {number} is text")
        return value


# -- decoding ------------------------------------------------------------------------------------
def read_mti(body: bytes) -> str:
    """The MTI of a body, or ``UnreadableMessage`` when it is missing or not four BCD digits."""
    mti = bytes(body[:MTI_BYTES]).hex()
    if len(mti) != 2 * MTI_BYTES or not mti.isdigit():
        raise UnreadableMessage("no readable MTI")
    return mti


def bitmap_fields(bitmap: bytes) -> set[int]:
    return {
        index * 8 + bit + 1
        for index, byte in enumerate(bitmap)
        for bit in range(8)
        if byte & (0x80 >> bit)
    }


def decode(body: bytes) -> Message:
    """One message body (MTI onwards) → ``Message``; ``FormatError``/``UnreadableMessage``."""
    mti = read_mti(body)
    bitmap = bytes(body[MTI_BYTES : MTI_BYTES + BITMAP_BYTES])
    if len(bitmap) != BITMAP_BYTES:
        raise FormatError("no bitmap", mti)
    present = bitmap_fields(bitmap)
    if 1 in present:
        raise FormatError("secondary bitmap: only fields 1-64 exist", mti)
    unknown = present - FIELDS.keys()
    if unknown:
        raise FormatError(f"fields not in the spec: {sorted(unknown)}", mti)
    try:
        decoded, _ = iso8583.decode(bytes(body), SPEC)
    except DecodeError as error:
        clean = _valid_fields(error.doc_dec, exclude=error.field)
        raise FormatError(f"field {error.field}: {error.msg}", mti, clean) from None
    fields: dict[int, FieldValue] = {}
    for key, raw in decoded.items():
        if not key.isdigit():
            continue
        number = int(key)
        value = _checked(number, raw)
        if value is None:
            raise FormatError(
                f"field {number}: not {FIELDS[number].kind}", mti, _valid_fields(decoded, key)
            )
        fields[number] = value
    return Message(mti, fields)


TRACK_CHARACTERS: Final = "0123456789D"


def _checked(number: int, raw: str) -> FieldValue | None:
    """The field's value in its Python type, or None when its content breaks its format
    (pyiso8583 reads any nibble; the spec allows only digits, plus ``D`` in track 2)."""
    spec = FIELDS[number]
    if spec.kind == "b":
        return bytes.fromhex(raw)
    if spec.kind == "n":
        return raw if raw.isdigit() else None
    # str methods rather than a loop over the characters: every field of every message
    if spec.kind == "z":
        return raw if raw and not raw.strip(TRACK_CHARACTERS) else None
    return raw if raw.isascii() and raw.isprintable() else None  # " " to "~"


def _valid_fields(partial: Mapping[str, str], exclude: str) -> dict[int, FieldValue]:
    clean: dict[int, FieldValue] = {}
    for key, raw in partial.items():
        if key == exclude or not key.isdigit() or int(key) not in FIELDS:
            continue
        value = _checked(int(key), raw)
        if value is not None:
            clean[int(key)] = value
    return clean


# -- encoding ------------------------------------------------------------------------------------
def encode(message: Message) -> bytes:
    """``Message`` → body bytes (MTI onwards). A value that breaks its field's format raises
    ``CodecError``: the host never sends what it would refuse to read."""
    if len(message.mti) != 4 or not message.mti.isdigit():
        raise CodecError(f"MTI {message.mti!r} is not four digits")
    document: dict[str, str] = {"t": message.mti}
    for number, value in message.fields.items():
        spec = FIELDS.get(number)
        if spec is None:
            raise CodecError(f"field {number} is not in the spec")
        if spec.kind == "b":
            if not isinstance(value, bytes):
                raise CodecError(f"field {number} is binary")
            document[str(number)] = value.hex().upper()
            continue
        if not isinstance(value, str) or _checked(number, value) is None:
            raise CodecError(f"field {number} does not fit its format {spec.kind}")
        document[str(number)] = value
    try:
        encoded, _ = iso8583.encode(document, SPEC)
    except EncodeError as error:
        raise CodecError(f"field {error.field}: {error.msg}") from None
    return bytes(encoded)


def mac_input(body: bytes) -> bytes:
    """What the MAC covers: the body as sent, MTI to the field before 64 (field 64 is always
    last and fixed at 8 bytes)."""
    return bytes(body[:-MAC_BYTES])


# -- sub-fields ----------------------------------------------------------------------------------
class FieldError(CodecError):
    """A field whose sub-fields do not follow the spec (answered ``30``)."""


@dataclass(frozen=True, slots=True)
class Field60:
    """60.1 message type n2, 60.2 batch n6, 60.3 network management code n3 (optional on
    financial messages), then whatever else the terminal sends (kept, echoed)."""

    message_type: str
    batch: str
    network_code: str | None = None
    rest: str = ""

    def encode(self) -> str:
        return f"{self.message_type}{self.batch}{self.network_code or ''}{self.rest}"


def parse_60(value: str) -> Field60:
    if len(value) < 8 or (8 < len(value) < 11):
        raise FieldError("field 60: 60.1 n2 + 60.2 n6 [+ 60.3 n3]")
    return Field60(value[:2], value[2:8], value[8:11] or None, value[11:])


@dataclass(frozen=True, slots=True)
class Field61:
    """The original transaction: 61.1 batch n6, 61.2 STAN n6, 61.3 date MMDD n4 (optional)."""

    batch: str
    stan: str
    date: str | None = None
    rest: str = ""

    def encode(self) -> str:
        return f"{self.batch}{self.stan}{self.date or ''}{self.rest}"


def parse_61(value: str) -> Field61:
    if len(value) < 12 or (12 < len(value) < 16):
        raise FieldError("field 61: 61.1 n6 + 61.2 n6 [+ 61.3 n4]")
    return Field61(value[:6], value[6:12], value[12:16] or None, value[16:])


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """Field 48 of a batch settlement: sales and refunds, amounts in fen, voids excluded."""

    sales_amount: int
    sales_count: int
    refunds_amount: int
    refunds_count: int

    def encode(self) -> str:
        for count in (self.sales_count, self.refunds_count):
            if not 0 <= count <= MAX_BATCH_COUNT:
                raise FieldError("a batch count is n3")
        for amount in (self.sales_amount, self.refunds_amount):
            if not 0 <= amount <= MAX_BATCH_AMOUNT:
                raise FieldError("a batch amount is n12")
        return (
            f"{self.sales_amount:012d}{self.sales_count:03d}"
            f"{self.refunds_amount:012d}{self.refunds_count:03d}"
        )


    def capped(self) -> BatchTotals:
        """These totals with each figure at most what its digits hold: the host's answer for
        a batch larger than field 48 can state (never equal to a terminal's, so never
        balanced; its full figures go to the case it opens)."""
        return BatchTotals(
            min(self.sales_amount, MAX_BATCH_AMOUNT), min(self.sales_count, MAX_BATCH_COUNT),
            min(self.refunds_amount, MAX_BATCH_AMOUNT), min(self.refunds_count, MAX_BATCH_COUNT),
        )  # fmt: skip

    def __str__(self) -> str:
        return (
            f"sales {self.sales_count} for {self.sales_amount} fen, "
            f"refunds {self.refunds_count} for {self.refunds_amount} fen"
        )


MAX_BATCH_COUNT: Final = 999  # n3
MAX_BATCH_AMOUNT: Final = 10**12 - 1  # n12, in fen
BALANCED: Final = "1"
NOT_BALANCED: Final = "2"
TOTALS_DIGITS: Final = 30


def parse_48(value: str) -> tuple[BatchTotals, str | None]:
    """The totals and, in a response, the balanced digit (``1`` balanced, ``2`` not)."""
    if len(value) not in (TOTALS_DIGITS, TOTALS_DIGITS + 1):
        raise FieldError("field 48: n12 + n3 + n12 + n3 [+ n1]")
    flag = value[TOTALS_DIGITS:] or None
    if flag is not None and flag not in (BALANCED, NOT_BALANCED):
        raise FieldError("field 48: the last digit is 1 (balanced) or 2 (not balanced)")
    totals = BatchTotals(int(value[:12]), int(value[12:15]), int(value[15:27]), int(value[27:30]))
    return totals, flag


@dataclass(frozen=True, slots=True)
class Track2:
    """What the host uses of track 2: the card number and the expiry. ``repr`` hides both."""

    pan: str = field(repr=False)
    expiry: str | None = field(repr=False)


def parse_track2(value: str) -> Track2:
    pan, separator, rest = value.partition("D")
    if not separator or not 12 <= len(pan) <= 19 or not pan.isdigit():
        raise FieldError("field 35: PAN, D, expiry YYMM …")
    expiry = rest[:4] if len(rest) >= 4 and rest[:4].isdigit() else None
    return Track2(pan, expiry)
