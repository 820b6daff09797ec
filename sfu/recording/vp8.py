"""The VP8 RTP payload format, receiving side (RFC 7741 section 4).

Each packet starts with a payload descriptor; what follows, over all packets of a
frame in sequence order, is the frame (its partitions may start and end anywhere in
a packet). The first packet of a frame starts partition 0 (S bit set, PID 0); the
frame's first byte says whether it is a key frame (RFC 6386 section 9.1), and a key
frame's header carries the picture size.
"""

from __future__ import annotations

from sfu.producer import vp8_key_frame_size
from sfu.recording.jitter_buffer import CodecFrame
from sfu.rtp.vp8 import Vp8Descriptor, is_vp8_frame_start


class Vp8Depacketizer:
    """:class:`~sfu.recording.jitter_buffer.Depacketizer` for VP8."""

    def starts_frame(self, payload: bytes) -> bool:
        return is_vp8_frame_start(payload)

    def depacketize(self, payloads: list[bytes]) -> CodecFrame:
        if not payloads or not is_vp8_frame_start(payloads[0]):
            raise ValueError("a VP8 frame must start at the start of partition 0")
        parts = []
        for payload in payloads:
            descriptor = Vp8Descriptor.parse(payload)
            parts.append(payload[descriptor.size :])
        data = b"".join(parts)
        if not data:
            raise ValueError("a VP8 frame without data")
        key = not data[0] & 0x01
        width = height = 0
        if key:
            size = vp8_key_frame_size(data[:10])
            if size is None:
                raise ValueError("a VP8 key frame without its start code")
            width, height = size
        return CodecFrame(data, key, width, height)
