"""A Transport: the ICE + DTLS + SRTP connection of one participant in one direction.

Every participant has a ``publish`` transport (the client offers, the SFU answers and
receives) and a ``subscribe`` transport (the SFU offers and sends); two transports
avoid offer glare. Here the SDP-facing side of the transport lives: local
parameters with the announced address, remote candidates, the background connect.
The packet path itself is in :mod:`sfu.aiortc_adapter`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

import aioice
from aiortc.rtcdtlstransport import RTCCertificate

from sfu.aiortc_adapter import DtlsSrtpSession, RemoteParameters, RtpHandler
from sfu.sdp import LocalTransport, SdpError, TransportInfo

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
"""Seconds for ICE + DTLS to complete before the transport counts as failed."""


def parse_candidate(value: str) -> aioice.Candidate:
    """Parse an ``a=candidate`` value (with or without the ``candidate:`` prefix)."""
    text = value.strip()
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    try:
        return aioice.Candidate.from_sdp(text)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"malformed ICE candidate: {value!r}") from exc


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
    ) -> None:
        self.direction = direction
        self.announced_ip = announced_ip
        self.session = DtlsSrtpSession(
            certificate,
            ice_controlling=direction == "subscribe",
            on_rtp=on_rtp,
            on_rtcp=on_rtcp,
            on_error=self._on_handler_error,
        )
        self.handler_errors = 0
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._connect_task: asyncio.Task[None] | None = None
        self._pending_candidates: list[aioice.Candidate | None] = []
        self._closed = False

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
        for candidate in self.session.local_candidates():
            if self.announced_ip and candidate.type == "host":
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
        candidates = [
            c for c in map(parse_candidate, remote.candidates) if c.transport.lower() == "udp"
        ]
        params = RemoteParameters(
            ice_ufrag=remote.ice_ufrag,
            ice_pwd=remote.ice_pwd,
            fingerprints=remote.fingerprints,
            setup=remote.setup,
            ice_lite=remote.ice_lite,
        )
        pending = [*candidates, *self._pending_candidates]
        if remote.end_of_candidates:
            pending.append(None)
        self._pending_candidates = []
        self._connect_task = asyncio.create_task(self._connect(params, pending))

    async def _connect(
        self, params: RemoteParameters, candidates: list[aioice.Candidate | None]
    ) -> None:
        for candidate in candidates:
            await self.session.add_remote_candidate(candidate)
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
        """A trickled candidate (None: end of candidates). Raises ValueError if bad."""
        candidate = None if value is None else parse_candidate(value)
        if candidate is not None and candidate.transport.lower() != "udp":
            return  # ICE-TCP is not supported by aioice
        if self._connect_task is None:
            self._pending_candidates.append(candidate)
        else:
            await self.session.add_remote_candidate(candidate)

    def _on_handler_error(self, exc: Exception) -> None:
        self.handler_errors += 1
        if self.handler_errors <= 10:
            logger.error("error in %s packet handler", self.direction, exc_info=exc)

    async def close(self) -> None:
        self._closed = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        await self.session.close()
