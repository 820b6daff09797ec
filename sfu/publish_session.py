"""What a participant publishes: its publish transport's negotiation, media and RTCP.

A :class:`PublishSession` answers publish offers (one :class:`~sfu.producer.Producer`
per published m-line), takes every RTP packet the publish transport decrypts to its
producer through the :class:`~sfu.demultiplexer.RtpDemultiplexer` (mediasoup's
RtpListener), feeds the publisher's transport-wide sequence numbers to the feedback
generator, and sends the publisher what the SFU says about its media: transport-cc
feedback, NACKs, key-frame requests and receiver reports. The participant owns the
transport and hands this session the RTCP it receives within its budget.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sfu.bwe.feedback_generator import TransportCcFeedbackGenerator
from sfu.config import Settings
from sfu.demultiplexer import RtpDemultiplexer
from sfu.producer import Producer
from sfu.protocol import ErrorCode, TrackInfo
from sfu.rtp import rtcp
from sfu.rtp.extensions import (
    DEPENDENCY_DESCRIPTOR,
    SSRC_AUDIO_LEVEL,
    TRANSPORT_WIDE_CC,
    decode_audio_level,
    decode_transport_sequence_number,
)
from sfu.rtp.packet import read_header_extensions, read_payload_and_extensions
from sfu.sdp import (
    SctpParameters,
    SdpError,
    SessionDescription,
    accepted_data_channel,
    bundle_transport,
    create_publish_answer,
)
from sfu.transport import Transport
from sfu.worker_api import ProtocolError

FEEDBACK_INTERVAL = 0.1
"""Seconds between transport-cc feedback packets to a publisher, and NACK retries."""

_SSRC = struct.Struct("!I")

AudioLevelSink = Callable[[float, bool, float], None]
"""Called with (dBov, voice activity, now) for each audio packet with a level."""


@dataclass
class PublishNegotiation:
    """What one publish offer changed."""

    answer: SessionDescription
    added: list[Producer]
    removed: list[Producer]
    sctp: SctpParameters | None
    """The data channel m-line's parameters when the answer accepts one."""


