import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.rtp.h264 import h264_key_frame_size, is_h264_keyframe
from sfu.rtp.packet import payload_offset
from sfu.rtp.vp8 import (
    Vp8Descriptor,
    is_vp8_frame_start,
    is_vp8_keyframe,
    rewrite_vp8_descriptor,
    vp8_layer_sync,
    vp8_temporal_id,
)

# Chrome VP8 simulcast packet: RTP header with one-byte extensions, then the descriptor
# (X S, I L T, 15-bit picture id 0x1a3c, TL0PICIDX 0x17, TID 0) and a key frame header.
CHROME_VP8_KEYFRAME = bytes.fromhex(
    "90603a41 5e1f80c4 7765144d bede0003 224c9a3b 3101a740 31a06800"
    " 90e09a3c 1700 b00b01 9d012a 8002 6801"
)
VP8_KEYFRAME_HEADER = bytes.fromhex("b00b01 9d012a 8002 6801")
VP8_INTERFRAME_HEADER = bytes.fromhex("b10b01 0000")


@pytest.mark.parametrize(
    ("hex_data", "expected"),
    [
        ("10", Vp8Descriptor(start_of_partition=True, size=1)),
        ("07", Vp8Descriptor(start_of_partition=False, partition_id=7, size=1)),
        (
            "90e09a3c 1700",
            Vp8Descriptor(
                start_of_partition=True,
                picture_id=0x1A3C,
                picture_id_length=15,
                tl0picidx=0x17,
                tid=0,
                size=6,
            ),
        ),
        (
            "80 70 05 7f",
            Vp8Descriptor(
                start_of_partition=False, tl0picidx=5, tid=1, layer_sync=True, keyidx=31, size=4
            ),
        ),
        (
            "a3 80 12",
            Vp8Descriptor(
                start_of_partition=False,
                partition_id=3,
                non_reference=True,
                picture_id=0x12,
                picture_id_length=7,
                size=3,
            ),
        ),
        # K without T: no TID, the Y bit is ignored
        ("80 10 3f", Vp8Descriptor(start_of_partition=False, keyidx=31, size=3)),
        # X set with no optional fields
        ("90 00", Vp8Descriptor(start_of_partition=True, size=2)),
    ],
)
def test_parse(hex_data, expected):
    data = bytes.fromhex(hex_data)
    descriptor = Vp8Descriptor.parse(data + b"payload")
    assert descriptor == expected
    if hex_data != "80 10 3f":
        assert bytes(descriptor) == data
    assert Vp8Descriptor.parse(bytes(descriptor)) == descriptor


@pytest.mark.parametrize(
    ("hex_data", "message"),
    [
        ("", "empty"),
        ("80", "before its extension byte"),
        ("8080", "in its picture id"),
        ("808080", "in its 15-bit picture id"),
        ("8040", "before TL0PICIDX"),
        ("8020", "before TID/KEYIDX"),
        ("8010", "before TID/KEYIDX"),
        ("80e0 8001 05", "before TID/KEYIDX"),
    ],
)
def test_parse_truncated(hex_data, message):
    with pytest.raises(ValueError, match=message):
        Vp8Descriptor.parse(bytes.fromhex(hex_data))


def test_every_prefix_parses_or_raises_value_error():
    for end in range(7):
        try:
            descriptor = Vp8Descriptor.parse(bytes.fromhex("90f09a3c 1741")[:end])
        except ValueError:
            continue
        assert descriptor.size <= end


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"partition_id": 8}, "partition id 8"),
        ({"picture_id_length": 7}, "no picture id"),
        ({"picture_id": 1, "picture_id_length": 8}, "length 8 is not 7 or 15"),
        ({"picture_id": 128, "picture_id_length": 7}, "does not fit 7 bits"),
        ({"picture_id": 0x8000}, "does not fit 15 bits"),
        ({"tl0picidx": 256}, "TL0PICIDX 256"),
        ({"tid": 4}, "TID 4"),
        ({"keyidx": 32}, "KEYIDX 32"),
        ({"tid": 1, "size": 4}, "size 4 does not match"),
    ],
)
def test_descriptor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Vp8Descriptor(start_of_partition=True, **kwargs)


