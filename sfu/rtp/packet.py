"""RTP packets (RFC 3550) with RFC 8285 header extensions, and RTP/RTCP demux (RFC 5761).

:class:`RtpHeader` is the validating, object-building parser. The module-level helpers
(:func:`payload_offset`, :func:`read_header_extensions`,
:func:`read_payload_and_extensions`) are for the forwarding hot path: they build no
header object and touch only the bytes they need.
All parsers accept ``bytes``, ``bytearray`` or ``memoryview`` and raise ``ValueError``
on malformed input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
MAX_CSRC_COUNT = 15
RTP_PADDING_BIT = 0x20
"""The P bit of the first octet (RFC 3550 §5.1): the last octet of the packet counts the
padding octets at its end, itself included."""

ONE_BYTE_PROFILE = 0xBEDE
"""RFC 8285 §4.2 one-byte header extension profile."""
TWO_BYTE_PROFILE = 0x1000
"""RFC 8285 §4.3 two-byte header extension profile (low 4 bits are "appbits")."""
TWO_BYTE_PROFILE_MASK = 0xFFF0
ONE_BYTE_MAX_ID = 14
ONE_BYTE_MAX_LENGTH = 16
ONE_BYTE_STOP_ID = 15
TWO_BYTE_MAX_LENGTH = 255

RTCP_PACKET_TYPE_MIN = 192
RTCP_PACKET_TYPE_MAX = 223
"""RFC 5761 §4: RTCP packet types occupy the second byte range 192..223."""

_FIXED_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_CSRC = struct.Struct("!I")


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: True when the second byte is an RTCP packet type."""
    return len(data) >= 2 and RTCP_PACKET_TYPE_MIN <= data[1] <= RTCP_PACKET_TYPE_MAX


def _layout(data: bytes) -> tuple[int, int, int, int]:
    """Validate the header structure.

    Returns ``(extension_profile, extension_start, payload_offset, padding_length)``;
    ``extension_profile`` is -1 and ``extension_start == payload_offset`` when the X bit
    is clear.
    """
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise ValueError(f"RTP packet is {size} bytes, shorter than the 12-byte fixed header")
    first = data[0]
    if first >> 6 != RTP_VERSION:
        raise ValueError(f"RTP version is {first >> 6}, expected 2")
    pos = RTP_HEADER_SIZE + (first & 0x0F) * 4
    if pos > size:
        raise ValueError(f"RTP CSRC list ends at byte {pos}, beyond the {size}-byte packet")
    profile = -1
    extension_start = pos
    if first & 0x10:
        if pos + 4 > size:
            raise ValueError(
                f"RTP header extension header ends at byte {pos + 4}, beyond the {size}-byte packet"
            )
        profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
        extension_start = pos + 4
        pos = extension_start + words * 4
        if pos > size:
            raise ValueError(
                f"RTP header extension of {words} words ends at byte {pos}, "
                f"beyond the {size}-byte packet"
            )
    padding = 0
    if first & RTP_PADDING_BIT:
        padding = data[-1]
        if padding == 0:
            raise ValueError("RTP padding bit is set but the padding count is 0")
        if padding > size - pos:
            raise ValueError(
                f"RTP padding count {padding} exceeds the {size - pos} bytes after the header"
            )
    return profile, extension_start, pos, padding


def _parse_extension_elements(data: bytes, profile: int, start: int, end: int) -> dict[int, bytes]:
    """Decode RFC 8285 elements in ``data[start:end]``; other profiles yield no elements."""
    elements: dict[int, bytes] = {}
    pos = start
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            byte = data[pos]
            ext_id = byte >> 4
            if ext_id == 0:
                pos += 1
                continue
            if ext_id == ONE_BYTE_STOP_ID:
                break
            pos += 1
            value_end = pos + (byte & 0x0F) + 1
            if value_end > end:
                raise ValueError(
                    f"one-byte header extension id {ext_id} ends at byte {value_end}, "
                    f"beyond the extension block ending at byte {end}"
                )
            elements[ext_id] = bytes(data[pos:value_end])
            pos = value_end
    elif profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise ValueError(
                    f"two-byte header extension id {ext_id} has no length byte "
                    f"before the block ends at byte {end}"
                )
            value_end = pos + 2 + data[pos + 1]
            if value_end > end:
                raise ValueError(
                    f"two-byte header extension id {ext_id} ends at byte {value_end}, "
                    f"beyond the extension block ending at byte {end}"
                )
            elements[ext_id] = bytes(data[pos + 2 : value_end])
            pos = value_end
    return elements


def payload_offset(data: bytes) -> int:
    """Validate ``data`` as an RTP packet and return the offset where its payload starts."""
    return _layout(data)[2]


def read_payload_and_extensions(data: bytes) -> tuple[int, dict[int, bytes]]:
    """Validate ``data`` as an RTP packet once and return where its payload starts and
    its RFC 8285 extensions by id (what a forwarder needs of every packet).

    The payload ends at the end of ``data``, unless the P bit is set: then the padding
    count ``data[-1]`` is known to be 1 .. the bytes after the header, and the payload
    ends that many bytes earlier (possibly where it starts: a padding-only packet)."""
    profile, start, end, _ = _layout(data)
    if profile < 0:
        return end, {}
    return end, _parse_extension_elements(data, profile, start, end)


