"""SubscribeNegotiator: the subscribe transport's m-lines, with the SFU as offerer.

One m-line (a :class:`Slot`) per consumer, in offer order; an m-line whose track went
away is offered inactive, and once the subscriber has answered that offer it is
recycled for the next track of its kind, so a long call does not grow its SDP without
bound. One offer is outstanding at a time: whatever changes meanwhile waits for its
answer, then goes out as one offer of the state of that moment (a subscriber that never
answers costs no more than its live tracks, and has ``renegotiation_timeout`` seconds
before it is dropped). An m-line the subscriber rejects (no decoder for the codec) stays
rejected, and later tracks in that codec are not offered to it.

Sans-I/O: it builds offers and reads answers; the participant sends them, starts the
transport and activates consumers (LiveKit keeps this in ``participant_sdp.go``).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sfu.protocol import ErrorCode, SubscribeOfferMessage, SubscribeTrack
from sfu.rtp.extensions import DEPENDENCY_DESCRIPTOR, TRANSPORT_WIDE_CC
from sfu.sdp import (
    HeaderExtension,
    LocalTransport,
    MediaSection,
    OutgoingMedia,
    SdpError,
    SessionDescription,
    TransportInfo,
    create_subscribe_offer,
    default_outgoing_codecs,
    outgoing_codecs_for,
    parse_subscribe_answer,
    subscribe_offer_section,
)
from sfu.worker_api import ProtocolError

if TYPE_CHECKING:
    from sfu.consumer import Consumer
    from sfu.producer import Producer

OUTGOING_TRANSPORT_CC_ID = 3
"""Header extension id of the transport-wide sequence number in subscribe offers."""
OUTGOING_DEPENDENCY_DESCRIPTOR_ID = 4
"""Header extension id of the dependency descriptor in subscribe offers of AV1 tracks."""


@dataclass
class Slot:
    """One m-line of the subscribe transport."""

    mid: str
    kind: str
    consumer: Consumer | None
    negotiated_inactive: bool = False
    """The subscriber has answered an offer in which this slot was inactive: it may be
    recycled. A slot whose consumer went away is offered inactive first; reusing it
    at once would change the track of an m-line the subscriber still receives."""
    payload_type: int | None = None
    rtx_payload_type: int | None = None
    """The subscriber's rtx payload type for ``payload_type``, when it negotiated one."""
    red_payload_type: int | None = None
    """The subscriber's ``audio/red`` payload type, when it negotiated RED."""
    rejected: bool = False
    """The subscriber rejected this m-line: offered with port 0 from then on, never
    recycled (a browser cannot bring a rejected m-line back)."""
    section: MediaSection | None = None
    """This m-line as the last offer carried it, and its SDP text: kept for the next
    offer until the slot's consumer changes, so an offer costs little per unchanged
    m-line."""
    text: str = ""


@dataclass
class Answered:
    """What an answer asks of the participant."""

    transport_cc_id: int | None = None
    """The transport-wide sequence number's extension id, when negotiated."""
    refused: list[Consumer] = field(default_factory=list)
    """Consumers whose m-line the answer rejected or left without a codec."""
    undecodable: list[Producer] = field(default_factory=list)
    """Tracks whose codec the subscriber just showed it cannot decode."""


