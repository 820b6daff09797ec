import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.rtp.extensions import (
    decode_abs_send_time,
    decode_audio_level,
    decode_sdes,
    decode_transport_sequence_number,
    encode_abs_send_time,
    encode_audio_level,
    encode_sdes,
    encode_transport_sequence_number,
)
from sfu.rtp.packet import (
    RtpHeader,
    build_rtp_packet,
    is_rtcp,
    payload_offset,
    read_header_extensions,
    read_payload_and_extensions,
)
from sfu.rtp.rtcp import ntp_from_unix

# Hand-assembled in the layout Chrome sends for the "h" simulcast layer of a VP8 track
# (extmap ids from tests/fixtures/sdp/chrome-simulcast-offer.sdp): one-byte extensions
# abs-send-time (2), transport-wide-cc (3), mid "1" (4), rid "h" (10), zero padded to 32 bits,
# then a VP8 descriptor (15-bit picture id, TL0PICIDX, TID) and a key frame header.
# Cross-checked against aiortc's independent RtpPacket.parse.
CHROME_VP8_KEYFRAME = bytes.fromhex(
    "90603a41 5e1f80c4 7765144d"  # V=2 X=1, PT 96, seq, timestamp, SSRC
    " bede0003 224c9a3b 3101a7 4031 a068 00"  # 0xBEDE, 3 words: ids 2, 3, 4, 10, pad
    " 90e09a3c 1700"  # VP8 descriptor: X S, I L T, picture id 0x1a3c, TL0PICIDX 0x17, TID 0
    " b00b01 9d012a 8002 6801"  # key frame tag, start code, 640x360
    " 00010203 04050607 08090a0b 0c0d0e0f"
)

# Opus packet with two CSRCs, two-byte extension form (audio level with an id > 14) and
# 4 bytes of RTP padding.
TWO_BYTE_AUDIO = bytes.fromhex(
    "b26f0007 5e1f80c4 00000001"  # V=2 P=1 X=1 CC=2, PT 111
    " 0000000a 0000000b"  # CSRCs
    " 10000001 1001d100"  # two-byte profile, 1 word: id 16, 1 byte, pad
    " fcff"  # payload
    " 00000004"  # padding
)


def test_chrome_packet():
    header = RtpHeader.parse(CHROME_VP8_KEYFRAME)
    assert header == RtpHeader(
        payload_type=96,
        sequence_number=0x3A41,
        timestamp=0x5E1F80C4,
        ssrc=2003113037,
        marker=False,
        version=2,
        padding=False,
        extension=True,
        csrcs=[],
        extension_profile=0xBEDE,
        extensions={
            2: bytes.fromhex("4c9a3b"),
            3: bytes.fromhex("01a7"),
            4: b"1",
            10: b"h",
        },
        payload_offset=28,
        padding_length=0,
    )
    assert decode_sdes(header.extensions[4]) == "1"
    assert decode_sdes(header.extensions[10]) == "h"
    assert decode_transport_sequence_number(header.extensions[3]) == 423
    assert decode_abs_send_time(header.extensions[2]) == 5020219
    assert header.serialize(CHROME_VP8_KEYFRAME[28:]) == CHROME_VP8_KEYFRAME
    assert payload_offset(CHROME_VP8_KEYFRAME) == 28
    assert read_header_extensions(CHROME_VP8_KEYFRAME) == header.extensions


def test_two_byte_extensions_csrcs_and_padding():
    header = RtpHeader.parse(TWO_BYTE_AUDIO)
    assert header.marker is False
    assert header.payload_type == 111
    assert header.csrcs == [10, 11]
    assert header.extension_profile == 0x1000
    assert header.extensions == {16: b"\xd1"}
    assert header.padding is True
    assert header.padding_length == 4
    assert header.payload_offset == 28
    assert TWO_BYTE_AUDIO[header.payload_offset : -header.padding_length] == b"\xfc\xff"
    assert decode_audio_level(header.extensions[16]) == (True, 81)
    assert header.serialize(b"\xfc\xff") == TWO_BYTE_AUDIO


