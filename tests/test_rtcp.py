import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.rtp.rtcp import (
    FullIntraRequest,
    GenericNack,
    Goodbye,
    PictureLossIndication,
    ReceiverEstimatedMaxBitrate,
    ReceiverReport,
    ReportBlock,
    SenderReport,
    SourceDescription,
    TransportFeedback,
    UnknownRtcp,
    compact_ntp,
    ntp_from_unix,
    parse_rtcp,
    unix_from_ntp,
)

CHROME_SSRC = 2003113037

# Receive-only Chrome (RTCP sender SSRC 1): RR with one report block, then REMB
# 1 250 000 bps (exponent 3, mantissa 156250) for one SSRC. Cross-checked against aiortc.
RR_REMB = bytes.fromhex(
    "81c90007 00000001"  # RR, 1 report block, sender SSRC 1
    " 7765144d 0300000c 00013a41 00000025 9a3c1234 00012000"  # report block
    " 8fce0005 00000001 00000000"  # PSFB fmt 15, media SSRC 0
    " 52454d42 010e625a 7765144d"  # "REMB", 1 SSRC, exp 3 mantissa 156250, SSRC
)

# SR with no report blocks, then SDES with the 16-character CNAME Chrome generates.
SR_SDES = bytes.fromhex(
    "80c80006 7765144d"  # SR, 0 report blocks
    " e9a1c3b4 7ae147ae 5e1f80c4 000004d2 000f1206"  # NTP, RTP timestamp, packets, octets
    " 81ca0006 7765144d"  # SDES, 1 chunk
    " 0110 74594c4b41364d6956455548314d2f6c 0000"  # CNAME "tYLKA6MiVEUH1M/l", END, pad
)

# libwebrtc transport-cc feedback: 13 bytes of FCI, padded with the P bit (count 3).
TRANSPORT_CC = bytes.fromhex("afcd0006 00000001 7765144d 01a70003 000b2900 20031004 08000003")

# RR carrying an 8-byte profile-specific extension after its report block, then a PLI.
RR_WITH_EXTENSION_PLI = bytes.fromhex(
    "81c90009 00000001"  # RR, 1 report block, length 9 words
    " 7765144d 0300000c 00013a41 00000025 9a3c1234 00012000"  # report block
    " deadbeef cafebabe"  # profile-specific extension
    " 81ce0002 00000001 7765144d"  # PLI
)

CHROME_REPORT_BLOCK = ReportBlock(
    ssrc=CHROME_SSRC,
    fraction_lost=3,
    packets_lost=12,
    highest_sequence=0x13A41,
    jitter=37,
    lsr=0x9A3C1234,
    dlsr=0x12000,
)


def test_chrome_rr_remb():
    assert parse_rtcp(RR_REMB) == [
        ReceiverReport(ssrc=1, reports=[CHROME_REPORT_BLOCK]),
        ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=1_250_000, ssrcs=[CHROME_SSRC]),
    ]
    assert b"".join(bytes(p) for p in parse_rtcp(RR_REMB)) == RR_REMB


def test_chrome_sr_sdes():
    assert parse_rtcp(SR_SDES) == [
        SenderReport(
            ssrc=CHROME_SSRC,
            ntp_timestamp=0xE9A1C3B47AE147AE,
            rtp_timestamp=0x5E1F80C4,
            packet_count=1234,
            octet_count=987654,
            reports=[],
        ),
        SourceDescription(chunks=[(CHROME_SSRC, [(1, b"tYLKA6MiVEUH1M/l")])]),
    ]
    assert b"".join(bytes(p) for p in parse_rtcp(SR_SDES)) == SR_SDES


def test_transport_cc_is_not_a_nack():
    packet = TransportFeedback(
        sender_ssrc=1, media_ssrc=CHROME_SSRC, fci=bytes.fromhex("01a70003 000b2900 20031004 08")
    )
    assert parse_rtcp(TRANSPORT_CC) == [packet]
    assert bytes(packet) == TRANSPORT_CC


def test_rr_profile_extension_is_skipped_and_compound_kept():
    assert parse_rtcp(RR_WITH_EXTENSION_PLI) == [
        ReceiverReport(ssrc=1, reports=[CHROME_REPORT_BLOCK]),
        PictureLossIndication(sender_ssrc=1, media_ssrc=CHROME_SSRC),
    ]