class PublishSession:
    def __init__(
        self,
        participant_id: str,
        rtcp_ssrc: int,
        settings: Settings,
        on_audio_level: AudioLevelSink,
    ) -> None:
        self.participant_id = participant_id
        self.rtcp_ssrc = rtcp_ssrc
        self.settings = settings
        self.on_audio_level = on_audio_level
        self.transport: Transport | None = None
        """Set by the participant before the first offer is negotiated."""
        self.producers: dict[str, Producer] = {}
        """Published tracks by MID of the publish transport."""
        self.mids: list[str | None] = []
        """The mids of the last publish offer, which trickled candidates must name."""
        self.packets_unroutable = 0
        self.rtcp_errors = 0
        self._feedback = TransportCcFeedbackGenerator(sender_ssrc=rtcp_ssrc)
        self.demultiplexer = RtpDemultiplexer(self.producers, self._feedback_names)
        self._audio_level_extension: int | None = None
        self._transport_cc_extension: int | None = None
        self._dependency_descriptor_extension: int | None = None
        self._next_feedback = 0.0

    def negotiate(
        self, offer: SessionDescription, tracks: dict[str, TrackInfo]
    ) -> PublishNegotiation:
        """Answer ``offer`` on :attr:`transport` (started when the answer bundles) and
        create a producer per newly published m-line; producers whose m-line is gone
        are removed. Raises :class:`ProtocolError` for an offer the SFU refuses."""
        assert self.transport is not None
        try:
            answer, published = create_publish_answer(
                offer, self.transport.local_parameters(), allow_h264=self.settings.allow_h264
            )
            limit = self.settings.max_tracks_per_participant
            if len(published) > limit:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_TRACKS,
                    f"the offer publishes {len(published)} tracks; a participant may publish"
                    f" at most {limit} at once",
                )
            if answer.bundle_groups:
                self.transport.start(bundle_transport(offer, answer))
            sctp = accepted_data_channel(offer, answer)
        except (SdpError, ValueError) as exc:
            # ValueError: transport parameters the SDP parser let through (a fingerprint
            # or ICE credentials the transport refuses).
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc

        self.mids = [m.mid for m in offer.media]
        offered_mids = {m.mid for m in published}
        removed = [
            self.producers.pop(mid) for mid in list(self.producers) if mid not in offered_mids
        ]
        added: list[Producer] = []
        for media in published:
            ids = media.header_extensions
            self.demultiplexer.use_extensions(ids)
            self._transport_cc_extension = ids.get(TRANSPORT_WIDE_CC, self._transport_cc_extension)
            self._dependency_descriptor_extension = ids.get(
                DEPENDENCY_DESCRIPTOR, self._dependency_descriptor_extension
            )
            if media.kind == "audio":
                self._audio_level_extension = ids.get(SSRC_AUDIO_LEVEL, self._audio_level_extension)
            if media.mid in self.producers:
                continue
            source = tracks.get(media.mid, TrackInfo()).source
            if source == "unknown":
                source = "microphone" if media.kind == "audio" else "camera"
            producer = Producer(
                "TR_" + secrets.token_urlsafe(9),
                self.participant_id,
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
        return PublishNegotiation(answer, added, removed, sctp)

    def mute(self, track_id: str, muted: bool) -> Producer:
        for producer in self.producers.values():
            if producer.id == track_id:
                producer.muted = muted
                return producer
        raise ProtocolError(ErrorCode.UNKNOWN_TRACK, f"you publish no track {track_id!r}")

    # --- received media ---------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        """One decrypted RTP packet from the publisher, down to its producer."""
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
                repaired[0].receive_rtx(
                    repaired[1],
                    data,
                    start,
                    now,
                    extensions.get(self._dependency_descriptor_extension),  # type: ignore[arg-type]
                )
            return
        level = extensions.get(self._audio_level_extension)  # type: ignore[arg-type]
        if level is not None and producer.kind == "audio" and len(level) >= 1:
            voice, dbov = decode_audio_level(level[:1])
            self.on_audio_level(dbov, voice, now)
        producer.receive(
            stream,
            data,
            start,
            now,
            extensions.get(self._dependency_descriptor_extension),  # type: ignore[arg-type]
        )

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

    def on_rtcp(self, data: bytes) -> None:
        """An RTCP compound from the publisher: its sender reports map each stream's RTP
        time to NTP time."""
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

    # --- what the SFU tells the publisher ---------------------------------------------

    def _send_nack(self, media_ssrc: int, lost: list[int]) -> None:
        if self.transport is not None:
            nack = rtcp.GenericNack(sender_ssrc=self.rtcp_ssrc, media_ssrc=media_ssrc, lost=lost)
            self.transport.session.send_rtcp(bytes(nack))

    def _send_key_frame_request(self, media_ssrc: int) -> None:
        if self.transport is not None:
            pli = rtcp.PictureLossIndication(sender_ssrc=self.rtcp_ssrc, media_ssrc=media_ssrc)
            self.transport.session.send_rtcp(bytes(pli))

    def tick(self, now: float, rtt: float) -> None:
        """Every :data:`FEEDBACK_INTERVAL`: transport-cc feedback and NACK retries
        (spaced by ``rtt``)."""
        if self.transport is None or now < self._next_feedback:
            return
        self._next_feedback = now + FEEDBACK_INTERVAL
        for packet in self._feedback.feedback(now):
            self.transport.session.send_rtcp(packet)
        for producer in self.producers.values():
            producer.nack_timer(now, rtt=rtt)

    def send_rtcp(self, packets: Iterable[bytes]) -> None:
        if self.transport is not None:
            for packet in packets:
                self.transport.session.send_rtcp(packet)
