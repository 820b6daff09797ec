"""The media server's side of offer/answer.

On the publish side the server answers a browser's offer (it only receives); on the
subscribe side it offers (it only sends) and reads the browser's answer. The server is
always the DTLS server: ``a=setup:passive`` in its answers, ``a=setup:actpass`` in its
offers, and it expects ``a=setup:active`` back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sfu.sdp.description import (
    Codec,
    HeaderExtension,
    MediaSection,
    Rid,
    SdpError,
    SessionDescription,
    Simulcast,
    SsrcGroup,
    TransportInfo,
    quoted,
)

RTP_PROTOCOL = "UDP/TLS/RTP/SAVPF"

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
DEPENDENCY_DESCRIPTOR_URI = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)

DATA_CHANNEL_PROTOCOLS = ("UDP/DTLS/SCTP", "TCP/DTLS/SCTP")
DATA_CHANNEL_FORMAT = "webrtc-datachannel"
SCTP_PORT = 5000
"""The server's SCTP port, and the remote one when the offer has no a=sctp-port (RFC 8841)."""
SCTP_MAX_MESSAGE_SIZE = 262144
"""a=max-message-size the server advertises: what aiortc's SCTP stack reassembles. The
relay's own, smaller limit is enforced on top, with an error the sender can read."""
REMOTE_DEFAULT_MAX_MESSAGE_SIZE = 65536
"""What to assume when an offer has no a=max-message-size (RFC 8841 section 6)."""
MAX_SSRCS_PER_SECTION = 16
"""SSRCs an accepted m= section may declare: each becomes a receive stream. Browsers
declare at most six (three simulcast layers and their rtx)."""


@dataclass(frozen=True)
class CodecPolicy:
    """What the server accepts from publishers."""

    rtcp_feedback: frozenset[str]
    header_extensions: dict[str, frozenset[str]]
    """Accepted header extension URIs by media kind."""
    h264_profile_level_id: str
    """The preferred H264 profile-level-id (constrained baseline 3.1)."""


CODEC_POLICY = CodecPolicy(
    rtcp_feedback=frozenset({"nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"}),
    header_extensions={
        "audio": frozenset({MID_URI, AUDIO_LEVEL_URI, ABS_SEND_TIME_URI, TRANSPORT_CC_URI}),
        "video": frozenset(
            {MID_URI, RID_URI, REPAIRED_RID_URI, ABS_SEND_TIME_URI, TRANSPORT_CC_URI}
        ),
    },
    h264_profile_level_id="42e01f",
)