@pytest.mark.parametrize(
    ("hex_data", "expected"),
    [
        ("84ce0004 00000001 00000000 7765144d 05000000", FullIntraRequest(1, [(CHROME_SSRC, 5)])),
        (
            "84ce0006 00000001 00000000 7765144d ff000000 00000002 07000000",
            FullIntraRequest(1, [(CHROME_SSRC, 255), (2, 7)]),
        ),
        (
            "81cd0003 00000001 7765144d 3a418005",
            GenericNack(1, CHROME_SSRC, [0x3A41, 0x3A42, 0x3A44, 0x3A51]),
        ),
        ("81cd0003 00000001 7765144d ffff0001", GenericNack(1, CHROME_SSRC, [65535, 0])),
        ("81cb00017765144d", Goodbye([CHROME_SSRC])),
        (
            "82cb0005 7765144d 00000002 08736875 74646f77 6e000000",
            Goodbye([CHROME_SSRC, 2], "shutdown"),
        ),
        ("80cb000100000000", Goodbye([], "")),
        # XR (RRTR block), APP and an SLI are kept verbatim
        (
            "80cf0004 00000001 04000002 e9a1c3b4 7ae147ae",
            UnknownRtcp(207, 0, bytes.fromhex("00000001 04000002 e9a1c3b4 7ae147ae")),
        ),
        (
            "81cc0003 00000001 6e616d65 01020304",
            UnknownRtcp(204, 1, bytes.fromhex("00000001 6e616d65 01020304")),
        ),
        (
            "82ce0003 00000001 7765144d 00010203",
            UnknownRtcp(206, 2, bytes.fromhex("00000001 7765144d 00010203")),
        ),
        # application layer feedback that is not REMB
        (
            "8fce0003 00000001 00000000 41424344",
            UnknownRtcp(206, 15, bytes.fromhex("00000001 00000000 41424344")),
        ),
        # RTPFB TMMBR
        (
            "83cd0004 00000001 00000000 7765144d 04000000",
            UnknownRtcp(205, 3, bytes.fromhex("00000001 00000000 7765144d 04000000")),
        ),
        # an RTCP packet type outside the known range
        ("80d00000", UnknownRtcp(208, 0, b"")),
        # SDES: three chunks, the second with a PRIV item, the third with no items
        (
            "83ca0007 00000001 01016100 00000002 08036162 63000000 00000003 00000000",
            SourceDescription([(1, [(1, b"a")]), (2, [(8, b"abc")]), (3, [])]),
        ),
    ],
)
def test_golden_packets(hex_data, expected):
    assert parse_rtcp(bytes.fromhex(hex_data)) == [expected]


ROUND_TRIP_PACKETS = [
    SenderReport(
        ssrc=CHROME_SSRC,
        ntp_timestamp=(1 << 64) - 1,
        rtp_timestamp=0xFFFFFFFF,
        packet_count=0xFFFFFFFF,
        octet_count=0,
        reports=[CHROME_REPORT_BLOCK, ReportBlock(ssrc=2, packets_lost=-0x800000)],
    ),
    SenderReport(ssrc=1, ntp_timestamp=0, rtp_timestamp=0, packet_count=0, octet_count=0),
    ReceiverReport(ssrc=1),
    ReceiverReport(ssrc=1, reports=[ReportBlock(ssrc=n, packets_lost=0x7FFFFF) for n in range(31)]),
    SourceDescription(),
    SourceDescription(chunks=[(1, [(1, b"")]), (2, [(1, b"x" * 255), (6, b"pysfu")])]),
    Goodbye(),
    Goodbye(ssrcs=[1, 2, 3], reason="caf\u00e9 closed"),
    GenericNack(sender_ssrc=1, media_ssrc=2),
    GenericNack(sender_ssrc=1, media_ssrc=2, lost=[65530, 65535, 10, 11, 100]),
    PictureLossIndication(sender_ssrc=1, media_ssrc=2),
    FullIntraRequest(sender_ssrc=1),
    FullIntraRequest(sender_ssrc=1, entries=[(2, 0), (3, 255)]),
    ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=0),
    ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=(2**18 - 1) << 63, ssrcs=[1, 2, 3]),
    TransportFeedback(sender_ssrc=1, media_ssrc=2),
    TransportFeedback(sender_ssrc=1, media_ssrc=2, fci=b"\x01"),
    UnknownRtcp(packet_type=207, fmt=0, payload=b"abcdefgh"),
    UnknownRtcp(packet_type=204, fmt=31, payload=b"abc"),
]


