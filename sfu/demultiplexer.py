"""RtpDemultiplexer: which producer and stream a packet of a publish transport is for.

mediasoup's ``RtpListener``. SSRCs the publish offer declares (``a=ssrc``, plain tracks)
are bound when the offer is applied; an SSRC seen for the first time is learned once
(RFC 8843 section 9.2) from the MID header extension, the RID for a simulcast layer and
the repaired RID for its RTX stream, or, without a MID, from a payload type that names
exactly one producer. At most :data:`MAX_LEARNED_SSRCS` SSRCs are bound; packets of
the rest are unroutable. Sans-I/O: it reads packet bytes and binds streams, nothing
else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

from sfu.producer import Producer, RtpStream
from sfu.rtp.extensions import (
    SDES_MID,
    SDES_REPAIRED_RTP_STREAM_ID,
    SDES_RTP_STREAM_ID,
    decode_sdes,
)
from sfu.rtp.packet import read_header_extensions

MAX_LEARNED_SSRCS = 64
"""SSRCs a publish transport may bind (layers, RTX, probes); more are dropped."""

_SSRC = struct.Struct("!I")

Route = tuple[Producer, RtpStream | None]
"""A bound SSRC: its producer and media stream, or None for the stream of an RTX SSRC
(:meth:`RtpDemultiplexer.repaired` names the stream it repairs)."""


class RtpDemultiplexer:
    def __init__(self, producers: Mapping[str, Producer], on_bound: Callable[[int], None]) -> None:
        self._producers = producers
        """The participant's producers by MID (the live mapping)."""
        self._on_bound = on_bound
        """Told each media SSRC bound (the transport-cc feedback names one)."""
        self._routes: dict[int, Route] = {}
        self._rtx: dict[int, tuple[Producer, RtpStream]] = {}
        self._mid_extension: int | None = None
        self._rid_extension: int | None = None
        self._rrid_extension: int | None = None

    def use_extensions(self, ids: Mapping[str, int]) -> None:
        """The header extension ids (by URI) a publish offer negotiated."""
        self._mid_extension = ids.get(SDES_MID, self._mid_extension)
        self._rid_extension = ids.get(SDES_RTP_STREAM_ID, self._rid_extension)
        self._rrid_extension = ids.get(SDES_REPAIRED_RTP_STREAM_ID, self._rrid_extension)

    def bind(self, ssrc: int, producer: Producer, rid: str | None) -> RtpStream:
        """Bind a media SSRC to a new stream of ``producer`` (a layer by its RID)."""
        stream = producer.add_stream(ssrc, rid)
        self._routes[ssrc] = (producer, stream)
        self._on_bound(ssrc)
        return stream

    def bind_rtx(self, ssrc: int, producer: Producer, repaired: RtpStream) -> None:
        """Bind an RTX SSRC (RFC 4588) to the stream it repairs."""
        self._rtx[ssrc] = (producer, repaired)
        self._routes[ssrc] = (producer, None)

    def route(self, data: bytes) -> Route | None:
        """The producer and stream of an RTP packet (at least 12 bytes), learning its
        SSRC on first sight; None: unroutable."""
        ssrc = _SSRC.unpack_from(data, 8)[0]
        route = self._routes.get(ssrc)
        return route if route is not None else self._learn(ssrc, data)

    def stream(self, ssrc: int) -> RtpStream | None:
        """The media stream bound to ``ssrc`` (a sender report's), if any."""
        route = self._routes.get(ssrc)
        return None if route is None else route[1]

    def repaired(self, ssrc: int) -> tuple[Producer, RtpStream] | None:
        """The producer and stream an RTX SSRC repairs."""
        return self._rtx.get(ssrc)

    def _learn(self, ssrc: int, data: bytes) -> Route | None:
        if len(self._routes) >= MAX_LEARNED_SSRCS:
            return None
        try:
            extensions = read_header_extensions(data)
            mid = rid = None
            if self._mid_extension in extensions:
                mid = decode_sdes(extensions[self._mid_extension])  # type: ignore[index]
            if self._rid_extension in extensions:
                rid = decode_sdes(extensions[self._rid_extension])  # type: ignore[index]
        except ValueError:
            return None
        payload_type = data[1] & 0x7F
        if mid is not None:
            producer = self._producers.get(mid)
        else:
            # No MID: the payload type decides when it names exactly one producer.
            candidates = [
                p
                for p in self._producers.values()
                if payload_type in p.payload_types or payload_type in p.rtx_payload_types
            ]
            producer = candidates[0] if len(candidates) == 1 else None
        if producer is None:
            return None
        if payload_type in producer.rtx_payload_types:
            # RTX (RFC 4588): bound to its media stream by the repaired RID, or to the
            # only stream of a plain track. Padding probes on it are then dropped.
            rrid = None
            if self._rrid_extension in extensions:
                try:
                    rrid = decode_sdes(extensions[self._rrid_extension])  # type: ignore[index]
                except ValueError:
                    return None
            repaired = next((s for s in producer.streams.values() if s.rid == rrid), None)
            if repaired is None:
                return None
            self.bind_rtx(ssrc, producer, repaired)
            return producer, None
        if payload_type not in producer.payload_types:
            return None
        return producer, self.bind(ssrc, producer, rid)
