"""The one place where the SFU reaches into aiortc's and aioice's private seams.

aiortc gives the standards work (ICE through aioice, DTLS-SRTP keying, SRTP through
pylibsrtp) but its packet path parses every packet into objects and routes by
payload type, which an SFU cannot use. This module keeps aiortc's handshake and
replaces its packet path:

- ``DtlsSrtpSession.start`` runs aiortc's ICE and DTLS handshakes, then hooks aioice's
  ``Connection.data_received`` so SRTP/SRTCP datagrams are unprotected and handed to
  the SFU synchronously from the socket callback (no queue, no await per packet); DTLS
  records still go through aiortc's queue.
- RTP is protected and sent in batches, one ``sendmmsg`` per transport and event-loop
  iteration (:mod:`sfu.send_batch`) on a duplicate of the nominated pair's socket, or
  on the worker's shared socket itself (:class:`SharedPorts`: the single UDP port of
  :mod:`sfu.udp_mux`); RTCP, and everything over a TURN relay or ICE-TCP
  (:mod:`sfu.ice_tcp`), goes through the pair's transport.

Everything private that is touched is listed in :data:`PRIVATE_SEAMS` and checked by
``tests/test_aiortc_adapter.py`` so an aiortc or aioice upgrade that moves them fails
loudly instead of silently dropping media. The dependency range is pinned in
pyproject.toml for the same reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aioice
import aioice.ice
import aioice.turn
import pylibsrtp
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceParameters, RTCIceTransport
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from sfu.ice_tcp import IceTcpServer
from sfu.send_batch import SendBatch, flush_scheduler
from sfu.udp_mux import MuxedStunProtocol, UdpMux, udp_host_candidate

logger = logging.getLogger(__name__)

PRIVATE_SEAMS: tuple[tuple[type, str], ...] = (
    (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_handle_rtcp_data"),
    (RTCDtlsTransport, "_set_role"),
    (aioice.Connection, "data_received"),
    (aioice.Connection, "get_component_candidates"),
    (aioice.ice.StunProtocol, "datagram_received"),
    (aioice.ice.StunProtocol, "connection_lost"),
    (aioice.Connection, "protocol_lost"),
    (aioice.Connection, "request_received"),
)
"""Private methods this module (with :mod:`sfu.udp_mux` and :mod:`sfu.ice_tcp`, which
subclass ``StunProtocol`` over a shared socket) overrides or calls."""

PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (RTCIceGatherer, "_connection"),
    (aioice.Connection, "_nominated"),
    (aioice.Connection, "_queue"),
    (aioice.Connection, "_protocols"),
    (aioice.Connection, "_local_username"),
    (RTCDtlsTransport, "_rx_srtp"),
    (RTCDtlsTransport, "_tx_srtp"),
    (pylibsrtp.Session, "_srtp"),
)
"""Private instance attributes read (``Connection._local_username`` is written, to make
a ufrag unique on the shared ports; ``Session._srtp``, here and in :mod:`sfu.send_batch`,
is libsrtp's context, called through pylibsrtp's ``_binding`` module).
``tests/test_private_seams.py`` checks every name of this module, of
:mod:`sfu.client._aiortc` and of :mod:`sfu.app.http_server` on the installed versions."""

PRIVATE_FUNCTIONS: tuple[str, ...] = (
    "random_string",
    "candidate_foundation",
    "candidate_priority",
    "get_host_addresses",
)
"""Module-level names of ``aioice.ice`` this module and the shared ports call (or, for
``get_host_addresses``, replace)."""

RECEIVE_BUFFER_SIZE = 2048
"""Longest SRTP packet the fast path unprotects; longer ones are counted as errors."""

RtpHandler = Callable[[bytes], None]


def use_host_addresses(addresses: Sequence[str]) -> None:
    """Gather ICE host candidates on exactly these addresses, process-wide.

    aioice enumerates interfaces itself and skips 127.0.0.1; it has no option for a
    fixed list, so its module-level ``get_host_addresses`` is replaced.
    """
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


_port_range: tuple[int, int] | None = None


def use_port_range(port_range: tuple[int, int] | None) -> None:
    """Bind every transport's UDP socket to a port in ``[low, high]``, process-wide.

    Operators open (or map, in Kubernetes and Docker) a fixed UDP range; aioice binds
    port 0 and has no option for a range. ``None`` goes back to any free port.
    """
    global _port_range
    if port_range is not None and not 0 < port_range[0] <= port_range[1] < 65536:
        raise ValueError(f"bad UDP port range {port_range}")
    _port_range = port_range


async def _host_candidates_in_range(
    connection: aioice.Connection,
    ports: tuple[int, int],
    component: int,
    addresses: list[str],
    timeout: int = 5,
) -> list[aioice.Candidate]:
    """aioice's ``get_component_candidates`` for a server without STUN/TURN servers,
    binding within ``ports`` (from a random start, so that transports rarely race for
    one port). An address with no free port left gets no candidate."""
    loop = asyncio.get_running_loop()
    low, high = ports
    size = high - low + 1
    candidates = []
    for address in addresses:
        start = random.randrange(size)
        for offset in range(size):
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: aioice.ice.StunProtocol(connection),
                    local_addr=(address, low + (start + offset) % size),
                )
            except OSError:
                continue
            break
        else:
            logger.warning("no free UDP port in %d-%d on %s", low, high, address)
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
        host, port = transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = udp_host_candidate(component, host, port)
        connection._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates


def default_host_addresses() -> list[str]:
    """Every interface address aioice would use (global IPv6 ones included), plus
    127.0.0.1 for local demos."""
    return [*aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True), "127.0.0.1"]


UFRAG_ATTEMPTS = 16
"""Fresh ufrags tried for a connection before the shared ports give up: aioice's
4-character ufrags collide about once per 30 connections among 1,000."""


class SharedPorts:
    """The worker's single UDP port (:class:`~sfu.udp_mux.UdpMux`, or None for a
    socket per transport) and its ICE-TCP port (:class:`~sfu.ice_tcp.IceTcpServer`,
    or None), shared by every transport: the ufrag routes checks to connections, so it
    is made unique across both here."""

    def __init__(self, udp: UdpMux | None, tcp: IceTcpServer | None) -> None:
        self.udp = udp
        self.tcp = tcp

    def _taken(self, ufrag: str) -> bool:
        return bool(
            (self.udp is not None and self.udp.has_ufrag(ufrag))
            or (self.tcp is not None and self.tcp.has_ufrag(ufrag))
        )

    async def candidates(
        self,
        connection: aioice.Connection,
        component: int,
        addresses: list[str],
        timeout: int = 5,
    ) -> list[aioice.Candidate]:
        """``Connection.get_component_candidates`` on the shared ports."""
        for _ in range(UFRAG_ATTEMPTS):
            if not self._taken(connection.local_username):
                break
            connection._local_username = aioice.ice.random_string(4)
        else:
            raise ConnectionError("no free ICE ufrag on the shared ports")
        if self.udp is not None:
            candidates = self.udp.candidates(connection, component)
        elif _port_range is not None:
            candidates = await _host_candidates_in_range(
                connection, _port_range, component, addresses, timeout
            )
        else:
            candidates = await aioice.Connection.get_component_candidates(
                connection, component, addresses, timeout
            )
        if self.tcp is not None:
            candidates += self.tcp.candidates(connection, component)
        return candidates

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


@dataclass(frozen=True)
class RemoteParameters:
    """What the remote SDP says about its end of the transport."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    setup: str | None
    ice_lite: bool = False