@pytest.mark.parametrize("packet", ROUND_TRIP_PACKETS)
def test_round_trip(packet):
    data = bytes(packet)
    assert len(data) % 4 == 0
    assert int.from_bytes(data[2:4], "big") == len(data) // 4 - 1
    assert parse_rtcp(data) == [packet]


def test_compound_round_trip():
    data = b"".join(bytes(packet) for packet in ROUND_TRIP_PACKETS)
    assert parse_rtcp(data) == ROUND_TRIP_PACKETS


@pytest.mark.parametrize(
    ("lost", "fci"),
    [
        ([1], "00010000"),
        ([1, 2, 17], "00018001"),
        ([1, 18], "0001000000120000"),
        ([65535, 0, 1], "ffff0003"),
        ([65530, 65535, 10], "fffa8010"),
        ([5, 3], "0005000000030000"),
        ([1, 1, 2], "00010001"),
        ([], ""),
    ],
)
def test_nack_compression(lost, fci):
    assert bytes(GenericNack(sender_ssrc=1, media_ssrc=2, lost=lost))[12:].hex() == fci


@pytest.mark.parametrize(
    ("bitrate", "encoded", "decoded"),
    [
        (0, "000000", 0),
        (2**18 - 1, "03ffff", 2**18 - 1),
        (2**18, "060000", 2**18),
        (1_250_000, "0e625a", 1_250_000),
        (1_000_001, "0bd090", 1_000_000),
        (30_000_001, "1f9387", 30_000_000),
    ],
)
def test_remb_bitrate(bitrate, encoded, decoded):
    data = bytes(ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=bitrate))
    assert data[17:20].hex() == encoded
    [packet] = parse_rtcp(data)
    assert isinstance(packet, ReceiverEstimatedMaxBitrate)
    assert packet.bitrate == decoded


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=-1), "negative"),
        (ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=1 << 82), "6-bit exponent"),
        (ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=1, ssrcs=[0] * 256), "256 SSRCs"),
        (ReceiverReport(ssrc=1, reports=[ReportBlock(ssrc=0)] * 32), "count field 32"),
        (Goodbye(reason="x" * 256), "256 bytes"),
        (SourceDescription(chunks=[(1, [(0, b"")])]), "item type 0"),
        (SourceDescription(chunks=[(1, [(1, bytes(256))])]), "256 bytes"),
        (GenericNack(sender_ssrc=1, media_ssrc=2, lost=[65536]), "65536"),
        (UnknownRtcp(packet_type=207, fmt=0, payload=bytes(0x40000)), "exceeds the length"),
    ],
)
def test_build_rejects(packet, message):
    with pytest.raises(ValueError, match=message):
        bytes(packet)


@pytest.mark.parametrize(
    ("hex_data", "message"),
    [
        ("", "empty"),
        ("81c9", "header at byte 0 is truncated"),
        ("41c9000100000001", "version 1"),
        ("81c9000700000001", "ends at byte 32, beyond the 8-byte"),
        ("80c90001 00000001 8000", "header at byte 8 is truncated"),
        ("80c90001 00000001 80c90001", "ends at byte 16, beyond the 12-byte"),
        ("a0c9000100000000", "padding count 0"),
        ("a0c9000100000009", "padding count 9 for a 4-byte body"),
        ("a0c90000", "padding count 0 for a 0-byte body"),
        ("80c8000100000001", "sender info needs 24"),
        ("81c9000100000001", "announces 1 report blocks"),
        ("80c90000", "sender SSRC needs 4"),
        ("81ca000100000001", "chunk 0 has no END item"),
        ("81ca0000", "chunk 0 SSRC is truncated"),
        ("81ca0002 00000001 01056100", "item 1 ends at byte 11"),
        ("81ca0003 00000001 00000000 00000000", "4 bytes after its 1 chunks"),
        ("81cb0000", "announces 1 SSRCs"),
        ("81cb0002 00000001 05616200", "reason ends at byte 10"),
        ("a1cd0003 00000001 00000002 3a410002", "FCI is 2 bytes, not a multiple of 4"),
        ("81cd000100000001", "sender and media SSRC need 8"),
        ("81ce0003 00000001 00000002 00000000", "4 bytes of FCI"),
        ("84ce0003 00000001 00000000 00000002", "FIR FCI is 4 bytes"),
        ("8fce0004 00000001 00000000 52454d42 020e625a", "announces 2 SSRCs"),
        ("8fce0003 00000001 00000000 52454d42", "at least 16"),
        ("8fcd000100000001", "transport-cc body is 4 bytes"),
    ],
)
def test_malformed(hex_data, message):
    with pytest.raises(ValueError, match=message):
        parse_rtcp(bytes.fromhex(hex_data))