@pytest.mark.parametrize(
    ("extensions", "profile"),
    [
        ({1: b"a"}, 0xBEDE),
        ({14: bytes(16)}, 0xBEDE),
        ({15: b"a"}, 0x1000),
        ({1: bytes(17)}, 0x1000),
        ({1: b""}, 0x1000),
        ({255: bytes(255), 1: b"x"}, 0x1000),
    ],
)
def test_extension_form_selection(extensions, profile):
    data = build_rtp_packet(
        payload_type=96, sequence_number=1, timestamp=2, ssrc=3, extensions=extensions
    )
    header = RtpHeader.parse(data)
    assert header.extension_profile == profile
    assert header.extensions == extensions
    assert len(data) % 4 == 0


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ({0: b"a"}, "id 0 is not in 1..255"),
        ({256: b"a"}, "id 256 is not in 1..255"),
        ({1: bytes(256)}, "256 bytes"),
    ],
)
def test_build_rejects_bad_extensions(extensions, message):
    with pytest.raises(ValueError, match=message):
        build_rtp_packet(
            payload_type=96, sequence_number=1, timestamp=2, ssrc=3, extensions=extensions
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"payload_type": 128}, "payload type 128"),
        ({"csrcs": list(range(16))}, "16 CSRCs"),
        ({"padding_length": 256}, "padding length 256"),
    ],
)
def test_build_rejects_bad_fields(kwargs, message):
    args = {"payload_type": 96, "sequence_number": 1, "timestamp": 2, "ssrc": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_rtp_packet(**args)


@pytest.mark.parametrize(
    ("hex_data", "message"),
    [
        ("", "shorter than the 12-byte"),
        ("80600001 00000002 000000", "shorter than the 12-byte"),
        ("40600001 00000002 00000003 0000", "version is 1"),
        ("c0600001 00000002 00000003 0000", "version is 3"),
        ("81600001 00000002 00000003 0000", "CSRC list ends at byte 16"),
        ("90600001 00000002 00000003 0000", "extension header ends at byte 16"),
        ("90600001 00000002 00000003 bede0001", "extension of 1 words ends at byte 20"),
        ("a0600001 00000002 00000003 aa00", "padding count is 0"),
        ("a0600001 00000002 00000003 aa03", "padding count 3 exceeds the 2 bytes"),
        ("90600001 00000002 00000003 bede0001 33aabb00", "id 3 ends at byte 21"),
        ("90600001 00000002 00000003 10000001 0303aa00", "id 3 ends at byte 21"),
        ("90600001 00000002 00000003 10000001 000000ff", "id 255 has no length byte"),
    ],
)
def test_malformed(hex_data, message):
    data = bytes.fromhex(hex_data)
    with pytest.raises(ValueError, match=message):
        RtpHeader.parse(data)
    with pytest.raises(ValueError, match=message):
        read_header_extensions(data)
    with pytest.raises(ValueError, match=message):
        read_payload_and_extensions(data)


@pytest.mark.parametrize(
    ("hex_data", "extensions"),
    [
        # padding bytes between one-byte elements, then id 15 stops processing
        ("90600001 00000002 00000003 bede0002 10610000 2062f030", {1: b"a", 2: b"b"}),
        # two-byte form with appbits 0x5 and a zero-length element
        ("90600001 00000002 00000003 10050001 07000000", {7: b""}),
        # an extension with a profile this layer does not decode
        ("90600001 00000002 00000003 abcd0001 deadbeef", {}),
        ("80600001 00000002 00000003", {}),
    ],
)
def test_extension_edge_cases(hex_data, extensions):
    data = bytes.fromhex(hex_data)
    assert read_header_extensions(data) == extensions
    assert read_payload_and_extensions(data) == (payload_offset(data), extensions)


def test_unknown_profile_is_kept():
    data = bytes.fromhex("90600001 00000002 00000003 abcd0001 deadbeef 99")
    header = RtpHeader.parse(data)
    assert header.extension_profile == 0xABCD
    assert header.extensions == {}
    assert header.payload_offset == 20


@pytest.mark.parametrize(
    ("hex_data", "expected"),
    [
        ("80c8", True),  # SR
        ("81c9", True),  # RR
        ("8fcd", True),  # RTPFB
        ("80df", True),  # 223, top of the RFC 5761 range
        ("80c0", True),  # 192
        ("80bf", False),
        ("8060", False),  # RTP payload type 96
        ("80e0", False),  # RTP payload type 96 with marker
        ("80", False),
        ("", False),
    ],
)
def test_is_rtcp(hex_data, expected):
    assert is_rtcp(bytes.fromhex(hex_data)) is expected


@pytest.mark.parametrize("packet", [CHROME_VP8_KEYFRAME, TWO_BYTE_AUDIO])
def test_every_prefix_parses_or_raises_value_error(packet):
    for end in range(len(packet) + 1):
        prefix = packet[:end]
        try:
            RtpHeader.parse(prefix)
        except ValueError:
            continue


@given(st.binary(max_size=80))
def test_fuzz_random_bytes(data):
    for parse in (RtpHeader.parse, read_header_extensions, payload_offset):
        with contextlib.suppress(ValueError):
            parse(data)


@given(
    st.binary(min_size=12, max_size=60).map(lambda b: bytes([0x90 | (b[0] & 0x2F)]) + b[1:]),
)
def test_fuzz_with_extension_bit(data):
    try:
        header = RtpHeader.parse(data)
    except ValueError:
        return
    assert header.payload_offset + header.padding_length <= len(data)
    assert read_header_extensions(data) == header.extensions


@given(
    payload_type=st.integers(0, 127),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    extensions=st.dictionaries(st.integers(1, 255), st.binary(max_size=20), max_size=5),
    padding_length=st.integers(0, 255),
    payload=st.binary(max_size=30),
)
def test_build_parse_round_trip(
    payload_type,
    sequence_number,
    timestamp,
    ssrc,
    marker,
    csrcs,
    extensions,
    padding_length,
    payload,
):
    data = build_rtp_packet(
        payload_type=payload_type,
        sequence_number=sequence_number,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=marker,
        csrcs=csrcs,
        extensions=extensions,
        padding_length=padding_length,
        payload=payload,
    )
    header = RtpHeader.parse(data)
    assert (header.payload_type, header.sequence_number, header.timestamp, header.ssrc) == (
        payload_type,
        sequence_number,
        timestamp,
        ssrc,
    )
    assert header.marker is marker
    assert header.csrcs == csrcs
    assert header.extensions == extensions
    assert header.padding_length == padding_length
    end = len(data) - padding_length
    assert data[header.payload_offset : end] == payload
    assert header.serialize(payload) == data
    assert RtpHeader.parse(header.serialize(payload)) == header


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"\x00", (False, 0)), (b"\x7f", (False, 127)), (b"\x80", (True, 0)), (b"\xaa", (True, 42))],
)
def test_audio_level(value, expected):
    assert decode_audio_level(value) == expected
    assert encode_audio_level(*expected) == value