class _SfuDtlsTransport(RTCDtlsTransport):
    """aiortc's DTLS transport with its RTP/RTCP routing replaced by two callbacks.

    Only packets that arrive between the end of the handshake and the installation of
    the fast path (see :meth:`DtlsSrtpSession._install_fast_path`) come through here.
    """

    on_rtp: RtpHandler
    on_rtcp: RtpHandler

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        self.on_rtp(data)

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self.on_rtcp(data)


class DtlsSrtpSession:
    """ICE + DTLS + SRTP for one transport, with a synchronous packet path.

    ``ice_controlling`` is True when the SFU made the offer (subscribe transports).
    """

    def __init__(
        self,
        certificate: RTCCertificate,
        ice_controlling: bool,
        on_rtp: RtpHandler,
        on_rtcp: RtpHandler,
        on_error: Callable[[Exception], None],
        ports: SharedPorts | None = None,
    ) -> None:
        self._gatherer = RTCIceGatherer(iceServers=[])
        self._connection: aioice.Connection = self._gatherer._connection
        self._connection.ice_controlling = ice_controlling
        if ports is not None:
            self._connection.get_component_candidates = functools.partial(  # type: ignore[method-assign]
                ports.candidates, self._connection
            )
        elif _port_range is not None:
            self._connection.get_component_candidates = functools.partial(  # type: ignore[method-assign]
                _host_candidates_in_range, self._connection, _port_range
            )
        self._ice = RTCIceTransport(self._gatherer)
        self._dtls = _SfuDtlsTransport(self._ice, [certificate])
        self._dtls.on_rtp = on_rtp
        self._dtls.on_rtcp = on_rtcp
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._on_error = on_error
        self._certificate = certificate
        self._rx_srtp: pylibsrtp.Session | None = None
        self._tx_srtp: pylibsrtp.Session | None = None
        self._sendto: Callable[[bytes, tuple[str, int]], None] | None = None
        self._batch: SendBatch | None = None
        self._remote_addr: tuple[str, int] = ("", 0)
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.srtp_errors = 0
        self._sendto_errors = 0

    # --- negotiation ------------------------------------------------------------

    async def gather(self) -> None:
        await self._gatherer.gather()

    @property
    def ice_ufrag(self) -> str:
        return self._connection.local_username

    @property
    def ice_pwd(self) -> str:
        return self._connection.local_password

    def local_candidates(self) -> list[aioice.Candidate]:
        return list(self._connection.local_candidates)

    def fingerprints(self) -> list[tuple[str, str]]:
        return [(f.algorithm, f.value) for f in self._certificate.getFingerprints()]

    async def add_remote_candidate(self, candidate: aioice.Candidate | None) -> None:
        await self._connection.add_remote_candidate(candidate)

    async def start(self, remote: RemoteParameters) -> None:
        """Run ICE then DTLS; returns once SRTP flows or raises ConnectionError."""
        # The SFU is the DTLS server unless the remote end insists on being passive.
        self._dtls._set_role("client" if remote.setup == "passive" else "server")
        await self._ice.start(
            RTCIceParameters(
                usernameFragment=remote.ice_ufrag,
                password=remote.ice_pwd,
                iceLite=remote.ice_lite,
            )
        )
        if self._ice.state != "completed":
            raise ConnectionError("ICE failed")
        self._dtls.on("statechange", self._on_dtls_state)
        await self._dtls.start(
            RTCDtlsParameters(
                fingerprints=[
                    RTCDtlsFingerprint(algorithm=a, value=v) for a, v in remote.fingerprints
                ]
            )
        )
        if self._dtls.state != "connected":
            raise ConnectionError(f"DTLS {self._dtls.state}")
        self._install_fast_path()
        self.connected.set()

    def _on_dtls_state(self) -> None:
        if self._dtls.state in ("closed", "failed"):
            self._stop_sending()
            self.closed.set()

    def _stop_sending(self) -> None:
        self._sendto = None
        if self._batch is not None:
            self._batch.close()

    def _install_fast_path(self) -> None:
        self._rx_srtp = self._dtls._rx_srtp
        self._tx_srtp = self._dtls._tx_srtp
        pair = self._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("no nominated ICE pair")
        protocol = pair.protocol
        datagram_transport = getattr(protocol, "transport", None)
        if pair.local_candidate.transport == "tcp":
            # ICE-TCP: each packet is framed onto the stream (sfu.ice_tcp).
            self._sendto = datagram_transport.sendto
        elif isinstance(protocol, aioice.ice.StunProtocol) and datagram_transport is not None:
            self._sendto = datagram_transport.sendto
            self._batch = SendBatch(
                datagram_transport.get_extra_info("socket").fileno(),
                pair.remote_addr,
                self._tx_srtp,
                flush_scheduler(),
                duplicate=not isinstance(protocol, MuxedStunProtocol),
            )
        else:
            # A TURN relay wraps each datagram; its send is a coroutine.
            pending: set[asyncio.Task[None]] = set()

            def relay_sendto(data: bytes, addr: tuple[str, int]) -> None:
                task = asyncio.ensure_future(protocol.send_data(data, addr))
                pending.add(task)
                task.add_done_callback(pending.discard)

            self._sendto = relay_sendto
        self._remote_addr = pair.remote_addr
        queue_put = self._connection._queue.put_nowait
        rx = self._rx_srtp
        on_rtp = self._on_rtp
        on_rtcp = self._on_rtcp
        # SRTP packets are unprotected through libsrtp directly, into one buffer owned
        # here: pylibsrtp's wrapper costs several Python calls per packet.
        rx_context = rx._srtp[0]
        buffer_data = _srtp_ffi.new("char[]", RECEIVE_BUFFER_SIZE)
        buffer = _srtp_ffi.buffer(buffer_data)
        length = _srtp_ffi.new("int *")
        unprotect = _srtp_lib.srtp_unprotect
        # Periodic work due now runs after this loop iteration instead of on a timer
        # wake-up of its own (see FlushScheduler).
        poke = flush_scheduler().poke

        def data_received(data: bytes, component: int) -> None:
            first = data[0] if data else 0
            if 127 < first < 192:
                poke()
                try:
                    if 191 < data[1] < 224:
                        on_rtcp(rx.unprotect_rtcp(data))
                        return
                    size = len(data)
                    if size > RECEIVE_BUFFER_SIZE:
                        self.srtp_errors += 1
                        return
                    buffer[0:size] = data
                    length[0] = size
                    if unprotect(rx_context, buffer_data, length):
                        self.srtp_errors += 1
                        return
                    on_rtp(buffer[0 : length[0]])
                except pylibsrtp.Error:
                    self.srtp_errors += 1
                except Exception as exc:  # a bug in a handler must not kill the socket
                    self._on_error(exc)
            else:
                queue_put((data, component))

        self._connection.data_received = data_received  # type: ignore[method-assign]
        if isinstance(protocol, aioice.ice.StunProtocol):
            # The nominated socket's datagrams skip aioice's STUN parse attempt (and the
            # exception it raises for every media packet): RTP/RTCP go straight to the
            # handler above, STUN (consent checks) and DTLS to aioice as before.
            stun_received = protocol.datagram_received

            def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
                if data and 127 < data[0] < 192:
                    data_received(data, 1)
                else:
                    stun_received(data, addr)

            protocol.datagram_received = datagram_received  # type: ignore[method-assign]

    @property
    def dtls_transport(self) -> RTCDtlsTransport:
        """aiortc's DTLS transport, for an ``RTCSctpTransport`` (data channels) to run
        on: SCTP packets are DTLS records, which the fast path leaves to aiortc."""
        return self._dtls

    # --- sending -----------------------------------------------------------------

    @property
    def send_errors(self) -> int:
        """RTP/RTCP packets that could not be protected or sent."""
        batch_errors = self._batch.errors if self._batch is not None else 0
        return self._sendto_errors + batch_errors

    @property
    def rtp_sender(self) -> Callable[[bytes, bytes], None]:
        """The cheapest way to send RTP (header, payload) pairs without an extension:
        the send batch's own ``add`` once the transport is up on a plain socket, else
        :meth:`send_rtp`."""
        return self._batch.add if self._batch is not None else self.send_rtp

    def send_rtp(self, header: bytes, payload: bytes = b"", extension: bytes = b"") -> None:
        """Protect and send one RTP packet, ``header`` followed by ``payload`` (at the end
        of this event-loop iteration, batched with the others; see
        :mod:`sfu.send_batch`), with ``extension`` (a header extension block) inserted
        after ``header``, then the 12-byte fixed header alone, when given; silently
        dropped when not connected."""
        batch = self._batch
        if batch is not None:
            batch.add(header, payload, extension)
            return
        sendto = self._sendto
        if sendto is None:
            return
        if extension:
            header = b"".join((bytes((header[0] | 0x10,)), header[1:], extension))
        try:
            sendto(self._tx_srtp.protect(header + payload), self._remote_addr)  # type: ignore[union-attr]
        except (pylibsrtp.Error, OSError):
            self._sendto_errors += 1

    def send_rtcp(self, packet: bytes) -> None:
        sendto = self._sendto
        if sendto is None:
            return
        try:
            sendto(self._tx_srtp.protect_rtcp(packet), self._remote_addr)  # type: ignore[union-attr]
        except (pylibsrtp.Error, OSError):
            self._sendto_errors += 1

    async def close(self) -> None:
        self._stop_sending()
        await self._dtls.stop()
        await self._ice.stop()
        self.closed.set()