def test_malformed_packet_rejects_whole_compound():
    with pytest.raises(ValueError, match="announces 1 report blocks"):
        parse_rtcp(RR_REMB + bytes.fromhex("81c9000100000001"))


def test_padding_on_last_packet_of_compound():
    padded = bytes.fromhex("a0c90002 00000001 00000004")
    assert parse_rtcp(SR_SDES + padded)[-1] == ReceiverReport(ssrc=1)


def test_goodbye_reason_not_utf8_is_replaced():
    [packet] = parse_rtcp(bytes.fromhex("80cb000101ff0000"))
    assert packet == Goodbye(ssrcs=[], reason="\ufffd")


def test_report_block_saturates_packets_lost():
    data = bytes(ReceiverReport(ssrc=1, reports=[ReportBlock(ssrc=2, packets_lost=-(10**9))]))
    [packet] = parse_rtcp(data)
    assert isinstance(packet, ReceiverReport)
    assert packet.reports[0].packets_lost == -0x800000


@pytest.mark.parametrize("packet", [RR_REMB, SR_SDES, TRANSPORT_CC, RR_WITH_EXTENSION_PLI])
def test_every_prefix_parses_or_raises_value_error(packet):
    for end in range(len(packet)):
        with contextlib.suppress(ValueError):
            parse_rtcp(packet[:end])


@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data):
    with contextlib.suppress(ValueError):
        parse_rtcp(data)


@st.composite
def framed_packets(draw: st.DrawFn) -> bytes:
    """Random bodies behind well-formed RTCP headers, to reach the per-type parsers."""
    packet_type = draw(st.integers(200, 208))
    count = draw(st.integers(0, 31) | st.sampled_from([1, 4, 15]))
    body = bytearray(draw(st.binary(max_size=64)))
    if draw(st.booleans()):
        body[8:12] = b"REMB"
    body += bytes(-len(body) % 4)
    padded = draw(st.booleans()) and bool(body)
    first = 0x80 | (0x20 if padded else 0) | count
    if padded:
        body[-1] = draw(st.integers(1, len(body)))
    return bytes([first, packet_type]) + (len(body) // 4).to_bytes(2, "big") + bytes(body)


@given(st.lists(framed_packets(), min_size=1, max_size=4))
def test_fuzz_framed_compound(packets):
    try:
        parsed = parse_rtcp(b"".join(packets))
    except ValueError:
        return
    normalized = parse_rtcp(b"".join(bytes(p) for p in parsed))
    assert parse_rtcp(b"".join(bytes(p) for p in normalized)) == normalized


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_ntp_round_trip(seconds):
    assert unix_from_ntp(ntp_from_unix(seconds)) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(
    ("unix", "ntp"),
    [
        (0.0, 2_208_988_800 << 32),
        (1_700_000_000.5, ((1_700_000_000 + 2_208_988_800) << 32) | 0x8000_0000),
        # 2036-02-07 06:28:16 UTC: the NTP seconds field wraps to era 1
        (2_085_978_496.25, 0x4000_0000),
    ],
)
def test_ntp_conversion(unix, ntp):
    assert ntp_from_unix(unix) == ntp
    assert unix_from_ntp(ntp) == unix


def test_compact_ntp_rtt():
    assert compact_ntp(0x0123_4567_89AB_CDEF) == 0x4567_89AB
    # RFC 3550 section 6.4.1: RTT = A - LSR - DLSR in 1/65536 s units
    sent = ntp_from_unix(1_700_000_000.0)
    arrival = ntp_from_unix(1_700_000_000.25)
    dlsr = 0x4000  # 0.25 s held by the receiver
    rtt = (compact_ntp(arrival) - compact_ntp(sent) - dlsr) & 0xFFFF_FFFF
    assert rtt == 0
