"""Signaling-tier and bus metrics: per message or per connection, never per packet.

These are ordinary prometheus_client objects in the default registry (a lock per
update is nothing at signaling rates). The signaling socket (``signaling/ws.py``)
counts connections and the errors it sends; the Redis bus (``sfu/cluster/``) should
time each request/response round trip with :data:`REDIS_ROUND_TRIP` and count
failed commands and timeouts with :data:`REDIS_ERRORS`, in whichever process it runs.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from sfu.protocol import ErrorCode

WEBSOCKET_CONNECTIONS = Gauge("sfu_websocket_connections", "Open signaling WebSockets")
WEBSOCKET_ACCEPTED = Counter(
    "sfu_websocket_accepted_connections", "Signaling WebSockets accepted since start"
)
SIGNALING_ERRORS = Counter(
    "sfu_signaling_errors", "Error messages sent to signaling clients, by code", ["code"]
)
for _code in ErrorCode:
    SIGNALING_ERRORS.labels(_code.value)  # every code exported from the start, at 0

REDIS_ROUND_TRIP = Histogram(
    "sfu_redis_round_trip_seconds",
    "Round trip of a request over the Redis bus (sent to reply received)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REDIS_ERRORS = Counter("sfu_redis_errors", "Failed Redis commands and bus request timeouts")


def count_error(code: str) -> None:
    """An ``error`` message went to a client (``code`` is an :class:`ErrorCode`)."""
    SIGNALING_ERRORS.labels(code).inc()
