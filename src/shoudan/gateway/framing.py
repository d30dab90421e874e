"""Section 1 of the terminal spec: how a message travels on the TCP stream. Pure.

    LEN(2) | TPDU(5) | HEADER(6) | body (MTI, bitmap, fields)

``LEN`` is the big-endian length of everything after it. The TPDU is ``60`` + destination (2
bytes) + source (2 bytes); a reply swaps the two addresses. The 6-byte header is echoed
unchanged. A frame — length prefix included — is at most ``MAX_FRAME_BYTES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shoudan.gateway.codec import UnreadableMessage

LENGTH_BYTES: Final = 2
TPDU_BYTES: Final = 5
HEADER_BYTES: Final = 6
ENVELOPE_BYTES: Final = TPDU_BYTES + HEADER_BYTES
MAX_FRAME_BYTES: Final = 2048
MAX_PAYLOAD_BYTES: Final = MAX_FRAME_BYTES - LENGTH_BYTES
TPDU_ID: Final = 0x60


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame without its length prefix: the envelope and the message body."""

    tpdu: bytes
    header: bytes
    body: bytes

    @property
    def payload(self) -> bytes:
        return self.tpdu + self.header + self.body


def payload_length(prefix: bytes) -> int:
    """The length announced by a 2-byte prefix."""
    if len(prefix) != LENGTH_BYTES:
        raise UnreadableMessage("truncated length prefix")
    return int.from_bytes(prefix, "big")


def split(payload: bytes) -> Frame:
    """A payload (what follows the length prefix) → ``Frame``; ``UnreadableMessage`` when it
    is too short to hold the envelope."""
    if len(payload) < ENVELOPE_BYTES:
        raise UnreadableMessage("shorter than TPDU and header")
    return Frame(
        payload[:TPDU_BYTES], payload[TPDU_BYTES:ENVELOPE_BYTES], payload[ENVELOPE_BYTES:]
    )


def envelope_problem(frame: Frame) -> str | None:
    """Why a frame breaks section 1 although it can be read (answered ``30``), or None."""
    if len(frame.payload) > MAX_PAYLOAD_BYTES:
        return f"frame over {MAX_FRAME_BYTES} bytes"
    if frame.tpdu[0] != TPDU_ID:
        return "TPDU does not start with 60"
    return None


def reply_tpdu(tpdu: bytes) -> bytes:
    """The reply's TPDU: same id, destination and source swapped."""
    return tpdu[:1] + tpdu[3:5] + tpdu[1:3]


def reply_payload(request: Frame, body: bytes) -> bytes:
    """The reply to ``request`` (without length prefix): swapped TPDU, echoed header."""
    return reply_tpdu(request.tpdu) + request.header + body


def pack(payload: bytes) -> bytes:
    """Prefix a payload with its length."""
    if len(payload) > 0xFFFF:
        raise ValueError("a payload is at most 65535 bytes")
    return len(payload).to_bytes(LENGTH_BYTES, "big") + payload


def frame_bytes(tpdu: bytes, header: bytes, body: bytes) -> bytes:
    """A complete frame, as a terminal (or the simulator) sends it."""
    if len(tpdu) != TPDU_BYTES or len(header) != HEADER_BYTES:
        raise ValueError("TPDU is 5 bytes, header 6")
    return pack(tpdu + header + body)
