"""ICE-TCP: passive TCP host candidates (RFC 6544) on one TCP port per worker.

A client whose UDP is blocked connects to the worker's TCP port (its ``tcptype
active`` candidate) and sends its connectivity checks over the stream, each packet
framed by a 2-byte length (RFC 4571). The first frame must be a STUN binding request
whose USERNAME names one of our ICE connections (RFC 6544 section 7.2: the passive side
learns the stream's connection from it); from then on every frame of the stream goes to
that connection's :class:`TcpStunProtocol`, an aioice ``StunProtocol`` whose transport
writes framed packets onto the stream. The stream's remote address becomes a
peer-reflexive candidate in aioice, as with UDP.

TCP candidates get a lower type preference than UDP host candidates (RFC 6544 section
4.2), so UDP wins whenever it works.

Bounds: frames longer than :data:`MAX_FRAME` (or empty) close the stream; so does a
stream whose first frame is not such a request, one that does not complete its first
frame within :data:`FIRST_FRAME_TIMEOUT`, one that leaves a frame incomplete for
:data:`INCOMPLETE_FRAME_TIMEOUT`, and one silent for :data:`IDLE_TIMEOUT` (consent
checks, RFC 7675, arrive every few seconds). :data:`MAX_CONNECTIONS_PER_IP` streams from
one address, :data:`MAX_CONNECTIONS` in all. Each closed stream is counted by reason in
:attr:`IceTcpServer.closes`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from typing import Any

import aioice
import aioice.ice

from sfu.stun_header import StunHeader

logger = logging.getLogger(__name__)

MAX_FRAME = 4096
"""Longest RFC 4571 frame accepted: a STUN, DTLS or SRTP packet is at most an MTU."""
FIRST_FRAME_TIMEOUT = 5.0
"""Seconds from accept to a complete first frame (the STUN request)."""
INCOMPLETE_FRAME_TIMEOUT = 5.0
"""Seconds a frame may stay incomplete."""
IDLE_TIMEOUT = 30.0
"""Seconds without a frame after which an established stream is closed."""
MAX_CONNECTIONS_PER_IP = 16
MAX_CONNECTIONS = 4096
MAX_STREAMS_PER_CONNECTION = 4
"""Streams one ICE connection may hold (a client opens one per local interface)."""
MAX_WRITE_BUFFER = 1 << 20
"""Bytes queued on a stream beyond which packets to it are dropped (media tolerates
loss; an unbounded buffer does not)."""
TCP_HOST_TYPE_PREFERENCE = 90
"""RFC 6544 section 4.2 type preference of a TCP host candidate: below UDP's 126
(libwebrtc uses the same 90)."""
PASSIVE_DIRECTION_PREFERENCE = 4
"""RFC 6544 section 4.2: host candidates, passive."""
CLOSE_REASONS = (
    "bad_frame_length",
    "unknown_ufrag",
    "malformed_stun",
    "timeout",
    "per_ip_limit",
    "connection_limit",
)
_LENGTH = struct.Struct("!H")

Address = tuple[str, int]


def tcp_candidate_priority(component: int) -> int:
    """RFC 6544 section 4.2: (2^24) type pref + (2^8) local pref + (256 - component),
    local pref = (2^13) direction pref + other pref."""
    local_preference = (PASSIVE_DIRECTION_PREFERENCE << 13) | 0x1FFF
    return (TCP_HOST_TYPE_PREFERENCE << 24) + (local_preference << 8) + (256 - component)


class FrameError(ValueError):
    """An RFC 4571 length out of bounds."""


class Rfc4571Framer:
    """Splits a byte stream into RFC 4571 frames (sans-I/O)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Whether part of a frame is buffered."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames ``data`` completes; raises FrameError for an empty or too long
        frame (the stream cannot be resynchronised after it)."""
        buffer = self._buffer
        buffer += data
        frames = []
        offset = 0
        while len(buffer) - offset >= 2:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if not 0 < length <= self._max_frame:
                raise FrameError(f"RFC 4571 frame of {length} bytes (1-{self._max_frame})")
            if len(buffer) - offset - 2 < length:
                break
            frames.append(bytes(buffer[offset + 2 : offset + 2 + length]))
            offset += 2 + length
        del buffer[:offset]
        return frames


def frame(data: bytes) -> bytes:
    if not 0 < len(data) <= 0xFFFF:
        raise FrameError(f"cannot frame {len(data)} bytes")
    return _LENGTH.pack(len(data)) + data


class _PassiveCandidate(aioice.Candidate):
    """A passive TCP candidate pairs with nothing signalled: its pairs come from the
    checks that arrive over a stream (peer-reflexive remote candidates)."""

    def can_pair_with(self, other: aioice.Candidate) -> bool:
        return False


class _StreamsView(asyncio.DatagramTransport):
    """A :class:`TcpStunProtocol`'s transport: ``sendto`` writes a frame on the stream
    from ``addr``; ``close`` closes every stream and unregisters the connection."""

    def __init__(self, listener: TcpListener, protocol: TcpStunProtocol) -> None:
        super().__init__()
        self._listener = listener
        self._protocol = protocol
        self._closed = False

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        stream = self._protocol.streams.get((addr[0], addr[1]))
        if stream is not None:
            stream.send(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._listener.unregister(self._protocol)
        for stream in list(self._protocol.streams.values()):
            stream.close()
        self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: the adapter sends through sendto, never sendmmsg


class TcpStunProtocol(aioice.ice.StunProtocol):
    """aioice's STUN protocol for one connection's TCP streams on one listener."""

    def __init__(self, connection: aioice.Connection, ufrag: str) -> None:
        super().__init__(connection)
        self.ufrag = ufrag
        self.streams: dict[Address, IceTcpStream] = {}


class IceTcpStream(asyncio.Protocol):
    """One accepted TCP connection: framing, timeouts, routing to its ICE connection."""

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._framer = Rfc4571Framer()
        self._transport: asyncio.Transport | None = None
        self._peer: Address = ("", 0)
        self._owner: TcpStunProtocol | None = None
        self._accepted = 0.0
        self._last_frame = 0.0
        self._partial_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = (peer[0], peer[1])
        now = time.monotonic()
        self._accepted = self._last_frame = now
        reason = self._listener.server.admit(self._peer[0])
        if reason is not None:
            self._close(reason)
            return
        self._counted = True
        self._arm(now + FIRST_FRAME_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._framer.feed(data)
        except FrameError:
            self._close("bad_frame_length")
            return
        now = time.monotonic()
        if frames:
            self._last_frame = now
        if self._framer.pending:
            if self._partial_since is None or frames:
                self._partial_since = now
        else:
            self._partial_since = None
        for packet in frames:
            if self._transport is None or self._transport.is_closing():
                return
            owner = self._owner
            if owner is None:
                owner = self._attach(packet)
                if owner is None:
                    return
            owner.datagram_received(packet, self._peer)

    def _attach(self, packet: bytes) -> TcpStunProtocol | None:
        try:
            header = StunHeader.parse(packet)
        except ValueError:
            self._close("malformed_stun")
            return None
        ufrag = header.local_ufrag if header.is_request else None
        owner = self._listener.lookup(ufrag) if ufrag is not None else None
        if owner is None:
            self._close("unknown_ufrag")
            return None
        if len(owner.streams) >= MAX_STREAMS_PER_CONNECTION:
            self._close("connection_limit")
            return None
        previous = owner.streams.get(self._peer)
        if previous is not None:
            previous.close()
        owner.streams[self._peer] = self
        self._owner = owner
        return owner

    def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER or not 0 < len(data) <= 0xFFFF:
            self._listener.server.dropped_sends += 1
            return
        transport.write(frame(data))

    def _deadline(self) -> float:
        if self._owner is None:
            deadline = self._accepted + FIRST_FRAME_TIMEOUT
        else:
            deadline = self._last_frame + IDLE_TIMEOUT
        if self._partial_since is not None:
            deadline = min(deadline, self._partial_since + INCOMPLETE_FRAME_TIMEOUT)
        return deadline

    def _arm(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if time.monotonic() >= deadline:
            self._close("timeout")
        else:
            self._arm(deadline)

    def _close(self, reason: str) -> None:
        self._listener.server.closes[reason] += 1
        logger.debug("ICE-TCP stream from %s closed: %s", self._peer, reason)
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._listener.server.release(self._peer[0])
        owner = self._owner
        if owner is not None and owner.streams.get(self._peer) is self:
            del owner.streams[self._peer]
        self._owner = None
        self._transport = None


class TcpListener:
    """One listening socket (one ICE address) and the ufrags it routes."""

    def __init__(self, server: IceTcpServer, address: str) -> None:
        self.server = server
        self.address = address
        self.port = 0
        self._asyncio_server: asyncio.Server | None = None
        self._by_ufrag: dict[str, TcpStunProtocol] = {}

    async def start(self, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._asyncio_server = await loop.create_server(
            lambda: IceTcpStream(self), host=self.address, port=port, reuse_address=True
        )
        self.port = self._asyncio_server.sockets[0].getsockname()[1]
        return self.port

    def lookup(self, ufrag: str) -> TcpStunProtocol | None:
        return self._by_ufrag.get(ufrag)

    def has_ufrag(self, ufrag: str) -> bool:
        return ufrag in self._by_ufrag

    def register(self, connection: aioice.Connection, component: int) -> TcpStunProtocol:
        if len(self._by_ufrag) >= MAX_CONNECTIONS:
            raise ConnectionError(f"the ICE-TCP listener serves {MAX_CONNECTIONS} connections")
        ufrag = connection.local_username
        if ufrag in self._by_ufrag:
            raise ValueError(f"ufrag {ufrag!r} is already registered")
        protocol = TcpStunProtocol(connection, ufrag)
        protocol.connection_made(_StreamsView(self, protocol))
        protocol.local_candidate = _PassiveCandidate(
            foundation=aioice.ice.candidate_foundation("host", "tcp", self.address),
            component=component,
            transport="tcp",
            priority=tcp_candidate_priority(component),
            host=self.address,
            port=self.port,
            type="host",
            tcptype="passive",
        )
        self._by_ufrag[ufrag] = protocol
        return protocol

    def unregister(self, protocol: TcpStunProtocol) -> None:
        if self._by_ufrag.get(protocol.ufrag) is protocol:
            del self._by_ufrag[protocol.ufrag]

    def close(self) -> None:
        for protocol in list(self._by_ufrag.values()):
            protocol.transport.close()
        if self._asyncio_server is not None:
            self._asyncio_server.close()
            self._asyncio_server = None


class IceTcpServer:
    """The worker's ICE-TCP port: one listener per ICE address, all on one port."""

    def __init__(self, addresses: list[str], port: int = 0) -> None:
        if not 0 <= port < 65536:
            raise ValueError(f"bad TCP port {port}")
        self.addresses = list(dict.fromkeys(addresses))
        self.requested_port = port
        self.listeners: list[TcpListener] = []
        self.closes: collections.Counter[str] = collections.Counter()
        """Streams closed by the server, by reason (see :data:`CLOSE_REASONS`)."""
        self._per_ip: collections.Counter[str] = collections.Counter()
        self.connections = 0
        """Streams open now."""
        self.dropped_sends = 0
        """Packets not written because their stream had :data:`MAX_WRITE_BUFFER` queued."""

    @property
    def port(self) -> int:
        return self.listeners[0].port if self.listeners else self.requested_port

    async def start(self) -> None:
        port = self.requested_port
        for address in self.addresses:
            listener = TcpListener(self, address)
            try:
                port = await listener.start(port)
            except OSError as exc:
                self.close()
                raise OSError(f"cannot listen on TCP port {port} of {address}: {exc}") from exc
            self.listeners.append(listener)
        logger.info("ICE over TCP on port %d of %s", port, ", ".join(self.addresses))

    def admit(self, ip: str) -> str | None:
        """Count a new stream from ``ip``; the reason to refuse it, or None."""
        if self._per_ip[ip] >= MAX_CONNECTIONS_PER_IP:
            return "per_ip_limit"
        if self.connections >= MAX_CONNECTIONS:
            return "connection_limit"
        self._per_ip[ip] += 1
        self.connections += 1
        return None

    def release(self, ip: str) -> None:
        self.connections -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def has_ufrag(self, ufrag: str) -> bool:
        return any(listener.has_ufrag(ufrag) for listener in self.listeners)

    def candidates(self, connection: aioice.Connection, component: int) -> list[aioice.Candidate]:
        protocols = [listener.register(connection, component) for listener in self.listeners]
        connection._protocols.extend(protocols)
        return [p.local_candidate for p in protocols]

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
