"""One UDP socket per worker address, shared by every ICE connection (a single-port mux).

aioice binds a socket per connection; here each :class:`aioice.Connection` instead gets
a :class:`MuxedStunProtocol` per worker address, an ordinary aioice ``StunProtocol``
whose transport is a view onto one shared socket. The socket's own protocol
(:class:`UdpMuxSocket`) routes what arrives (the RFC 7983 first-byte demux, then):

- a STUN request by its USERNAME: the part before the colon is our ufrag, which names
  the connection (RFC 8445 section 7.2.2). This also routes the checks of an ICE
  restart (a new ufrag) and of a second client behind the same address correctly.
- a STUN response by the transaction ID of the request the connection sent.
- anything else (DTLS, SRTP, SRTCP) by the remote address (host, port). An address
  belongs to a connection once aioice has answered an authenticated check from it
  (its password verified the MESSAGE-INTEGRITY; the latest such connection wins, as
  after an ICE restart), or, when no connection has it, once the connection sends
  non-STUN data to it (a pair aioice selected).

What no connection claims is dropped and counted in :attr:`UdpMux.drops` by reason
(``sfu_ice_dropped_packets_total{reason}``). Every table is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import Any

import aioice
import aioice.ice

from sfu.stun_header import (
    BINDING_REQUEST,
    BINDING_SUCCESS,
    HEADER_LENGTH,
    StunHeader,
)

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 16384
"""ICE connections (ufrags) one socket serves; gathering beyond fails."""
MAX_ADDRESSES_PER_CONNECTION = 8
"""Remote addresses one connection may own (one per remote candidate that was checked
successfully); the oldest is forgotten beyond."""
SOCKET_BUFFER_SIZE = 8 << 20
"""Bytes of the shared socket's receive and send buffers (the kernel doubles them, and
caps them at ``net.core.rmem_max``/``wmem_max`` without CAP_NET_ADMIN): one socket now
buffers what a socket per transport did, 256 KiB each (aioice's size), so a worker
that falls behind for a moment, or sends a key frame to every subscriber, does not
drop at the socket."""
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
MAX_TRANSACTIONS = 8192
"""Outstanding STUN requests one socket remembers for routing their responses."""
DROP_REASONS = (
    "unknown_address",
    "unknown_ufrag",
    "unknown_transaction",
    "malformed_stun",
    "tcp_queue_full",
)
"""Why a datagram was dropped: non-STUN from an address no connection owns; a STUN
request whose USERNAME names no connection (or has none); a STUN response to no
outstanding request; a STUN message (first byte 0-3) that does not parse; and, on the
ICE-TCP port (:mod:`sfu.ice_tcp`), a packet to a stream whose send queue is full."""

Address = tuple[str, int]


class _ConnectionView(asyncio.DatagramTransport):
    """What a :class:`MuxedStunProtocol` sees as its transport: the shared socket's
    ``sendto``, and a ``close`` that unregisters the connection instead of closing it."""

    def __init__(self, mux_socket: UdpMuxSocket, protocol: MuxedStunProtocol) -> None:
        super().__init__()
        self._socket = mux_socket
        self._protocol = protocol
        self._closed = False

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        if self._closed or self._socket.transport is None:
            return
        if len(data) >= HEADER_LENGTH and data[0] < 4:
            message_type = (data[0] << 8) | data[1]
            if message_type == BINDING_REQUEST:
                self._socket.expect_response(data[8:20], self._protocol)
            elif message_type == BINDING_SUCCESS:
                # aioice answers only a check whose MESSAGE-INTEGRITY it verified.
                self._socket.claim(addr, self._protocol)
        elif addr not in self._protocol.addresses:
            self._socket.claim(addr, self._protocol, take_over=False)
        self._socket.transport.sendto(data, addr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._socket.unregister(self._protocol)
        self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._socket.transport
        return transport.get_extra_info(name, default) if transport is not None else default


def udp_host_candidate(component: int, host: str, port: int) -> aioice.Candidate:
    """The UDP host candidate aioice would gather for ``host``:``port``."""
    return aioice.Candidate(
        foundation=aioice.ice.candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=aioice.ice.candidate_priority(component, "host"),
        host=host,
        port=port,
        type="host",
    )


class MuxedStunProtocol(aioice.ice.StunProtocol):
    """aioice's STUN protocol for one connection on a shared socket."""

    def __init__(self, connection: aioice.Connection, ufrag: str) -> None:
        super().__init__(connection)
        self.ufrag = ufrag
        self.addresses: dict[Address, None] = {}
        """Remote addresses routed to this protocol, oldest first."""


class UdpMuxSocket(asyncio.DatagramProtocol):
    """One shared UDP socket and its routing tables."""

    def __init__(self, drops: collections.Counter[str]) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._drops = drops
        self._by_ufrag: dict[str, MuxedStunProtocol] = {}
        self._by_address: dict[Address, MuxedStunProtocol] = {}
        self._transactions: dict[bytes, MuxedStunProtocol] = {}
        self._ipv4 = True

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._ipv4 = sock.family == socket.AF_INET
        for forced, plain in (
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:  # beyond net.core.rmem_max/wmem_max, which needs CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER_SIZE)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_SIZE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for protocol in list(self._by_ufrag.values()):
            protocol.transport.close()

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier send: nothing to route it to."""

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        key: Address = addr if self._ipv4 else addr[:2]  # type: ignore[assignment]
        if data and data[0] > 3:
            protocol = self._by_address.get(key)
            if protocol is None:
                self._drops["unknown_address"] += 1
                return
            protocol.datagram_received(data, addr)
            return
        try:
            header = StunHeader.parse(data)
        except ValueError:
            self._drops["malformed_stun"] += 1
            return
        if header.is_request:
            ufrag = header.local_ufrag
            protocol = self._by_ufrag.get(ufrag) if ufrag is not None else None
            if protocol is None:
                self._drops["unknown_ufrag"] += 1
                return
        elif header.is_response:
            protocol = self._transactions.pop(header.transaction_id, None)
            if protocol is None:
                protocol = self._by_address.get(key)
            if protocol is None:
                self._drops["unknown_transaction"] += 1
                return
        else:  # an indication (a keepalive): for the address's owner, if any
            protocol = self._by_address.get(key)
            if protocol is None:
                self._drops["unknown_address"] += 1
                return
        protocol.datagram_received(data, addr)

    # --- the tables ------------------------------------------------------------------

    @property
    def sockname(self) -> tuple[str, int]:
        if self.transport is None:
            raise ConnectionError("the shared UDP socket is closed")
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def has_ufrag(self, ufrag: str) -> bool:
        return ufrag in self._by_ufrag

    def register(self, connection: aioice.Connection, component: int) -> MuxedStunProtocol:
        """A protocol for ``connection`` on this socket, routed by its local ufrag."""
        if self.transport is None:
            raise ConnectionError("the shared UDP socket is closed")
        if len(self._by_ufrag) >= MAX_CONNECTIONS:
            raise ConnectionError(f"the shared UDP socket serves {MAX_CONNECTIONS} connections")
        ufrag = connection.local_username
        if ufrag in self._by_ufrag:
            raise ValueError(f"ufrag {ufrag!r} is already registered")
        protocol = MuxedStunProtocol(connection, ufrag)
        protocol.connection_made(_ConnectionView(self, protocol))
        host, port = self.sockname
        protocol.local_candidate = udp_host_candidate(component, host, port)
        self._by_ufrag[ufrag] = protocol
        return protocol

    def unregister(self, protocol: MuxedStunProtocol) -> None:
        if self._by_ufrag.get(protocol.ufrag) is protocol:
            del self._by_ufrag[protocol.ufrag]
        for address in protocol.addresses:
            if self._by_address.get(address) is protocol:
                del self._by_address[address]
        protocol.addresses.clear()
        stale = [tid for tid, owner in self._transactions.items() if owner is protocol]
        for transaction_id in stale:
            del self._transactions[transaction_id]

    def claim(
        self, addr: tuple[Any, ...], protocol: MuxedStunProtocol, take_over: bool = True
    ) -> None:
        """Route datagrams from ``addr`` to ``protocol``; with ``take_over``, also when
        another connection has it."""
        address: Address = (addr[0], addr[1])
        previous = self._by_address.get(address)
        if previous is protocol or (previous is not None and not take_over):
            return
        if previous is not None:
            previous.addresses.pop(address, None)
        if len(protocol.addresses) >= MAX_ADDRESSES_PER_CONNECTION:
            oldest = next(iter(protocol.addresses))
            del protocol.addresses[oldest]
            if self._by_address.get(oldest) is protocol:
                del self._by_address[oldest]
        protocol.addresses[address] = None
        self._by_address[address] = protocol

    def expect_response(self, transaction_id: bytes, protocol: MuxedStunProtocol) -> None:
        if transaction_id not in self._transactions and len(self._transactions) >= MAX_TRANSACTIONS:
            del self._transactions[next(iter(self._transactions))]
        self._transactions[transaction_id] = protocol

    def table_sizes(self) -> tuple[int, int, int]:
        """(ufrags, addresses, outstanding transactions): what the tests check is freed."""
        return len(self._by_ufrag), len(self._by_address), len(self._transactions)


class UdpMux:
    """The worker's shared UDP sockets: one per ICE address, all on one port."""

    def __init__(self, addresses: list[str], port: int = 0) -> None:
        if not 0 <= port < 65536:
            raise ValueError(f"bad UDP port {port}")
        self.addresses = list(dict.fromkeys(addresses))
        self.requested_port = port
        self.sockets: list[UdpMuxSocket] = []
        self.drops: collections.Counter[str] = collections.Counter()

    @property
    def port(self) -> int:
        return self.sockets[0].sockname[1] if self.sockets else self.requested_port

    async def start(self) -> None:
        """Bind every address on the port; port 0 takes a free one for the first address
        and the same for the others. Raises OSError when the port is taken."""
        loop = asyncio.get_running_loop()
        port = self.requested_port
        for address in self.addresses:
            try:
                _, mux_socket = await loop.create_datagram_endpoint(
                    lambda: UdpMuxSocket(self.drops), local_addr=(address, port)
                )
            except OSError as exc:
                self.close()
                raise OSError(f"cannot bind UDP port {port} on {address}: {exc}") from exc
            self.sockets.append(mux_socket)
            port = mux_socket.sockname[1]
        logger.info("ICE over UDP on port %d of %s", port, ", ".join(self.addresses))

    def has_ufrag(self, ufrag: str) -> bool:
        return any(s.has_ufrag(ufrag) for s in self.sockets)

    def candidates(self, connection: aioice.Connection, component: int) -> list[aioice.Candidate]:
        """Register ``connection`` on every socket; its host candidates."""
        protocols = [s.register(connection, component) for s in self.sockets]
        connection._protocols.extend(protocols)
        return [p.local_candidate for p in protocols]

    def close(self) -> None:
        for mux_socket in self.sockets:
            if mux_socket.transport is not None:
                mux_socket.transport.close()
        self.sockets.clear()
