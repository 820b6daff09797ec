"""The H.264 RTP payload format, receiving side (RFC 6184), packetization modes 0 and
1: single NAL unit packets, STAP-A aggregates and FU-A fragments.

A frame (an access unit: the packets of one RTP timestamp) becomes one Annex B byte
stream (ITU-T H.264 annex B: a start code before each NAL unit), which is what the
muxer takes. The latest SPS and PPS are kept: a key frame (an IDR access unit) that
does not carry them gets them in front, so that every segment and every layer switch
starts with the parameter sets a decoder needs, and the container's header
(``avcC``) can be built from the first frame.
"""

from __future__ import annotations

from sfu.recording.jitter_buffer import CodecFrame
from sfu.rtp.h264 import (
    FU_START,
    NAL_FU_A,
    NAL_IDR,
    NAL_SPS,
    NAL_STAP_A,
    NAL_TYPE_MASK,
    h264_key_frame_size,
)

NAL_SEI = 6
NAL_PPS = 8
NAL_AUD = 9
FU_END = 0x40
START_CODE = b"\x00\x00\x00\x01"
FRAME_START_TYPES = frozenset({NAL_SPS, NAL_PPS, NAL_AUD, NAL_SEI})
"""NAL units that come first in an access unit (ITU-T H.264 7.4.1.2.3): a packet
starting with one starts a frame."""
UNSUPPORTED_TYPES = frozenset({25, 26, 27, 29})
"""STAP-B, MTAP16, MTAP24 and FU-B: packetization mode 2 (interleaved), never
negotiated here."""


def _first_nal_type(payload: bytes) -> int:
    nal_type = payload[0] & NAL_TYPE_MASK
    if nal_type == NAL_STAP_A:
        return payload[3] & NAL_TYPE_MASK if len(payload) > 3 else 0
    if nal_type == NAL_FU_A:
        return payload[1] & NAL_TYPE_MASK if len(payload) > 1 else 0
    return nal_type


def nal_units(payloads: list[bytes]) -> list[bytes]:
    """The NAL units of an access unit's RTP payloads, in order; ValueError for a
    truncated aggregate, a fragment without its start or end, or mode 2 packets."""
    units: list[bytes] = []
    fragment: bytearray | None = None
    for payload in payloads:
        if not payload:
            raise ValueError("an empty H.264 payload")
        nal_type = payload[0] & NAL_TYPE_MASK
        if nal_type == NAL_FU_A:
            if len(payload) < 3:
                raise ValueError("an FU-A packet without payload")
            header = payload[1]
            if header & FU_START:
                if fragment is not None:
                    raise ValueError("an FU-A start before the previous fragment ended")
                fragment = bytearray(((payload[0] & 0xE0) | (header & NAL_TYPE_MASK),))
            elif fragment is None:
                raise ValueError("an FU-A fragment without its start")
            fragment += payload[2:]
            if header & FU_END:
                units.append(bytes(fragment))
                fragment = None
            continue
        if fragment is not None:
            raise ValueError("an FU-A fragment without its end")
        if nal_type == NAL_STAP_A:
            units.extend(_stap_a(payload))
        elif nal_type in UNSUPPORTED_TYPES or nal_type == 0 or nal_type > NAL_FU_A:
            raise ValueError(f"H.264 NAL unit type {nal_type} is not supported")
        else:
            units.append(payload)
    if fragment is not None:
        raise ValueError("an FU-A fragment without its end")
    return units


def _stap_a(payload: bytes) -> list[bytes]:
    """RFC 6184 5.7.1: a 16-bit size before each aggregated NAL unit."""
    units = []
    pos = 1
    while pos < len(payload):
        if pos + 2 > len(payload):
            raise ValueError("a STAP-A truncated in a NAL unit size")
        size = int.from_bytes(payload[pos : pos + 2], "big")
        pos += 2
        if size == 0 or pos + size > len(payload):
            raise ValueError(f"a STAP-A NAL unit of {size} bytes does not fit")
        units.append(payload[pos : pos + size])
        pos += size
    if not units:
        raise ValueError("an empty STAP-A")
    return units


class H264Depacketizer:
    """:class:`~sfu.recording.jitter_buffer.Depacketizer` for H.264; keeps the latest
    parameter sets (see the module docstring)."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def starts_frame(self, payload: bytes) -> bool | None:
        fu_a = payload[0] & NAL_TYPE_MASK == NAL_FU_A
        if fu_a and len(payload) > 1 and not payload[1] & FU_START:
            return False
        return True if _first_nal_type(payload) in FRAME_START_TYPES else None

    def depacketize(self, payloads: list[bytes]) -> CodecFrame | None:
        units = nal_units(payloads)
        types = [unit[0] & NAL_TYPE_MASK for unit in units]
        for unit, nal_type in zip(units, types, strict=True):
            if nal_type == NAL_SPS:
                self.sps = unit
            elif nal_type == NAL_PPS:
                self.pps = unit
        if all(nal_type in FRAME_START_TYPES for nal_type in types):
            return None  # parameter sets (and SEI) only: kept for the next key frame
        key = NAL_IDR in types
        if key:
            if self.sps is None or self.pps is None:
                # Undecodable without its parameter sets: not a place to start.
                key = False
            else:
                # The latest SPS, then PPS, ahead of everything but an access unit
                # delimiter: a PPS refers to its SPS, which must come first.
                rest = [u for u in units if u[0] & NAL_TYPE_MASK not in (NAL_SPS, NAL_PPS)]
                lead = [rest.pop(0)] if rest and rest[0][0] & NAL_TYPE_MASK == NAL_AUD else []
                units = [*lead, self.sps, self.pps, *rest]
        data = b"".join(START_CODE + unit for unit in units)
        width = height = 0
        if key and self.sps is not None:
            width, height = h264_key_frame_size(self.sps) or (0, 0)
        return CodecFrame(data, key, width, height)
