"""The AV1 RTP payload's aggregation header (AV1 RTP specification, section 4.4)."""

from __future__ import annotations

_Z = 0x80
"""The first OBU element continues an OBU of the previous packet."""
_N = 0x08
"""The packet is the first of a coded video sequence: a key frame's first packet."""


def is_av1_keyframe(payload: bytes) -> bool:
    """True when ``payload`` is the first packet of a key frame (the N bit, which starts
    a coded video sequence, set on a packet that starts an OBU)."""
    return len(payload) > 1 and payload[0] & (_Z | _N) == _N
