"""The Opus RTP payload format, receiving side (RFC 7587): every packet carries one
Opus packet, which is one frame for the container."""

from __future__ import annotations

from sfu.recording.jitter_buffer import CodecFrame

TOC_STEREO = 0x04
"""The s bit of an Opus packet's TOC byte (RFC 6716 section 3.1)."""


def opus_channels(packet: bytes) -> int:
    """Channels an Opus packet codes (1 or 2), from its TOC byte."""
    return 2 if packet and packet[0] & TOC_STEREO else 1


class OpusDepacketizer:
    """:class:`~sfu.recording.jitter_buffer.Depacketizer` for Opus."""

    def starts_frame(self, payload: bytes) -> bool:
        return True

    def depacketize(self, payloads: list[bytes]) -> CodecFrame | None:
        if len(payloads) != 1:
            raise ValueError("an Opus frame is one packet")
        if not payloads[0]:
            return None
        return CodecFrame(payloads[0], key=True)
