"""RtpDemultiplexer: SSRCs bound from the offer or learned from MID/RID/repaired-RID
header extensions or a payload type, with real packet bytes and no sockets."""

from __future__ import annotations

from sfu.demultiplexer import MAX_LEARNED_SSRCS, RtpDemultiplexer
from sfu.producer import Producer
from sfu.rtp.extensions import SDES_MID, SDES_REPAIRED_RTP_STREAM_ID, SDES_RTP_STREAM_ID
from sfu.rtp.packet import build_rtp_packet
from sfu.sdp import Codec

MID, RID, RRID = 1, 2, 3
VP8, RTX, OPUS = (
    Codec(96, "VP8", 90000),
    Codec(97, "rtx", 90000, {"apt": "96"}),
    Codec(111, "opus", 48000, 2),
)


def producer(mid: str, codecs: list[Codec], rids: list[str]) -> Producer:
    kind = "audio" if codecs[0].name == "opus" else "video"
    return Producer(f"TR_{mid}", "PA_p", kind, mid, codecs, rids, "camera", lambda ssrc: None)


def packet(ssrc: int, payload_type: int, **sdes: str) -> bytes:
    ids = {"mid": MID, "rid": RID, "rrid": RRID}
    extensions = {ids[name]: value.encode() for name, value in sdes.items()}
    return build_rtp_packet(
        payload_type=payload_type,
        sequence_number=1,
        timestamp=0,
        ssrc=ssrc,
        payload=b"\x10\x00\x9d\x01\x2a",
        extensions=extensions,
    )


def demultiplexer() -> tuple[RtpDemultiplexer, dict[str, Producer], list[int]]:
    producers = {"0": producer("0", [OPUS], []), "1": producer("1", [VP8, RTX], ["q", "h"])}
    bound: list[int] = []
    demux = RtpDemultiplexer(producers, bound.append)
    demux.use_extensions(
        {SDES_MID: MID, SDES_RTP_STREAM_ID: RID, SDES_REPAIRED_RTP_STREAM_ID: RRID}
    )
    return demux, producers, bound


def test_simulcast_layers_and_their_rtx_are_learned_from_mid_rid_and_repaired_rid():
    demux, producers, bound = demultiplexer()
    video = producers["1"]
    q = demux.route(packet(0x100, 96, mid="1", rid="q"))
    h = demux.route(packet(0x200, 96, mid="1", rid="h"))
    assert q is not None and h is not None
    assert (q[0], q[1].rid, h[1].rid) == (video, "q", "h")
    assert bound == [0x100, 0x200]
    assert demux.route(packet(0x101, 97, mid="1", rrid="q")) == (video, None)
    assert demux.repaired(0x101) == (video, video.streams[0x100])
    # Learned once: later packets route by SSRC alone.
    assert demux.route(packet(0x200, 96)) == h
    assert demux.stream(0x100) is video.streams[0x100] and demux.stream(0x101) is None


def test_without_a_mid_a_payload_type_of_exactly_one_producer_routes():
    demux, producers, _ = demultiplexer()
    route = demux.route(packet(0x400, 111))
    assert route is not None and route[0] is producers["0"]
    assert demux.route(packet(0x500, 100)) is None, "a payload type nobody publishes"


def test_unknown_mids_payload_types_and_unrepaired_rtx_are_unroutable():
    demux, _, bound = demultiplexer()
    assert demux.route(packet(0x600, 96, mid="7")) is None
    assert demux.route(packet(0x601, 111, mid="1")) is None, "not a payload type of mid 1"
    assert demux.route(packet(0x602, 97, mid="1", rrid="f")) is None, "no such layer yet"
    assert bound == []


def test_at_most_max_learned_ssrcs_are_bound():
    demux, _, bound = demultiplexer()
    for ssrc in range(1, MAX_LEARNED_SSRCS + 10):
        demux.route(packet(ssrc, 111, mid="0"))
    assert len(bound) == MAX_LEARNED_SSRCS
    assert demux.route(packet(0xFFFF, 111, mid="0")) is None