def test_default_picture_id_length_is_15_bits():
    descriptor = Vp8Descriptor(start_of_partition=True, picture_id=5)
    assert descriptor.picture_id_length == 15
    assert bytes(descriptor).hex() == "90808005"


@given(
    start_of_partition=st.booleans(),
    partition_id=st.integers(0, 7),
    non_reference=st.booleans(),
    picture=st.none() | st.tuples(st.sampled_from([7, 15]), st.integers(0, 0x7FFF)),
    tl0picidx=st.none() | st.integers(0, 255),
    tid=st.none() | st.integers(0, 3),
    layer_sync=st.booleans(),
    keyidx=st.none() | st.integers(0, 31),
)
def test_round_trip(
    start_of_partition, partition_id, non_reference, picture, tl0picidx, tid, layer_sync, keyidx
):
    picture_id_length, picture_id = picture if picture else (0, None)
    if picture_id is not None:
        picture_id &= (1 << picture_id_length) - 1
    descriptor = Vp8Descriptor(
        start_of_partition=start_of_partition,
        partition_id=partition_id,
        non_reference=non_reference,
        picture_id=picture_id,
        picture_id_length=picture_id_length,
        tl0picidx=tl0picidx,
        tid=tid,
        layer_sync=layer_sync and tid is not None,
        keyidx=keyidx,
    )
    data = bytes(descriptor)
    assert len(data) == descriptor.size
    assert Vp8Descriptor.parse(data + b"\xff") == descriptor


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes.fromhex("90e09a3c1700") + VP8_KEYFRAME_HEADER, True),
        (bytes.fromhex("10") + VP8_KEYFRAME_HEADER, True),
        (bytes.fromhex("90e09a3c1700") + VP8_INTERFRAME_HEADER, False),
        # not the start of partition 0
        (bytes.fromhex("80e09a3c1700") + VP8_KEYFRAME_HEADER, False),
        (bytes.fromhex("11") + VP8_KEYFRAME_HEADER, False),
        # descriptor without a VP8 payload, truncated, empty
        (bytes.fromhex("90e09a3c1700"), False),
        (bytes.fromhex("90e09a"), False),
        (b"", False),
    ],
)
def test_is_vp8_keyframe(payload, expected):
    assert is_vp8_keyframe(payload) is expected


def test_chrome_packet_is_keyframe():
    assert is_vp8_keyframe(CHROME_VP8_KEYFRAME[payload_offset(CHROME_VP8_KEYFRAME) :])


@pytest.mark.parametrize(
    ("descriptor", "picture_id", "tl0picidx", "expected"),
    [
        ("90e09a3c1700", 0x8000 + 5, 300, "90e080052c00"),
        ("90e09a3c1700", 0x7FFF, None, "90e0ffff1700"),
        ("90a07f20", 200, None, "90a04820"),
        ("90c0 12 34", 0x13, 0x35, "90c01335"),
    ],
)
def test_rewrite_vp8_descriptor(descriptor, picture_id, tl0picidx, expected):
    header = CHROME_VP8_KEYFRAME[:28]
    buf = bytearray(header + bytes.fromhex(descriptor) + VP8_KEYFRAME_HEADER)
    rewrite_vp8_descriptor(buf, 28, picture_id, tl0picidx)
    assert buf == header + bytes.fromhex(expected) + VP8_KEYFRAME_HEADER


@pytest.mark.parametrize(
    ("descriptor", "tl0picidx", "message"),
    [
        ("10", None, "no picture id"),
        ("9020 00", None, "no picture id"),
        ("9080 12", 5, "no TL0PICIDX"),
        ("90", None, "before its extension byte"),
    ],
)
def test_rewrite_vp8_descriptor_rejects(descriptor, tl0picidx, message):
    buf = bytearray(bytes.fromhex(descriptor))
    with pytest.raises(ValueError, match=message):
        rewrite_vp8_descriptor(buf, 0, 1, tl0picidx)
    assert buf == bytes.fromhex(descriptor)


