"""RTP header extension URIs and value codecs for the extensions the SFU reads or writes."""

from __future__ import annotations

import struct

SDES_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
"""RFC 8843 §15: media identification."""
SDES_RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
"""RFC 8852 §3.1: RID of a simulcast encoding."""
SDES_REPAIRED_RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
"""RFC 8852 §3.2: RID of the stream an RTX/FEC stream repairs."""
SSRC_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
"""RFC 6464: client-to-mixer audio level."""
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
"""WebRTC abs-send-time: 24-bit 6.18 fixed-point seconds."""
TRANSPORT_WIDE_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
"""draft-holmer-rmcat-transport-wide-cc-extensions-01: 16-bit transport sequence number."""
VIDEO_ORIENTATION = "urn:3gpp:video-orientation"
"""3GPP TS 26.114 coordination of video orientation."""
DEPENDENCY_DESCRIPTOR = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)
"""AV1 RTP specification, appendix A: dependency descriptor."""

ABS_SEND_TIME_FRACTION_BITS = 18
SDES_MAX_LENGTH = 255
"""Longest value the two-byte header extension form can carry."""

_U16 = struct.Struct("!H")


def decode_audio_level(value: bytes) -> tuple[bool, int]:
    """Decode RFC 6464 ``ssrc-audio-level``: ``(voice_activity, level)``.

    ``level`` is 0..127 and means ``-level`` dBov (0 is loudest, 127 is silence).
    """
    if len(value) != 1:
        raise ValueError(f"audio level extension is {len(value)} bytes, expected 1")
    byte = value[0]
    return bool(byte & 0x80), byte & 0x7F


def encode_audio_level(voice_activity: bool, level: int) -> bytes:
    """Encode RFC 6464 ``ssrc-audio-level``; ``level`` is 0..127 (-dBov)."""
    if not 0 <= level <= 127:
        raise ValueError(f"audio level {level} is not in 0..127")
    return bytes([(0x80 if voice_activity else 0) | level])


def decode_sdes(value: bytes) -> str:
    """Decode an SDES header extension (MID, RID, repaired RID) to a string.

    Trailing NUL bytes, which some senders add, are ignored. The value must be non-empty
    printable ASCII without spaces (RFC 8843 token / RFC 8852 rid-id characters).
    """
    text = bytes(value).rstrip(b"\x00")
    if not text:
        raise ValueError("SDES header extension value is empty")
    for byte in text:
        if not 0x21 <= byte <= 0x7E:
            raise ValueError(f"SDES header extension value contains byte 0x{byte:02x}")
    return text.decode("ascii")


def encode_sdes(text: str) -> bytes:
    """Encode a MID or RID for an SDES header extension."""
    value = text.encode("ascii")
    if not value or len(value) > SDES_MAX_LENGTH:
        raise ValueError(f"SDES header extension value must be 1..255 bytes, got {len(value)}")
    decode_sdes(value)
    return value


def decode_transport_sequence_number(value: bytes) -> int:
    """Decode the 16-bit transport-wide sequence number."""
    if len(value) != 2:
        raise ValueError(f"transport sequence number extension is {len(value)} bytes, expected 2")
    return _U16.unpack(value)[0]


def encode_transport_sequence_number(sequence_number: int) -> bytes:
    """Encode a transport-wide sequence number, taken modulo 2**16."""
    return _U16.pack(sequence_number & 0xFFFF)


def encode_abs_send_time(ntp_or_seconds: int | float) -> bytes:
    """Encode abs-send-time (6.18 fixed-point seconds, modulo 64 s) as 3 bytes.

    An ``int`` is a 64-bit NTP timestamp (32.32 fixed point); a ``float`` is seconds on
    any clock (only the value modulo 64 s is transmitted).
    """
    if isinstance(ntp_or_seconds, bool):
        raise ValueError("abs-send-time must be an NTP timestamp (int) or seconds (float)")
    if isinstance(ntp_or_seconds, int):
        value = ntp_or_seconds >> (32 - ABS_SEND_TIME_FRACTION_BITS)
    else:
        value = int(ntp_or_seconds * (1 << ABS_SEND_TIME_FRACTION_BITS))
    return (value & 0xFFFFFF).to_bytes(3, "big")


def decode_abs_send_time(value: bytes) -> int:
    """Decode abs-send-time to its raw 24-bit 6.18 fixed-point value."""
    if len(value) != 3:
        raise ValueError(f"abs-send-time extension is {len(value)} bytes, expected 3")
    return int.from_bytes(value, "big")
