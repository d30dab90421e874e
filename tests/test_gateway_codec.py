"""The terminal spec's byte formats, checked against vectors written by hand from the spec
(section 1, 2 and 4) — never produced by the code under test — and crypto vectors computed
here with the DES primitive directly, or published (ISO/IEC 9797-1 Annex B)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from shoudan.gateway import keys
from shoudan.gateway.codec import (
    BatchTotals,
    Field60,
    Field61,
    FieldError,
    FormatError,
    Message,
    UnreadableMessage,
    decode,
    encode,
    mac_input,
    parse_48,
    parse_60,
    parse_61,
    parse_track2,
)
from shoudan.gateway.domain import Kind, classify, next_batch, response_mti, reversed_kind
from shoudan.gateway.framing import (
    Frame,
    envelope_problem,
    frame_bytes,
    pack,
    payload_length,
    reply_payload,
    split,
)
from shoudan.terminals.keys import key_check_value

PAN = "6222020000000000018"  # sandbox debit card (19 digits)
TID = "TA000001"
MID = "898310058120001"


def h(*parts: str) -> bytes:
    """Hex segments (spaces allowed) → bytes."""
    return bytes.fromhex("".join(parts).replace(" ", ""))


def ascii_hex(text: str) -> str:
    return text.encode("ascii").hex()


TID_HEX = "54 41 30 30 30 30 30 31"  # "TA000001"
MID_HEX = "38 39 38 33 31 30 30 35 38 31 32 30 30 30 31"  # "898310058120001"
PAN_LLVAR = "19 62 22 02 00 00 00 00 00 01 80"  # 19 digits, right-padded with a 0 nibble
MAC = "01 02 03 04 05 06 07 08"
PIN_BLOCK = "A1 B2 C3 D4 E5 F6 07 18"


# -- golden messages, one per message type -------------------------------------------------------
GOLDEN: list[tuple[str, Message, bytes]] = [
    (
        "0800 sign-on request",
        Message("0800", {11: "000001", 41: TID, 42: MID, 60: "00000001003", 63: "001"}),
        h(
            "08 00",  # MTI, BCD
            "00 20 00 00 00 C0 00 12",  # bitmap: 11 | 41 42 | 60 63
            "00 00 01",  # 11 STAN n6
            TID_HEX,  # 41 ans8
            MID_HEX,  # 42 ans15
            "00 11 00 00 00 01 00 30",  # 60 LLLVAR n: 11 digits 00|000001|003 + pad 0
            "00 03 30 30 31",  # 63 LLLVAR ans: 3 bytes "001"
        ),
    ),
    (
        "0810 sign-on response",
        Message("0810", {
            11: "000001", 12: "100000", 13: "1123", 15: "1123", 32: "898", 39: "00", 41: TID,
            42: MID, 60: "00000001003", 62: bytes(range(40)),
        }),
        h(
            "08 10",
            "00 3A 00 01 02 C0 00 14",  # 11 12 13 15 | 32 | 39 | 41 42 | 60 62
            "00 00 01",  # 11
            "10 00 00",  # 12 hhmmss
            "11 23",  # 13 MMDD
            "11 23",  # 15 MMDD
            "03 89 80",  # 32 LLVAR n: 3 digits, right-padded
            "30 30",  # 39 an2 "00"
            TID_HEX,
            MID_HEX,
            "00 11 00 00 00 01 00 30",  # 60
            "00 40",  # 62 LLLVAR b: 40 bytes
            bytes(range(40)).hex(),
        ),
    ),
    (
        "0200 sale request (PIN, chip)",
        Message("0200", {
            2: PAN, 3: "000000", 4: "000000010000", 11: "000007", 14: "2912", 22: "051",
            25: "00", 41: TID, 42: MID, 49: "156", 52: h(PIN_BLOCK), 53: "2600000000000000",
            60: "22000001000", 64: h(MAC),
        }),
        h(
            "02 00",
            "70 24 04 80 00 C0 98 11",  # 2 3 4 | 11 14 | 22 | 25 | - | 41 42 | 49 52 53 | 60 64
            PAN_LLVAR,  # 2
            "00 00 00",  # 3 processing code
            "00 00 00 01 00 00",  # 4 amount n12: ¥100.00 in fen
            "00 00 07",  # 11
            "29 12",  # 14 expiry YYMM
            "00 51",  # 22 n3, left-padded: chip, PIN entered
            "00",  # 25 condition code
            TID_HEX,
            MID_HEX,
            "31 35 36",  # 49 an3 "156"
            PIN_BLOCK,  # 52 b8
            "26 00 00 00 00 00 00 00",  # 53 n16
            "00 11 22 00 00 01 00 00",  # 60: 22|000001|000 + pad
            MAC,  # 64 b8
        ),
    ),
    (
        "0210 sale response",
        Message("0210", {
            3: "000000", 4: "000000010000", 11: "000007", 12: "100000", 13: "1123",
            15: "1123", 32: "898", 37: "263270000001", 38: "123456", 39: "00", 41: TID,
            42: MID, 60: "22000001000", 64: h(MAC),
        }),
        h(
            "02 10",
            "30 3A 00 01 0E C0 00 11",  # 3 4 | 11 12 13 15 | 32 | 37 38 39 | 41 42 | 60 64
            "00 00 00",
            "00 00 00 01 00 00",
            "00 00 07",
            "10 00 00",
            "11 23",
            "11 23",
            "03 89 80",
            ascii_hex("263270000001"),  # 37 an12
            ascii_hex("123456"),  # 38 an6
            "30 30",  # 39
            TID_HEX,
            MID_HEX,
            "00 11 22 00 00 01 00 00",
            MAC,
        ),
    ),
    (
        "0200 sale request, swiped (track 2)",
        Message("0200", {
            3: "000000", 4: "000000000100", 11: "000008", 22: "021", 25: "00",
            35: PAN + "D2912101", 41: TID, 42: MID, 49: "156", 60: "22000001000", 64: h(MAC),
        }),
        h(
            "02 00",
            "30 20 04 80 20 C0 80 11",  # 3 4 | 11 | 22 | 25 | 35 | 41 42 | 49 | 60 64
            "00 00 00",
            "00 00 00 00 01 00",
            "00 00 08",
            "00 21",  # 22 magstripe, PIN entered
            "00",
            "27 62 22 02 00 00 00 00 00 01 8D 29 12 10 10",  # 35 z: 27 nibbles, D for =, pad 0
            TID_HEX,
            MID_HEX,
            "31 35 36",
            "00 11 22 00 00 01 00 00",
            MAC,
        ),
    ),
    (
        "0200 sale void request (61, 37)",
        Message("0200", {
            2: PAN, 3: "200000", 4: "000000010000", 11: "000009", 14: "2912", 22: "052",
            25: "00", 37: "263270000001", 41: TID, 42: MID, 49: "156", 60: "23000001000",
            61: "0000010000071123", 64: h(MAC),
        }),
        h(
            "02 00",
            "70 24 04 80 08 C0 80 19",  # 2 3 4 | 11 14 | 22 | 25 | 37 | 41 42 | 49 | 60 61 64
            PAN_LLVAR,
            "20 00 00",
            "00 00 00 01 00 00",
            "00 00 09",
            "29 12",
            "00 52",
            "00",
            ascii_hex("263270000001"),
            TID_HEX,
            MID_HEX,
            "31 35 36",
            "00 11 23 00 00 01 00 00",  # 60: 23|000001|000
            "00 16 00 00 01 00 00 07 11 23",  # 61 LLLVAR n: 16 digits batch|STAN|MMDD
            MAC,
        ),
    ),
    (
        "0100 pre-authorisation request",
        Message("0100", {
            2: PAN, 3: "030000", 4: "000000050000", 11: "000010", 14: "2912", 22: "071",
            25: "06", 41: TID, 42: MID, 49: "156", 60: "10000001000", 64: h(MAC),
        }),
        h(
            "01 00",
            "70 24 04 80 00 C0 80 11",
            PAN_LLVAR,
            "03 00 00",
            "00 00 00 05 00 00",
            "00 00 10",
            "29 12",
            "00 71",  # 22 contactless
            "06",  # 25 pre-authorisation
            TID_HEX,
            MID_HEX,
            "31 35 36",
            "00 11 10 00 00 01 00 00",  # 60: 10|000001|000
            MAC,
        ),
    ),
    (
        "0400 reversal request",
        Message("0400", {
            2: PAN, 3: "000000", 4: "000000010000", 11: "000007", 22: "051", 25: "00",
            39: "98", 41: TID, 42: MID, 49: "156", 60: "22000001000", 64: h(MAC),
        }),
        h(
            "04 00",
            "70 20 04 80 02 C0 80 11",  # 2 3 4 | 11 | 22 | 25 | 39 | 41 42 | 49 | 60 64
            PAN_LLVAR,
            "00 00 00",
            "00 00 00 01 00 00",
            "00 00 07",  # the original's STAN
            "00 51",
            "00",
            "39 38",  # 39 reason "98"
            TID_HEX,
            MID_HEX,
            "31 35 36",
            "00 11 22 00 00 01 00 00",
            MAC,
        ),
    ),
    (
        "0220 refund advice",
        Message("0220", {
            2: PAN, 3: "200000", 4: "000000003000", 11: "000011", 22: "012", 25: "00",
            37: "263270000001", 41: TID, 42: MID, 49: "156", 60: "25000001000",
            61: "0000000000001123", 64: h(MAC),
        }),
        h(
            "02 20",
            "70 20 04 80 08 C0 80 19",
            PAN_LLVAR,
            "20 00 00",
            "00 00 00 00 30 00",
            "00 00 11",
            "00 12",  # 22 manual, no PIN
            "00",
            ascii_hex("263270000001"),
            TID_HEX,
            MID_HEX,
            "31 35 36",
            "00 11 25 00 00 01 00 00",
            "00 16 00 00 00 00 00 00 11 23",  # 61: batch/STAN unknown (zeros), date 1123
            MAC,
        ),
    ),
    (
        "0500 batch settlement request",
        Message("0500", {
            11: "000012", 41: TID, 42: MID,
            48: "000000015000002000000003000001", 60: "00000001201", 64: h(MAC),
        }),
        h(
            "05 00",
            "00 20 00 00 00 C1 00 11",  # 11 | 41 42 48 | 60 64
            "00 00 12",
            TID_HEX,
            MID_HEX,
            # 48 LLLVAR n, 30 digits (no pad): 000000015000|002|000000003000|001, that is
            # sales ¥150.00 ×2 and refunds ¥30.00 ×1, packed two digits a byte
            "00 30",
            "00 00 00 01 50 00 00 20 00 00 00 03 00 00 01",
            "00 11 00 00 00 01 20 10",  # 60: 00|000001|201 + pad
            MAC,
        ),
    ),
    (
        "0510 batch settlement response (not balanced)",
        Message("0510", {
            11: "000012", 12: "230000", 13: "1123", 15: "1123", 32: "898", 39: "00",
            41: TID, 42: MID, 48: "0000000150000020000000000000002", 60: "00000001201",
            64: h(MAC),
        }),
        h(
            "05 10",
            "00 3A 00 01 02 C1 00 11",  # 11 12 13 15 | 32 | 39 | 41 42 48 | 60 64
            "00 00 12",
            "23 00 00",
            "11 23",
            "11 23",
            "03 89 80",
            "30 30",
            TID_HEX,
            MID_HEX,
            "00 31",  # 48: 31 digits = totals + flag
            "00 00 00 01 50 00 00 20 00 00 00 00 00 00 00 20",  # …, flag 2, pad 0
            "00 11 00 00 00 01 20 10",
            MAC,
        ),
    ),
    (
        "0210 balance response (54)",
        Message("0210", {
            3: "310000", 11: "000013", 12: "100000", 13: "1123", 15: "1123", 32: "898",
            39: "00", 41: TID, 42: MID, 54: "0002156C000012345678", 60: "01000001000",
            64: h(MAC),
        }),
        h(
            "02 10",
            "20 3A 00 01 02 C0 04 11",  # 3 | 11 12 13 15 | 32 | 39 | 41 42 | 54 | 60 64
            "31 00 00",
            "00 00 13",
            "10 00 00",
            "11 23",
            "11 23",
            "03 89 80",
            "30 30",
            TID_HEX,
            MID_HEX,
            "00 20",  # 54 LLLVAR an: 20 bytes
            ascii_hex("0002156C000012345678"),
            "00 11 01 00 00 01 00 00",
            MAC,
        ),
    ),
    (
        "0200 balance inquiry request",
        Message("0200", {
            2: PAN, 3: "310000", 11: "000013", 14: "2912", 22: "051", 25: "00", 41: TID,
            42: MID, 49: "156", 52: h(PIN_BLOCK), 53: "2600000000000000", 60: "01000001000",
            64: h(MAC),
        }),
        h(
            "02 00",
            "60 24 04 80 00 C0 98 11",  # 2 3 | 11 14 | 22 | 25 | - | 41 42 | 49 52 53 | 60 64
            PAN_LLVAR,  # 2
            "31 00 00",  # 3 balance inquiry (no 4: no amount)
            "00 00 13",  # 11
            "29 12",  # 14
            "00 51",  # 22 n3, left-padded
            "00",  # 25 normal
            TID_HEX,
            MID_HEX,
            "31 35 36",  # 49
            PIN_BLOCK,  # 52
            "26 00 00 00 00 00 00 00",  # 53
            "00 11 01 00 00 01 00 00",  # 60: 01|000001|000 + pad
            MAC,
        ),
    ),
    (
        "0110 pre-authorisation response (38)",
        Message("0110", {
            3: "030000", 4: "000000050000", 11: "000010", 12: "100500", 13: "1123",
            15: "1123", 32: "898", 37: "263270000002", 38: "AB1234", 39: "00", 41: TID,
            42: MID, 60: "10000001000", 64: h(MAC),
        }),
        h(
            "01 10",
            "30 3A 00 01 0E C0 00 11",  # 3 4 | 11 12 13 15 | 32 | 37 38 39 | 41 42 | 60 64
            "03 00 00",  # 3 echoed
            "00 00 00 05 00 00",  # 4 echoed: ¥500.00
            "00 00 10",  # 11 echoed
            "10 05 00",  # 12 hhmmss
            "11 23",  # 13
            "11 23",  # 15
            "03 89 80",  # 32 LLVAR n: 3 digits, right-padded
            "32 36 33 32 37 30 30 30 30 30 30 32",  # 37 an12 "263270000002"
            "41 42 31 32 33 34",  # 38 an6 "AB1234"
            "30 30",  # 39 "00"
            TID_HEX,
            MID_HEX,
            "00 11 10 00 00 01 00 00",  # 60: 10|000001|000 + pad
            MAC,
        ),
    ),
    (
        "0100 pre-auth void request (61, 37)",
        Message("0100", {
            2: PAN, 3: "200000", 4: "000000050000", 11: "000014", 14: "2912", 22: "071",
            25: "06", 37: "263270000002", 41: TID, 42: MID, 49: "156", 60: "11000001000",
            61: "0000010000101123", 64: h(MAC),
        }),
        h(
            "01 00",
            "70 24 04 80 08 C0 80 19",  # 2 3 4 | 11 14 | 22 | 25 | 37 | 41 42 | 49 | 60 61 64
            PAN_LLVAR,
            "20 00 00",  # 3 void
            "00 00 00 05 00 00",  # 4 the full pre-authorised amount
            "00 00 14",  # 11
            "29 12",  # 14
            "00 71",  # 22
            "06",  # 25 pre-authorisation
            "32 36 33 32 37 30 30 30 30 30 30 32",  # 37 the pre-auth's RRN "263270000002"
            TID_HEX,
            MID_HEX,
            "31 35 36",  # 49
            "00 11 11 00 00 01 00 00",  # 60: 11|000001|000 + pad
            "00 16 00 00 01 00 00 10 11 23",  # 61: 16 digits, batch 000001|STAN 000010|1123
            MAC,
        ),
    ),
    (
        "0200 pre-auth completion request (61, 37)",
        Message("0200", {
            2: PAN, 3: "000000", 4: "000000045000", 11: "000015", 14: "2912", 22: "071",
            25: "06", 37: "263270000002", 41: TID, 42: MID, 49: "156", 60: "20000001000",
            61: "0000010000101123", 64: h(MAC),
        }),
        h(
            "02 00",
            "70 24 04 80 08 C0 80 19",  # 2 3 4 | 11 14 | 22 | 25 | 37 | 41 42 | 49 | 60 61 64
            PAN_LLVAR,
            "00 00 00",  # 3
            "00 00 00 04 50 00",  # 4 ¥450.00, less than the ¥500.00 pre-authorised
            "00 00 15",  # 11
            "29 12",
            "00 71",
            "06",  # 25 pre-authorisation
            "32 36 33 32 37 30 30 30 30 30 30 32",  # 37 the pre-auth's RRN
            TID_HEX,
            MID_HEX,
            "31 35 36",
            "00 11 20 00 00 01 00 00",  # 60: 20|000001|000 + pad
            "00 16 00 00 01 00 00 10 11 23",  # 61: the pre-auth, batch 000001 STAN 000010 1123
            MAC,
        ),
    ),
    (
        "0200 completion void request (61, 37)",
        Message("0200", {
            2: PAN, 3: "200000", 4: "000000045000", 11: "000016", 14: "2912", 22: "071",
            25: "06", 37: "263270000003", 41: TID, 42: MID, 49: "156", 60: "21000001000",
            61: "0000010000151123", 64: h(MAC),
        }),
        h(
            "02 00",
            "70 24 04 80 08 C0 80 19",  # 2 3 4 | 11 14 | 22 | 25 | 37 | 41 42 | 49 | 60 61 64
            PAN_LLVAR,
            "20 00 00",  # 3 void
            "00 00 00 04 50 00",  # 4 the completion's full amount
            "00 00 16",  # 11
            "29 12",
            "00 71",
            "06",  # 25 pre-authorisation
            "32 36 33 32 37 30 30 30 30 30 30 33",  # 37 the completion's RRN "263270000003"
            TID_HEX,
            MID_HEX,
            "31 35 36",
            "00 11 21 00 00 01 00 00",  # 60: 21|000001|000 + pad
            "00 16 00 00 01 00 00 15 11 23",  # 61: the completion, STAN 000015
            MAC,
        ),
    ),
    (
        "0230 refund response",
        Message("0230", {
            3: "200000", 4: "000000003000", 11: "000011", 12: "101500", 13: "1123",
            15: "1123", 32: "898", 37: "263270000004", 38: "345678", 39: "00", 41: TID,
            42: MID, 60: "25000001000", 64: h(MAC),
        }),
        h(
            "02 30",
            "30 3A 00 01 0E C0 00 11",  # 3 4 | 11 12 13 15 | 32 | 37 38 39 | 41 42 | 60 64
            "20 00 00",  # 3
            "00 00 00 00 30 00",  # 4 ¥30.00
            "00 00 11",  # 11
            "10 15 00",  # 12
            "11 23",
            "11 23",
            "03 89 80",  # 32
            "32 36 33 32 37 30 30 30 30 30 30 34",  # 37 "263270000004"
            "33 34 35 36 37 38",  # 38 "345678"
            "30 30",  # 39
            TID_HEX,
            MID_HEX,
            "00 11 25 00 00 01 00 00",  # 60: 25|000001|000 + pad
            MAC,
        ),
    ),
    (
        "0230 refund response, pending review (44)",
        Message("0230", {
            3: "200000", 4: "000000003000", 11: "000011", 12: "101500", 13: "1123",
            15: "1123", 32: "898", 37: "263270000004", 38: "345678", 39: "00", 41: TID,
            42: MID, 44: "PENDING REVIEW", 60: "25000001000", 64: h(MAC),
        }),
        h(
            "02 30",
            "30 3A 00 01 0E D0 00 11",  # 3 4 | 11 12 13 15 | 32 | 37 38 39 | 41 42 44 | 60 64
            "20 00 00",
            "00 00 00 00 30 00",
            "00 00 11",
            "10 15 00",
            "11 23",
            "11 23",
            "03 89 80",
            "32 36 33 32 37 30 30 30 30 30 30 34",
            "33 34 35 36 37 38",
            "30 30",
            TID_HEX,
            MID_HEX,
            # 44 LLVAR ASCII: 1-byte BCD length 14, then "PENDING REVIEW" (space = 20)
            "14 50 45 4E 44 49 4E 47 20 52 45 56 49 45 57",
            "00 11 25 00 00 01 00 00",
            MAC,
        ),
    ),
    (
        "0410 reversal response",
        Message("0410", {
            3: "000000", 4: "000000010000", 11: "000007", 12: "100200", 13: "1123",
            15: "1123", 32: "898", 39: "00", 41: TID, 42: MID, 60: "22000001000", 64: h(MAC),
        }),
        h(
            "04 10",
            "30 3A 00 01 02 C0 00 11",  # 3 4 | 11 12 13 15 | 32 | 39 | 41 42 | 60 64
            "00 00 00",  # 3 as the original sale
            "00 00 00 01 00 00",  # 4
            "00 00 07",  # 11 the original's STAN
            "10 02 00",  # 12
            "11 23",
            "11 23",
            "03 89 80",
            "30 30",  # 39 acknowledged
            TID_HEX,
            MID_HEX,
            "00 11 22 00 00 01 00 00",  # 60: 22|000001|000 + pad
            MAC,
        ),
    ),
]


@pytest.mark.parametrize(("name", "message", "wire"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_messages_encode_and_decode(name: str, message: Message, wire: bytes) -> None:
    assert encode(message).hex() == wire.hex(), name
    decoded = decode(wire)
    assert decoded.mti == message.mti
    assert decoded.fields == message.fields


def test_mac_covers_mti_to_the_field_before_64() -> None:
    wire = GOLDEN[2][2]
    assert mac_input(wire) == wire[:-8]
    assert wire[-8:] == h(MAC)


# -- framing (section 1) -------------------------------------------------------------------------
def test_frame_length_tpdu_header_and_reply() -> None:
    body = h("08 00", "00 20 00 00 00 C0 00 12") + b"..."
    wire = frame_bytes(h("60 00 03 00 00"), h("60 31 00 00 00 00"), body)
    assert wire[:2] == (11 + len(body)).to_bytes(2, "big")  # LEN counts what follows it
    assert payload_length(wire[:2]) == len(wire) - 2
    frame = split(wire[2:])
    assert frame == Frame(h("60 00 03 00 00"), h("60 31 00 00 00 00"), body)
    assert envelope_problem(frame) is None
    # the reply swaps destination (0003) and source (0000), echoes the header
    assert reply_payload(frame, b"R") == h("60 00 00 00 03", "60 31 00 00 00 00") + b"R"
    assert pack(b"abc") == h("00 03") + b"abc"


def test_frame_limits() -> None:
    with pytest.raises(UnreadableMessage):
        split(h("60 00 03 00 00 60 31 00 00 00"))  # 10 bytes: no complete envelope
    oversized = split(h("60 00 03 00 00", "60 31 00 00 00 00", "02 00") + bytes(2034))
    assert len(oversized.payload) + 2 == 2049  # one byte over, the 2-byte prefix included
    assert envelope_problem(oversized) is not None
    just_fits = split(h("60 00 03 00 00", "60 31 00 00 00 00", "02 00") + bytes(2033))
    assert envelope_problem(just_fits) is None
    assert envelope_problem(split(h("61 00 03 00 00", "60 31 00 00 00 00", "02 00"))) is not None


# -- strict decoding -----------------------------------------------------------------------------
SALE = GOLDEN[2][2]


def test_unreadable_mti_is_not_answerable() -> None:
    with pytest.raises(UnreadableMessage):
        decode(h("0A 00") + SALE[2:])
    with pytest.raises(UnreadableMessage):
        decode(h("02"))


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (h("02 00 70"), "bitmap cut short"),
        (h("02 00", "C0 00 00 00 00 00 00 00") + bytes(20), "secondary bitmap"),
        (h("02 00", "0C 00 00 00 00 00 00 00") + bytes(20), "fields 5 and 6 are not in the spec"),
        (SALE[:-3], "truncated"),
        (SALE + b"\x00", "bytes after the last field"),
        (SALE[:10] + h("19 6A") + SALE[12:], "non-BCD nibble in the PAN"),
        (SALE[:10] + h("1A") + SALE[11:], "non-BCD length"),
        (SALE[:10] + h("21") + SALE[11:], "PAN longer than 19"),
        (SALE[:10] + SALE[10:20] + h("81") + SALE[21:], "odd PAN padded with a non-zero nibble"),
    ],
)
def test_format_errors_keep_the_mti(wire: bytes, why: str) -> None:
    with pytest.raises(FormatError) as caught:
        decode(wire)
    assert caught.value.mti == "0200", why


def test_format_error_keeps_what_was_read_cleanly() -> None:
    bad_tail = SALE[:-9] + b"\xff"  # field 64 cut short
    with pytest.raises(FormatError) as caught:
        decode(bad_tail)
    assert caught.value.fields[11] == "000007" and caught.value.fields[41] == TID
    assert 64 not in caught.value.fields


def test_fixed_odd_numeric_must_be_left_padded_with_zero() -> None:
    index = SALE.index(h("00 51"))
    with pytest.raises(FormatError):
        decode(SALE[:index] + h("10 51") + SALE[index + 2 :])


def test_ascii_field_with_control_or_8bit_bytes_is_refused() -> None:
    index = SALE.index(TID.encode())
    with pytest.raises(FormatError):
        decode(SALE[:index] + b"TA\x0000001" + SALE[index + 8 :])
    with pytest.raises(FormatError):
        decode(SALE[:index] + b"TA\xe900001" + SALE[index + 8 :])


# -- sub-fields ----------------------------------------------------------------------------------
def test_field_60_61_48_and_track2() -> None:
    assert parse_60("22000001000") == Field60("22", "000001", "000")
    assert parse_60("22000001") == Field60("22", "000001", None)
    assert parse_60("2200000100012345") == Field60("22", "000001", "000", "12345")
    for bad in ("2200000", "220000010"):
        with pytest.raises(FieldError):
            parse_60(bad)
    assert parse_61("0000010000071123") == Field61("000001", "000007", "1123")
    assert parse_61("000001000007") == Field61("000001", "000007", None)
    with pytest.raises(FieldError):
        parse_61("00000100000711")
    totals = BatchTotals(15000, 2, 3000, 1)
    assert totals.encode() == "000000015000002000000003000001"
    assert parse_48("000000015000002000000003000001") == (totals, None)
    assert parse_48("0000000150000020000000030000011") == (totals, "1")
    for bad in ("0000000150000020000000030000013", "00000001500000200"):
        with pytest.raises(FieldError):
            parse_48(bad)
    huge = BatchTotals(10**12, 1_000, 5, 1)  # more than n12 / n3 hold
    with pytest.raises(FieldError):
        huge.encode()
    assert huge.capped().encode() == "999999999999999" + "000000000005001"
    assert str(huge) == "sales 1000 for 1000000000000 fen, refunds 1 for 5 fen"
    assert totals.capped() == totals
    track = parse_track2(PAN + "D2912101")
    assert (track.pan, track.expiry) == (PAN, "2912")
    assert PAN not in repr(track)
    with pytest.raises(FieldError):
        parse_track2(PAN + "2912")


def test_transactions_of_section_3() -> None:
    assert classify("0800", None, None, "00", "003").kind is Kind.SIGN_ON  # type: ignore[union-attr]
    assert classify("0200", "000000", "00", "22", "000").kind is Kind.SALE  # type: ignore[union-attr]
    assert classify("0200", "000000", "06", "20", None).kind is Kind.COMPLETION  # type: ignore[union-attr]
    assert classify("0100", "200000", "06", "11", None).kind is Kind.PREAUTH_VOID  # type: ignore[union-attr]
    assert classify("0500", None, None, "00", "201").kind is Kind.SETTLEMENT  # type: ignore[union-attr]
    assert classify("0400", "000000", "00", "22", None).kind is Kind.REVERSAL  # type: ignore[union-attr]
    assert classify("0200", "000000", "00", "23", None) is None  # 60.1 says void, 3 says sale
    assert classify("0400", "310000", "00", "01", None) is None  # a balance is not reversible
    assert reversed_kind("200000", "06", "21").kind is Kind.COMPLETION_VOID  # type: ignore[union-attr]
    assert [response_mti(m) for m in ("0200", "0220", "0400", "0210", "0230")] == [
        "0210", "0230", "0410", None, None,
    ]  # fmt: skip
    assert next_batch("000001") == "000002" and next_batch("999999") == "000001"


# -- keys, MAC, PIN (section 4) ------------------------------------------------------------------
def des_ecb(key8: bytes, block: bytes, *, decrypt: bool = False) -> bytes:
    """Single DES, straight from the primitive (3DES with K1=K2=K3)."""
    cipher = Cipher(TripleDES(key8 * 3), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(block) + ctx.finalize()


def tdes_ecb(key16: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key16 + key16[:8]), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def x919_by_hand(key: bytes, data: bytes) -> bytes:
    """X9.19 one block at a time: DES-CBC under K1, then D(K2), E(K1) of the last block."""
    padded = data + bytes(-len(data) % 8)
    state = bytes(8)
    for i in range(0, len(padded), 8):
        block = bytes(a ^ b for a, b in zip(state, padded[i : i + 8], strict=True))
        state = des_ecb(key[:8], block)
    return des_ecb(key[:8], des_ecb(key[8:], state, decrypt=True))


def test_des_primitive_known_answer() -> None:
    # FIPS 81 / the classic DES example: key 0123456789ABCDEF, "Now is t" → 3FA40E8A984D4815
    assert des_ecb(h("0123456789ABCDEF"), b"Now is t") == h("3FA40E8A984D4815")


def test_retail_mac_published_vectors() -> None:
    # ISO/IEC 9797-1:2011 Annex B.4: MAC algorithm 3, padding method 1, key K || K'
    key = h("0123456789ABCDEF FEDCBA9876543210")
    assert keys.retail_mac(key, b"Now is the time for all ")[:4] == h("A1C72E74")
    assert keys.retail_mac(key, b"Now is the time for it")[:4] == h("2E2B1428")


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 64, 200])
def test_retail_mac_matches_the_block_by_block_computation(length: int) -> None:
    key = h("0123456789ABCDEF FEDCBA9876543210")
    data = bytes((i * 37 + 11) % 256 for i in range(length))
    expected = x919_by_hand(key, data if data else bytes(8))  # empty data: one zero block
    assert keys.retail_mac(key, data) == expected
    assert keys.mac_matches(key, data, expected)
    flipped = bytes([data[0] ^ 0x01]) + data[1:] if data else b"\x01"
    assert not keys.mac_matches(key, flipped, expected)
    assert not keys.mac_matches(key, data, None)


def test_check_value_is_four_bytes_of_zero_block_encryption() -> None:
    key = h("0123456789ABCDEF FEDCBA9876543210")
    assert keys.check_value(key) == tdes_ecb(key, bytes(8))[:4]
    assert keys.check_value(key)[:3].hex().upper() == key_check_value(key.hex())  # terminals'


def test_sign_on_key_data_layout() -> None:
    tmk = h("0123456789ABCDEF FEDCBA9876543210")
    working = keys.WorkingKeys(h("11" * 8 + "22" * 8), h("33" * 8 + "44" * 8))
    data = keys.key_data(tmk, working)
    assert len(data) == 40
    assert data[:16] == tdes_ecb(tmk, working.pik)  # E(TMK, PIK)
    assert data[16:20] == tdes_ecb(working.pik, bytes(8))[:4]  # KCV(PIK)
    assert data[20:36] == tdes_ecb(tmk, working.mak)  # E(TMK, MAK)
    assert data[36:] == tdes_ecb(working.mak, bytes(8))[:4]  # KCV(MAK)
    assert keys.read_key_data(tmk, data) == working
    with pytest.raises(keys.KeyMaterialError):
        keys.read_key_data(tmk, data[:39] + bytes([data[39] ^ 1]))
    fresh = keys.issue_working_keys()
    assert fresh != keys.issue_working_keys() and fresh.pik != fresh.mak
    assert "pik" not in repr(fresh).lower().replace("workingkeys", "")


def test_pin_block_format_0() -> None:
    # PIN 123456 → PIN field 06 123456 FFFFFFFF; PAN 622202000000000001|8 → 12 digits before
    # the check digit: 000000000001 → PAN field 0000 000000000001. XOR by hand:
    assert keys.clear_pin_block("123456", PAN) == h("06 12 34 56 FF FF FF FE")
    # PIN 1234, PAN 4111111111111111: 04 1234 FF… XOR 0000 111111111111
    assert keys.clear_pin_block("1234", "4111111111111111") == h("04 12 25 EE EE EE EE EE")
    pik = h("0123456789ABCDEF FEDCBA9876543210")
    block = keys.encrypt_pin(pik, "123456", PAN)
    assert block == tdes_ecb(pik, h("06 12 34 56 FF FF FF FE"))
    assert keys.decrypt_pin(pik, block, PAN) == "123456"
    with pytest.raises(keys.PinBlockError):
        keys.decrypt_pin(h("FEDCBA9876543210 0123456789ABCDEF"), block, PAN)  # wrong PIK
    with pytest.raises(keys.PinBlockError):
        keys.decrypt_pin(pik, tdes_ecb(pik, h("16 12 34 56 FF FF FF FE")), PAN)  # format 1


# -- the pre-auth family's references (sections 2 and 3) -----------------------------------------
def golden(name: str) -> Message:
    return next(message for label, message, _ in GOLDEN if label == name)


def test_preauth_family_references_the_original_by_61_and_37() -> None:
    preauth = golden("0110 pre-authorisation response (38)")
    void = golden("0100 pre-auth void request (61, 37)")
    completion = golden("0200 pre-auth completion request (61, 37)")
    completion_void = golden("0200 completion void request (61, 37)")
    # void and completion name the pre-auth: batch 000001, its STAN 000010, date 1123, its RRN
    for message in (void, completion):
        assert parse_61(message.text(61) or "") == Field61("000001", "000010", "1123")
        assert message.text(37) == preauth.text(37)
    assert parse_61(completion_void.text(61) or "") == Field61("000001", "000015", "1123")
    types = [parse_60(m.text(60) or "").message_type for m in (void, completion, completion_void)]
    assert types == ["11", "20", "21"]
    assert parse_60(golden("0200 balance inquiry request").text(60) or "") == Field60(
        "01", "000001", "000"
    )


@pytest.mark.parametrize(
    ("name", "wire"), [(g[0], g[2]) for g in GOLDEN[12:]], ids=[g[0] for g in GOLDEN[12:]]
)
def test_mac_input_of_the_added_vectors(name: str, wire: bytes) -> None:
    assert mac_input(wire) == wire[:-8], name  # from the MTI to the field before 64
    assert wire[-8:] == h(MAC)