def read_header_extensions(data: bytes) -> dict[int, bytes]:
    """Validate ``data`` as an RTP packet and return its RFC 8285 extensions by id.

    Empty when the packet has no extension or a profile other than one-/two-byte.
    """
    return read_payload_and_extensions(data)[1]


def _encode_extensions(extensions: Mapping[int, bytes]) -> tuple[int, bytes]:
    """Return ``(profile, element bytes padded to 32 bits)`` for ``extensions``."""
    if all(
        1 <= ext_id <= ONE_BYTE_MAX_ID and 1 <= len(value) <= ONE_BYTE_MAX_LENGTH
        for ext_id, value in extensions.items()
    ):
        profile = ONE_BYTE_PROFILE
        body = b"".join(
            bytes([(ext_id << 4) | (len(value) - 1)]) + value
            for ext_id, value in extensions.items()
        )
    else:
        for ext_id, value in extensions.items():
            if not 1 <= ext_id <= 255:
                raise ValueError(f"header extension id {ext_id} is not in 1..255")
            if len(value) > TWO_BYTE_MAX_LENGTH:
                raise ValueError(
                    f"header extension id {ext_id} is {len(value)} bytes, more than 255"
                )
        profile = TWO_BYTE_PROFILE
        body = b"".join(bytes([ext_id, len(value)]) + value for ext_id, value in extensions.items())
    return profile, body + bytes(-len(body) % 4)


def build_rtp_packet(
    *,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes = b"",
    marker: bool = False,
    csrcs: Iterable[int] = (),
    extensions: Mapping[int, bytes] | None = None,
    padding_length: int = 0,
) -> bytes:
    """Build an RTP packet.

    Extensions use the one-byte form when every id is 1..14 and every value 1..16 bytes,
    otherwise the two-byte form. ``padding_length`` (0..255) appends RTP padding.
    """
    if not 0 <= payload_type <= 127:
        raise ValueError(f"payload type {payload_type} is not in 0..127")
    csrc_list = list(csrcs)
    if len(csrc_list) > MAX_CSRC_COUNT:
        raise ValueError(f"{len(csrc_list)} CSRCs, at most 15 fit in an RTP header")
    if not 0 <= padding_length <= 255:
        raise ValueError(f"padding length {padding_length} is not in 0..255")
    first = (RTP_VERSION << 6) | len(csrc_list)
    if padding_length:
        first |= RTP_PADDING_BIT
    extension = b""
    if extensions:
        profile, elements = _encode_extensions(extensions)
        first |= 0x10
        extension = _EXTENSION_HEADER.pack(profile, len(elements) // 4) + elements
    parts = [
        _FIXED_HEADER.pack(
            first,
            (0x80 if marker else 0) | payload_type,
            sequence_number,
            timestamp,
            ssrc,
        ),
        *(_CSRC.pack(csrc) for csrc in csrc_list),
        extension,
        payload,
    ]
    if padding_length:
        parts.append(bytes(padding_length - 1) + bytes([padding_length]))
    return b"".join(parts)


@dataclass
class RtpHeader:
    """A parsed RTP fixed header, CSRC list and RFC 8285 header extensions.

    ``extension_profile`` is the 16-bit "defined by profile" word (0 when there is no
    extension); ``extensions`` is only decoded for the one-byte and two-byte profiles.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    version: int = RTP_VERSION
    padding: bool = False
    extension: bool = False
    csrcs: list[int] = field(default_factory=list)
    extension_profile: int = 0
    extensions: dict[int, bytes] = field(default_factory=dict)
    payload_offset: int = RTP_HEADER_SIZE
    padding_length: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpHeader:
        """Parse and validate the header of the RTP packet ``data``."""
        profile, extension_start, offset, padding_length = _layout(data)
        first, second, sequence_number, timestamp, ssrc = _FIXED_HEADER.unpack_from(data, 0)
        csrc_count = first & 0x0F
        csrcs = list(struct.unpack_from(f"!{csrc_count}I", data, RTP_HEADER_SIZE))
        extensions = (
            _parse_extension_elements(data, profile, extension_start, offset)
            if profile >= 0
            else {}
        )
        return cls(
            payload_type=second & 0x7F,
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=bool(second & 0x80),
            version=first >> 6,
            padding=bool(first & RTP_PADDING_BIT),
            extension=bool(first & 0x10),
            csrcs=csrcs,
            extension_profile=max(profile, 0),
            extensions=extensions,
            payload_offset=offset,
            padding_length=padding_length,
        )

    def serialize(self, payload: bytes) -> bytes:
        """Build a packet from this header and ``payload``.

        Header layout fields (``padding``, ``extension``, ``extension_profile``,
        ``payload_offset``) are recomputed, so the extension form follows
        :func:`build_rtp_packet`'s rule and extensions of other profiles are dropped.
        """
        return build_rtp_packet(
            payload_type=self.payload_type,
            sequence_number=self.sequence_number,
            timestamp=self.timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=self.marker,
            csrcs=self.csrcs,
            extensions=self.extensions,
            padding_length=self.padding_length,
        )
