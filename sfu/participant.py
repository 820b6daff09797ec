"""A Participant: one client session in a room, with its two transports, composed of
the parts that do the work:

- its publish transport's :class:`~sfu.demultiplexer.RtpDemultiplexer` (SSRC to
  producer and stream) and one :class:`~sfu.producer.Producer` per published track;
- its subscribe transport's :class:`~sfu.subscribe_negotiator.SubscribeNegotiator`
  (m-lines, offers, answers) and :class:`~sfu.bandwidth_controller.BandwidthController`
  (transport-cc, estimate, allocation, probes), and one :class:`~sfu.consumer.Consumer`
  per track of the others, routed by the room's :class:`~sfu.router.Router`;
- its :class:`~sfu.rtcp_reporter.RtcpReporter` (the SFU's receiver and sender reports).

What stays here is the lifecycle, the publish negotiation, the dispatch of the RTCP
both transports receive (within the participant's RTCP budget) and the periodic work
that drives the parts. A subscriber has ``renegotiation_timeout`` seconds to answer an
offer before it is dropped.
"""

from __future__ import annotations

import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sfu.bandwidth_controller import BandwidthController
from sfu.bwe.feedback_generator import TransportCcFeedbackGenerator
from sfu.consumer import Consumer
from sfu.data_channel import DataChannels
from sfu.demultiplexer import RtpDemultiplexer
from sfu.loop_time import loop_cpu_time
from sfu.nack_generator import DEFAULT_RTT
from sfu.producer import Producer
from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    ErrorMessage,
    IceCandidate,
    PublishAnswerMessage,
    PublishOfferMessage,
    ServerMessage,
    SubscribeAnswerMessage,
    Track,
    TrackInfo,
    TrackSettingsMessage,
)
from sfu.protocol import (
    Participant as ParticipantInfo,
)
from sfu.rtcp_budget import RtcpBudget
from sfu.rtcp_reporter import RtcpReporter
from sfu.rtp import rtcp
from sfu.rtp.extensions import (
    SSRC_AUDIO_LEVEL,
    TRANSPORT_WIDE_CC,
    decode_audio_level,
    decode_transport_sequence_number,
)
from sfu.rtp.packet import read_header_extensions, read_payload_and_extensions
from sfu.rtp.transport_feedback import parse_transport_cc
from sfu.sdp import (
    SdpError,
    SessionDescription,
    accepted_data_channel,
    bundle_transport,
    create_publish_answer,
)
from sfu.subscribe_negotiator import SubscribeNegotiator
from sfu.transport import Transport
from sfu.worker_api import EventSink, Grant, ProtocolError

if TYPE_CHECKING:
    from sfu.room import Room
    from sfu.viewer_subscription import ViewerSubscription
    from sfu.worker import WorkerContext

logger = logging.getLogger(__name__)

FEEDBACK_INTERVAL = 0.1
"""Seconds between transport-cc feedback packets to a publisher, and NACK retries."""

_SSRC = struct.Struct("!I")


