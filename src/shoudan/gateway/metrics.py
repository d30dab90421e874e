"""Prometheus metrics of the ISO 8583 gateway (exported at ``/metrics`` by the HTTP app when it
runs in the same process, or by ``shoudan gateway --metrics-port``).

Labels come from a closed set: an MTI outside the spec's requests counts as ``other``, so that
garbage on the wire cannot create unbounded label values.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from shoudan.gateway.domain import REQUEST_MTIS
from shoudan.gateway.service import Outcome

OTHER: Final = "other"

REQUESTS = Counter(
    "shoudan_gateway_requests", "ISO 8583 requests received, by request MTI", ["mti"]
)
RESPONSES = Counter(
    "shoudan_gateway_responses",
    "ISO 8583 responses sent, by request MTI and response code (field 39)",
    ["mti", "code"],
)
CLOSED = Counter(
    "shoudan_gateway_closed_connections",
    "Connections the host closed, by reason",
    ["reason"],
)
CONNECTIONS = Gauge("shoudan_gateway_connections", "Open terminal connections")
LATENCY = Histogram(
    "shoudan_gateway_request_seconds",
    "Time from a complete request frame to its response written, by request MTI",
    ["mti"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def mti_label(mti: str | None) -> str:
    return mti if mti in REQUEST_MTIS else OTHER


# the labelled series, looked up once: ``labels()`` takes a lock and builds its key on every
# call, which added up on the event loop at a thousand requests a second
_requests: dict[str, Counter] = {}
_latency: dict[str, Histogram] = {}
_responses: dict[tuple[str, str], Counter] = {}


def observe(outcome: Outcome, seconds: float) -> None:
    label = mti_label(outcome.mti)
    requests = _requests.get(label)
    if requests is None:
        requests = _requests[label] = REQUESTS.labels(label)
        _latency[label] = LATENCY.labels(label)
    requests.inc()
    _latency[label].observe(seconds)
    if outcome.reply is not None and outcome.code is not None:
        key = (label, outcome.code)
        responses = _responses.get(key)
        if responses is None:
            responses = _responses[key] = RESPONSES.labels(*key)
        responses.inc()
