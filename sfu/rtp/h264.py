"""H.264 RTP payload (RFC 6184): key frame detection, packetization-mode 0 and 1, and
the picture size an SPS announces (ITU-T H.264 section 7.3.2.1.1)."""

from __future__ import annotations

from collections.abc import Iterator

NAL_TYPE_MASK = 0x1F
NAL_IDR = 5
NAL_SPS = 7
NAL_STAP_A = 24
NAL_FU_A = 28
FU_START = 0x80

HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
"""profile_idc values whose SPS carries chroma format, bit depths and scaling lists."""
MAX_EXP_GOLOMB_ZEROS = 31
"""Leading zero bits of the longest exp-Golomb code an SPS field may use (32-bit values)."""

KEYFRAME_NAL_TYPES = frozenset({NAL_IDR, NAL_SPS})
"""An IDR slice, or an SPS (which senders put in front of every IDR)."""


def is_h264_keyframe(payload: bytes) -> bool:
    """True when an RTP payload starts or carries an IDR or SPS NAL unit.

    Single NAL units, STAP-A aggregates and the first FU-A fragment are recognised.
    Truncated or malformed payloads return False.
    """
    if not payload:
        return False
    nal_type = payload[0] & NAL_TYPE_MASK
    if nal_type in KEYFRAME_NAL_TYPES:
        return True
    if nal_type == NAL_STAP_A:
        return any(
            payload[start] & NAL_TYPE_MASK in KEYFRAME_NAL_TYPES
            for start, _ in _stap_a_units(payload)
        )
    if nal_type == NAL_FU_A:
        return (
            len(payload) >= 2
            and bool(payload[1] & FU_START)
            and payload[1] & NAL_TYPE_MASK in KEYFRAME_NAL_TYPES
        )
    return False


def h264_key_frame_size(payload: bytes) -> tuple[int, int] | None:
    """Width and height from the SPS in an RTP payload (a single NAL unit or a STAP-A),
    as Chrome sends it in front of every IDR; None without one or when it is malformed."""
    if not payload:
        return None
    nal_type = payload[0] & NAL_TYPE_MASK
    if nal_type == NAL_SPS:
        return _sps_size(payload[1:])
    if nal_type != NAL_STAP_A:
        return None
    for start, end in _stap_a_units(payload):
        if payload[start] & NAL_TYPE_MASK == NAL_SPS:
            return _sps_size(payload[start + 1 : end])
    return None


def _stap_a_units(payload: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each NAL unit in a STAP-A payload (RFC 6184 5.7.1: a 16-bit
    size before each unit); stops at the first empty or truncated unit."""
    pos = 1
    size = len(payload)
    while pos + 2 < size:
        nal_size = (payload[pos] << 8) | payload[pos + 1]
        pos += 2
        if nal_size == 0 or pos + nal_size > size:
            return
        yield pos, pos + nal_size
        pos += nal_size


class _BitReader:
    """MSB-first bits of an RBSP, with exp-Golomb codes; ValueError past the end."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def bit(self) -> int:
        byte = self._pos >> 3
        if byte >= len(self._data):
            raise ValueError("SPS truncated")
        value = (self._data[byte] >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > MAX_EXP_GOLOMB_ZEROS:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _unescape(nal: bytes) -> bytes:
    """The RBSP of a NAL unit's payload: emulation prevention bytes (00 00 03) removed."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00") if b"\x00\x00\x03" in nal else nal


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + reader.se() + 256) % 256
        last = next_scale or last


def _sps_size(rbsp_escaped: bytes) -> tuple[int, int] | None:
    """Width and height of a seq_parameter_set_rbsp (after its NAL header byte)."""
    reader = _BitReader(_unescape(rbsp_escaped))
    try:
        profile_idc = reader.bits(8)
        reader.bits(16)  # constraint flags, level_idc
        reader.ue()  # seq_parameter_set_id
        chroma_format_idc = 1
        if profile_idc in HIGH_PROFILES:
            chroma_format_idc = reader.ue()
            if chroma_format_idc == 3:
                reader.bit()  # separate_colour_plane_flag
            reader.ue()  # bit_depth_luma_minus8
            reader.ue()  # bit_depth_chroma_minus8
            reader.bit()  # qpprime_y_zero_transform_bypass_flag
            if reader.bit():  # seq_scaling_matrix_present_flag
                for index in range(8 if chroma_format_idc != 3 else 12):
                    if reader.bit():
                        _skip_scaling_list(reader, 16 if index < 6 else 64)
        reader.ue()  # log2_max_frame_num_minus4
        pic_order_cnt_type = reader.ue()
        if pic_order_cnt_type == 0:
            reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
        elif pic_order_cnt_type == 1:
            reader.bit()  # delta_pic_order_always_zero_flag
            reader.se()  # offset_for_non_ref_pic
            reader.se()  # offset_for_top_to_bottom_field
            cycle = reader.ue()
            if cycle > 255:
                return None
            for _ in range(cycle):
                reader.se()
        reader.ue()  # max_num_ref_frames
        reader.bit()  # gaps_in_frame_num_value_allowed_flag
        width_in_mbs = reader.ue() + 1
        height_in_map_units = reader.ue() + 1
        frame_mbs_only = reader.bit()
        if not frame_mbs_only:
            reader.bit()  # mb_adaptive_frame_field_flag
        reader.bit()  # direct_8x8_inference_flag
        crop = (0, 0, 0, 0)
        if reader.bit():  # frame_cropping_flag
            crop = (reader.ue(), reader.ue(), reader.ue(), reader.ue())
    except ValueError:
        return None
    # Crop offsets count chroma samples (Table 6-1): 4:2:0 halves both directions.
    unit_x = 2 if chroma_format_idc in (1, 2) else 1
    unit_y = (2 if chroma_format_idc == 1 else 1) * (2 - frame_mbs_only)
    width = width_in_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_in_map_units * 16 - unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        return None
    return width, height
