"""A Participant: one client session in a room, with its two transports.

The publish transport receives the participant's tracks (one :class:`Producer` per
offered m-line) and demultiplexes incoming SRTP by SSRC, learning unknown SSRCs from
the MID and RID header extensions. The subscribe transport carries one
:class:`Consumer` per track of the other participants; its m-lines are negotiated by
the SFU as offerer, one offer at a time, recycling m-lines whose track went away.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sfu.allocator import (
    PRIORITY_ACTIVE_SPEAKER,
    PRIORITY_DEFAULT,
    PRIORITY_SCREEN_SHARE,
    StreamAllocator,
    TrackAllocationInput,
)
from sfu.bwe.feedback_generator import TransportCcFeedbackGenerator
from sfu.bwe.send_side import SendSideBandwidthEstimator
from sfu.consumer import PADDING_SIZE, Consumer, SendRtp
from sfu.data_channel import DataChannels
from sfu.producer import Producer, RtpStream
from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    ErrorMessage,
    PublishAnswerMessage,
    PublishOfferMessage,
    ServerMessage,
    SubscribeAnswerMessage,
    SubscribeOfferMessage,
    SubscribeTrack,
    Track,
    TrackInfo,
    TrackSettingsMessage,
)
from sfu.protocol import (
    Participant as ParticipantInfo,
)
from sfu.rtp import rtcp
from sfu.rtp.extensions import (
    SDES_MID,
    SDES_REPAIRED_RTP_STREAM_ID,
    SDES_RTP_STREAM_ID,
    SSRC_AUDIO_LEVEL,
    TRANSPORT_WIDE_CC,
    decode_audio_level,
    decode_sdes,
    decode_transport_sequence_number,
)
from sfu.rtp.packet import read_header_extensions, read_payload_and_extensions
from sfu.rtp.transport_feedback import TransportCcFeedback
from sfu.sdp import (
    HeaderExtension,
    OutgoingMedia,
    SdpError,
    SessionDescription,
    accepted_data_channel,
    create_publish_answer,
    create_subscribe_offer,
    default_outgoing_codecs,
    parse_subscribe_answer,
)
from sfu.transport import Transport
from sfu.worker_api import EventSink, Grant, ProtocolError

if TYPE_CHECKING:
    from sfu.room import Room
    from sfu.worker import WorkerContext

logger = logging.getLogger(__name__)

MAX_LEARNED_SSRCS = 64
"""SSRCs a publish transport may bind (layers, RTX, probes); more are dropped."""
RTCP_INTERVAL = 1.0
"""Seconds between the SFU's receiver reports to publishers and sender reports to
subscribers (RFC 3550 allows this for a few streams per transport)."""
FEEDBACK_INTERVAL = 0.1
"""Seconds between transport-cc feedback packets to a publisher, and NACK retries."""
ALLOCATION_INTERVAL = 0.5
"""Seconds between two runs of the subscribe transport's stream allocator."""
RTCP_MAX_PACKET = 1200
"""Largest compound RTCP packet the SFU sends."""
OUTGOING_TRANSPORT_CC_ID = 3
"""Header extension id of the transport-wide sequence number in subscribe offers."""
UNKNOWN_ESTIMATE = 1_000_000_000
"""Bits/s assumed for a subscriber that sends no bandwidth feedback at all: only its own
preferences limit what it gets."""
MAX_PROBE_PACKETS = 40
"""Probe packets sent at most per tick: about 2 Mbit/s of padding-only packets at the
50 ms tick, about 8 Mbit/s of RTX copies of media."""
MAX_PROBE_BURST_SECONDS = 0.05
"""Seconds of probe budget one tick sends at most. Ticks come 50 ms apart or a little
more (they ride on media sends, see :mod:`sfu.worker`); a longer gap is not made up
with a longer burst, which could overflow a shallow queue on the path and take media
with it."""
PROBE_PACKET_SIZE = 1100
"""Bytes assumed per RTX probe packet (a copy of a forwarded video packet)."""

_SSRC = struct.Struct("!I")
_RTX_HEADER = struct.Struct("!BBHII")
_TWCC_EXTENSION = struct.Struct("!HHBHB")
_STAMPED_HEADER_SIZE = 12 + _TWCC_EXTENSION.size
"""A consumer packet's header on the wire once stamped: fixed header and extension."""


