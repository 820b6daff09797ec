"""What a participant receives: its subscribe transport's consumers, offers and RTCP.

A :class:`SubscribeSession` keeps one :class:`~sfu.consumer.Consumer` per track of the
others that the subscriber can decode (routed by the room's
:class:`~sfu.router.Router`), renegotiates through its
:class:`~sfu.subscribe_negotiator.SubscribeNegotiator` (one offer outstanding, answered
within ``renegotiation_timeout``), and dispatches the subscriber's RTCP: key-frame
requests and NACKs to the consumer they name, receiver reports and transport-cc to the
:class:`~sfu.bandwidth_controller.BandwidthController`. A WHEP viewer's client-offered
subscription (:mod:`sfu.viewer_subscription`) uses its consumers and RTCP dispatch but
negotiates on its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sfu.bandwidth_controller import BandwidthController
from sfu.config import Settings
from sfu.consumer import Consumer
from sfu.producer import Producer
from sfu.protocol import (
    ErrorCode,
    ErrorMessage,
    ServerMessage,
    SubscribeAnswerMessage,
    TrackSettingsMessage,
)
from sfu.rtp import rtcp
from sfu.rtp.transport_feedback import parse_transport_cc
from sfu.subscribe_negotiator import SubscribeNegotiator
from sfu.svc_consumer import SvcConsumer
from sfu.transport import Transport
from sfu.worker_api import ProtocolError

if TYPE_CHECKING:
    from sfu.router import Router


class SubscribeSession:
    def __init__(
        self,
        participant_id: str,
        cname: str,
        settings: Settings,
        router: Router,
        send: Callable[[ServerMessage], None],
    ) -> None:
        self.participant_id = participant_id
        self.settings = settings
        self.router = router
        self.send = send
        self.transport: Transport | None = None
        self.bandwidth = BandwidthController()
        self.negotiator = SubscribeNegotiator(cname, settings.allow_h264)
        self.offer_deadline: float | None = None
        """When the outstanding offer must have been answered (monotonic)."""
        self.rtcp_errors = 0
        self._consumers_by_ssrc: dict[int, Consumer] = {}

    def attach(self, transport: Transport) -> None:
        self.transport = self.bandwidth.transport = transport

    # --- consumers --------------------------------------------------------------------

    def update(self, added: Iterable[Producer], removed: Iterable[Producer]) -> None:
        """Start receiving ``added`` and stop receiving ``removed``, all in one
        renegotiation (a later one, while an offer awaits its answer). A consumer that
        goes before any offer carried it costs no m-line."""
        for producer in removed:
            consumer = self.negotiator.remove(producer.id)
            if consumer is not None:
                self.drop_consumer(consumer)
        if self.transport is not None:
            for producer in added:
                if producer.id in self.negotiator.consumers:
                    continue
                if not self.negotiator.decodes(producer):
                    self.send_codec_unsupported(producer)
                    continue
                self.negotiator.add(self.add_consumer(producer))
        self.maybe_send_offer()

    def add_consumer(
        self, producer: Producer, ssrc: int | None = None, rtx_ssrc: int | None = None
    ) -> Consumer:
        """A consumer of ``producer`` for this transport (inactive until its m-line is
        negotiated), with the given SSRCs when its m-line has them already."""
        consumer_id = "CO_" + secrets.token_urlsafe(9)
        kind = SvcConsumer if producer.codec.name.lower() == "vp9" else Consumer
        consumer = kind(consumer_id, producer, self.participant_id, self.bandwidth.send)
        if ssrc is not None:
            consumer.ssrc = ssrc
            consumer.rtx_ssrc = rtx_ssrc
        self.router.add_consumer(consumer)
        self._consumers_by_ssrc[consumer.ssrc] = consumer
        return consumer

    def drop_consumer(self, consumer: Consumer) -> None:
        """Stop ``consumer`` and forget it (its m-line is its negotiator's business)."""
        consumer.deactivate()
        self.router.remove_consumer(consumer)
        self._consumers_by_ssrc.pop(consumer.ssrc, None)

    def track_settings(self, message: TrackSettingsMessage) -> None:
        """Apply a subscriber's preferences to the consumer of ``message.track_id``."""
        consumer = self.negotiator.consumers.get(message.track_id)
        if consumer is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TRACK,
                f"you receive no track {message.track_id!r}",
                track_id=message.track_id,
            )
        consumer.set_preferences(
            paused=message.paused,
            max_spatial_layer=message.max_spatial_layer,
            max_width=message.max_width,
            max_height=message.max_height,
            max_temporal_layer=message.max_temporal_layer,
        )

    def send_codec_unsupported(self, producer: Producer) -> None:
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

    # --- negotiation ------------------------------------------------------------------

    def maybe_send_offer(self) -> None:
        """Offer the current state unless nothing changed or an offer awaits its answer
        (the answer calls this again)."""
        if self.transport is None:
            return
        offer = self.negotiator.offer(self.transport.local_parameters())
        if offer is not None:
            self.offer_deadline = time.monotonic() + self.settings.renegotiation_timeout
            self.send(offer)

    def answer(self, message: SubscribeAnswerMessage) -> None:
        if self.transport is None:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "this token cannot subscribe")
        start = None if self.transport.started else self.transport.start
        answered = self.negotiator.answer(message.sdp, message.revision, start)
        self.offer_deadline = None
        if answered.transport_cc_id is not None:
            self.bandwidth.use_transport_cc(answered.transport_cc_id)
        for consumer in answered.refused:
            consumer.deactivate()
        for producer in answered.undecodable:
            self.send_codec_unsupported(producer)
        if self.transport.connected.is_set():
            self.activate()
        self.maybe_send_offer()

    def activate(self) -> None:
        """Start sending every negotiated consumer (once the transport is connected)."""
        sender = self.bandwidth.sender()
        for consumer, payload_type, rtx_payload_type, red in self.negotiator.accepted():
            self.router.activate(consumer, payload_type, rtx_payload_type, sender, red)

    # --- the subscriber's RTCP --------------------------------------------------------

    def on_rtcp(self, data: bytes) -> None:
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
                    self.router.request_key_frame(consumer)
            elif isinstance(packet, rtcp.FullIntraRequest):
                for ssrc, _ in packet.entries:
                    consumer = self._consumers_by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.firs_received += 1
                        self.router.request_key_frame(consumer)
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

    def send_rtcp(self, packets: Iterable[bytes]) -> None:
        if self.transport is not None:
            for packet in packets:
                self.transport.session.send_rtcp(packet)
