"""H.264 RTP payload (RFC 6184) key frame detection, packetization-mode 0 and 1."""

from __future__ import annotations

NAL_TYPE_MASK = 0x1F
NAL_IDR = 5
NAL_SPS = 7
NAL_STAP_A = 24
NAL_FU_A = 28
FU_START = 0x80

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
        pos = 1
        size = len(payload)
        while pos + 2 < size:
            nal_size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if nal_size == 0 or pos + nal_size > size:
                return False
            if payload[pos] & NAL_TYPE_MASK in KEYFRAME_NAL_TYPES:
                return True
            pos += nal_size
        return False
    if nal_type == NAL_FU_A:
        return (
            len(payload) >= 2
            and bool(payload[1] & FU_START)
            and payload[1] & NAL_TYPE_MASK in KEYFRAME_NAL_TYPES
        )
    return False
