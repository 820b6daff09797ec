"""Client-offered subscription: a WHEP viewer's recvonly offer, answered by the server.

The server-offered path (:class:`sfu.participant.Participant`) owns its subscribe
m-lines and renegotiates whenever tracks come and go. A WHEP viewer offers instead,
once: its m-lines are fixed by that offer, and WHEP has no renegotiation. So each
accepted m-line is a :class:`ViewerLine` with the viewer's payload types, and an SSRC
of its own that it keeps; the tracks the line carries may change under it:

- at the answer every line gets the first track of its kind (and of a codec the line
  offered) not yet taken, of the pinned publisher (by identity) or of the whole room
  in join order; a line for which there is none is answered ``sendonly`` all the same
  and stays silent;
- a line whose track is unpublished falls silent; the next track of its kind and
  codec published by the pinned publisher (or anyone, when not pinned) takes it, on
  the line's SSRC, starting at a key frame. So a viewer pinned to a publisher that
  leaves and comes back (a WHIP encoder reconnecting) gets the new tracks. More
  tracks than the offer has lines are not sent: the viewer would have to offer
  again (a new session).

The consumers are the participant's, like a browser subscriber's: the same RTCP
handling (NACK, RTX, PLI/FIR, receiver reports), send-side estimate from the
viewer's transport-cc feedback or REMB, and layer allocation.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sfu.sdp import (
    CODEC_POLICY,
    Codec,
    HeaderExtension,
    LocalTransport,
    MediaSection,
    SdpError,
    SessionDescription,
    SsrcGroup,
)
from sfu.sdp.negotiation import TRANSPORT_CC_URI, rejected_section

if TYPE_CHECKING:
    from sfu.consumer import Consumer
    from sfu.participant import Participant
    from sfu.producer import Producer


@dataclass
class ViewerLine:
    """One accepted m-line of the viewer's offer."""

    mid: str
    kind: str
    codec: Codec
    """The viewer's codec (its payload type) this line sends."""
    rtx: Codec | None
    """The viewer's rtx codec for :attr:`codec`, when it offered one."""
    ssrc: int
    rtx_ssrc: int | None
    consumer: Consumer | None = None


def _codec_matches(offered: Codec, wanted: Codec) -> bool:
    """Whether the viewer's ``offered`` codec can carry a track sent in ``wanted``."""
    if offered.mime_type.lower() != wanted.mime_type.lower():
        return False
    if wanted.name.upper() != "H264":
        return offered.clock_rate == wanted.clock_rate
    # The decoder must take the stream as it is: same packetization mode and profile.
    params, ours = offered.parameters, wanted.parameters
    return params.get("packetization-mode", "0") == ours.get("packetization-mode", "0") and (
        params.get("profile-level-id", "")[:2].lower()
        == ours.get("profile-level-id", "")[:2].lower()
    )


def _default_codec(section: MediaSection, allow_h264: bool) -> Codec | None:
    """The codec an idle line is answered with: Opus, VP8, or H.264 when allowed."""
    primary = [c for c in section.codecs if not c.is_rtx]
    if section.kind == "audio":
        return next((c for c in primary if c.name.lower() == "opus"), None)
    preferred = ["VP8", "H264"] if allow_h264 else ["VP8"]
    for name in preferred:
        codec = next((c for c in primary if c.name.upper() == name), None)
        if codec is not None:
            return codec
    return None


def _accepted(codec: Codec) -> Codec:
    feedback = [fb for fb in codec.rtcp_feedback if fb in CODEC_POLICY.rtcp_feedback]
    return replace(codec, parameters=dict(codec.parameters), rtcp_feedback=feedback)