@given(st.binary(max_size=24))
def test_vp8_fuzz(data):
    assert isinstance(is_vp8_keyframe(data), bool)
    try:
        descriptor = Vp8Descriptor.parse(data)
    except ValueError:
        return
    assert descriptor.size <= len(data)
    assert Vp8Descriptor.parse(bytes(descriptor)) == descriptor


@pytest.mark.parametrize(
    ("hex_payload", "expected"),
    [
        ("65 888400 21", True),  # IDR slice
        ("67 42c01f", True),  # SPS
        ("41 9a0000", False),  # non-IDR slice
        ("68 ce3c80", False),  # PPS
        ("06 0501", False),  # SEI
        ("", False),
        # STAP-A: SPS, PPS, IDR (how Chrome packs a key frame's parameter sets)
        ("78 0004 6742c01f 0004 68ce3c80 0005 6588840021", True),
        # STAP-A: SEI then IDR
        ("78 0002 0605 0003 658884", True),
        # STAP-A: PPS and a non-IDR slice
        ("78 0004 68ce3c80 0003 419a00", False),
        # STAP-A: a NAL unit size that runs past the end, a zero size, truncated sizes
        ("78 0010 6742", False),
        ("78 0000 6742", False),
        ("78 00", False),
        ("78", False),
        # FU-A: start of an IDR, middle, end, start of a non-IDR slice, truncated
        ("7c 85 888400", True),
        ("7c 05 888400", False),
        ("7c 45 888400", False),
        ("7c 81 9a0000", False),
        ("7c 87", True),
        ("7c", False),
        # STAP-B and FU-B (interleaved mode) are not used by WebRTC
        ("79 0000 0004 6742c01f", False),
        ("7d 85 0000 888400", False),
    ],
)
def test_is_h264_keyframe(hex_payload, expected):
    assert is_h264_keyframe(bytes.fromhex(hex_payload)) is expected


@given(st.binary(max_size=40))
def test_h264_fuzz(data):
    assert isinstance(is_h264_keyframe(data), bool)
    size = h264_key_frame_size(data)
    assert size is None or (size[0] > 0 and size[1] > 0)


