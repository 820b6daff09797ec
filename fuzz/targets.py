"""Fuzz targets: one function per parser, bytes in, nothing out.

Each target feeds arbitrary bytes to a parser the SFU runs on input from the network
or from a client, and checks what the parser documents: malformed input raises
``ValueError`` (``SdpError`` is one) and nothing else, and what parses round-trips
through its serializer. Any other exception, or a failed assertion, is a finding.
They run under atheris (``python -m fuzz NAME``, coverage-guided) and over the seed
corpus in the test suite (``tests/test_fuzz_targets.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from sfu.bwe.send_side import SendSideBandwidthEstimator
from sfu.rtp import rtcp
from sfu.rtp.dependency_descriptor import (
    DependencyDescriptorError,
    parse_dependency_descriptor,
    write_dependency_descriptor,
)
from sfu.rtp.packet import RtpHeader, read_payload_and_extensions
from sfu.rtp.red import parse_red, red_primary_start, rewrite_red_payload_types
from sfu.rtp.transport_feedback import TransportCcFeedback, parse_transport_cc
from sfu.rtp.vp8 import (
    Vp8Descriptor,
    is_vp8_frame_start,
    is_vp8_keyframe,
    rewrite_vp8_descriptor,
    vp8_layer_sync,
    vp8_temporal_id,
)
from sfu.rtp.vp9 import (
    Vp9Descriptor,
    is_vp9_keyframe,
    rewrite_vp9_picture,
    vp9_layers,
    vp9_picture_id,
    vp9_spatial_sizes,
    vp9_tl0picidx,
)
from sfu.sdp import LocalTransport, SdpError, SessionDescription, create_publish_answer

ESTIMATOR_HISTORY = 300
"""Packets the estimator under fuzzing has sent before the feedback arrives."""
FULL_PARSE_LIMIT = 1024
"""Status counts up to which the one-object-per-status parse is compared as well (it is
for trusted input, and costs 30 ms for the 65,535 a hostile FCI declares)."""
LOCAL = LocalTransport(
    ice_ufrag="fuzz",
    ice_pwd="fuzzfuzzfuzzfuzzfuzzfuzz",
    fingerprints=[("sha-256", ":".join(["AB"] * 32))],
    candidates=["1 1 udp 2130706431 127.0.0.1 40000 typ host"],
)


def rtp(data: bytes) -> None:
    """RTP fixed header, CSRCs and RFC 8285 header extensions."""
    try:
        header = RtpHeader.parse(data)
    except ValueError:
        return
    assert read_payload_and_extensions(data) == (header.payload_offset, header.extensions)
    payload = data[header.payload_offset : len(data) - header.padding_length]
    again = RtpHeader.parse(header.serialize(payload))
    for name in ("payload_type", "sequence_number", "timestamp", "ssrc", "marker", "csrcs"):
        assert getattr(again, name) == getattr(header, name), name
    if header.extension_profile in (0xBEDE, 0x1000):
        assert again.extensions == header.extensions


def rtcp_compound(data: bytes) -> None:
    """An RTCP compound, every packet type the SFU knows."""
    try:
        packets = rtcp.parse_rtcp(data)
    except ValueError:
        return
    for packet in packets:
        (again,) = rtcp.parse_rtcp(bytes(packet))
        if isinstance(packet, rtcp.GenericNack):
            # bytes() compresses the lost list: order and duplicates are not kept.
            assert isinstance(again, rtcp.GenericNack)
            assert set(again.lost) == set(packet.lost)
        else:
            assert again == packet, packet


def transport_cc(data: bytes) -> None:
    """A transport-cc FCI, through both parsers and the estimator that consumes it."""
    try:
        report = parse_transport_cc(data)
    except ValueError:
        return
    assert len(report.received) <= len(data)
    if report.status_count <= FULL_PARSE_LIMIT:
        feedback = TransportCcFeedback.parse(data)
        assert len(feedback.packets) == report.status_count
        assert sum(packet.received for packet in feedback.packets) == len(report.received)
        assert TransportCcFeedback.parse(bytes(feedback)) == feedback
    estimator = SendSideBandwidthEstimator()
    for sequence in range(ESTIMATOR_HISTORY):
        estimator.on_packet_sent(sequence, 1_000, sequence / 1_000)
    estimator.on_feedback(report, 1.0)
    assert estimator.estimate > 0


def vp8(data: bytes) -> None:
    """The VP8 payload descriptor and the per-packet helpers the forwarder calls."""
    is_vp8_keyframe(data)
    is_vp8_frame_start(data)
    vp8_layer_sync(data)
    try:
        descriptor = Vp8Descriptor.parse(data)
    except ValueError:
        return
    vp8_temporal_id(data)
    assert Vp8Descriptor.parse(bytes(descriptor)) == descriptor
    buffer = bytearray(data)
    try:
        rewrite_vp8_descriptor(buffer, 0, 0x1234, 7)
    except ValueError:
        return
    assert len(buffer) == len(data)


def dependency_descriptor(data: bytes) -> None:
    """A dependency descriptor that attaches its structure, then the same bytes read
    against that structure (as a later packet's): the parser, the writer, a round trip."""
    try:
        first = parse_dependency_descriptor(data, None)
    except DependencyDescriptorError:
        return
    structure = first.attached_structure
    assert structure is not None
    assert parse_dependency_descriptor(write_dependency_descriptor(first, structure), None) == first
    try:
        later = parse_dependency_descriptor(data[:3], structure)
    except DependencyDescriptorError:
        return
    assert parse_dependency_descriptor(
        write_dependency_descriptor(later, structure), structure
    ) == (later)


def vp9(data: bytes) -> None:
    """The VP9 payload descriptor (RFC 9628) and the per-packet helpers the forwarder
    calls: the layer word agrees with the full parse, a picture-id rewrite keeps the
    length."""
    word = vp9_layers(data)
    is_vp9_keyframe(data)
    vp9_spatial_sizes(data)
    picture_id = vp9_picture_id(data)
    tl0picidx = vp9_tl0picidx(data)
    try:
        descriptor = Vp9Descriptor.parse(data)
    except ValueError:
        return
    assert picture_id == (-1 if descriptor.picture_id is None else descriptor.picture_id)
    assert tl0picidx == (-1 if descriptor.tl0picidx is None else descriptor.tl0picidx)
    assert word >= 0 and descriptor.size <= len(data)
    if descriptor.tid is not None:
        assert word & 0x07 == descriptor.tid and (word >> 3) & 0x07 == descriptor.sid
    if descriptor.picture_id is not None:
        rewritten = rewrite_vp9_picture(data, 0x1234, 7)
        assert len(rewritten) == len(data)
        assert Vp9Descriptor.parse(rewritten).size == descriptor.size


def red(data: bytes) -> None:
    """A RED payload (RFC 2198): the block parser, its fast path and the payload type
    rewrite a consumer applies."""
    parsed = parse_red(data)
    start = red_primary_start(data)
    if parsed is None:
        assert start == -1
        return
    assert start == parsed.primary_start <= len(data)
    rewritten = rewrite_red_payload_types(data, parsed, 111)
    assert len(rewritten) == len(data)
    reparsed = parse_red(rewritten)
    assert reparsed is not None and reparsed.primary_start == parsed.primary_start


def sdp(data: bytes) -> None:
    """A publish offer: the SDP parser, its serializer and the publish answer."""
    text = data.decode("utf-8", errors="replace")
    try:
        offer = SessionDescription.parse(text)
    except SdpError:
        return
    assert str(SessionDescription.parse(str(offer))) == str(offer)
    try:
        create_publish_answer(offer, LOCAL)
    except SdpError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "rtp": rtp,
    "rtcp": rtcp_compound,
    "transport_cc": transport_cc,
    "vp8": vp8,
    "dependency_descriptor": dependency_descriptor,
    "vp9": vp9,
    "red": red,
    "sdp": sdp,
}
