"""A Participant: one client session in a room, with its two transports, composed of
the parts that do the work:

- its :class:`~sfu.publish_session.PublishSession`: publish offers, one
  :class:`~sfu.producer.Producer` per published track behind an
  :class:`~sfu.demultiplexer.RtpDemultiplexer`, transport-cc feedback, NACKs and
  key-frame requests to the publisher;
- its :class:`~sfu.subscribe_session.SubscribeSession`: one
  :class:`~sfu.consumer.Consumer` per track of the others (routed by the room's
  :class:`~sfu.router.Router`), subscribe offers and answers, the subscriber's RTCP,
  the :class:`~sfu.bandwidth_controller.BandwidthController`;
- its :class:`~sfu.rtcp_reporter.RtcpReporter` (the SFU's receiver and sender reports)
  and its data channels.

What stays here is the lifecycle (transports, connection, failure, the renegotiation
deadline), trickled candidates, the participant's RTCP budget over both transports and
the periodic work that drives the parts.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sfu.consumer import Consumer
from sfu.data_channel import DataChannels
from sfu.loop_time import loop_cpu_time
from sfu.nack_generator import DEFAULT_RTT
from sfu.producer import Producer
from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    ErrorMessage,
    PublishAnswerMessage,
    PublishOfferMessage,
    ServerMessage,
    Track,
)
from sfu.protocol import (
    Participant as ParticipantInfo,
)
from sfu.publish_session import PublishSession
from sfu.rtcp_budget import RtcpBudget
from sfu.rtcp_reporter import RtcpReporter
from sfu.sdp import SdpError, SessionDescription
from sfu.subscribe_session import SubscribeSession
from sfu.transport import Transport
from sfu.trickle import add_remote_candidate
from sfu.worker_api import EventSink, Grant, ProtocolError

if TYPE_CHECKING:
    from sfu.room import Room
    from sfu.viewer_subscription import ViewerSubscription
    from sfu.worker import WorkerContext


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
        self.cname = "sfu-" + secrets.token_urlsafe(9)
        settings = context.settings
        self.publisher = PublishSession(self.id, self.rtcp_ssrc, settings, self._on_audio_level)
        self.subscriber = SubscribeSession(self.id, self.cname, settings, room.router, self.send)
        self.reporter = RtcpReporter(self.rtcp_ssrc, self.cname)
        self.rtcp_budget = RtcpBudget(settings.rtcp_budget)
        self.joined_at = time.monotonic()
        """When the join request reached the worker (join latency metric)."""
        self.rtcp_received_at = self.joined_at
        """When the last RTCP arrived on either transport (a silent HTTP session ends)."""
        self._subscribe_rtp = 0
        """RTP packets on the subscribe transport (subscribers send the SFU no media)."""
        self._closed = False
        self.data: DataChannels | None = None
        """Data channels, once a publish offer carried a data channel m-line."""
        self.viewer: ViewerSubscription | None = None
        """Set before :meth:`open` for a WHEP viewer: its subscription is offered by the
        client (:mod:`sfu.viewer_subscription`) instead of by the server."""

    @property
    def producers(self) -> dict[str, Producer]:
        """Published tracks by MID of the publish transport."""
        return self.publisher.producers

    @property
    def publish(self) -> Transport | None:
        return self.publisher.transport

    @property
    def subscribe(self) -> Transport | None:
        return self.subscriber.transport

    @property
    def packets_unroutable(self) -> int:
        return self.publisher.packets_unroutable + self._subscribe_rtp

    @property
    def rtcp_errors(self) -> int:
        return self.publisher.rtcp_errors + self.subscriber.rtcp_errors

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self.grant.can_subscribe:
            self.subscriber.attach(self._new_transport("subscribe"))
            await self.subscriber.transport.gather()  # type: ignore[union-attr]

    def _new_transport(self, direction: str) -> Transport:
        publish = direction == "publish"
        handle_rtcp = self.publisher.on_rtcp if publish else self.subscriber.on_rtcp
        return Transport(
            direction,  # type: ignore[arg-type]
            self.context.certificate,
            on_rtp=self.publisher.on_rtp if publish else self._on_subscribe_rtp,
            on_rtcp=lambda data: self._within_rtcp_budget(handle_rtcp, data),
            on_connected=self._on_transport_connected,
            on_failed=self._on_transport_failed,
            announced_ip=self.context.settings.announced_ip,
            # ICE's offerer controls (RFC 8445): the server on its own subscribe offers.
            ice_controlling=not publish and self.viewer is None,
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
            self.subscriber.activate()

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

    def _renegotiation_timed_out(self) -> None:
        """The subscriber let its offer go unanswered past the deadline: it is told,
        and dropped from the room (its tracks unpublished, its transports closed)."""
        self.subscriber.offer_deadline = None
        timeout = self.context.settings.renegotiation_timeout
        self.send(
            ErrorMessage(
                code=ErrorCode.RENEGOTIATION_TIMEOUT,
                message=f"subscribe offer {self.subscriber.negotiator.awaiting} was not"
                f" answered within {timeout:g} s; rejoin",
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
        if self.publisher.transport is None:
            self.publisher.transport = self._new_transport("publish")
            await self.publisher.transport.gather()
        negotiation = self.publisher.negotiate(offer, message.tracks)
        if negotiation.sctp is not None and self.data is None:
            self.data = DataChannels(self, negotiation.sctp)
            if self.publisher.transport.connected.is_set():
                self.data.start(self.publisher.transport.session)
        if negotiation.added or negotiation.removed:
            self.room.change_tracks(
                self, published=negotiation.added, unpublished=negotiation.removed
            )
        return PublishAnswerMessage(
            sdp=str(negotiation.answer), tracks={mid: p.id for mid, p in self.producers.items()}
        )

    def _on_audio_level(self, dbov: float, voice: bool, now: float) -> None:
        self.room.speakers.add_level(self.id, dbov, voice, now)

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

    # --- subscribing ------------------------------------------------------------------

    def update_consumers(
        self, added: Iterable[Producer] = (), removed: Iterable[Producer] = ()
    ) -> None:
        """Start receiving ``added`` and stop receiving ``removed`` (see
        :meth:`SubscribeSession.update`; a WHEP viewer's own subscription instead)."""
        if self.viewer is not None:
            self.viewer.update(added, removed)
        elif not self._closed:
            self.subscriber.update(added, removed)

    def consumers(self) -> list[Consumer]:
        if self.viewer is not None:
            return self.viewer.consumers()
        return list(self.subscriber.negotiator.consumers.values())

    def _on_subscribe_rtp(self, data: bytes) -> None:
        self._subscribe_rtp += 1

    async def add_candidate(self, message: CandidateMessage) -> None:
        if message.target == "publish":
            await add_remote_candidate(self.publish, message, self.publisher.mids)
        else:
            await add_remote_candidate(self.subscribe, message, self.subscriber.negotiator.mids)

    # --- periodic work ----------------------------------------------------------------

    @property
    def estimated_bitrate(self) -> int | None:
        """The subscribe transport's bandwidth estimate (see
        :attr:`BandwidthController.estimate`)."""
        return self.subscriber.bandwidth.estimate

    def tick(self, now: float) -> None:
        """Periodic work, called by the worker every 50 ms or a little more (see
        :meth:`sfu.worker.Worker._schedule_tick`)."""
        if self._closed:
            return
        deadline = self.subscriber.offer_deadline
        if deadline is not None and now >= deadline:
            self._renegotiation_timed_out()
            return
        # The publish and subscribe transports go to the same peer: the RTT its receiver
        # reports give on the subscribe side spaces the NACK retries.
        self.publisher.tick(now, rtt=self.subscriber.bandwidth.rtt or DEFAULT_RTT)
        router = self.room.router
        if self.subscribe is not None:
            self.subscriber.bandwidth.tick(self.consumers(), router, self.room.active_speakers, now)
        if self.reporter.due(now):
            self.publisher.send_rtcp(self.reporter.receiver_reports(self.producers.values(), now))
            if self.subscribe is not None:
                # NTP time on the wire: the one place the wall clock is read.
                reports = self.reporter.sender_reports(self.consumers(), router, now, time.time())
                self.subscriber.send_rtcp(reports)
