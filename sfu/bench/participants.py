"""Lean benchmark participants on :class:`~sfu.aiortc_adapter.DtlsSrtpSession`.

aiortc's ``RTCPeerConnection`` would depacketize and decode every frame, spending the
CPU the benchmark measures on the same machine. These participants only speak the
signaling protocol, negotiate with hand-built SDP, and send or count SRTP packets.

- :class:`BenchPublisher` offers one VP8 (or, for a VP9 clip, VP9 only) video m-line
  (and optionally one Opus audio m-line) as sendonly with the ``sdes:mid`` header
  extension, replays the pre-encoded or captured clip in real time, sends sender
  reports and answers a PLI by skipping to the clip's next key frame. Given three clips
  it publishes them as simulcast layers the way Chrome does: RIDs ``q``/``h``/``f`` in
  ``a=rid`` and ``a=simulcast`` instead of ``a=ssrc`` lines, and MID and RID header
  extensions in every packet.
- :class:`BenchSubscriber` answers every subscribe offer with a recvonly answer built
  from the offer, counts packets, bytes and sequence gaps per SSRC and sends receiver
  reports; given a maximum spatial layer it asks the SFU for at most that layer of
  every video track (``track_settings``).
- :class:`BenchViewer` receives one publisher's tracks over WHEP, on a PeerConnection
  (transport) of its own: one viewer per subscriber and publisher is the shape of a
  Janus video-room subscriber, which has a PeerConnection per feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import struct
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin

import httpx
from aiortc.rtcdtlstransport import RTCCertificate
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect

from sfu.aiortc_adapter import DtlsSrtpSession, RemoteParameters
from sfu.bench.media import Clip, Replay
from sfu.bwe.feedback_generator import TransportCcFeedbackGenerator
from sfu.protocol import (
    ErrorMessage,
    JoinMessage,
    PublishAnswerMessage,
    PublishOfferMessage,
    SubscribeAnswerMessage,
    SubscribeOfferMessage,
    TrackInfo,
    TrackSettingsMessage,
)
from sfu.rtp import rtcp
from sfu.rtp.extensions import (
    SDES_MID,
    SDES_RTP_STREAM_ID,
    TRANSPORT_WIDE_CC,
    decode_transport_sequence_number,
    encode_sdes,
)
from sfu.rtp.packet import read_payload_and_extensions
from sfu.rtp.receive_statistics import ReceiveStatistics
from sfu.sdp import (
    Codec,
    HeaderExtension,
    LocalTransport,
    MediaSection,
    OutgoingMedia,
    Rid,
    SessionDescription,
    Simulcast,
    TransportInfo,
    create_subscribe_offer,
    default_outgoing_codecs,
)
from sfu.sdp.negotiation import vp9_outgoing_codecs
from sfu.transport import parse_candidate

logger = logging.getLogger(__name__)

RTCP_INTERVAL = 1.0
"""Seconds between sender reports (publishers) and receiver reports (subscribers)."""
FEEDBACK_INTERVAL = 0.1
"""Seconds between a transport-cc subscriber's feedback packets (Chrome: 50-100 ms)."""
MAX_LAG = 0.5
"""Seconds a sender may fall behind its real-time schedule before it stops catching up
(a real sender would have dropped those frames, not burst them)."""
MID_EXTENSION_ID = 1
RID_EXTENSION_ID = 2
TRANSPORT_CC_EXTENSION_ID = 3
"""The id a WHEP viewer offers the transport-wide sequence number with."""
SIMULCAST_RIDS = ("q", "h", "f")
"""The RIDs of simulcast layers, lowest first (as the SFU and Chrome name them)."""
CONNECT_TIMEOUT = 30.0
DELETE_TIMEOUT = 2.0
"""Seconds a WHEP viewer waits for its session's ``DELETE`` on close."""

_HEADER = struct.Struct("!BBHII")
_SEQ_TS = struct.Struct("!HI")
_SSRC = struct.Struct("!I")


class BenchError(Exception):
    """A participant could not join, negotiate or connect."""


def _local_transport(session: DtlsSrtpSession) -> LocalTransport:
    return LocalTransport(
        ice_ufrag=session.ice_ufrag,
        ice_pwd=session.ice_pwd,
        fingerprints=session.fingerprints(),
        candidates=list(dict.fromkeys(c.to_sdp() for c in session.local_candidates())),
    )


