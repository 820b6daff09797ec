"""Data channels: SCTP over each participant's publish transport, relayed by the server.

A participant's publish offer may carry a ``webrtc-datachannel`` m-line; the server
accepts it on the same bundled DTLS connection and runs aiortc's
:class:`~aiortc.rtcsctptransport.RTCSctpTransport` over it (SCTP packets are DTLS
records, which the SRTP fast path leaves to aiortc). The client opens the channels
(in-band, DCEP): an ordered reliable one and an unordered one without retransmissions
(``maxRetransmits: 0``) for state updates; their labels do not matter, the server
tells them apart by their reliability.

Wire format (see the README's "Data messages"): a text message is a JSON object

    {"type": "data", "data": <any JSON>, "topic"?: str, "destination_identities"?: [str],
     "id"?: str}

and a binary message is the same object without ``data``, a NUL byte, then the raw
payload. The server relays to every other participant (or to the named identities) a
fresh envelope with ``"from": {"participant_id", "identity", "name"}`` and
``"reliable"`` set by itself, so a sender cannot pose as someone else. A message that
breaks a limit is not relayed; the sender gets ``{"type": "error", "code", "message",
"id"?}`` on its reliable channel and the channel stays open. Once the server has
the reliable channel it sends ``{"type": "ready"}`` on it: from then on the participant
receives the room's messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import RTCDataChannel, RTCSctpCapabilities
from aiortc.rtcsctptransport import RTCSctpTransport

from sfu.sdp import SctpParameters

if TYPE_CHECKING:
    from sfu.aiortc_adapter import DtlsSrtpSession
    from sfu.participant import Participant

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024
"""Largest data message the relay forwards (envelope and payload). SCTP itself takes up
to 256 KiB (``a=max-message-size``); anything between gets a ``too_large`` error."""
MESSAGES_PER_SECOND = 50.0
MESSAGE_BURST = 100.0
"""Token bucket per participant: sustained messages per second and the burst allowed."""
BYTES_PER_SECOND = 256 * 1024.0
BYTE_BURST = 512 * 1024.0
"""Token bucket per participant over message bytes."""
MAX_DESTINATIONS = 64
MAX_TOPIC_LENGTH = 128
MAX_ID_LENGTH = 64
LOSSY_BUFFER_LIMIT = 64 * 1024
"""Bytes queued towards a receiver above which unreliable messages to it are dropped
(a state update that cannot leave soon is stale anyway)."""
RELIABLE_BUFFER_LIMIT = 4 * 1024 * 1024
"""Bytes queued towards a receiver above which even reliable messages are dropped (and
counted): one slow receiver must not grow the server's memory without bound."""
START_TIMEOUT = 30.0

SEPARATOR = b"\x00"
"""Ends the JSON envelope of a binary message; JSON text never contains a raw NUL."""