@dataclass
class LocalTransport:
    """The server's ICE and DTLS parameters for one peer connection."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    candidates: list[str]
    ice_lite: bool = False


@dataclass
class PublishedMedia:
    """What the server will receive on one accepted m= section of a publish offer."""

    mid: str
    kind: str
    codecs: list[Codec]
    """The accepted codecs: the primary codec first, then its rtx codec (video) or its
    RED codec (audio, RFC 2198) if any."""
    header_extensions: dict[str, int]
    """Negotiated header extension ids by URI (the offer's ids)."""
    rids: list[str] = field(default_factory=list)
    """Simulcast RIDs in the offered order, empty without simulcast."""
    ssrcs: list[int] = field(default_factory=list)
    """Media SSRCs from a=ssrc, rtx SSRCs excluded."""
    rtx_ssrc: dict[int, int] = field(default_factory=dict)
    """The rtx SSRC by media SSRC, from a=ssrc-group:FID."""
    msid: str | None = None
    cname: str | None = None


@dataclass
class OutgoingMedia:
    """One m= section the server offers to a subscriber."""

    mid: str
    kind: str
    codecs: list[Codec]
    header_extensions: list[HeaderExtension]
    ssrc: int
    rtx_ssrc: int | None
    cname: str
    stream_id: str
    track_id: str
    active: bool = True
    rejected: bool = False
    """The subscriber rejected this m-line (port 0 in its answer): it stays rejected,
    port 0 and outside the BUNDLE group (RFC 8843 section 7.3.3), and is never reused."""


@dataclass
class NegotiatedMedia:
    """What a subscriber accepted for one m= section of the server's offer."""

    mid: str
    kind: str
    rejected: bool
    direction: str
    codecs: list[Codec]
    header_extensions: dict[str, int]


VIDEO_RTCP_FEEDBACK = ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
"""The feedback the server offers subscribers for every video codec."""


OUTGOING_OPUS_PAYLOAD_TYPE = 111
OUTGOING_RED_PAYLOAD_TYPE = 63
"""The payload type of ``audio/red`` in subscribe offers (Chrome's number)."""


def red_codec(primary_payload_type: int, payload_type: int) -> Codec:
    """An ``audio/red`` codec whose blocks are all ``primary_payload_type`` (RFC 2198
    section 5: ``a=fmtp:<pt> <primary>/<primary>``, one redundant block and the
    primary, as Chrome offers it)."""
    blocks = f"{primary_payload_type}/{primary_payload_type}"
    return Codec(payload_type, "red", 48000, 2, parameters={blocks: ""})


def red_block_payload_types(codec: Codec) -> list[int] | None:
    """The block payload types an ``audio/red`` codec's fmtp names, or None when it is
    not RED or its fmtp is not a list of payload types."""
    if codec.name.lower() != "red" or len(codec.parameters) != 1:
        return None
    (blocks,) = codec.parameters
    parts = blocks.split("/")
    if not all(part.isdigit() and len(part) <= 3 for part in parts):
        return None
    return [int(part) for part in parts]


def default_outgoing_codecs(kind: str, allow_h264: bool = False) -> list[Codec]:
    """The server's canonical codecs and payload types for subscribe offers."""
    if kind == "audio":
        return [
            Codec(
                OUTGOING_OPUS_PAYLOAD_TYPE,
                "opus",
                48000,
                2,
                parameters={"minptime": "10", "useinbandfec": "1"},
                rtcp_feedback=["transport-cc"],
            )
        ]
    if kind != "video":
        raise ValueError(f"no RTP codecs for media kind {kind!r}")
    feedback = VIDEO_RTCP_FEEDBACK
    codecs = [
        Codec(96, "VP8", 90000, rtcp_feedback=list(feedback)),
        Codec(97, "rtx", 90000, parameters={"apt": "96"}),
    ]
    if allow_h264:
        h264_parameters = {
            "level-asymmetry-allowed": "1",
            "packetization-mode": "1",
            "profile-level-id": CODEC_POLICY.h264_profile_level_id,
        }
        codecs += [
            Codec(102, "H264", 90000, parameters=h264_parameters, rtcp_feedback=list(feedback)),
            Codec(103, "rtx", 90000, parameters={"apt": "102"}),
        ]
    return codecs


def vp9_outgoing_codecs() -> list[Codec]:
    """VP9 profile 0 and its rtx, offered to a subscriber only for a VP9 track (the
    publisher chose it): one that cannot decode it rejects the m-line."""
    feedback = ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    return [
        Codec(98, "VP9", 90000, parameters={"profile-id": "0"}, rtcp_feedback=feedback),
        Codec(99, "rtx", 90000, parameters={"apt": "98"}),
    ]


H264_STREAM_PARAMETERS = ("profile-level-id", "packetization-mode")
"""H.264 fmtp parameters that describe the stream itself: a subscriber offered the
track must be told the publisher's values, since it receives the publisher's bits."""
AV1_STREAM_PARAMETERS = ("profile", "level-idx", "tier")
"""AV1 fmtp parameters (AV1 RTP specification, section 7.2) that describe the stream."""


def av1_outgoing_codecs() -> list[Codec]:
    """The server's AV1 payload types for subscribe offers (Chrome's own numbers), only
    offered for a track its publisher sends in AV1."""
    return [
        Codec(45, "AV1", 90000, rtcp_feedback=list(VIDEO_RTCP_FEEDBACK)),
        Codec(46, "rtx", 90000, parameters={"apt": "45"}),
    ]


def outgoing_codecs_for(
    kind: str, codec: Codec, allow_h264: bool = False, red: bool = False
) -> list[Codec]:
    """What to offer a subscriber for a track the publisher sends in ``codec``: the
    server's payload type for that codec and its rtx (RFC 4588: NACKs are answered on
    the consumer's RTX stream); for H.264 with the publisher's profile and
    packetization mode (a subscriber answers the profile it can decode, and one offered
    constrained baseline should not get, say, High). ``red``: the publisher sends RED
    (RFC 2198), offered after the primary codec; a subscriber that drops it gets the
    primary blocks alone."""
    defaults = default_outgoing_codecs(kind, allow_h264)
    if codec.name.upper() == "AV1":
        defaults += av1_outgoing_codecs()
    if kind == "video":
        defaults += vp9_outgoing_codecs()
    codecs = [c for c in defaults if c.name.lower() == codec.name.lower()]
    primary = {c.payload_type for c in codecs}
    codecs += [c for c in defaults if c.is_rtx and c.apt in primary]
    if red and kind == "audio" and codecs:
        codecs.append(red_codec(codecs[0].payload_type, OUTGOING_RED_PAYLOAD_TYPE))
    stream_parameters = {"H264": H264_STREAM_PARAMETERS, "AV1": AV1_STREAM_PARAMETERS}
    for ours in codecs:
        for name in stream_parameters.get(ours.name.upper(), ()):
            if name in codec.parameters:
                ours.parameters[name] = codec.parameters[name]
    return codecs


# Publish side: answer the browser's offer.


PUBLISH_START_BITRATE_KBPS = 1000
"""Where a Chrome publisher's bandwidth estimate starts (``x-google-start-bitrate``)."""


def _accepted_codec(codec: Codec) -> Codec:
    feedback = [fb for fb in codec.rtcp_feedback if fb in CODEC_POLICY.rtcp_feedback]
    return replace(codec, parameters=dict(codec.parameters), rtcp_feedback=feedback)


def _choose_primary(media: MediaSection, allow_h264: bool) -> Codec | None:
    if media.kind == "audio":
        return next(
            (
                c
                for c in media.codecs
                if c.name.lower() == "opus" and c.clock_rate == 48000 and c.channels == 2
            ),
            None,
        )
    first = next((c for c in media.codecs if c.name.upper() in ("VP8", "VP9", "H264")), None)
    if first is not None and _is_vp9_profile_0(first):
        return first
    vp8 = next((c for c in media.codecs if c.name.upper() == "VP8"), None)
    if vp8 is not None:
        return vp8
    # A publisher that offers no VP8 and lists AV1 first chose it (setCodecPreferences):
    # AV1 is forwarded as it comes, all its layers.
    first = next((c for c in media.codecs if not c.is_rtx), None)
    if first is not None and first.name.upper() == "AV1":
        return first
    if not allow_h264:
        return None
    h264 = [
        c
        for c in media.codecs
        if c.name.upper() == "H264"
        and c.parameters.get("packetization-mode") == "1"
        and "profile-level-id" in c.parameters
    ]
    preferred = CODEC_POLICY.h264_profile_level_id
    h264.sort(key=lambda c: c.parameters["profile-level-id"].lower() != preferred)
    return h264[0] if h264 else None


def _is_vp9_profile_0(codec: Codec) -> bool:
    """VP9 profile 0 (8-bit 4:2:0, RFC 9628 section 6: profile-id 0 when absent), the
    profile every browser decodes: accepted from a publisher that offers it before VP8
    and H.264 (one that prefers VP9, for SVC); otherwise VP8 stays preferred."""
    return codec.name.upper() == "VP9" and codec.parameters.get("profile-id", "0") == "0"


def _answer_codecs(media: MediaSection, allow_h264: bool) -> list[Codec]:
    primary = _choose_primary(media, allow_h264)
    if primary is None:
        return []
    codecs = [_accepted_codec(primary)]
    if media.kind == "video":
        # Chrome starts its send-side estimate here instead of at 300 kbit/s, so the
        # upper simulcast layers come up within seconds (our transport-cc feedback
        # takes it down again if the link is smaller).
        codecs[0].parameters["x-google-start-bitrate"] = str(PUBLISH_START_BITRATE_KBPS)
    rtx = next((c for c in media.codecs if c.is_rtx and c.apt == primary.payload_type), None)
    if rtx is not None:
        codecs.append(_accepted_codec(rtx))
    if media.kind == "audio":
        red = next((c for c in media.codecs if _is_red_for(c, primary)), None)
        if red is not None:
            codecs.append(_accepted_codec(red))
    return codecs


def _is_red_for(codec: Codec, primary: Codec) -> bool:
    """Whether ``codec`` is RED (RFC 2198) with every block in ``primary`` (Chrome
    offers ``red/48000/2`` with ``a=fmtp:63 111/111``)."""
    blocks = red_block_payload_types(codec)
    return (
        blocks is not None
        and 0 < len(blocks) <= 4
        and all(pt == primary.payload_type for pt in blocks)
        and codec.clock_rate == primary.clock_rate
    )


_ANSWER_EXTENSION_DIRECTION = {None: None, "sendrecv": None, "sendonly": "recvonly"}


def _answer_header_extensions(media: MediaSection, primary: Codec) -> list[HeaderExtension]:
    accepted = CODEC_POLICY.header_extensions.get(media.kind, frozenset())
    if primary.name.upper() == "AV1":
        # Its decode targets are how the SFU drops layers per subscriber; other codecs
        # do without (parsing it would cost every VP8 packet).
        accepted = accepted | {DEPENDENCY_DESCRIPTOR_URI}
    return [
        HeaderExtension(ext.id, ext.uri, _ANSWER_EXTENSION_DIRECTION[ext.direction])
        for ext in media.header_extensions
        if ext.uri in accepted and ext.direction in _ANSWER_EXTENSION_DIRECTION
    ]


def _offered_send_rids(media: MediaSection) -> list[list[str]]:
    """The offer's simulcast send streams, restricted to RIDs declared with a=rid send."""
    if media.simulcast is None:
        return []
    declared = {rid.id for rid in media.rids if rid.direction == "send"}
    streams = [[rid for rid in stream if rid in declared] for stream in media.simulcast.send]
    return [stream for stream in streams if stream]


def rejected_section(media: MediaSection) -> MediaSection:
    """``media`` refused: port 0, inactive, its first format kept (RFC 3264 section 6)."""
    return MediaSection(
        kind=media.kind,
        port=0,
        protocol=media.protocol,
        formats=media.formats[:1],
        mid=media.mid,
        direction="inactive",
        host="0.0.0.0",
    )


def _set_transport(section: MediaSection, local: LocalTransport, setup: str) -> None:
    section.ice_ufrag = local.ice_ufrag
    section.ice_pwd = local.ice_pwd
    section.fingerprints = list(local.fingerprints)
    section.setup = setup
    section.candidates = list(local.candidates)
    section.end_of_candidates = True


def _published_media(
    offered: MediaSection, mid: str, codecs: list[Codec], extensions: list[HeaderExtension]
) -> PublishedMedia:
    if len(offered.ssrcs) > MAX_SSRCS_PER_SECTION:
        raise SdpError(
            f"mid {quoted(mid)} declares {len(offered.ssrcs)} SSRCs;"
            f" at most {MAX_SSRCS_PER_SECTION}"
        )
    rtx_ssrc = {
        group.ssrcs[0]: group.ssrcs[1]
        for group in offered.ssrc_groups
        if group.semantics == "FID" and len(group.ssrcs) == 2
    }
    repair_ssrcs = set(rtx_ssrc.values())
    cnames = [attrs["cname"] for attrs in offered.ssrcs.values() if attrs.get("cname")]
    return PublishedMedia(
        mid=mid,
        kind=offered.kind,
        codecs=codecs,
        header_extensions={ext.uri: ext.id for ext in extensions},
        ssrcs=[ssrc for ssrc in offered.ssrcs if ssrc not in repair_ssrcs],
        rtx_ssrc=rtx_ssrc,
        msid=offered.msid,
        cname=cnames[0] if cnames else None,
    )


@dataclass(frozen=True)
class SctpParameters:
    """The publisher's end of an accepted data channel m= section."""

    mid: str
    port: int
    max_message_size: int
    """0 means no limit (RFC 8841)."""


def _answer_application(
    offered: MediaSection, local: LocalTransport, bundled: bool
) -> MediaSection:
    """Accept a WebRTC data channel section (SCTP over the bundled DTLS transport)."""
    if not (
        bundled
        and offered.protocol in DATA_CHANNEL_PROTOCOLS
        and DATA_CHANNEL_FORMAT in offered.formats
        and offered.mid is not None
    ):
        return rejected_section(offered)
    answer = MediaSection(
        kind="application",
        port=9,
        protocol=offered.protocol,
        formats=[DATA_CHANNEL_FORMAT],
        mid=offered.mid,
        host="0.0.0.0",
        sctp_port=SCTP_PORT,
        max_message_size=SCTP_MAX_MESSAGE_SIZE,
    )
    _set_transport(answer, local, "passive")
    return answer


def accepted_data_channel(
    offer: SessionDescription, answer: SessionDescription
) -> SctpParameters | None:
    """The data channel section ``answer`` accepted from ``offer``, if any."""
    for section in answer.media:
        if section.kind != "application" or section.rejected or section.mid is None:
            continue
        offered = offer.media_by_mid(section.mid)
        if offered is None:
            continue
        return SctpParameters(
            mid=section.mid,
            port=offered.sctp_port or SCTP_PORT,
            max_message_size=(
                REMOTE_DEFAULT_MAX_MESSAGE_SIZE
                if offered.max_message_size is None
                else offered.max_message_size
            ),
        )
    return None


def _answer_media(
    offered: MediaSection, local: LocalTransport, bundled: bool, allow_h264: bool
) -> tuple[MediaSection, PublishedMedia | None]:
    if offered.kind == "application":
        return _answer_application(offered, local, bundled), None
    acceptable = (
        bundled
        and offered.kind in ("audio", "video")
        and offered.direction in ("sendonly", "sendrecv")
        and offered.rtcp_mux
        and offered.mid is not None
    )
    codecs = _answer_codecs(offered, allow_h264) if acceptable else []
    if not codecs or offered.mid is None:
        return rejected_section(offered), None
    extensions = _answer_header_extensions(offered, codecs[0])
    # RED first: libwebrtc sends RED only when it precedes its primary codec in the
    # answer (Chrome offers it after Opus, and sends plain Opus to such an answer).
    answered = sorted(codecs, key=lambda codec: codec.name.lower() != "red")
    answer = MediaSection(
        kind=offered.kind,
        port=9,
        protocol=offered.protocol,
        formats=[str(codec.payload_type) for codec in answered],
        mid=offered.mid,
        direction="recvonly",
        host="0.0.0.0",
        codecs=answered,
        header_extensions=extensions,
        rtcp_mux=True,
        rtcp_rsize=offered.rtcp_rsize,
        extmap_allow_mixed=offered.extmap_allow_mixed,
    )
    _set_transport(answer, local, "passive")
    published = _published_media(offered, offered.mid, codecs, extensions)
    streams = _offered_send_rids(offered)
    if streams and RID_URI in published.header_extensions:
        answer.rids = [Rid(rid, "recv") for stream in streams for rid in stream]
        answer.simulcast = Simulcast(recv=streams)
        published.rids = [rid.id for rid in answer.rids]
    return answer, published


def _bundled(offered: MediaSection, bundle: list[str]) -> bool:
    """Whether ``offered`` joins the BUNDLE transport.

    A port of 0 rejects or disables an m= section (RFC 3264 sections 6 and 8.2), except
    with a=bundle-only (RFC 8843 section 6): a max-bundle offerer (JSEP, RFC 8829;
    Firefox) writes every m= section but the offerer-tagged one, the group's first,
    that way. The offerer-tagged one carries the BUNDLE address: it needs a real port.
    """
    if offered.mid not in bundle:
        return False
    return offered.port != 0 or (offered.bundle_only and offered.mid != bundle[0])


def create_publish_answer(
    offer: SessionDescription, local: LocalTransport, allow_h264: bool = False
) -> tuple[SessionDescription, list[PublishedMedia]]:
    """Answer a publisher's offer: receive its audio and video, accept its data channel
    section, reject everything else.

    Only m= sections in the offer's first BUNDLE group are accepted (the server runs one
    transport per peer connection), bundle-only ones included. The answer's origin
    reuses the offer's session id and version, which keeps the answer deterministic and
    its version increasing.
    """
    if not offer.bundle_groups:
        raise SdpError("the offer has no BUNDLE group; the server requires BUNDLE")
    bundle = offer.bundle_groups[0]
    answer = SessionDescription(
        session_id=offer.session_id,
        session_version=offer.session_version,
        ice_lite=local.ice_lite,
        msid_semantic="WMS",
        extmap_allow_mixed=offer.extmap_allow_mixed,
    )
    published: list[PublishedMedia] = []
    for offered in offer.media:
        section, media = _answer_media(offered, local, _bundled(offered, bundle), allow_h264)
        answer.media.append(section)
        if media is not None:
            published.append(media)
    accepted = {media.mid for media in published}
    accepted |= {s.mid for s in answer.media if s.kind == "application" and not s.rejected}
    if accepted:
        answer.bundle_groups = [[mid for mid in bundle if mid in accepted]]
    return answer, published


def bundle_transport(offer: SessionDescription, answer: SessionDescription) -> TransportInfo:
    """The publisher's ICE and DTLS parameters for the BUNDLE transport ``answer`` accepted.

    They are the offerer-tagged m= section's (RFC 8843), with the
    candidates of every accepted section: a max-bundle offer has them only on the
    first, an offer written without max-bundle may spread them.
    """
    if not answer.bundle_groups:
        raise SdpError("the answer accepted no m= section")
    bundle = offer.bundle_groups[0]
    tagged = offer.media_by_mid(bundle[0])
    accepted = [offer.media_by_mid(mid) for mid in answer.bundle_groups[0]]
    sections = [m for m in (tagged, *accepted) if m is not None]
    info = offer.transport(sections[0])
    info.candidates = list(dict.fromkeys(c for m in sections for c in m.candidates))
    info.end_of_candidates = any(m.end_of_candidates for m in sections)
    return info


# Subscribe side: offer to the browser and read its answer.


def subscribe_offer_section(media: OutgoingMedia, local: LocalTransport) -> MediaSection:
    """One m= section of a subscribe offer. From one offer to the next only the
    sections whose track changed differ: a caller may keep the others (and their text)
    and pass them to :func:`create_subscribe_offer` again."""
    if media.rejected:
        return MediaSection(
            kind=media.kind,
            port=0,
            protocol=RTP_PROTOCOL,
            formats=[str(media.codecs[0].payload_type)],
            mid=media.mid,
            direction="inactive",
            host="0.0.0.0",
        )
    section = MediaSection(
        kind=media.kind,
        port=9,
        protocol=RTP_PROTOCOL,
        formats=[str(codec.payload_type) for codec in media.codecs],
        mid=media.mid,
        direction="sendonly" if media.active else "inactive",
        host="0.0.0.0",
        codecs=[replace(c, parameters=dict(c.parameters)) for c in media.codecs],
        header_extensions=[replace(ext) for ext in media.header_extensions],
        rtcp_mux=True,
        rtcp_rsize=True,
    )
    _set_transport(section, local, "actpass")
    if media.active:
        msid = f"{media.stream_id} {media.track_id}"
        section.msid = msid
        ssrcs = [media.ssrc] if media.rtx_ssrc is None else [media.ssrc, media.rtx_ssrc]
        section.ssrcs = {ssrc: {"cname": media.cname, "msid": msid} for ssrc in ssrcs}
        if media.rtx_ssrc is not None:
            section.ssrc_groups = [SsrcGroup("FID", ssrcs)]
    return section


def create_subscribe_offer(
    local: LocalTransport,
    media: Sequence[OutgoingMedia | MediaSection],
    session_id: int,
    session_version: int,
) -> SessionDescription:
    """Offer a subscriber every outgoing m= section in one BUNDLE group; an entry may
    be a section :func:`subscribe_offer_section` built for an earlier offer.

    Inactive sections keep their mid and BUNDLE membership so they can be reused later;
    rejected ones are left out of the group.
    """
    sections = [
        m if isinstance(m, MediaSection) else subscribe_offer_section(m, local) for m in media
    ]
    mids = [section.mid for section in sections if section.mid is not None]
    if len(set(mids)) != len(sections):
        raise SdpError(f"duplicate mids in outgoing media: {mids}")
    bundle = [section.mid for section in sections if section.mid is not None and section.port]
    return SessionDescription(
        session_id=session_id,
        session_version=session_version,
        ice_lite=local.ice_lite,
        bundle_groups=[bundle] if bundle else [],
        msid_semantic="WMS *",
        extmap_allow_mixed=True,
        media=sections,
    )


def _negotiated_codecs(offered: MediaSection, answered: MediaSection) -> list[Codec]:
    codecs = []
    for codec in answered.codecs:
        ours = offered.codec(codec.payload_type)
        if ours is None or ours.mime_type.lower() != codec.mime_type.lower():
            raise SdpError(
                f"mid {answered.mid!r}: the answer uses payload type {codec.payload_type}"
                f" ({quoted(codec.mime_type)}) which was not offered"
            )
        codecs.append(codec)
    return codecs


def _negotiated_extensions(offered: MediaSection, answered: MediaSection) -> dict[str, int]:
    ours = offered.header_extension_ids()
    for ext in answered.header_extensions:
        if ours.get(ext.uri) != ext.id:
            raise SdpError(
                f"mid {answered.mid!r}: the answer maps {quoted(ext.uri)} to id {ext.id},"
                " which does not match the offer"
            )
    return answered.header_extension_ids()


def parse_subscribe_answer(
    answer: SessionDescription, offer: SessionDescription
) -> dict[str, NegotiatedMedia]:
    """What the subscriber accepted, by mid; raises SdpError if it does not fit the offer."""
    answer_mids = [m.mid for m in answer.media]
    offer_mids = [m.mid for m in offer.media]
    if answer_mids != offer_mids:
        raise SdpError(
            f"the answer's mids {quoted(str(answer_mids))} do not match the offer's {offer_mids}"
        )
    negotiated: dict[str, NegotiatedMedia] = {}
    for offered, answered in zip(offer.media, answer.media, strict=True):
        if offered.mid is None:
            raise SdpError("the offer has a media section without a=mid")
        if answered.kind != offered.kind:
            raise SdpError(f"mid {offered.mid!r}: the answer changed the media kind")
        rejected = answered.rejected
        if not rejected:
            setup = answer.transport(answered).setup
            if setup != "active":
                raise SdpError(
                    f"mid {offered.mid!r}: the answer has a=setup:{quoted(setup or '')}; the server"
                    " is always the DTLS server and needs a=setup:active"
                )
        negotiated[offered.mid] = NegotiatedMedia(
            mid=offered.mid,
            kind=offered.kind,
            rejected=rejected,
            direction="inactive" if rejected else answered.direction,
            codecs=[] if rejected else _negotiated_codecs(offered, answered),
            header_extensions={} if rejected else _negotiated_extensions(offered, answered),
        )
    return negotiated