async def _connect_session(session: DtlsSrtpSession, remote: TransportInfo) -> None:
    """Run ICE and DTLS against the SFU, which is always the DTLS server."""
    if not remote.ice_ufrag or not remote.ice_pwd or not remote.fingerprints:
        raise BenchError("the SFU's SDP has no ICE credentials or DTLS fingerprint")
    for value in remote.candidates:
        candidate = parse_candidate(value)
        if candidate.transport.lower() == "udp":
            await session.add_remote_candidate(candidate)
    await session.add_remote_candidate(None)
    params = RemoteParameters(
        ice_ufrag=remote.ice_ufrag,
        ice_pwd=remote.ice_pwd,
        fingerprints=remote.fingerprints,
        # The SFU answers a=setup:passive, or offers actpass and gets our active:
        # either way it ends up passive and we are the DTLS client.
        setup="passive",
        ice_lite=remote.ice_lite,
    )
    try:
        await asyncio.wait_for(session.start(params), CONNECT_TIMEOUT)
    except (ConnectionError, TimeoutError) as exc:
        raise BenchError(f"ICE/DTLS with the SFU failed: {exc or 'timeout'}") from exc


class _Participant:
    """The signaling side shared by publishers and subscribers."""

    def __init__(self, url: str, token: str, certificate: RTCCertificate) -> None:
        self.url = url
        self.token = token
        self.session: DtlsSrtpSession | None = None
        self._certificate = certificate
        self._ws: ClientConnection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._started = 0.0
        self.join_latency: float | None = None
        """Seconds from opening the socket to the ``joined`` reply."""
        self.media_latency: float | None = None
        """Seconds from opening the socket to media: a publisher's transport is up, a
        subscriber's first packet arrived."""

    def _media_started(self) -> None:
        if self.media_latency is None:
            self.media_latency = time.monotonic() - self._started

    def _new_session(self, ice_controlling: bool) -> DtlsSrtpSession:
        return DtlsSrtpSession(
            self._certificate,
            ice_controlling=ice_controlling,
            on_rtp=self._on_rtp,
            on_rtcp=self._on_rtcp,
            on_error=self._on_packet_error,
        )

    def _on_rtp(self, data: bytes) -> None:
        """An unprotected RTP packet from the SFU."""

    def _on_rtcp(self, data: bytes) -> None:
        """An unprotected RTCP compound from the SFU."""

    def _on_packet_error(self, exc: Exception) -> None:
        logger.error("error in a packet handler", exc_info=exc)

    async def run(self) -> None:
        """Join, negotiate and keep the session going until cancelled or closed.

        Background work (connecting, sending media and reports) runs in a task group:
        if any of it fails, the whole participant fails with an ExceptionGroup.
        """
        self._started = time.monotonic()
        async with connect(self.url, max_size=4 * 1024 * 1024) as ws, asyncio.TaskGroup() as tasks:
            self._ws = ws
            self._tasks = tasks
            await self._send(JoinMessage(token=self.token))
            await self._receive("joined")
            self.join_latency = time.monotonic() - self._started
            await self._negotiate()
            while True:
                await self._handle(await self._next_message())

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background for as long as the participant runs."""
        assert self._tasks is not None
        self._tasks.create_task(work)

    async def close(self) -> None:
        """Close the media session (after the :meth:`run` task was cancelled)."""
        if self.session is not None:
            await self.session.close()

    async def _negotiate(self) -> None:
        """What the participant does right after joining."""

    async def _handle(self, message: dict[str, Any]) -> None:
        """A server message arriving after :meth:`_negotiate`."""

    async def _send(self, message: BaseModel) -> None:
        assert self._ws is not None
        await self._ws.send(message.model_dump_json(exclude_none=True))

    async def _next_message(self) -> dict[str, Any]:
        assert self._ws is not None
        message: dict[str, Any] = json.loads(await self._ws.recv())
        if message.get("type") == "error":
            error = ErrorMessage.model_validate(message)
            if error.fatal:
                raise BenchError(f"the SFU closed the session: {error.code}: {error.message}")
            logger.warning("SFU error: %s: %s", error.code, error.message)
        return message

    async def _receive(self, message_type: str) -> dict[str, Any]:
        """The next message of ``message_type``; others in between are ignored."""
        while True:
            message = await self._next_message()
            if message.get("type") == message_type:
                return message
            if message.get("type") == "error":
                raise BenchError(f"the SFU refused: {message.get('message')}")


class _TrackSender:
    """One outgoing RTP stream: a replayed clip with continuous sequence and timestamps."""

    def __init__(self, clip: Clip, payload_type: int, mid: str, rid: str | None = None) -> None:
        self.replay = Replay(clip)
        self.clock_rate = clip.clock_rate
        self.payload_type = payload_type
        self.mid = mid
        self.rid = rid
        """The simulcast layer's RID; None for a track sent without simulcast."""
        self.ssrc = secrets.randbits(32) or 1
        self.sequence = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self.packets_sent = 0
        self.octets_sent = 0
        self._extension = b""
        self._last_frame_time = 0.0

    def set_sdes_extensions(self, mid_id: int | None, rid_id: int | None) -> None:
        """Put the MID and the RID (of a simulcast layer) in every packet, as one-byte
        RFC 8285 extensions with the negotiated ids (None: not negotiated)."""
        element = b""
        for extension_id, text in ((mid_id, self.mid), (rid_id, self.rid)):
            if extension_id is not None and text is not None:
                value = encode_sdes(text)
                element += bytes([(extension_id << 4) | (len(value) - 1)]) + value
        element += bytes(-len(element) % 4)
        self._extension = (
            struct.pack("!HH", 0xBEDE, len(element) // 4) + element if element else b""
        )

    async def run(self, send_rtp: Callable[[bytes], None]) -> None:
        """Send frames paced by their timestamps, forever."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        elapsed = 0
        first_byte = 0x90 if self._extension else 0x80
        while True:
            frame = self.replay.next_frame()
            elapsed += frame.timestamp_delta
            delay = start + elapsed / self.clock_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -MAX_LAG:
                start -= delay
            self.timestamp = (self.timestamp + frame.timestamp_delta) & 0xFFFFFFFF
            self._last_frame_time = time.time()
            last = len(frame.payloads) - 1
            for i, payload in enumerate(frame.payloads):
                header = _HEADER.pack(
                    first_byte,
                    (0x80 if i == last else 0) | self.payload_type,
                    self.sequence,
                    self.timestamp,
                    self.ssrc,
                )
                send_rtp(header + self._extension + payload)
                self.sequence = (self.sequence + 1) & 0xFFFF
                self.packets_sent += 1
                self.octets_sent += len(payload)

    def sender_report(self, now: float) -> rtcp.SenderReport:
        rtp = self.timestamp + int((now - self._last_frame_time) * self.clock_rate)
        return rtcp.SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=rtcp.ntp_from_unix(now),
            rtp_timestamp=rtp & 0xFFFFFFFF,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.octets_sent & 0xFFFFFFFF,
        )


class BenchPublisher(_Participant):
    """Publishes the pre-encoded VP8 clip (and optionally synthetic audio).

    ``video`` holds one clip, or one per simulcast layer (lowest first, at most three),
    all sent on one m-line. A VP9 clip (a captured SVC stream) is offered as VP9 alone,
    which the SFU accepts as a publisher's first choice.
    """

    def __init__(
        self,
        url: str,
        token: str,
        certificate: RTCCertificate,
        video: Sequence[Clip],
        audio: Clip | None = None,
    ) -> None:
        super().__init__(url, token, certificate)
        if not 1 <= len(video) <= len(SIMULCAST_RIDS):
            raise ValueError(f"expected 1..{len(SIMULCAST_RIDS)} video clips, got {len(video)}")
        rids = SIMULCAST_RIDS[: len(video)] if len(video) > 1 else (None,)
        self.video_codec = _video_codec(video[0].codec)
        self.video = [
            _TrackSender(clip, payload_type=self.video_codec.payload_type, mid="0", rid=rid)
            for clip, rid in zip(video, rids, strict=True)
        ]
        """The video layers, lowest first (one without simulcast)."""
        self.audio = None if audio is None else _TrackSender(audio, payload_type=111, mid="1")
        self.tracks = [*self.video, *([] if self.audio is None else [self.audio])]
        """Every outgoing RTP stream."""
        self.connected = False
        self.key_frame_requests = 0

    @property
    def simulcast(self) -> bool:
        return len(self.video) > 1

    @property
    def m_lines(self) -> list[_TrackSender]:
        """The sender standing for each m-line: the lowest video layer, then audio."""
        return [self.video[0], *([] if self.audio is None else [self.audio])]

    @property
    def packets_sent(self) -> int:
        return sum(track.packets_sent for track in self.tracks)

    @property
    def octets_sent(self) -> int:
        return sum(track.octets_sent for track in self.tracks)

    def _offer(self, local: LocalTransport) -> SessionDescription:
        media = []
        cname = secrets.token_hex(8)
        for track in self.m_lines:
            kind = "audio" if track is self.audio else "video"
            if kind == "video":
                codecs = [_video_codec(self.video_codec.name)]  # a fresh copy per offer
            else:
                codecs = [
                    c for c in default_outgoing_codecs(kind) if c.payload_type == track.payload_type
                ]
            extensions = [HeaderExtension(MID_EXTENSION_ID, SDES_MID)]
            if track.rid is not None:
                extensions.append(HeaderExtension(RID_EXTENSION_ID, SDES_RTP_STREAM_ID))
            media.append(
                OutgoingMedia(
                    mid=track.mid,
                    kind=kind,
                    codecs=codecs,
                    header_extensions=extensions,
                    ssrc=track.ssrc,
                    rtx_ssrc=None,
                    cname=cname,
                    stream_id=f"bench-{cname}",
                    track_id=f"{kind}-{cname}",
                )
            )
        # A publisher's offer has exactly the shape of the SFU's subscribe offer.
        offer = create_subscribe_offer(local, media, secrets.randbits(62), 1)
        if self.simulcast:
            # Like Chrome: the layers are announced by RID, their SSRCs are not signaled.
            section = offer.media[0]
            rids = [layer.rid for layer in self.video if layer.rid is not None]
            section.ssrcs = {}
            section.rids = [Rid(rid, "send") for rid in rids]
            section.simulcast = Simulcast(send=[[rid] for rid in rids])
        return offer

    async def _negotiate(self) -> None:
        self.session = self._new_session(ice_controlling=True)
        await self.session.gather()
        offer = self._offer(_local_transport(self.session))
        await self._send(
            PublishOfferMessage(
                sdp=str(offer),
                tracks={
                    track.mid: TrackInfo(source="microphone" if track is self.audio else "camera")
                    for track in self.m_lines
                },
            )
        )
        reply = PublishAnswerMessage.model_validate(await self._receive("publish_answer"))
        answer = SessionDescription.parse(reply.sdp)
        for track in self.tracks:
            section = answer.media_by_mid(track.mid)
            if section is None or section.rejected:
                raise BenchError(f"the SFU rejected the {track.mid!r} m-line")
            if track.payload_type not in {c.payload_type for c in section.codecs}:
                raise BenchError(f"the SFU did not accept payload type {track.payload_type}")
            ids = section.header_extension_ids()
            if track.rid is not None and SDES_RTP_STREAM_ID not in ids:
                raise BenchError("the SFU did not accept the RID header extension")
            track.set_sdes_extensions(ids.get(SDES_MID), ids.get(SDES_RTP_STREAM_ID))
        await _connect_session(self.session, answer.transport(answer.media[0]))
        self.connected = True
        self._media_started()
        for track in self.tracks:
            self._start(track.run(self.session.send_rtp))
        self._start(self._send_reports())

    async def _send_reports(self) -> None:
        assert self.session is not None
        while True:
            await asyncio.sleep(RTCP_INTERVAL)
            now = time.time()
            compound = b"".join(bytes(track.sender_report(now)) for track in self.tracks)
            self.session.send_rtcp(compound)

    def _on_rtcp(self, data: bytes) -> None:
        try:
            packets = rtcp.parse_rtcp(data)
        except ValueError:
            return
        for packet in packets:
            if isinstance(packet, rtcp.PictureLossIndication):
                ssrcs = [packet.media_ssrc]
            elif isinstance(packet, rtcp.FullIntraRequest):
                ssrcs = [ssrc for ssrc, _ in packet.entries]
            else:
                continue
            self.key_frame_requests += 1
            for layer in self.video:
                if layer.ssrc in ssrcs:
                    layer.replay.skip_to_key_frame()


def _video_codec(name: str) -> Codec:
    """The codec (the SFU's payload type for it) a publisher offers for ``name``."""
    for codec in [*default_outgoing_codecs("video"), *vp9_outgoing_codecs()]:
        if codec.name.upper() == name.upper():
            return codec
    raise ValueError(f"the benchmark publishes no {name} video")


def create_recvonly_answer(
    offer: SessionDescription, local: LocalTransport, version: int, transport_cc: bool = False
) -> SessionDescription:
    """Answer the SFU's subscribe offer: receive every sendonly m-line with its first
    codec, keep the others inactive, take the DTLS client role. With ``transport_cc``
    (a subscriber that sends transport-cc feedback, as browsers do) the transport-wide
    sequence number and rtx are accepted too, so the SFU estimates and probes as it
    does for a browser."""
    answer = SessionDescription(
        session_id=offer.session_id,
        session_version=version,
        bundle_groups=[list(group) for group in offer.bundle_groups[:1]],
        msid_semantic="WMS",
        extmap_allow_mixed=offer.extmap_allow_mixed,
    )
    for offered in offer.media:
        receiving = offered.direction in ("sendonly", "sendrecv")
        codecs = [c for c in offered.codecs if not c.is_rtx][:1]
        if transport_cc and codecs:
            codecs += [c for c in offered.codecs if c.is_rtx and c.apt == codecs[0].payload_type]
        section = MediaSection(
            kind=offered.kind,
            port=9 if codecs else 0,
            protocol=offered.protocol,
            formats=[str(c.payload_type) for c in codecs] or offered.formats[:1],
            mid=offered.mid,
            direction="recvonly" if receiving and codecs else "inactive",
            host="0.0.0.0",
            codecs=[replace(c, parameters=dict(c.parameters)) for c in codecs],
            # Without feedback to send, the transport-wide sequence number is declined
            # (as a client without congestion control would): the SFU then skips
            # per-packet send-side estimation.
            header_extensions=[
                replace(ext, direction=None)
                for ext in offered.header_extensions
                if transport_cc or ext.uri != TRANSPORT_WIDE_CC
            ],
            rtcp_mux=True,
            rtcp_rsize=offered.rtcp_rsize,
            ice_ufrag=local.ice_ufrag,
            ice_pwd=local.ice_pwd,
            fingerprints=list(local.fingerprints),
            setup="active",
            candidates=list(local.candidates),
            end_of_candidates=True,
        )
        answer.media.append(section)
    return answer


class BenchSubscriber(_Participant):
    """Receives every track of the room and counts what arrives.

    With ``max_spatial_layer`` it caps every video track it is offered at that
    simulcast layer (0 = lowest) once it has answered the offer. With ``transport_cc``
    it takes the transport-wide sequence number and sends transport-cc feedback every
    :data:`FEEDBACK_INTERVAL`, as a browser does; the padding-only probes the SFU then
    sends are counted apart from media (:attr:`padding_received`).
    """

    def __init__(
        self,
        url: str,
        token: str,
        certificate: RTCCertificate,
        max_spatial_layer: int | None = None,
        transport_cc: bool = False,
    ) -> None:
        super().__init__(url, token, certificate)
        self.max_spatial_layer = max_spatial_layer
        self.transport_cc = transport_cc
        self._feedback = TransportCcFeedbackGenerator(secrets.randbits(32) or 1)
        self._transport_cc_id: int | None = None
        self.padding_received = 0
        """Padding-only packets (bandwidth probes) among the received packets."""
        self.padding_bytes = 0
        self.rtx_received = 0
        """Packets on RTX streams (retransmissions and probes), not counted as media."""
        self._rtx_ssrcs: set[int] = set()
        self._capped_tracks: set[str] = set()
        self.streams: dict[int, ReceiveStatistics] = {}
        """Receive statistics by SSRC, for every SSRC that sent a packet."""
        self.expected_ssrcs: set[int] = set()
        """The SSRCs of the sendonly m-lines in the latest offer."""
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self._clock_rates: dict[int, int] = {}
        self._connecting = False

    @property
    def tracks_receiving(self) -> int:
        """How many of the currently offered tracks media has arrived on."""
        return len(self.expected_ssrcs & self.streams.keys())

    async def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") != "subscribe_offer":
            return
        offer_message = SubscribeOfferMessage.model_validate(message)
        offer = SessionDescription.parse(offer_message.sdp)
        if self.session is None:
            self.session = self._new_session(ice_controlling=False)
            await self.session.gather()
        answer = create_recvonly_answer(
            offer, _local_transport(self.session), offer_message.revision, self.transport_cc
        )
        if self.transport_cc:
            for section in answer.media:
                self._transport_cc_id = section.header_extension_ids().get(
                    TRANSPORT_WIDE_CC, self._transport_cc_id
                )
        self._expect_streams(offer)
        await self._send(SubscribeAnswerMessage(sdp=str(answer), revision=offer_message.revision))
        if self.max_spatial_layer is not None:
            for track in offer_message.tracks.values():
                if track.kind == "video" and track.track_id not in self._capped_tracks:
                    self._capped_tracks.add(track.track_id)
                    await self._send(
                        TrackSettingsMessage(
                            track_id=track.track_id, max_spatial_layer=self.max_spatial_layer
                        )
                    )
        if not self._connecting and offer.media:
            self._connecting = True
            self._start(self._connect(offer.transport(offer.media[0])))

    def _expect_streams(self, description: SessionDescription) -> None:
        """Expect media on the SSRCs of ``description``'s sendonly m-lines (the SFU's
        side): they replace :attr:`expected_ssrcs`; their RTX SSRCs are noted."""
        expected: set[int] = set()
        for section in description.media:
            if section.direction != "sendonly" or not section.codecs:
                continue
            repair = {g.ssrcs[1] for g in section.ssrc_groups if g.semantics == "FID"}
            self._rtx_ssrcs |= repair
            for ssrc in section.ssrcs.keys() - repair:
                expected.add(ssrc)
                self._clock_rates[ssrc] = section.codecs[0].clock_rate
        self.expected_ssrcs = expected

    async def _connect(self, remote: TransportInfo) -> None:
        assert self.session is not None
        await _connect_session(self.session, remote)
        if self.transport_cc:
            self._start(self._send_feedback())
        await self._send_reports()

    def _on_rtp(self, data: bytes) -> None:
        ssrc = _SSRC.unpack_from(data, 8)[0]
        stream = self.streams.get(ssrc)
        if stream is None and ssrc in self._rtx_ssrcs:
            self.rtx_received += 1
            self._record_transport_cc(data, time.time())
            return
        if stream is None:
            self._media_started()
            stream = ReceiveStatistics(ssrc, self._clock_rates.get(ssrc, 90000))
            self.streams[ssrc] = stream
        sequence, timestamp = _SEQ_TS.unpack_from(data, 2)
        now = time.time()
        stream.add(sequence, timestamp, len(data), now)
        start = self._record_transport_cc(data, now)
        if start is not None and data[0] & 0x20 and start + data[-1] == len(data):
            self.padding_received += 1
            self.padding_bytes += len(data)

    def _record_transport_cc(self, data: bytes, now: float) -> int | None:
        """Record the packet's transport-wide sequence number for the next feedback;
        returns its payload offset (None: not recording, or a malformed header)."""
        if self._transport_cc_id is None:
            return None
        try:
            start, extensions = read_payload_and_extensions(data)
        except ValueError:
            return None
        value = extensions.get(self._transport_cc_id)
        if value is not None and len(value) == 2:
            self._feedback.add(decode_transport_sequence_number(value), now)
        return start

    async def _send_feedback(self) -> None:
        assert self.session is not None
        while True:
            await asyncio.sleep(FEEDBACK_INTERVAL)
            for packet in self._feedback.feedback(time.time()):
                self.session.send_rtcp(packet)

    def _on_rtcp(self, data: bytes) -> None:
        try:
            packets = rtcp.parse_rtcp(data)
        except ValueError:
            return
        now = time.time()
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                stream = self.streams.get(packet.ssrc)
                if stream is not None:
                    stream.add_sender_report(packet.ntp_timestamp, packet.rtp_timestamp, now)

    async def _send_reports(self) -> None:
        assert self.session is not None
        while True:
            await asyncio.sleep(RTCP_INTERVAL)
            now = time.time()
            blocks = [
                block
                for stream in list(self.streams.values())
                if (block := stream.report_block(now)) is not None
            ]
            for i in range(0, len(blocks), rtcp.MAX_COUNT):
                report = rtcp.ReceiverReport(self.rtcp_ssrc, blocks[i : i + rtcp.MAX_COUNT])
                self.session.send_rtcp(bytes(report))


class BenchViewer(BenchSubscriber):
    """A WHEP viewer of one publisher: a PeerConnection of its own for that publisher's
    video (and audio), as a Janus video-room subscriber has one per feed it receives.

    It offers recvonly m-lines (VP8, Opus with ``audio``) in one BUNDLE group with
    ``POST`` to the room's WHEP endpoint ``url`` pinned to ``publisher`` (an identity),
    connects to the answer, then counts and reports like a :class:`BenchSubscriber`
    (with ``transport_cc``, feedback included). :meth:`close` ends the session with
    ``DELETE``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        certificate: RTCCertificate,
        publisher: str,
        audio: bool = False,
        transport_cc: bool = False,
    ) -> None:
        super().__init__(url, token, certificate, transport_cc=transport_cc)
        self.publisher = publisher
        self.kinds = ["video", "audio"] if audio else ["video"]
        self._location: str | None = None

    def _offer(self, local: LocalTransport) -> SessionDescription:
        offer = SessionDescription(
            session_id=secrets.randbits(62),
            session_version=1,
            bundle_groups=[[str(i) for i in range(len(self.kinds))]],
            msid_semantic="WMS",
        )
        for i, kind in enumerate(self.kinds):
            offered = default_outgoing_codecs(kind)
            primary = next(c for c in offered if c.name.upper() in ("VP8", "OPUS"))
            codecs = [primary]
            if self.transport_cc:
                codecs += [c for c in offered if c.is_rtx and c.apt == primary.payload_type]
            offer.media.append(
                MediaSection(
                    kind=kind,
                    port=9,
                    protocol="UDP/TLS/RTP/SAVPF",
                    formats=[str(c.payload_type) for c in codecs],
                    mid=str(i),
                    direction="recvonly",
                    host="0.0.0.0",
                    codecs=[replace(c, parameters=dict(c.parameters)) for c in codecs],
                    header_extensions=(
                        [HeaderExtension(TRANSPORT_CC_EXTENSION_ID, TRANSPORT_WIDE_CC)]
                        if self.transport_cc
                        else []
                    ),
                    rtcp_mux=True,
                    rtcp_rsize=True,
                    ice_ufrag=local.ice_ufrag,
                    ice_pwd=local.ice_pwd,
                    fingerprints=list(local.fingerprints),
                    setup="actpass",
                    candidates=list(local.candidates),
                    end_of_candidates=True,
                )
            )
        return offer

    async def run(self) -> None:
        """Offer, connect and keep receiving until cancelled."""
        self._started = time.monotonic()
        self.session = self._new_session(ice_controlling=True)
        await self.session.gather()
        offer = self._offer(_local_transport(self.session))
        async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT) as http:
            response = await http.post(
                self.url,
                params={"participant": self.publisher},
                content=str(offer),
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {self.token}",
                },
            )
        if response.status_code != 201:
            raise BenchError(f"WHEP offer refused: {response.status_code} {response.text}")
        self.join_latency = time.monotonic() - self._started
        self._location = urljoin(self.url, response.headers["location"])
        answer = SessionDescription.parse(response.text)
        self._expect_streams(answer)
        if self.transport_cc:
            self._transport_cc_id = answer.media[0].header_extension_ids().get(TRANSPORT_WIDE_CC)
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            await self._connect(answer.transport(answer.media[0]))

    async def close(self) -> None:
        """End the WHEP session (best effort: the server ends idle ones), then the media."""
        if self._location is not None:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=DELETE_TIMEOUT) as http:
                    await http.delete(self._location)
        await super().close()