def _video_floor(tracks: list[TrackAllocationInput]) -> int:
    """The lowest flowing layer of the most important track: a subscriber always gets
    that much video, however low its estimate (a frozen picture helps nobody; lower
    priority tracks are paused instead)."""
    candidates = [t for t in tracks if not t.paused]
    if not candidates:
        return 0
    top = max(candidates, key=lambda t: t.priority)
    return min((layer.bitrate for layer in top.layers if layer.bitrate > 0), default=0)


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(9)


@dataclass
class _Slot:
    """One m-line of the subscribe transport."""

    mid: str
    kind: str
    consumer: Consumer | None
    negotiated_inactive: bool = False
    """The subscriber has acknowledged this slot as inactive: it may be recycled."""
    payload_type: int | None = None
    rtx_payload_type: int | None = None
    """The subscriber's rtx payload type for ``payload_type``, when it negotiated one."""


class Participant:
    def __init__(
        self,
        participant_id: str,
        grant: Grant,
        room: Room,
        sink: EventSink,
        context: WorkerContext,
    ) -> None:
        self.id = participant_id
        self.grant = grant
        self.name = grant.name
        self.room = room
        self.sink = sink
        self.context = context
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self.cname = _new_id("sfu-")
        self.producers: dict[str, Producer] = {}
        """Published tracks by MID of the publish transport."""
        self.publish: Transport | None = None
        self.subscribe: Transport | None = None
        self.packets_unroutable = 0
        self.rtcp_errors = 0
        self.joined_at = time.monotonic()
        """When the join request reached the worker (join latency metric)."""
        self._ssrc_table: dict[int, tuple[Producer, RtpStream | None]] = {}
        self._rtx_table: dict[int, tuple[Producer, RtpStream]] = {}
        self._mid_extension: int | None = None
        self._rid_extension: int | None = None
        self._rrid_extension: int | None = None
        self._audio_level_extension: int | None = None
        self._transport_cc_extension: int | None = None
        self._feedback = TransportCcFeedbackGenerator(sender_ssrc=self.rtcp_ssrc)
        self._bwe = SendSideBandwidthEstimator()
        self._allocator = StreamAllocator()
        self._outgoing_transport_cc: int | None = None
        self._bwe_has_feedback = False
        self._probe_target = 0
        """Bits/s the last allocation wished it could send (0: it got what it wanted)."""
        self._last_tick = 0.0
        self._outgoing_sequence = 0
        self._next_rtcp = 0.0
        self._next_feedback = 0.0
        self._next_allocation = 0.0
        self._slots: list[_Slot] = []
        self._consumers_by_ssrc: dict[int, Consumer] = {}
        self._offer: SessionDescription | None = None
        self._revision = 0
        self._awaiting_revision: int | None = None
        self._offer_dirty = False
        self._session_id = secrets.randbits(62)
        self._closed = False
        self.data: DataChannels | None = None
        """Data channels, once a publish offer carried a data channel m-line."""

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self.grant.can_subscribe:
            self.subscribe = self._new_transport("subscribe")
            await self.subscribe.gather()

    def _new_transport(self, direction: str) -> Transport:
        on_rtp = self._on_publish_rtp if direction == "publish" else self._on_subscribe_rtp
        on_rtcp = self._on_publish_rtcp if direction == "publish" else self._on_subscribe_rtcp
        return Transport(
            direction,  # type: ignore[arg-type]
            self.context.certificate,
            on_rtp=on_rtp,
            on_rtcp=on_rtcp,
            on_connected=self._on_transport_connected,
            on_failed=self._on_transport_failed,
            announced_ip=self.context.settings.announced_ip,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.data is not None:
            await self.data.close()
        for transport in (self.publish, self.subscribe):
            if transport is not None:
                await transport.close()

    def info(self) -> ParticipantInfo:
        return ParticipantInfo(
            participant_id=self.id,
            identity=self.grant.identity,
            name=self.name,
            tracks=[self.track_info(p) for p in self.producers.values()],
        )

    def track_info(self, producer: Producer) -> Track:
        return Track(
            track_id=producer.id,
            participant_id=self.id,
            kind=producer.kind,
            source=producer.source,
            muted=producer.muted,
            simulcast=producer.simulcast,
        )

    def send(self, message: ServerMessage) -> None:
        if not self._closed:
            self.sink(message)

    def _on_transport_connected(self, transport: Transport) -> None:
        if transport is self.publish and self.data is not None:
            self.data.start(transport.session)
        if transport is self.subscribe:
            sender = self._consumer_sender()
            for slot in self._slots:
                if slot.consumer is not None and slot.payload_type is not None:
                    slot.consumer.activate(slot.payload_type, slot.rtx_payload_type, sender)

    def _on_transport_failed(self, transport: Transport) -> None:
        if self._closed:
            return
        self.send(
            ErrorMessage(
                code=ErrorCode.TRANSPORT_FAILED,
                message=f"the {transport.direction} transport failed (ICE or DTLS); rejoin",
                fatal=True,
            )
        )
        asyncio.get_running_loop().create_task(self.room.worker.remove_participant(self.id))

    # --- publishing -------------------------------------------------------------------

    async def publish_offer(self, message: PublishOfferMessage) -> PublishAnswerMessage:
        try:
            offer = SessionDescription.parse(message.sdp)
        except SdpError as exc:
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
        if self.publish is None:
            self.publish = self._new_transport("publish")
            await self.publish.gather()
        try:
            answer, published = create_publish_answer(
                offer, self.publish.local_parameters(), allow_h264=self.context.settings.allow_h264
            )
            sctp = accepted_data_channel(offer, answer)
            if sctp is not None and self.data is None:
                self.data = DataChannels(self, sctp)
                if self.publish.connected.is_set():
                    self.data.start(self.publish.session)
            if answer.bundle_groups:
                first = offer.media_by_mid(answer.bundle_groups[0][0])
                assert first is not None
                self.publish.start(offer.transport(first))
        except SdpError as exc:
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_CANDIDATE, str(exc)) from exc

        offered_mids = {m.mid for m in published}
        for mid in [mid for mid in self.producers if mid not in offered_mids]:
            self.room.unpublish(self.producers.pop(mid))
        for media in published:
            ids = media.header_extensions
            self._mid_extension = ids.get(SDES_MID, self._mid_extension)
            self._rid_extension = ids.get(SDES_RTP_STREAM_ID, self._rid_extension)
            self._rrid_extension = ids.get(SDES_REPAIRED_RTP_STREAM_ID, self._rrid_extension)
            self._transport_cc_extension = ids.get(TRANSPORT_WIDE_CC, self._transport_cc_extension)
            if media.kind == "audio":
                self._audio_level_extension = ids.get(SSRC_AUDIO_LEVEL, self._audio_level_extension)
            if media.mid in self.producers:
                continue
            info = message.tracks.get(media.mid, TrackInfo())
            source = info.source
            if source == "unknown":
                source = "microphone" if media.kind == "audio" else "camera"
            producer = Producer(
                _new_id("TR_"),
                self.id,
                media.kind,  # type: ignore[arg-type]
                media.mid,
                media.codecs,
                media.rids,
                source,
                self._send_key_frame_request,
                self._send_nack,
            )
            self.producers[media.mid] = producer
            for ssrc in media.ssrcs:
                if not media.rids:
                    stream = self._bind_ssrc(ssrc, producer, None)
                    rtx_ssrc = media.rtx_ssrc.get(ssrc)
                    if rtx_ssrc is not None:
                        self._rtx_table[rtx_ssrc] = (producer, stream)
            self.room.publish(producer)
        return PublishAnswerMessage(
            sdp=str(answer), tracks={mid: p.id for mid, p in self.producers.items()}
        )

    def mute(self, track_id: str, muted: bool) -> Producer:
        for producer in self.producers.values():
            if producer.id == track_id:
                producer.muted = muted
                return producer
        raise ProtocolError(ErrorCode.UNKNOWN_TRACK, f"you publish no track {track_id!r}")

    def _bind_ssrc(self, ssrc: int, producer: Producer, rid: str | None) -> RtpStream:
        stream = producer.add_stream(ssrc, rid)
        self._feedback.media_ssrc = ssrc
        self._ssrc_table[ssrc] = (producer, stream)
        return stream

    def _learn_ssrc(self, ssrc: int, data: bytes) -> tuple[Producer, RtpStream | None] | None:
        """Bind an SSRC seen for the first time to a producer (RFC 8843 section 9.2)."""
        if len(self._ssrc_table) >= MAX_LEARNED_SSRCS:
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
            producer = self.producers.get(mid)
        else:
            # No MID: the payload type decides when it names exactly one producer.
            candidates = [
                p
                for p in self.producers.values()
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
            repaired = next(
                (s for s in producer.streams.values() if s.rid == rrid),
                None,
            )
            if repaired is None:
                return None
            self._rtx_table[ssrc] = (producer, repaired)
            self._ssrc_table[ssrc] = (producer, None)
            return producer, None
        if payload_type not in producer.payload_types:
            return None
        return producer, self._bind_ssrc(ssrc, producer, rid)

    def _on_publish_rtp(self, data: bytes) -> None:
        if len(data) < 12:
            self.packets_unroutable += 1
            return
        ssrc = _SSRC.unpack_from(data, 8)[0]
        entry = self._ssrc_table.get(ssrc)
        if entry is None:
            entry = self._learn_ssrc(ssrc, data)
            if entry is None:
                self.packets_unroutable += 1
                return
        producer, stream = entry
        try:
            start, extensions = read_payload_and_extensions(data)
        except ValueError:
            producer.packets_dropped += 1
            return
        now = time.time()
        twcc = extensions.get(self._transport_cc_extension)  # type: ignore[arg-type]
        if twcc is not None and len(twcc) == 2:
            self._feedback.add(decode_transport_sequence_number(twcc), now)
        if stream is None:
            self._receive_rtx(ssrc, data, start, now)
            return
        level = extensions.get(self._audio_level_extension)  # type: ignore[arg-type]
        if level is not None and producer.kind == "audio" and len(level) >= 1:
            voice, dbov = decode_audio_level(level[:1])
            self.room.speakers.add_level(self.id, dbov, voice, now)
        producer.receive(stream, data, start, now)

    def _receive_rtx(self, ssrc: int, data: bytes, start: int, now: float) -> None:
        """Unwrap an RTX packet (RFC 4588 section 4) into the packet it repairs."""
        entry = self._rtx_table.get(ssrc)
        if entry is None or len(data) < start + 2:
            return  # padding-only probe, or not yet bound
        producer, stream = entry
        original_seq = int.from_bytes(data[start : start + 2], "big")
        header = _RTX_HEADER.pack(
            0x80,
            (data[1] & 0x80) | producer.codec.payload_type,
            original_seq,
            int.from_bytes(data[4:8], "big"),
            stream.ssrc,
        )
        producer.receive(stream, header + data[start + 2 :], 12, now)

    def _on_publish_rtcp(self, data: bytes) -> None:
        try:
            packets = rtcp.parse_rtcp(data)
        except ValueError:
            self.rtcp_errors += 1
            return
        now = time.time()
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                entry = self._ssrc_table.get(packet.ssrc)
                if entry is not None and entry[1] is not None:
                    entry[1].statistics.add_sender_report(
                        packet.ntp_timestamp, packet.rtp_timestamp, now
                    )

    def _send_nack(self, media_ssrc: int, lost: list[int]) -> None:
        if self.publish is not None:
            nack = rtcp.GenericNack(sender_ssrc=self.rtcp_ssrc, media_ssrc=media_ssrc, lost=lost)
            self.publish.session.send_rtcp(bytes(nack))

    def _send_key_frame_request(self, media_ssrc: int) -> None:
        if self.publish is not None:
            pli = rtcp.PictureLossIndication(sender_ssrc=self.rtcp_ssrc, media_ssrc=media_ssrc)
            self.publish.session.send_rtcp(bytes(pli))

    # --- subscribing ------------------------------------------------------------------

    def add_consumer(self, producer: Producer) -> None:
        """Start receiving ``producer`` (renegotiates the subscribe transport)."""
        if self.subscribe is None:
            return
        consumer = Consumer(_new_id("CO_"), producer, self.id, self._send_media)
        producer.add_consumer(consumer)
        self._consumers_by_ssrc[consumer.ssrc] = consumer
        slot = next(
            (
                s
                for s in self._slots
                if s.consumer is None and s.negotiated_inactive and s.kind == producer.kind
            ),
            None,
        )
        if slot is None:
            slot = _Slot(mid=str(len(self._slots)), kind=producer.kind, consumer=consumer)
            self._slots.append(slot)
        else:
            slot.consumer = consumer
            slot.negotiated_inactive = False
            slot.payload_type = slot.rtx_payload_type = None
        self._renegotiate()

    def remove_consumer(self, producer: Producer) -> None:
        for slot in self._slots:
            consumer = slot.consumer
            if consumer is not None and consumer.producer is producer:
                consumer.deactivate()
                producer.remove_consumer(consumer.id)
                self._consumers_by_ssrc.pop(consumer.ssrc, None)
                slot.consumer = None
                slot.payload_type = slot.rtx_payload_type = None
                self._renegotiate()

    def track_settings(self, message: TrackSettingsMessage) -> None:
        """Apply a subscriber's preferences to the consumer of ``message.track_id``."""
        for consumer in self.consumers():
            if consumer.producer.id == message.track_id:
                consumer.set_preferences(
                    paused=message.paused,
                    max_spatial_layer=message.max_spatial_layer,
                    max_width=message.max_width,
                    max_height=message.max_height,
                )
                return
        raise ProtocolError(ErrorCode.UNKNOWN_TRACK, f"you receive no track {message.track_id!r}")

    def consumers(self) -> list[Consumer]:
        return [s.consumer for s in self._slots if s.consumer is not None]

    def _renegotiate(self) -> None:
        self._offer_dirty = True
        self._maybe_send_offer()

    def _maybe_send_offer(self) -> None:
        if self._closed or self.subscribe is None or not self._slots:
            return
        if self._awaiting_revision is not None or not self._offer_dirty:
            return
        self._offer_dirty = False
        self._revision += 1
        allow_h264 = self.context.settings.allow_h264
        media: list[OutgoingMedia] = []
        tracks: dict[str, SubscribeTrack] = {}
        for slot in self._slots:
            consumer = slot.consumer
            if consumer is None:
                media.append(
                    OutgoingMedia(
                        mid=slot.mid,
                        kind=slot.kind,
                        codecs=default_outgoing_codecs(slot.kind, allow_h264),
                        header_extensions=[],
                        ssrc=secrets.randbits(32) or 1,
                        rtx_ssrc=None,
                        cname=self.cname,
                        stream_id="-",
                        track_id=f"inactive-{slot.mid}",
                        active=False,
                    )
                )
                continue
            producer = consumer.producer
            codecs = [
                c
                for c in default_outgoing_codecs(slot.kind, allow_h264)
                if c.name.lower() == producer.codec.name.lower()
            ]
            media.append(
                OutgoingMedia(
                    mid=slot.mid,
                    kind=slot.kind,
                    codecs=codecs,
                    header_extensions=[
                        HeaderExtension(id=OUTGOING_TRANSPORT_CC_ID, uri=TRANSPORT_WIDE_CC)
                    ],
                    ssrc=consumer.ssrc,
                    rtx_ssrc=consumer.rtx_ssrc if any(c.is_rtx for c in codecs) else None,
                    cname=self.cname,
                    stream_id=producer.participant_id,
                    track_id=producer.id,
                    active=True,
                )
            )
            tracks[slot.mid] = SubscribeTrack(
                track_id=producer.id,
                participant_id=producer.participant_id,
                kind=producer.kind,
            )
        offer = create_subscribe_offer(
            self.subscribe.local_parameters(), media, self._session_id, self._revision
        )
        self._offer = offer
        self._awaiting_revision = self._revision
        self.send(SubscribeOfferMessage(sdp=str(offer), revision=self._revision, tracks=tracks))

    async def subscribe_answer(self, message: SubscribeAnswerMessage) -> None:
        if self.subscribe is None:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "this token cannot subscribe")
        if self._awaiting_revision is None or message.revision != self._awaiting_revision:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER,
                f"no subscribe offer with revision {message.revision} is awaiting an answer",
            )
        assert self._offer is not None
        try:
            answer = SessionDescription.parse(message.sdp)
            negotiated = parse_subscribe_answer(answer, self._offer)
            if not self.subscribe.started and answer.media:
                self.subscribe.start(answer.transport(answer.media[0]))
        except SdpError as exc:
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_CANDIDATE, str(exc)) from exc
        self._awaiting_revision = None
        connected = self.subscribe.connected.is_set()
        for result in negotiated.values():
            if not result.rejected and TRANSPORT_WIDE_CC in result.header_extensions:
                self._outgoing_transport_cc = result.header_extensions[TRANSPORT_WIDE_CC]
        sender = self._consumer_sender() if connected else None
        for slot in self._slots:
            result = negotiated.get(slot.mid)
            if slot.consumer is None:
                slot.negotiated_inactive = True
                continue
            if result is None or result.rejected or not result.codecs:
                slot.consumer.deactivate()
                slot.payload_type = slot.rtx_payload_type = None
                continue
            slot.payload_type = result.codecs[0].payload_type
            slot.rtx_payload_type = next(
                (c.payload_type for c in result.codecs if c.is_rtx and c.apt == slot.payload_type),
                None,
            )
            if connected:
                slot.consumer.activate(slot.payload_type, slot.rtx_payload_type, sender)
        self._maybe_send_offer()

    def _on_subscribe_rtp(self, data: bytes) -> None:
        self.packets_unroutable += 1  # subscribers send no media to the SFU

    def _on_subscribe_rtcp(self, data: bytes) -> None:
        try:
            packets = rtcp.parse_rtcp(data)
        except ValueError:
            self.rtcp_errors += 1
            return
        for packet in packets:
            if isinstance(packet, rtcp.PictureLossIndication):
                consumer = self._consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.plis_received += 1
                    consumer.request_key_frame()
            elif isinstance(packet, rtcp.FullIntraRequest):
                for ssrc, _ in packet.entries:
                    consumer = self._consumers_by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.firs_received += 1
                        consumer.request_key_frame()
            elif isinstance(packet, rtcp.GenericNack):
                consumer = self._consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.retransmit(packet.lost)
            elif isinstance(packet, rtcp.ReceiverReport | rtcp.SenderReport):
                self._on_report_blocks(packet.reports)
            elif isinstance(packet, rtcp.TransportFeedback):
                try:
                    feedback = TransportCcFeedback.parse(packet.fci)
                except ValueError:
                    self.rtcp_errors += 1
                    continue
                self._bwe.on_feedback(feedback, time.time())
                self._bwe_has_feedback = True
            elif isinstance(packet, rtcp.ReceiverEstimatedMaxBitrate):
                self._bwe.on_remb(packet.bitrate, time.time())
                self._bwe_has_feedback = True

    def _on_report_blocks(self, blocks: list[rtcp.ReportBlock]) -> None:
        now = rtcp.compact_ntp(rtcp.ntp_from_unix(time.time()))
        for block in blocks:
            consumer = self._consumers_by_ssrc.get(block.ssrc)
            if consumer is None:
                continue
            consumer.fraction_lost = block.fraction_lost
            if block.lsr:
                rtt = ((now - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536
                if rtt < 60:
                    consumer.rtt = rtt
            self._bwe.on_receiver_report(block.fraction_lost, consumer.rtt, time.time())

    async def add_candidate(self, message: CandidateMessage) -> None:
        transport = self.publish if message.target == "publish" else self.subscribe
        if transport is None:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER, f"no {message.target} transport yet: offer first"
            )
        value = None if message.candidate is None else message.candidate.candidate
        if value == "":
            value = None  # browsers signal end-of-candidates with an empty candidate
        try:
            await transport.add_remote_candidate(value)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_CANDIDATE, str(exc)) from exc

    # --- periodic RTCP ----------------------------------------------------------------

    def _consumer_sender(self) -> SendRtp:
        """How consumers send once the subscribe transport is up: straight into its
        send batch, unless each packet needs the transport-wide sequence number
        (:meth:`_send_media`). Consumers are re-activated with it at every answer, so a
        renegotiation that adds transport-cc reaches them all."""
        assert self.subscribe is not None
        if self._outgoing_transport_cc is not None:
            return self._send_media
        return self.subscribe.session.rtp_sender

    def _send_media(self, header: bytes, payload: bytes, probe: bool = False) -> None:
        """Send one consumer packet (its 12-byte header and its payload), stamped with
        the subscribe transport's transport-wide sequence number when the subscriber
        negotiated it."""
        assert self.subscribe is not None
        extension_id = self._outgoing_transport_cc
        if extension_id is None:
            self.subscribe.session.send_rtp(header, payload)
            return
        sequence = self._outgoing_sequence = (self._outgoing_sequence + 1) & 0xFFFF
        extension = _TWCC_EXTENSION.pack(0xBEDE, 1, (extension_id << 4) | 1, sequence, 0)
        self._bwe.on_packet_sent(
            sequence, _STAMPED_HEADER_SIZE + len(payload), time.time(), is_padding=probe
        )
        self.subscribe.session.send_rtp(header, payload, extension)

    @property
    def estimated_bitrate(self) -> int | None:
        """The subscribe transport's bandwidth estimate; None until the subscriber has
        sent transport-cc feedback or a REMB (a client without congestion control is
        not throttled by a guess)."""
        return self._bwe.estimate if self._bwe_has_feedback else None

    def tick(self, now: float) -> None:
        """Periodic work, called by the worker every 50 ms or a little more (see
        :meth:`sfu.worker.Worker._schedule_tick`)."""
        if self._closed:
            return
        if self._probe_target:
            self._probe(now, min(now - self._last_tick, MAX_PROBE_BURST_SECONDS))
        self._last_tick = now
        if now >= self._next_feedback:
            self._next_feedback = now + FEEDBACK_INTERVAL
            if self.publish is not None:
                for packet in self._feedback.feedback(now):
                    self.publish.session.send_rtcp(packet)
                for producer in self.producers.values():
                    producer.nack_timer(now, rtt=FEEDBACK_INTERVAL)
        if now >= self._next_allocation:
            self._next_allocation = now + ALLOCATION_INTERVAL
            self._allocate(now)
        if now >= self._next_rtcp:
            self._next_rtcp = now + RTCP_INTERVAL * (0.5 + secrets.randbelow(1000) / 1000)
            if self.publish is not None:
                for packet in self._receiver_reports(now):
                    self.publish.session.send_rtcp(packet)
            if self.subscribe is not None:
                for packet in self._sender_reports(now):
                    self.subscribe.session.send_rtcp(packet)

    def _allocate(self, now: float) -> None:
        """Give each video consumer the layer that fits the subscriber's estimate."""
        consumers = [
            c
            for c in self.consumers()
            if c.kind == "video" and c.active and not c.producer.measuring(now)
        ]
        if not consumers:
            return
        speakers = self.room.active_speakers
        tracks = []
        for consumer in consumers:
            producer = consumer.producer
            priority = PRIORITY_SCREEN_SHARE if producer.source == "screen" else PRIORITY_DEFAULT
            if producer.participant_id in speakers:
                priority += PRIORITY_ACTIVE_SPEAKER
            tracks.append(consumer.allocation_input(priority, now))
        estimate = self.estimated_bitrate
        budget = UNKNOWN_ESTIMATE if estimate is None else max(estimate, _video_floor(tracks))
        allocation = self._allocator.allocate(tracks, budget, now)
        for consumer in consumers:
            consumer.set_target_layer(allocation.targets.get(consumer.id))
            consumer.set_target_temporal_layer(allocation.temporal_targets.get(consumer.id))
        self._probe_target = 0
        if estimate is not None and allocation.deficient:
            wanted = sum(
                max((layer.bitrate for layer in track.layers), default=0)
                for track in tracks
                if track.track_id in allocation.deficient
            )
            self._probe_target = allocation.total + wanted

    def _probe(self, now: float, elapsed: float) -> None:
        """Top the media up with probe packets (RTX copies of media, or padding-only
        packets) while the estimator probes whether the allocation's wish fits."""
        rate = self._bwe.wants_probe(now, self._probe_target)
        if rate <= 0:
            return
        budget = int(rate * elapsed)
        for consumer in self.consumers():
            size = PROBE_PACKET_SIZE if consumer.rtx_payload_type is not None else PADDING_SIZE
            count = min(MAX_PROBE_PACKETS, budget // (size + 12))
            packets = consumer.probe_packets(count)
            if packets:
                for header, payload in packets:
                    self._send_media(header, payload, probe=True)
                return

    def _receiver_reports(self, now: float) -> list[bytes]:
        blocks = []
        for producer in self.producers.values():
            for stream in producer.streams.values():
                block = stream.statistics.report_block(now)
                if block is not None:
                    blocks.append(block)
        return [
            bytes(rtcp.ReceiverReport(ssrc=self.rtcp_ssrc, reports=blocks[i : i + 31]))
            for i in range(0, len(blocks), 31)
        ]

    def _sender_reports(self, now: float) -> list[bytes]:
        compounds: list[bytes] = []
        current = b""
        for consumer in self.consumers():
            report = consumer.sender_report(now) if consumer.active else None
            if report is None:
                continue
            sdes = rtcp.SourceDescription(chunks=[(consumer.ssrc, [(1, self.cname.encode())])])
            packet = bytes(report) + bytes(sdes)
            if current and len(current) + len(packet) > RTCP_MAX_PACKET:
                compounds.append(current)
                current = b""
            current += packet
        if current:
            compounds.append(current)
        return compounds