class SubscribeNegotiator:
    def __init__(self, cname: str, allow_h264: bool) -> None:
        self._cname = cname
        self._allow_h264 = allow_h264
        self.slots: list[Slot] = []
        """The m-lines in offer order (a slot's mid is its index)."""
        self.consumers: dict[str, Consumer] = {}
        """Every consumer by its producer's id, whether it has an m-line yet or not."""
        self._slot_of: dict[str, Slot] = {}
        """The m-line of each offered consumer, by its producer's id."""
        self._unplaced: dict[str, Consumer] = {}
        """Consumers added since the last offer, by producer id: the next offer gives
        them m-lines (one that comes and goes in between costs no m-line at all)."""
        self._recyclable: dict[str, deque[Slot]] = {"audio": deque(), "video": deque()}
        """Slots acknowledged as inactive, by kind, the oldest reused first."""
        self._retiring: list[Slot] = []
        """Slots the outstanding offer makes inactive: recyclable once it is answered."""
        self._offer: SessionDescription | None = None
        self._revision = 0
        self.awaiting: int | None = None
        """The revision of the outstanding offer."""
        self._dirty = False
        """An offered consumer went away: its m-line must be offered inactive."""
        self._session_id = secrets.randbits(62)
        self._undecodable: set[str] = set()
        """Codec MIME types (lower case) this subscriber rejected an m-line of: it has
        no decoder for them, so later tracks in them are not offered to it."""

    @property
    def mids(self) -> list[str | None]:
        """The m-lines of the last offer (trickled candidates must name one)."""
        return [] if self._offer is None else [m.mid for m in self._offer.media]

    def decodes(self, producer: Producer) -> bool:
        return producer.codec.mime_type.lower() not in self._undecodable

    def add(self, consumer: Consumer) -> None:
        """A consumer for the next offer."""
        self.consumers[consumer.producer.id] = consumer
        self._unplaced[consumer.producer.id] = consumer

    def remove(self, producer_id: str) -> Consumer | None:
        """The consumer of ``producer_id`` goes; its m-line, if offered, goes inactive."""
        consumer = self.consumers.pop(producer_id, None)
        if consumer is not None and self._unplaced.pop(producer_id, None) is None:
            slot = self._slot_of.pop(producer_id)
            slot.consumer = None
            slot.section = None
            slot.payload_type = slot.rtx_payload_type = slot.red_payload_type = None
            self._dirty = True
        return consumer

    def accepted(self) -> list[tuple[Consumer, int, int | None, int | None]]:
        """Each consumer the subscriber accepted, with its payload types (primary, rtx,
        RED; its transport's connection activates them)."""
        return [
            (slot.consumer, slot.payload_type, slot.rtx_payload_type, slot.red_payload_type)
            for slot in self.slots
            if slot.consumer is not None and slot.payload_type is not None
        ]

    def offer(self, local: LocalTransport) -> SubscribeOfferMessage | None:
        """The offer of the current state; None when nothing changed or an offer
        awaits its answer. One pass over the m-lines, which builds only those whose
        consumer changed."""
        if self.awaiting is not None or (not self._unplaced and not self._dirty):
            return None
        self._dirty = False
        self._place_unplaced()
        self._revision += 1
        allow_h264 = self._allow_h264 and "video/h264" not in self._undecodable
        sections: list[MediaSection] = []
        tracks: dict[str, SubscribeTrack] = {}
        self._retiring = []
        for slot in self.slots:
            if slot.section is None:
                media = self._outgoing_media(slot, allow_h264)
                slot.section = subscribe_offer_section(media, local)
                slot.text = str(slot.section)
            sections.append(slot.section)
            consumer = slot.consumer
            if consumer is None or slot.rejected:
                if consumer is None and not slot.negotiated_inactive and not slot.rejected:
                    self._retiring.append(slot)
                continue
            producer = consumer.producer
            tracks[slot.mid] = SubscribeTrack(
                track_id=producer.id, participant_id=producer.participant_id, kind=producer.kind
            )
        offer = create_subscribe_offer(local, sections, self._session_id, self._revision)
        # The media sections close an SDP document: the session part, then their texts.
        sdp = str(replace(offer, media=[])) + "".join(slot.text for slot in self.slots)
        self._offer = offer
        self.awaiting = self._revision
        return SubscribeOfferMessage(sdp=sdp, revision=self._revision, tracks=tracks)

    def answer(
        self, sdp: str, revision: int, start: Callable[[TransportInfo], None] | None
    ) -> Answered:
        """Read the subscriber's answer to offer ``revision``; ``start`` starts its
        transport with the answer's ICE/DTLS parameters (None: it runs already). Raises
        :class:`ProtocolError` for an answer to no outstanding offer (``out_of_order``)
        or a bad one (``bad_sdp``, a transport that refuses its parameters included);
        the offer stays outstanding then."""
        if self.awaiting is None or revision != self.awaiting:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER,
                f"no subscribe offer with revision {revision} is awaiting an answer",
            )
        assert self._offer is not None
        answered = Answered()
        try:
            answer = SessionDescription.parse(sdp)
            negotiated = parse_subscribe_answer(answer, self._offer)
            accepted = next((m for m in answer.media if not m.rejected), None)
            if start is not None and accepted is not None:
                start(answer.transport(accepted))
        except (SdpError, ValueError) as exc:
            # ValueError: transport parameters the SDP parser let through (a fingerprint
            # or ICE credentials the transport refuses).
            raise ProtocolError(ErrorCode.BAD_SDP, str(exc)) from exc
        self.awaiting = None
        for slot in self._retiring:
            slot.negotiated_inactive = True
            self._recyclable[slot.kind].append(slot)
        self._retiring = []
        for result in negotiated.values():
            if not result.rejected and TRANSPORT_WIDE_CC in result.header_extensions:
                answered.transport_cc_id = result.header_extensions[TRANSPORT_WIDE_CC]
        for slot in self.slots:
            consumer = slot.consumer
            if consumer is None:
                continue
            result = negotiated.get(slot.mid)
            if result is None or result.rejected or not result.codecs:
                answered.refused.append(consumer)
                slot.payload_type = slot.rtx_payload_type = slot.red_payload_type = None
                if result is not None and not slot.rejected:
                    # The m-line offered the track's codec only: the subscriber has
                    # no decoder for it (Firefox without OpenH264 and H.264).
                    slot.rejected = True
                    slot.section = None
                    self._undecodable.add(consumer.producer.codec.mime_type.lower())
                    answered.undecodable.append(consumer.producer)
                continue
            primary = [c for c in result.codecs if c.name.lower() != "red"]
            if not primary:
                # RED alone: the subscriber cannot take the primary blocks it needs
                # when the publisher sends a frame without RED.
                answered.refused.append(consumer)
                slot.payload_type = slot.rtx_payload_type = slot.red_payload_type = None
                continue
            slot.payload_type = primary[0].payload_type
            slot.red_payload_type = next(
                (c.payload_type for c in result.codecs if c.name.lower() == "red"), None
            )
            consumer.use_dependency_descriptor(result.header_extensions.get(DEPENDENCY_DESCRIPTOR))
            slot.rtx_payload_type = next(
                (c.payload_type for c in result.codecs if c.is_rtx and c.apt == slot.payload_type),
                None,
            )
        return answered

    def _place_unplaced(self) -> None:
        """Give each consumer added since the last offer an m-line: the oldest one the
        subscriber acknowledged as inactive, or a new one."""
        for producer_id, consumer in self._unplaced.items():
            free = self._recyclable[consumer.kind]
            if free:
                slot = free.popleft()
                slot.consumer = consumer
                slot.negotiated_inactive = False
                slot.section = None
            else:
                slot = Slot(mid=str(len(self.slots)), kind=consumer.kind, consumer=consumer)
                self.slots.append(slot)
            self._slot_of[producer_id] = slot
        self._unplaced.clear()

    def _outgoing_media(self, slot: Slot, allow_h264: bool) -> OutgoingMedia:
        """What ``slot`` offers: its consumer's track with the producer's codec, or an
        inactive m-line of its kind (rejected for good once the subscriber rejected
        it)."""
        consumer = slot.consumer
        if consumer is None or slot.rejected:
            return OutgoingMedia(
                mid=slot.mid,
                kind=slot.kind,
                codecs=default_outgoing_codecs(slot.kind, allow_h264),
                header_extensions=[],
                ssrc=secrets.randbits(32) or 1,
                rtx_ssrc=None,
                cname=self._cname,
                stream_id="-",
                track_id=f"inactive-{slot.mid}",
                active=False,
                rejected=slot.rejected,
            )
        producer = consumer.producer
        codecs = outgoing_codecs_for(
            slot.kind, producer.codec, allow_h264, producer.red_payload_type is not None
        )
        extensions = [HeaderExtension(id=OUTGOING_TRANSPORT_CC_ID, uri=TRANSPORT_WIDE_CC)]
        if producer.codec.name.upper() == "AV1":
            extensions.append(
                HeaderExtension(id=OUTGOING_DEPENDENCY_DESCRIPTOR_ID, uri=DEPENDENCY_DESCRIPTOR)
            )
        return OutgoingMedia(
            mid=slot.mid,
            kind=slot.kind,
            codecs=codecs,
            header_extensions=extensions,
            ssrc=consumer.ssrc,
            rtx_ssrc=consumer.rtx_ssrc if any(c.is_rtx for c in codecs) else None,
            cname=self._cname,
            stream_id=producer.participant_id,
            track_id=producer.id,
            active=True,
        )