def _check_media_line(candidate: IceCandidate, mids: list[str | None], target: str) -> None:
    """A candidate must name an m-line of the current description: by sdpMid, which
    wins when both are given (as in W3C's addIceCandidate), or by sdpMLineIndex.
    Neither is fine: every m-line shares the one BUNDLE transport."""
    if candidate.sdpMid is not None:
        if candidate.sdpMid not in mids:
            raise ProtocolError(
                ErrorCode.BAD_CANDIDATE,
                f"the {target} description has no m-line with sdpMid {candidate.sdpMid[:80]!r}",
            )
    elif candidate.sdpMLineIndex is not None and not 0 <= candidate.sdpMLineIndex < len(mids):
        raise ProtocolError(
            ErrorCode.BAD_CANDIDATE,
            f"sdpMLineIndex {candidate.sdpMLineIndex} is out of range: the {target}"
            f" description has {len(mids)} m-lines",
        )


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(9)


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
        self.rtcp_budget = RtcpBudget(context.settings.rtcp_budget)
        self.joined_at = time.monotonic()
        """When the join request reached the worker (join latency metric)."""
        self.rtcp_received_at = self.joined_at
        """When the last RTCP arrived on either transport (a silent HTTP session ends)."""
        self._audio_level_extension: int | None = None
        self._transport_cc_extension: int | None = None
        self._feedback = TransportCcFeedbackGenerator(sender_ssrc=self.rtcp_ssrc)
        self.demultiplexer = RtpDemultiplexer(self.producers, self._feedback_names)
        self.bandwidth = BandwidthController()
        self.reporter = RtcpReporter(self.rtcp_ssrc, self.cname)
        self._next_feedback = 0.0
        self.negotiator = SubscribeNegotiator(self.cname, context.settings.allow_h264)
        self._consumers_by_ssrc: dict[int, Consumer] = {}
        self._offer_deadline: float | None = None
        """When the outstanding subscribe offer must have been answered (monotonic)."""
        self._closed = False
        self.data: DataChannels | None = None
        """Data channels, once a publish offer carried a data channel m-line."""
        self._publish_mids: list[str | None] = []
        """The mids of the last publish offer, which trickled candidates must name."""
        self.viewer: ViewerSubscription | None = None
        """Set before :meth:`open` for a WHEP viewer: its subscription is offered by the
        client (:mod:`sfu.viewer_subscription`) instead of by the server."""

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self.grant.can_subscribe:
            self.subscribe = self.bandwidth.transport = self._new_transport("subscribe")
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
            # ICE's offerer controls (RFC 8445): the server on its own subscribe offers.
            ice_controlling=direction == "subscribe" and self.viewer is None,
            ports=self.context.ports,
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
        if transport is self.subscribe and self.viewer is not None:
            self.viewer.on_connected()
        elif transport is self.subscribe:
            sender = self.bandwidth.sender()
            for consumer, payload_type, rtx_payload_type, red in self.negotiator.accepted():
                self.room.router.activate(consumer, payload_type, rtx_payload_type, sender, red)

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
        self.room.worker.drop_participant(self.id)

    # --- publishing -------------------------------------------------------------------

    async def publish_offer(self, message: PublishOfferMessage) -> PublishAnswerMessage:
        try:
            offer = SessionDescription.parse(
                message.sdp, max_media=self.context.settings.max_mlines_per_offer
            )
        except SdpError as exc:
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
        if self.publish is None:
            self.publish = self._new_transport("publish")
            await self.publish.gather()
        try:
            answer, published = create_publish_answer(
                offer, self.publish.local_parameters(), allow_h264=self.context.settings.allow_h264
            )
            limit = self.context.settings.max_tracks_per_participant
            if len(published) > limit:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_TRACKS,
                    f"the offer publishes {len(published)} tracks; a participant may publish"
                    f" at most {limit} at once",
                )
            if answer.bundle_groups:
                self.publish.start(bundle_transport(offer, answer))
            sctp = accepted_data_channel(offer, answer)
            if sctp is not None and self.data is None:
                self.data = DataChannels(self, sctp)
                if self.publish.connected.is_set():
                    self.data.start(self.publish.session)
        except (SdpError, ValueError) as exc:
            # ValueError: transport parameters the SDP parser let through (a fingerprint
            # or ICE credentials the transport refuses).
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc

        self._publish_mids = [m.mid for m in offer.media]
        offered_mids = {m.mid for m in published}
        gone = [self.producers.pop(mid) for mid in list(self.producers) if mid not in offered_mids]
        added: list[Producer] = []
        for media in published:
            ids = media.header_extensions
            self.demultiplexer.use_extensions(ids)
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
                    stream = self.demultiplexer.bind(ssrc, producer, None)
                    rtx_ssrc = media.rtx_ssrc.get(ssrc)
                    if rtx_ssrc is not None:
                        self.demultiplexer.bind_rtx(rtx_ssrc, producer, stream)
            added.append(producer)
        if gone or added:
            self.room.change_tracks(self, published=added, unpublished=gone)
        return PublishAnswerMessage(
            sdp=str(answer), tracks={mid: p.id for mid, p in self.producers.items()}
        )

    def mute(self, track_id: str, muted: bool) -> Producer:
        for producer in self.producers.values():
            if producer.id == track_id:
                producer.muted = muted
                return producer
        raise ProtocolError(ErrorCode.UNKNOWN_TRACK, f"you publish no track {track_id!r}")

    def _on_publish_rtp(self, data: bytes) -> None:
        if len(data) < 12:
            self.packets_unroutable += 1
            return
        route = self.demultiplexer.route(data)
        if route is None:
            self.packets_unroutable += 1
            self._record_unroutable(data)
            return
        producer, stream = route
        try:
            start, extensions = read_payload_and_extensions(data)
        except ValueError:
            producer.packets_dropped += 1
            return
        now = time.monotonic()
        twcc = extensions.get(self._transport_cc_extension)  # type: ignore[arg-type]
        if twcc is not None and len(twcc) == 2:
            self._feedback.add(decode_transport_sequence_number(twcc), now)
        if stream is None:
            repaired = self.demultiplexer.repaired(_SSRC.unpack_from(data, 8)[0])
            if repaired is not None:
                repaired[0].receive_rtx(repaired[1], data, start, now)
            return
        level = extensions.get(self._audio_level_extension)  # type: ignore[arg-type]
        if level is not None and producer.kind == "audio" and len(level) >= 1:
            voice, dbov = decode_audio_level(level[:1])
            self.room.speakers.add_level(self.id, dbov, voice, now)
        producer.receive(stream, data, start, now)

    def _record_unroutable(self, data: bytes) -> None:
        """Put an unroutable packet's transport-wide sequence number in the feedback all
        the same: libwebrtc probes before its media flows (padding-only packets on SSRC
        0 without a MID, or on an RTX SSRC whose media stream is not known yet) and
        reads a probe missing from the feedback as lost."""
        try:
            twcc = read_header_extensions(data).get(self._transport_cc_extension)  # type: ignore[arg-type]
        except ValueError:
            return
        if twcc is not None and len(twcc) == 2:
            self._feedback.add(decode_transport_sequence_number(twcc), time.monotonic())

    def _feedback_names(self, media_ssrc: int) -> None:
        self._feedback.media_ssrc = media_ssrc

    def _on_publish_rtcp(self, data: bytes) -> None:
        self._within_rtcp_budget(self._handle_publish_rtcp, data)

    def _within_rtcp_budget(self, handler: Callable[[bytes], None], data: bytes) -> None:
        """Run an RTCP handler unless this participant's RTCP used its budget of event-
        loop time this second (:mod:`sfu.rtcp_budget`), and charge what it took."""
        now = self.rtcp_received_at = time.monotonic()
        if not self.rtcp_budget.admit(now):
            return
        start = loop_cpu_time()
        try:
            handler(data)
        finally:
            self.rtcp_budget.charge(loop_cpu_time() - start)

    def _handle_publish_rtcp(self, data: bytes) -> None:
        try:
            packets = rtcp.parse_rtcp(data)
        except ValueError:
            self.rtcp_errors += 1
            return
        now = time.monotonic()
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                stream = self.demultiplexer.stream(packet.ssrc)
                if stream is not None:
                    stream.statistics.add_sender_report(
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

    def update_consumers(
        self, added: Iterable[Producer] = (), removed: Iterable[Producer] = ()
    ) -> None:
        """Start receiving ``added`` and stop receiving ``removed``, all in one
        renegotiation of the subscribe transport (a later one, while an offer awaits
        its answer). A consumer that goes before any offer carried it costs no m-line."""
        if self.viewer is not None:
            self.viewer.update(added, removed)
            return
        for producer in removed:
            consumer = self.negotiator.remove(producer.id)
            if consumer is not None:
                self.drop_consumer(consumer)
        if self.subscribe is not None:
            for producer in added:
                if producer.id in self.negotiator.consumers:
                    continue
                if not self.negotiator.decodes(producer):
                    self._send_codec_unsupported(producer)
                    continue
                self.negotiator.add(self.add_consumer(producer))
        self._maybe_send_offer()

    def add_consumer(
        self, producer: Producer, ssrc: int | None = None, rtx_ssrc: int | None = None
    ) -> Consumer:
        """A consumer of ``producer`` for this subscribe transport (inactive until its
        m-line is negotiated), with the given SSRCs when its m-line has them already."""
        consumer = Consumer(_new_id("CO_"), producer, self.id, self.bandwidth.send)
        if ssrc is not None:
            consumer.ssrc = ssrc
            consumer.rtx_ssrc = rtx_ssrc
        self.room.router.add_consumer(consumer)
        self._consumers_by_ssrc[consumer.ssrc] = consumer
        return consumer

    def drop_consumer(self, consumer: Consumer) -> None:
        """Stop ``consumer`` and forget it (its m-line is its negotiator's business)."""
        consumer.deactivate()
        self.room.router.remove_consumer(consumer)
        self._consumers_by_ssrc.pop(consumer.ssrc, None)

    def track_settings(self, message: TrackSettingsMessage) -> None:
        """Apply a subscriber's preferences to the consumer of ``message.track_id``."""
        consumer = self.negotiator.consumers.get(message.track_id)
        if consumer is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TRACK, f"you receive no track {message.track_id!r}"
            )
        consumer.set_preferences(
            paused=message.paused,
            max_spatial_layer=message.max_spatial_layer,
            max_width=message.max_width,
            max_height=message.max_height,
        )

    def consumers(self) -> list[Consumer]:
        if self.viewer is not None:
            return self.viewer.consumers()
        return list(self.negotiator.consumers.values())

    def _maybe_send_offer(self) -> None:
        """Offer the current state unless nothing changed or an offer awaits its answer
        (the answer calls this again)."""
        if self._closed or self.subscribe is None:
            return
        offer = self.negotiator.offer(self.subscribe.local_parameters())
        if offer is not None:
            timeout = self.context.settings.renegotiation_timeout
            self._offer_deadline = time.monotonic() + timeout
            self.send(offer)

    def _renegotiation_timed_out(self) -> None:
        """The subscriber let its offer go unanswered past the deadline: it is told,
        and dropped from the room (its tracks unpublished, its transports closed)."""
        self._offer_deadline = None
        timeout = self.context.settings.renegotiation_timeout
        self.send(
            ErrorMessage(
                code=ErrorCode.RENEGOTIATION_TIMEOUT,
                message=f"subscribe offer {self.negotiator.awaiting} was not answered within"
                f" {timeout:g} s; rejoin",
                fatal=True,
            )
        )
        self.room.worker.drop_participant(self.id)

    async def subscribe_answer(self, message: SubscribeAnswerMessage) -> None:
        if self.subscribe is None:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "this token cannot subscribe")
        start = None if self.subscribe.started else self.subscribe.start
        answered = self.negotiator.answer(message.sdp, message.revision, start)
        self._offer_deadline = None
        if answered.transport_cc_id is not None:
            self.bandwidth.use_transport_cc(answered.transport_cc_id)
        for consumer in answered.refused:
            consumer.deactivate()
        for producer in answered.undecodable:
            self._send_codec_unsupported(producer)
        if self.subscribe.connected.is_set():
            sender = self.bandwidth.sender()
            for consumer, payload_type, rtx_payload_type, red in self.negotiator.accepted():
                self.room.router.activate(consumer, payload_type, rtx_payload_type, sender, red)
        self._maybe_send_offer()

    def _send_codec_unsupported(self, producer: Producer) -> None:
        codec = producer.codec.mime_type
        self.send(
            ErrorMessage(
                code=ErrorCode.CODEC_UNSUPPORTED,
                message=f"you cannot decode {codec}: track {producer.id} of"
                f" {producer.participant_id} is not sent to you",
                track_id=producer.id,
                codec=codec,
            )
        )

    def _on_subscribe_rtp(self, data: bytes) -> None:
        self.packets_unroutable += 1  # subscribers send no media to the SFU

    def _on_subscribe_rtcp(self, data: bytes) -> None:
        self._within_rtcp_budget(self._handle_subscribe_rtcp, data)

    def _handle_subscribe_rtcp(self, data: bytes) -> None:
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
                    self.room.router.request_key_frame(consumer)
            elif isinstance(packet, rtcp.FullIntraRequest):
                for ssrc, _ in packet.entries:
                    consumer = self._consumers_by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.firs_received += 1
                        self.room.router.request_key_frame(consumer)
            elif isinstance(packet, rtcp.GenericNack):
                consumer = self._consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.retransmit(packet.lost, time.monotonic())
            elif isinstance(packet, rtcp.ReceiverReport | rtcp.SenderReport):
                self._on_report_blocks(packet.reports)
            elif isinstance(packet, rtcp.TransportFeedback):
                try:
                    feedback = parse_transport_cc(packet.fci)
                except ValueError:
                    self.rtcp_errors += 1
                    continue
                self.bandwidth.on_transport_feedback(feedback, time.monotonic())
            elif isinstance(packet, rtcp.ReceiverEstimatedMaxBitrate):
                self.bandwidth.on_remb(packet.bitrate, time.monotonic())

    def _on_report_blocks(self, blocks: list[rtcp.ReportBlock]) -> None:
        now = time.monotonic()
        for block in blocks:
            consumer = self._consumers_by_ssrc.get(block.ssrc)
            if consumer is None:
                continue
            consumer.fraction_lost = block.fraction_lost
            consumer.on_report_block(block.lsr, block.dlsr, now)
            self.bandwidth.on_receiver_report(block.fraction_lost, consumer.rtt, now)

    async def add_candidate(self, message: CandidateMessage) -> None:
        transport = self.publish if message.target == "publish" else self.subscribe
        if transport is None:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER, f"no {message.target} transport yet: offer first"
            )
        candidate = message.candidate
        if candidate is not None:
            mids = self._publish_mids if transport is self.publish else self.negotiator.mids
            _check_media_line(candidate, mids, message.target)
        try:
            # An empty string is end-of-candidates too (Firefox sends one per m-line).
            await transport.add_remote_candidate(None if candidate is None else candidate.candidate)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_CANDIDATE, str(exc)) from exc

    # --- periodic RTCP ----------------------------------------------------------------

    @property
    def estimated_bitrate(self) -> int | None:
        """The subscribe transport's bandwidth estimate (see
        :attr:`BandwidthController.estimate`)."""
        return self.bandwidth.estimate

    def tick(self, now: float) -> None:
        """Periodic work, called by the worker every 50 ms or a little more (see
        :meth:`sfu.worker.Worker._schedule_tick`)."""
        if self._closed:
            return
        if self._offer_deadline is not None and now >= self._offer_deadline:
            self._renegotiation_timed_out()
            return
        if now >= self._next_feedback:
            self._next_feedback = now + FEEDBACK_INTERVAL
            if self.publish is not None:
                for packet in self._feedback.feedback(now):
                    self.publish.session.send_rtcp(packet)
                # The publish and subscribe transports go to the same peer: the RTT its
                # receiver reports give on the subscribe side spaces the NACK retries.
                rtt = self.bandwidth.rtt or DEFAULT_RTT
                for producer in self.producers.values():
                    producer.nack_timer(now, rtt=rtt)
        if self.subscribe is not None:
            self.bandwidth.tick(self.consumers(), self.room.router, self.room.active_speakers, now)
        if self.reporter.due(now):
            if self.publish is not None:
                for packet in self.reporter.receiver_reports(self.producers.values(), now):
                    self.publish.session.send_rtcp(packet)
            if self.subscribe is not None:
                # NTP time on the wire: the one place the wall clock is read.
                reports = self.reporter.sender_reports(
                    self.consumers(), self.room.router, now, time.time()
                )
                for packet in reports:
                    self.subscribe.session.send_rtcp(packet)