@pytest.mark.parametrize("value", [b"", b"\x00\x00"])
def test_audio_level_rejects_length(value):
    with pytest.raises(ValueError, match="expected 1"):
        decode_audio_level(value)


def test_encode_audio_level_rejects_range():
    with pytest.raises(ValueError, match="128"):
        encode_audio_level(True, 128)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"0", "0"), (b"video", "video"), (b"hi-res_2", "hi-res_2"), (b"q\x00\x00", "q")],
)
def test_decode_sdes(value, expected):
    assert decode_sdes(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty"),
        (b"\x00", "empty"),
        (b"a b", "0x20"),
        (b"\xc3\xa9", "0xc3"),
        (b"\x01", "0x01"),
    ],
)
def test_decode_sdes_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        decode_sdes(value)


@pytest.mark.parametrize(
    ("text", "error"),
    [("f", None), ("", "1..255"), ("x" * 256, "1..255"), ("a b", "0x20")],
)
def test_encode_sdes(text, error):
    if error is None:
        assert decode_sdes(encode_sdes(text)) == text
    else:
        with pytest.raises(ValueError, match=error):
            encode_sdes(text)


@pytest.mark.parametrize(
    ("number", "encoded"),
    [(0, b"\x00\x00"), (423, b"\x01\xa7"), (65535, b"\xff\xff"), (65536 + 5, b"\x00\x05")],
)
def test_transport_sequence_number(number, encoded):
    assert encode_transport_sequence_number(number) == encoded
    assert decode_transport_sequence_number(encoded) == number & 0xFFFF


@pytest.mark.parametrize("value", [b"", b"\x01", b"\x01\x02\x03"])
def test_transport_sequence_number_rejects_length(value):
    with pytest.raises(ValueError, match="expected 2"):
        decode_transport_sequence_number(value)


@pytest.mark.parametrize(
    ("time", "encoded"),
    [
        (0.0, "000000"),
        (1.5, "060000"),
        (63.999996185302734, "ffffff"),
        (64.25, "010000"),
        (0x0000_0001_8000_0000, "060000"),  # NTP 1.5 s
        (0x1234_0040_4000_0000, "010000"),  # NTP seconds modulo 64 = 0, fraction 0.25
    ],
)
def test_abs_send_time(time, encoded):
    assert encode_abs_send_time(time).hex() == encoded
    assert decode_abs_send_time(bytes.fromhex(encoded)) == int(encoded, 16)


def test_abs_send_time_from_ntp_matches_seconds():
    unix = 1_700_000_123.375
    ntp = ntp_from_unix(unix)
    assert encode_abs_send_time(ntp) == encode_abs_send_time((ntp >> 32) + 0.375)


def test_abs_send_time_rejects_bool_and_bad_length():
    with pytest.raises(ValueError, match="NTP timestamp"):
        encode_abs_send_time(True)
    with pytest.raises(ValueError, match="expected 3"):
        decode_abs_send_time(b"\x00")
