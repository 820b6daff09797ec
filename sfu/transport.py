"""A Transport: the ICE + DTLS + SRTP connection of one participant in one direction.

Every participant has a ``publish`` transport (the client offers, the SFU answers and
receives) and a ``subscribe`` transport (the SFU offers and sends); two transports
avoid offer glare. Here the SDP-facing side of the transport lives: local
parameters with the announced address, remote candidates, the background connect.
The packet path itself is in :mod:`sfu.aiortc_adapter`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Literal

import aioice
import aioice.mdns
from aiortc.rtcdtlstransport import RTCCertificate

from sfu.aiortc_adapter import DtlsSrtpSession, RemoteParameters, RtpHandler, SharedPorts
from sfu.sdp import LocalTransport, SdpError, TransportInfo

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
"""Seconds for ICE + DTLS to complete before the transport counts as failed."""
MAX_REMOTE_CANDIDATES = 64
"""Distinct remote candidates one transport takes (a browser sends a handful per
network interface); each becomes candidate pairs aioice checks."""

CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})
TCP_TYPES = frozenset({"active", "passive", "so"})
MAX_PRIORITY = 2**31 - 1
"""RFC 8445 section 5.1.2: a priority is a positive 32-bit integer below 2**31."""
_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")
_NUMBER = re.compile(r"[0-9]{1,10}")
_QUOTED = 80

CandidateKey = tuple[int, str, str, int]
"""What makes a remote candidate distinct: component, transport, address, port."""


def _number(value: str, what: str, low: int, high: int) -> int:
    if not _NUMBER.fullmatch(value) or not low <= int(value) <= high:
        raise ValueError(f"ICE candidate {what} {value[:_QUOTED]!r} is not in {low}-{high}")
    return int(value)


def _address(value: str, what: str) -> str:
    """An IP address, or an mDNS name (RFC 8839 allows only these in candidates from
    browsers; draft-ietf-mmusic-mdns-ice-candidates)."""
    if aioice.mdns.is_mdns_hostname(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(
            f"ICE candidate {what} {value[:_QUOTED]!r} is neither an IP address nor an"
            " mDNS .local name"
        ) from None


def parse_candidate(value: str) -> aioice.Candidate:
    """Parse an ``a=candidate`` value (with or without the ``candidate:`` prefix) by the
    grammar of RFC 8839 section 5.1; raises ValueError naming what is wrong.

    Extension attributes come in name/value pairs; ``raddr``, ``rport``, ``tcptype`` and
    ``generation`` are checked, any other (``ufrag``, ``network-id``, ``network-cost``)
    is ignored as the RFC says.
    """
    text = value.strip().removeprefix("a=").removeprefix("candidate:")
    fields = text.split()
    if len(fields) < 8 or len(fields) % 2:
        raise ValueError(
            "malformed ICE candidate: expected '<foundation> <component> <transport>"
            " <priority> <address> <port> typ <type>' and name/value pairs:"
            f" {value[:_QUOTED]!r}"
        )
    foundation, component, transport, priority, host, port, typ, kind = fields[:8]
    if not _FOUNDATION.fullmatch(foundation):
        raise ValueError(f"ICE candidate foundation {foundation[:_QUOTED]!r} is malformed")
    if transport.lower() not in ("udp", "tcp"):
        raise ValueError(f"ICE candidate transport {transport[:_QUOTED]!r} is not UDP or TCP")
    if typ != "typ" or kind not in CANDIDATE_TYPES:
        types = ", ".join(sorted(CANDIDATE_TYPES))
        raise ValueError(f"ICE candidate type {kind[:_QUOTED]!r} is not one of {types}")
    candidate = aioice.Candidate(
        foundation=foundation,
        component=_number(component, "component", 1, 256),
        transport=transport,
        priority=_number(priority, "priority", 1, MAX_PRIORITY),
        host=_address(host, "address"),
        port=_number(port, "port", 1, 65535),
        type=kind,
    )
    for name, extension in zip(fields[8::2], fields[9::2], strict=True):
        if name == "raddr":
            candidate.related_address = _address(extension, "raddr")
        elif name == "rport":
            candidate.related_port = _number(extension, "rport", 0, 65535)
        elif name == "tcptype":
            if extension not in TCP_TYPES:
                raise ValueError(f"ICE candidate tcptype {extension[:_QUOTED]!r} is unknown")
            candidate.tcptype = extension
        elif name == "generation":
            candidate.generation = _number(extension, "generation", 0, 2**32 - 1)
    return candidate


def candidate_key(candidate: aioice.Candidate) -> CandidateKey:
    return (candidate.component, candidate.transport.lower(), candidate.host, candidate.port)


class Transport:
    def __init__(
        self,
        direction: Literal["publish", "subscribe"],
        certificate: RTCCertificate,
        on_rtp: RtpHandler,
        on_rtcp: RtpHandler,
        on_connected: Callable[[Transport], None],
        on_failed: Callable[[Transport], None],
        announced_ip: str | None = None,
        ice_controlling: bool | None = None,
        ports: SharedPorts | None = None,
    ) -> None:
        """``ice_controlling`` defaults to the direction's role: the server offers
        subscribe transports, so it controls their ICE. ``ports``: the worker's single
        UDP port and ICE-TCP port; None binds a socket per transport."""
        self.direction = direction
        self.announced_ip = announced_ip
        if ice_controlling is None:
            ice_controlling = direction == "subscribe"
        self.session = DtlsSrtpSession(
            certificate,
            ice_controlling=ice_controlling,
            on_rtp=on_rtp,
            on_rtcp=on_rtcp,
            on_error=self._on_handler_error,
            ports=ports,
        )
        self.handler_errors = 0
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._connect_task: asyncio.Task[None] | None = None
        self._remote_candidates: set[CandidateKey] = set()
        """Every distinct remote candidate received, usable or not."""
        self._pending_candidates: list[aioice.Candidate] = []
        """Usable remote candidates not yet given to aioice."""
        self._remote_end = False
        """End-of-candidates received: trickled, or a=end-of-candidates."""
        self._remote_end_sent = False
        self._closed = False
        self.remote_ufrag: str | None = None
        """The remote end's ICE username fragment, once started."""

    @property
    def connected(self) -> asyncio.Event:
        return self.session.connected

    @property
    def started(self) -> bool:
        return self._connect_task is not None

    async def gather(self) -> None:
        await self.session.gather()

    def local_parameters(self) -> LocalTransport:
        candidates = []
        announced_v6 = self.announced_ip is not None and ":" in self.announced_ip
        for candidate in self.session.local_candidates():
            # The announced address replaces host addresses of its own family only: a
            # dual-stack worker behind an IPv4 NAT keeps its IPv6 candidates.
            if (
                self.announced_ip
                and candidate.type == "host"
                and (":" in candidate.host) == announced_v6
            ):
                candidate.host = self.announced_ip
            candidates.append(candidate.to_sdp())
        return LocalTransport(
            ice_ufrag=self.session.ice_ufrag,
            ice_pwd=self.session.ice_pwd,
            fingerprints=self.session.fingerprints(),
            candidates=list(dict.fromkeys(candidates)),
        )

    def start(self, remote: TransportInfo) -> None:
        """Start ICE/DTLS in the background with the remote SDP's parameters."""
        if self._connect_task is not None:
            return
        if not remote.ice_ufrag or not remote.ice_pwd:
            raise SdpError("no ICE credentials (a=ice-ufrag / a=ice-pwd)")
        if not remote.fingerprints:
            raise SdpError("no DTLS fingerprint (a=fingerprint)")
        candidates = [parse_candidate(value) for value in remote.candidates]
        if len(candidates) > MAX_REMOTE_CANDIDATES:
            raise ValueError(f"more than {MAX_REMOTE_CANDIDATES} ICE candidates")
        for candidate in candidates:
            self._accept(candidate, inline=True)
        self._remote_end |= remote.end_of_candidates
        self.remote_ufrag = remote.ice_ufrag
        params = RemoteParameters(
            ice_ufrag=remote.ice_ufrag,
            ice_pwd=remote.ice_pwd,
            fingerprints=remote.fingerprints,
            setup=remote.setup,
            ice_lite=remote.ice_lite,
        )
        self._connect_task = asyncio.create_task(self._connect(params))

    async def _connect(self, params: RemoteParameters) -> None:
        await self._flush_candidates()
        try:
            await asyncio.wait_for(self.session.start(params), CONNECT_TIMEOUT)
        except (ConnectionError, TimeoutError) as exc:
            logger.info("%s transport failed: %s", self.direction, exc)
            if not self._closed:
                self._on_failed(self)
            return
        self._on_connected(self)
        await self.session.closed.wait()
        if not self._closed:
            logger.info("%s transport closed by the remote end", self.direction)
            self._on_failed(self)

    async def add_remote_candidate(self, value: str | None) -> None:
        """A trickled candidate; None (or an empty string) is end-of-candidates, which
        may come any number of times: with BUNDLE one transport serves every m-line, and
        Firefox ends each m-line's candidates and then all of them. Raises ValueError
        for a malformed candidate and for a new one after end-of-candidates; neither
        changes the transport."""
        if not value:
            self._remote_end = True
        else:
            self._accept(parse_candidate(value), inline=False)
        if self._connect_task is not None:
            await self._flush_candidates()

    def _accept(self, candidate: aioice.Candidate, inline: bool) -> None:
        """Record a remote candidate; queue it for aioice when it can be used.

        The same candidate signalled again (in the SDP and trickled, as browsers do) is
        not news (RFC 8838 section 9). A new one after end-of-candidates is refused: the
        agent ignores it (section 14), and new candidates need an ICE restart. Only UDP
        candidates of component 1 are used (RTP and RTCP are multiplexed; aioice has no
        ICE-TCP). mDNS names (``<uuid>.local``, how browsers hide host addresses) are
        ignored, never resolved: mDNS reaches only the server's own link, where the
        browser's connectivity checks reach the server anyway and show its address (a
        peer-reflexive candidate, RFC 8445 section 7.3.1.3); resolving would also hold
        the participant's messages for up to a second per name.
        """
        if aioice.mdns.is_mdns_hostname(candidate.host):
            return
        key = candidate_key(candidate)
        if key in self._remote_candidates:
            return
        if self._remote_end and not inline:
            raise ValueError(
                f"ICE candidate {candidate.host} {candidate.port} came after"
                " end-of-candidates and is ignored (RFC 8838 section 14)"
            )
        if len(self._remote_candidates) >= MAX_REMOTE_CANDIDATES:
            raise ValueError(f"more than {MAX_REMOTE_CANDIDATES} ICE candidates")
        self._remote_candidates.add(key)
        if candidate.transport.lower() == "udp" and candidate.component == 1:
            self._pending_candidates.append(candidate)

    async def _flush_candidates(self) -> None:
        """Hand aioice the queued candidates, then end-of-candidates once (aioice
        refuses anything after it)."""
        while self._pending_candidates:
            await self.session.add_remote_candidate(self._pending_candidates.pop(0))
        if self._remote_end and not self._remote_end_sent:
            self._remote_end_sent = True
            await self.session.add_remote_candidate(None)

    def _on_handler_error(self, exc: Exception) -> None:
        self.handler_errors += 1
        if self.handler_errors <= 10:
            logger.error("error in %s packet handler", self.direction, exc_info=exc)

    async def close(self) -> None:
        self._closed = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        await self.session.close()
