"""Data messages: the client's end of the server's data channel relay.

The client opens two SCTP data channels on its publish peer connection: an ordered,
reliable one (chat, control) and an unordered one without retransmissions (state
updates where only the latest value matters). The server stamps every message with
the sender it authenticated, relays it to the room or to chosen identities, and answers
a message it refuses (too large, rate limited, malformed) with an error on the
reliable channel; see :mod:`sfu.data_channel` for the wire format.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection

from sfu.client.errors import CONNECTION_CLOSED, SfuError

logger = logging.getLogger(__name__)

RELIABLE_LABEL = "reliable"
LOSSY_LABEL = "lossy"
MAX_BUFFERED_MESSAGES = 1024
"""Received messages (and errors) kept for :meth:`DataLink.recv`; older ones are dropped."""
NOT_ENABLED = "data_not_enabled"
"""Client-side code: this client has no data channels (no publish grant, or
``connect(..., data=False)``)."""
OPEN_TIMEOUT = 10.0

_SEPARATOR = b"\x00"


@dataclass(frozen=True)
class DataMessage:
    """A message another participant sent, as relayed by the server."""

    participant_id: str
    identity: str
    """The sender's identity from its access token: set by the server, not the sender."""
    name: str
    data: Any
    """The JSON value sent, or ``bytes`` for a binary message."""
    topic: str | None
    reliable: bool
    id: str | None


@dataclass(frozen=True)
class DataError:
    """The server refused one of this client's messages (it was not relayed)."""

    code: str
    """``too_large``, ``rate_limited``, ``bad_message`` or ``bad_json``."""
    message: str
    id: str | None
    """The ``id`` given to :meth:`DataLink.send`, when the server could read it."""


class _Mailbox:
    """A bounded list of items with waiters that can pick by predicate."""

    def __init__(self) -> None:
        self.items: deque[Any] = deque(maxlen=MAX_BUFFERED_MESSAGES)
        self._changed = asyncio.Event()

    def put(self, item: Any) -> None:
        self.items.append(item)
        self.wake()

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self) -> None:
        await self._changed.wait()


class DataLink:
    """Send and receive data messages; ``room.data`` of a :class:`RoomClient`."""

    def __init__(self) -> None:
        self._reliable: RTCDataChannel | None = None
        self._lossy: RTCDataChannel | None = None
        self._messages = _Mailbox()
        self._errors = _Mailbox()
        self._opened = asyncio.Event()
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._reliable is not None

    def attach(self, pc: RTCPeerConnection) -> None:
        """Create the two channels on ``pc`` (before its offer is made)."""
        self._reliable = pc.createDataChannel(RELIABLE_LABEL)
        self._lossy = pc.createDataChannel(LOSSY_LABEL, ordered=False, maxRetransmits=0)
        for channel in (self._reliable, self._lossy):
            channel.on("message", self._on_message)
        self._reliable.on("close", self.close)

    async def send(
        self,
        data: Any,
        *,
        reliable: bool = True,
        topic: str | None = None,
        destination_identities: Iterable[str] | None = None,
        id: str | None = None,
    ) -> None:
        """Send ``data`` (a JSON-serializable value, or ``bytes``) to the room.

        ``destination_identities`` limits delivery to those participants.
        ``reliable=False`` uses the unordered channel without retransmissions. Waits
        until the channel is open; a message the server refuses comes back as a
        :class:`DataError` (see :meth:`next_error`), with ``id`` if given.
        """
        envelope: dict[str, Any] = {"type": "data"}
        if topic is not None:
            envelope["topic"] = topic
        if destination_identities is not None:
            envelope["destination_identities"] = list(destination_identities)
        if id is not None:
            envelope["id"] = id
        message: str | bytes
        if isinstance(data, bytes | bytearray | memoryview):
            message = json.dumps(envelope).encode() + _SEPARATOR + bytes(data)
        else:
            envelope["data"] = data
            message = json.dumps(envelope, separators=(",", ":"))
        await self.wait_open()
        channel = self._reliable if reliable else self._lossy
        assert channel is not None
        channel.send(message)

    async def wait_open(self, timeout: float | None = OPEN_TIMEOUT) -> None:
        """Wait until the server has the channels (its ``ready`` message): from then on
        this client receives the room's messages. Raises :class:`SfuError`."""
        if self._reliable is None:
            raise SfuError(NOT_ENABLED, "this client has no data channels")
        try:
            await asyncio.wait_for(self._opened.wait(), timeout)
        except TimeoutError:
            raise SfuError(CONNECTION_CLOSED, "the data channel did not open") from None
        self._raise_if_closed()

    async def recv(self, *, topic: str | None = None, timeout: float | None = 10.0) -> DataMessage:
        """Remove and return the oldest received message (on ``topic`` if given).

        Raises :class:`TimeoutError`, or :class:`SfuError` once the client is closed
        and nothing matching is left.
        """
        return await self._take(
            self._messages, lambda m: topic is None or m.topic == topic, timeout
        )

    async def next_error(self, *, timeout: float | None = 10.0) -> DataError:
        """Remove and return the oldest error the server sent about this client's messages."""
        return await self._take(self._errors, lambda _: True, timeout)

    async def __aiter__(self) -> AsyncIterator[DataMessage]:
        """Every received message in order, until the client closes."""
        while True:
            try:
                yield await self.recv(timeout=None)
            except SfuError:
                return

    def close(self) -> None:
        """Stop: waiters get :class:`SfuError` once nothing is left to read."""
        self._closed = True
        self._opened.set()  # wakes wait_open, which then raises
        self._messages.wake()
        self._errors.wake()

    async def _take(self, box: _Mailbox, predicate: Any, timeout: float | None) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for item in box.items:
                    if predicate(item):
                        box.items.remove(item)
                        return item
                self._raise_if_closed()
                await box.wait()

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise SfuError(CONNECTION_CLOSED, "the data channel is closed")

    def _on_message(self, raw: str | bytes) -> None:
        payload: bytes | None = None
        try:
            if isinstance(raw, bytes):
                header, _, payload = raw.partition(_SEPARATOR)
                document = json.loads(header)
            else:
                document = json.loads(raw)
            kind = document["type"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable data message %.200r", raw)
            return
        if kind == "ready":
            self._opened.set()
            return
        if kind == "error":
            self._errors.put(
                DataError(
                    str(document.get("code")), str(document.get("message")), document.get("id")
                )
            )
            return
        sender = document.get("from") or {}
        self._messages.put(
            DataMessage(
                participant_id=str(sender.get("participant_id")),
                identity=str(sender.get("identity")),
                name=str(sender.get("name")),
                data=payload if payload is not None else document.get("data"),
                topic=document.get("topic"),
                reliable=bool(document.get("reliable", True)),
                id=document.get("id"),
            )
        )
