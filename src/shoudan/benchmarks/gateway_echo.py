"""The baseline of ``shoudan bench gateway``: the gateway's own TCP server (``GatewayServer``:
same framing, same hop to a worker thread, same metrics) with a handler that decodes the
request and re-encodes an answer with the same codec — TPDU swapped, header echoed, the fields
the gateway echoes, ``39=00`` and the request's field 64 (so the answer is as long as a MACed
one) — and does nothing else: no database, no keys, no payment.

Run by the benchmark as ``python -m shoudan.benchmarks.gateway_echo PORT [PROCESSES]``
(PROCESSES echo servers behind the same supervisor as ``shoudan gateway --processes N``, which
listens and hands the connections out); SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import os
import sys

from shoudan.core.handoff import HANDOFF_FD_FLAG
from shoudan.gateway.codec import MAC_FIELD, CodecError, Message, decode, encode
from shoudan.gateway.domain import response_mti
from shoudan.gateway.framing import reply_payload, split
from shoudan.gateway.response_codes import APPROVED
from shoudan.gateway.server import GatewayServer, serve_until_signalled
from shoudan.gateway.service import ECHOED, Outcome

KEPT = frozenset(ECHOED) | {MAC_FIELD}


def echo(payload: bytes) -> Outcome:
    """Decode, re-encode as an approved answer; close on anything that does not decode."""
    try:
        frame = split(payload)
        request = decode(frame.body)
        answer_mti = response_mti(request.mti)
        if answer_mti is None:
            return Outcome(None, request.mti)
        fields = {n: v for n, v in request.fields.items() if n in KEPT} | {39: APPROVED}
        body = encode(Message(answer_mti, fields))
    except CodecError:
        return Outcome(None)
    return Outcome(reply_payload(frame, body), request.mti, APPROVED)


def main(argv: list[str]) -> None:
    port, processes = int(argv[0]), int(argv[1]) if len(argv) > 1 else 1
    handoff_fd = int(argv[argv.index(HANDOFF_FD_FLAG) + 1]) if HANDOFF_FD_FLAG in argv else None
    if processes > 1:
        python = [sys.executable, "-P", "-m"]
        one = [*python, "shoudan.benchmarks.gateway_echo", str(port), "1"]
        supervisor = [
            *python, "shoudan.core.processes", "--count", str(processes), "--port", str(port),
        ]  # fmt: skip
        os.execv(sys.executable, [*supervisor, "--", *one])  # noqa: S606 - our own modules
    server = GatewayServer(echo, "127.0.0.1", port, handoff_fd=handoff_fd)
    asyncio.run(serve_until_signalled(server))


if __name__ == "__main__":
    main(sys.argv[1:])