class BitWriter:
    """Writes an SPS the way H.264 section 7.3.2.1.1 lays it out (for the parser's tests)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [(value >> (count - 1 - i)) & 1 for i in range(count)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(2 * code.bit_length() - 1, code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self) -> bytes:
        bits = self.bits + [1] + [0] * (-(len(self.bits) + 1) % 8)  # rbsp trailing bits
        data = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
        escaped = bytearray([0x67])
        zeros = 0
        for byte in data:
            if zeros >= 2 and byte <= 3:
                escaped.append(3)  # emulation prevention
                zeros = 0
            escaped.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(escaped)


def high_profile_sps(frame_mbs_only: int) -> bytes:
    """1920x1080 High 4:2:0: scaling lists, POC type 1, cropping at the bottom."""
    w = BitWriter()
    w.u(8, 100)  # profile_idc: High
    w.u(8, 0)
    w.u(8, 40)  # level 4.0
    w.ue(0)  # sps id
    w.ue(1)  # chroma_format_idc 4:2:0
    w.ue(0)
    w.ue(0)
    w.u(1, 0)
    w.u(1, 1)  # seq_scaling_matrix_present_flag
    for index in range(8):
        w.u(1, index in (0, 6))
        if index in (0, 6):
            for _ in range(16 if index < 6 else 64):
                w.se(1)
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(1)  # pic_order_cnt_type
    w.u(1, 0)
    w.se(-2)
    w.se(3)
    w.ue(2)
    w.se(1)
    w.se(-1)
    w.ue(4)  # max_num_ref_frames
    w.u(1, 0)
    w.ue(120 - 1)  # 1920 / 16
    w.ue((68 if frame_mbs_only else 34) - 1)  # 1088 lines: 68 macroblock rows
    w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 0)
    w.u(1, 1)
    w.u(1, 1)  # frame_cropping_flag
    w.ue(0)
    w.ue(0)
    w.ue(0)
    w.ue(4 if frame_mbs_only else 2)  # 8 lines off the bottom
    w.u(1, 0)  # vui_parameters_present_flag
    return w.nal()


# Chromium 156's OpenH264 SPS of the q, h and f layers (from their STAP-A key frames).
CHROME_SPS = {
    (160, 120): "6742c00c8c8d41422f2cd41818181e1108d400",
    (320, 240): "6742c0158c8d40a0f9350606060784423500",
    (640, 480): "6742c01f8c8d40501ed35060606078442350",
}


@pytest.mark.parametrize(("size", "sps"), CHROME_SPS.items())
def test_h264_key_frame_size_of_chromes_layers(size, sps):
    nal = bytes.fromhex(sps)
    stap_a = bytes([24, 0, len(nal)]) + nal + bytes.fromhex("0004 68ce3c80")
    assert h264_key_frame_size(stap_a) == size
    assert h264_key_frame_size(nal) == size, "a single NAL unit packet"


@pytest.mark.parametrize("frame_mbs_only", [1, 0])
def test_h264_key_frame_size_of_a_high_profile_sps(frame_mbs_only):
    sps = high_profile_sps(frame_mbs_only)
    assert h264_key_frame_size(sps) == (1920, 1080)
    assert h264_key_frame_size(sps[:12]) is None, "truncated"


@pytest.mark.parametrize(
    "hex_payload",
    [
        "7c 85 888400",  # an IDR fragment carries no SPS
        "78 0004 68ce3c80",  # a STAP-A with only a PPS
        "67",  # an SPS with nothing in it
        "67 42c01f 00000000 00000000",  # an exp-Golomb code longer than 32 bits
    ],
)
def test_h264_key_frame_size_without_a_usable_sps(hex_payload):
    assert h264_key_frame_size(bytes.fromhex(hex_payload)) is None


@pytest.mark.parametrize(
    ("descriptor", "expected"),
    [
        (Vp8Descriptor(start_of_partition=True), -1),  # no extension byte
        (Vp8Descriptor(True, picture_id=300, picture_id_length=15), -1),  # no T bit
        (Vp8Descriptor(True, picture_id=300, picture_id_length=15, tl0picidx=7, tid=2), 2),
        (Vp8Descriptor(False, picture_id=100, picture_id_length=7, tid=1), 1),
        (Vp8Descriptor(True, tl0picidx=7, tid=3, layer_sync=True), 3),
        (Vp8Descriptor(True, tid=0, keyidx=5), 0),
    ],
)
def test_vp8_temporal_id(descriptor: Vp8Descriptor, expected: int) -> None:
    data = bytes(descriptor) + b"\x00\x01"
    assert vp8_temporal_id(data) == expected
    assert vp8_temporal_id(b"\x80\x60\x00\x01" + data, 4) == expected  # after a header
    assert vp8_temporal_id(data[: len(bytes(descriptor)) - 1]) in (-1, expected)


def test_vp8_temporal_id_of_truncated_descriptors() -> None:
    assert vp8_temporal_id(b"") == -1
    assert vp8_temporal_id(b"\x80") == -1
    assert vp8_temporal_id(b"\x80\xa0\x80") == -1  # I and T, 15-bit id cut short


def test_vp8_frame_start() -> None:
    assert is_vp8_frame_start(bytes(Vp8Descriptor(start_of_partition=True)) + b"\x00")
    assert not is_vp8_frame_start(bytes(Vp8Descriptor(start_of_partition=False)) + b"\x00")
    assert not is_vp8_frame_start(bytes(Vp8Descriptor(start_of_partition=True, partition_id=1)))
    assert not is_vp8_frame_start(b"")


def test_vp8_layer_sync() -> None:
    synced = Vp8Descriptor(True, picture_id=300, picture_id_length=15, tl0picidx=7, tid=1)
    assert not vp8_layer_sync(bytes(synced) + b"\x00")
    synced = Vp8Descriptor(
        True, picture_id=300, picture_id_length=15, tl0picidx=7, tid=1, layer_sync=True
    )
    assert vp8_layer_sync(bytes(synced) + b"\x00")
    assert vp8_layer_sync(bytes(Vp8Descriptor(True, tid=2, layer_sync=True)))
    assert not vp8_layer_sync(bytes(Vp8Descriptor(True, picture_id=5, picture_id_length=7)))
    assert not vp8_layer_sync(b"\x90\xa0")  # T announced, descriptor cut short