class ViewerSubscription:
    """The subscribe side of a WHEP viewer (see the module docstring)."""

    def __init__(self, participant: Participant, publisher: str | None) -> None:
        self.participant = participant
        self.publisher = publisher
        """The identity whose tracks this viewer receives; None: anyone's."""
        self.lines: list[ViewerLine] = []
        self.mids: list[str | None] = []
        """Every m-line's mid, as the offer listed them (trickled candidates name one)."""

    def _candidate_producers(self) -> list[Producer]:
        room = self.participant.room
        return [
            producer
            for other in room.participants.values()
            if other is not self.participant
            and (self.publisher is None or other.grant.identity == self.publisher)
            for producer in other.producers.values()
        ]

    def answer(self, offer: SessionDescription) -> str:
        """Answer the viewer's offer and start its transport; raises ``SdpError`` (and
        ``ValueError`` for a bad candidate) with nothing changed."""
        participant = self.participant
        settings = participant.context.settings
        if not offer.bundle_groups:
            raise SdpError("the offer has no BUNDLE group; the server requires BUNDLE")
        bundle = offer.bundle_groups[0]
        transport = participant.subscribe
        assert transport is not None
        local = transport.local_parameters()
        free = self._candidate_producers()
        answer = SessionDescription(
            session_id=offer.session_id,
            session_version=offer.session_version,
            msid_semantic="WMS *",
            extmap_allow_mixed=offer.extmap_allow_mixed,
        )
        accepted: list[tuple[MediaSection, ViewerLine | None, Producer | None]] = []
        transport_cc: int | None = None
        for section in offer.media:
            line, producer = self._accept(section, bundle, free, settings.allow_h264)
            accepted.append((section, line, producer))
            if line is None:
                continue
            if producer is not None:
                free.remove(producer)
            ids = section.header_extension_ids()
            if TRANSPORT_CC_URI in ids and transport_cc is None:
                transport_cc = ids[TRANSPORT_CC_URI]
        lines = [(line, producer) for _, line, producer in accepted if line is not None]
        if not lines:
            raise SdpError("the offer has no receivable audio or video m-line in its BUNDLE group")
        answer.media = [
            rejected_section(section)
            if line is None
            else self._answer_section(line, transport_cc, local)
            for section, line, _ in accepted
        ]
        answer.bundle_groups = [[line.mid for line, _ in lines]]
        remote = offer.transport(offer.media_by_mid(bundle[0]) or offer.media[0])
        if remote.setup == "passive":
            raise SdpError("the offer has a=setup:passive; the server is always the DTLS server")
        remote.candidates = list(dict.fromkeys(c for m in offer.media for c in m.candidates))
        remote.end_of_candidates = any(m.end_of_candidates for m in offer.media)
        transport.start(remote)
        # Committed only now: every check above leaves the viewer as it was.
        self.mids = [m.mid for m in offer.media]
        if transport_cc is not None:
            participant.subscriber.bandwidth.use_transport_cc(transport_cc)
        for line, producer in lines:
            self.lines.append(line)
            if producer is not None:
                self._attach(line, producer)
        return str(answer)

    def _accept(
        self,
        section: MediaSection,
        bundle: list[str],
        free: list[Producer],
        allow_h264: bool,
    ) -> tuple[ViewerLine | None, Producer | None]:
        bundled = section.mid in bundle and (
            section.port != 0 or (section.bundle_only and section.mid != bundle[0])
        )
        if not (
            bundled
            and section.kind in ("audio", "video")
            and section.direction in ("recvonly", "sendrecv")
            and section.rtcp_mux
            and section.mid is not None
        ):
            return None, None
        producer = codec = None
        for candidate in free:
            if candidate.kind != section.kind:
                continue
            matching = [
                c for c in section.codecs if not c.is_rtx and _codec_matches(c, candidate.codec)
            ]
            # The publisher's exact H.264 profile-level-id first, then a compatible one.
            wanted = candidate.codec.parameters.get("profile-level-id", "").lower()
            matching.sort(key=lambda c: c.parameters.get("profile-level-id", "").lower() != wanted)
            if matching:
                producer, codec = candidate, matching[0]
                break
        if codec is None:
            codec = _default_codec(section, allow_h264)
        if codec is None:
            return None, None
        rtx = next((c for c in section.codecs if c.is_rtx and c.apt == codec.payload_type), None)
        if section.kind != "video":
            rtx = None
        line = ViewerLine(
            mid=section.mid,
            kind=section.kind,
            codec=_accepted(codec),
            rtx=None if rtx is None else _accepted(rtx),
            ssrc=secrets.randbits(32) or 1,
            rtx_ssrc=(secrets.randbits(32) or 1) if rtx is not None else None,
        )
        return line, producer

    def _answer_section(
        self, line: ViewerLine, transport_cc: int | None, local: LocalTransport
    ) -> MediaSection:
        codecs = [line.codec] if line.rtx is None else [line.codec, line.rtx]
        section = MediaSection(
            kind=line.kind,
            port=9,
            protocol="UDP/TLS/RTP/SAVPF",
            formats=[str(c.payload_type) for c in codecs],
            mid=line.mid,
            direction="sendonly",
            host="0.0.0.0",
            codecs=[replace(c, parameters=dict(c.parameters)) for c in codecs],
            header_extensions=(
                [] if transport_cc is None else [HeaderExtension(transport_cc, TRANSPORT_CC_URI)]
            ),
            rtcp_mux=True,
            rtcp_rsize=True,
        )
        section.ice_ufrag = local.ice_ufrag
        section.ice_pwd = local.ice_pwd
        section.fingerprints = list(local.fingerprints)
        section.setup = "passive"
        section.candidates = list(local.candidates)
        section.end_of_candidates = True
        cname = self.participant.cname
        msid = f"{self.participant.id} {line.kind}-{line.mid}"
        section.msid = msid
        ssrcs = [line.ssrc] if line.rtx_ssrc is None else [line.ssrc, line.rtx_ssrc]
        section.ssrcs = {ssrc: {"cname": cname, "msid": msid} for ssrc in ssrcs}
        if line.rtx_ssrc is not None:
            section.ssrc_groups = [SsrcGroup("FID", ssrcs)]
        return section

    def _attach(self, line: ViewerLine, producer: Producer) -> None:
        line.consumer = self.participant.subscriber.add_consumer(producer, line.ssrc, line.rtx_ssrc)
        transport = self.participant.subscribe
        if transport is not None and transport.connected.is_set():
            self._activate(line)

    def _activate(self, line: ViewerLine) -> None:
        assert line.consumer is not None
        rtx = None if line.rtx is None else line.rtx.payload_type
        sender = self.participant.subscriber.bandwidth.sender()
        self.participant.room.router.activate(line.consumer, line.codec.payload_type, rtx, sender)

    def consumers(self) -> list[Consumer]:
        """The consumers of the lines that carry a track now."""
        return [line.consumer for line in self.lines if line.consumer is not None]

    def on_connected(self) -> None:
        """The viewer's transport is up: every line with a track starts forwarding."""
        for line in self.lines:
            if line.consumer is not None:
                self._activate(line)

    def update(self, added: Iterable[Producer], removed: Iterable[Producer]) -> None:
        """Tracks that ended leave their lines silent; new ones take silent lines."""
        for producer in removed:
            for line in self.lines:
                if line.consumer is not None and line.consumer.producer is producer:
                    self.participant.subscriber.drop_consumer(line.consumer)
                    line.consumer = None
        if not self.lines:
            return  # not answered yet: the answer picks from the room as it is then
        owners = {p.id: p for p in self.participant.room.participants.values()}
        for producer in added:
            owner = owners.get(producer.participant_id)
            if owner is None or owner is self.participant:
                continue
            if self.publisher is not None and owner.grant.identity != self.publisher:
                continue
            line = next(
                (
                    line
                    for line in self.lines
                    if line.consumer is None
                    and line.kind == producer.kind
                    and _codec_matches(line.codec, producer.codec)
                ),
                None,
            )
            if line is not None:
                self._attach(line, producer)