class DataError(Exception):
    """A data message the relay refuses; ``code`` is sent back to the sender."""

    def __init__(self, code: str, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


class TokenBucket:
    """Allows ``rate`` units per second on average and ``burst`` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    def take(self, amount: float) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


@dataclass(frozen=True)
class Envelope:
    """A validated message from a participant, ready to be stamped and relayed."""

    topic: str | None
    destination_identities: frozenset[str] | None
    message_id: str | None
    data: Any
    """The JSON value of a text message (absent from binary ones)."""
    payload: bytes | None
    """The raw payload of a binary message, None for a text message."""


def _optional_string(value: Any, name: str, limit: int, message_id: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise DataError(
            "bad_message", f"{name} must be a string of at most {limit} characters", message_id
        )
    return value


def parse_envelope(raw: bytes | str) -> Envelope:
    """Validate one client message (text or binary) or raise :class:`DataError`."""
    payload: bytes | None = None
    if isinstance(raw, bytes):
        header, separator, payload = raw.partition(SEPARATOR)
        if not separator:
            raise DataError("bad_message", "a binary message needs a JSON envelope, NUL, payload")
        text: str | bytes = header
    else:
        text = raw
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError("bad_json", f"invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DataError("bad_message", "a data message must be a JSON object")
    message_id = _optional_string(document.get("id"), "id", MAX_ID_LENGTH, None)
    if document.get("type") != "data":
        raise DataError("bad_message", 'a data message must have "type": "data"', message_id)
    if payload is None and "data" not in document:
        raise DataError("bad_message", 'a text data message needs a "data" field', message_id)
    topic = _optional_string(document.get("topic"), "topic", MAX_TOPIC_LENGTH, message_id)
    destinations = document.get("destination_identities")
    if destinations is not None:
        if (
            not isinstance(destinations, list)
            or len(destinations) > MAX_DESTINATIONS
            or not all(isinstance(d, str) for d in destinations)
        ):
            raise DataError(
                "bad_message",
                f"destination_identities must be a list of at most {MAX_DESTINATIONS} strings",
                message_id,
            )
        destinations = frozenset(destinations)
    return Envelope(
        topic=topic,
        destination_identities=destinations,
        message_id=message_id,
        data=document.get("data"),
        payload=payload,
    )


def _is_reliable(channel: RTCDataChannel) -> bool:
    return channel.ordered and channel.maxRetransmits is None and channel.maxPacketLifeTime is None


class DataChannels:
    """The data channels of one participant: receives, checks, stamps and relays its
    messages to the room, and delivers the room's messages to it."""

    def __init__(
        self,
        participant: Participant,
        remote: SctpParameters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.participant = participant
        self.remote = remote
        self.messages_received = 0
        self.messages_relayed = 0
        self.messages_rejected = 0
        self.messages_dropped = 0
        self._message_bucket = TokenBucket(MESSAGES_PER_SECOND, MESSAGE_BURST, clock)
        self._byte_bucket = TokenBucket(BYTES_PER_SECOND, BYTE_BURST, clock)
        self._sctp: RTCSctpTransport | None = None
        self._reliable: RTCDataChannel | None = None
        self._lossy: RTCDataChannel | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        """Whether this participant can receive messages (a channel is open)."""
        return self._reliable is not None or self._lossy is not None

    def start(self, session: DtlsSrtpSession) -> None:
        """Start SCTP on the publish transport's DTLS connection (once it is up)."""
        if self._task is None:
            self._task = asyncio.create_task(self._start(session))

    async def _start(self, session: DtlsSrtpSession) -> None:
        sctp = RTCSctpTransport(session.dtls_transport, port=self.remote.port)
        sctp.on("datachannel", self._on_channel)
        self._sctp = sctp
        await sctp.start(
            RTCSctpCapabilities(maxMessageSize=self.remote.max_message_size), self.remote.port
        )

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._sctp is not None:
            await self._sctp.stop()
        self._reliable = self._lossy = None

    # --- incoming -----------------------------------------------------------------

    def _on_channel(self, channel: RTCDataChannel) -> None:
        reliable = _is_reliable(channel)
        if reliable and self._reliable is None:
            self._reliable = channel
            # Tells the client the server will now deliver to it: its own "open" event
            # may come before the server has seen the channel.
            channel.send(json.dumps({"type": "ready"}))
        elif not reliable and self._lossy is None:
            self._lossy = channel
        channel.on("message", lambda raw: self._on_message(raw, reliable))
        channel.on("close", lambda: self._on_channel_closed(channel))

    def _on_channel_closed(self, channel: RTCDataChannel) -> None:
        if channel is self._reliable:
            self._reliable = None
        elif channel is self._lossy:
            self._lossy = None

    def _on_message(self, raw: bytes | str, reliable: bool) -> None:
        self.messages_received += 1
        try:
            self._relay(raw, reliable)
        except DataError as exc:
            self.messages_rejected += 1
            self.send_error(exc)

    def _relay(self, raw: bytes | str, reliable: bool) -> None:
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if size > MAX_MESSAGE_BYTES:
            raise DataError(
                "too_large", f"the message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}"
            )
        if not self._message_bucket.take(1) or not self._byte_bucket.take(size):
            raise DataError(
                "rate_limited",
                f"more than {MESSAGES_PER_SECOND:g} messages or {BYTES_PER_SECOND / 1024:g} KiB"
                " per second; the message was dropped",
            )
        envelope = parse_envelope(raw)
        stamped = self._stamp(envelope, reliable)
        sender = self.participant
        for other in sender.room.participants.values():
            if other is sender or other.data is None:
                continue
            wanted = envelope.destination_identities
            if wanted is not None and other.grant.identity not in wanted:
                continue
            other.data.deliver(stamped, reliable)
            self.messages_relayed += 1

    def _stamp(self, envelope: Envelope, reliable: bool) -> bytes | str:
        """The envelope receivers get: the sender as the server knows it."""
        participant = self.participant
        document: dict[str, Any] = {
            "type": "data",
            "from": {
                "participant_id": participant.id,
                "identity": participant.grant.identity,
                "name": participant.name,
            },
            "reliable": reliable,
        }
        if envelope.topic is not None:
            document["topic"] = envelope.topic
        if envelope.message_id is not None:
            document["id"] = envelope.message_id
        if envelope.payload is None:
            document["data"] = envelope.data
            return json.dumps(document, separators=(",", ":"))
        header = json.dumps(document, separators=(",", ":")).encode()
        return header + SEPARATOR + envelope.payload

    # --- outgoing -----------------------------------------------------------------

    def deliver(self, message: bytes | str, reliable: bool) -> None:
        """Send a stamped message to this participant (lossy falls back to reliable)."""
        channel = self._reliable if reliable else (self._lossy or self._reliable)
        if channel is None or channel.readyState != "open":
            self.messages_dropped += 1
            return
        limit = RELIABLE_BUFFER_LIMIT if _is_reliable(channel) else LOSSY_BUFFER_LIMIT
        if channel.bufferedAmount > limit:
            self.messages_dropped += 1
            if reliable and self.messages_dropped <= 10:
                logger.warning(
                    "participant %s reads data too slowly; dropped a reliable message",
                    self.participant.id,
                )
            return
        try:
            channel.send(message)
        except (ValueError, ConnectionError) as exc:
            self.messages_dropped += 1
            logger.info("data message to %s not sent: %s", self.participant.id, exc)

    def send_error(self, error: DataError) -> None:
        document = {"type": "error", "code": error.code, "message": error.message}
        if error.message_id is not None:
            document["id"] = error.message_id
        self.deliver(json.dumps(document, separators=(",", ":")), reliable=True)
