"""The AV1 RTP payload's aggregation header: key frames, from the first payload bytes of
AV1 packets Chromium 156 (libaom, L1T3) sent."""

from __future__ import annotations

import pytest

from sfu.rtp.av1 import is_av1_keyframe


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("68100800", True),  # a key frame's first packet: Y, W=2, N
        ("d05003fb", False),  # its next packet: Z (continues an OBU), Y
        ("50344030", False),  # a delta frame's first packet
        ("903eb719", False),  # a delta frame's last packet
        ("08", False),  # N alone, nothing after the header
        ("", False),
    ],
)
def test_is_av1_keyframe(payload: str, expected: bool) -> None:
    assert is_av1_keyframe(bytes.fromhex(payload)) is expected
