"""RTCP compound packets.

Covers RFC 3550 (SR, RR, SDES, BYE), RFC 4585 (generic NACK, PLI), RFC 5104 (FIR),
draft-alvestrand-rmcat-remb (REMB) and draft-holmer-rmcat-transport-wide-cc-extensions
(transport-cc feedback, kept raw). Anything else, including XR and APP, is preserved as
:class:`UnknownRtcp`.

:func:`parse_rtcp` is all-or-nothing: if the length fields of a compound do not add up,
or a packet of a known type is malformed, the whole compound is rejected with
``ValueError``. Every packet class has ``__bytes__`` and ``parse_rtcp(bytes(p)) == [p]``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from sfu.rtp.seqnum import SEQUENCE_NUMBER_BITS, diff

RTCP_VERSION = 2
MAX_COUNT = 31
"""The 5-bit report count / source count field."""

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205
RTCP_PSFB = 206
RTCP_XR = 207

RTPFB_NACK = 1
RTPFB_TRANSPORT_CC = 15
PSFB_PLI = 1
PSFB_FIR = 4
PSFB_AFB = 15

SDES_END = 0
SDES_CNAME = 1
SDES_NAME = 2
SDES_EMAIL = 3
SDES_PHONE = 4
SDES_LOC = 5
SDES_TOOL = 6
SDES_NOTE = 7
SDES_PRIV = 8

REMB_IDENTIFIER = b"REMB"
REMB_MANTISSA_BITS = 18
REMB_EXPONENT_MAX = 63
NACK_BITMASK_BITS = 16

NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970)."""
NTP_ERA_PIVOT = 0x8000_0000
"""RFC 4330 §3: NTP seconds with the top bit clear are read as era 1 (from 2036)."""

_HEADER = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")
_NACK_ITEM = struct.Struct("!HH")
_FIR_ENTRY = struct.Struct("!IB3x")
_REMB_HEADER = struct.Struct("!4sBBH")

REPORT_BLOCK_SIZE = _REPORT_BLOCK.size
SR_INFO_SIZE = _SR_INFO.size


def ntp_from_unix(seconds: float) -> int:
    """Convert Unix time in seconds to a 64-bit NTP timestamp (32.32 fixed point)."""
    whole = math.floor(seconds)
    fraction = int((seconds - whole) * (1 << 32))
    return (((whole + NTP_UNIX_OFFSET) << 32) + fraction) & 0xFFFF_FFFF_FFFF_FFFF


def unix_from_ntp(ntp: int) -> float:
    """Convert a 64-bit NTP timestamp to Unix seconds (era 1 when the top bit is clear)."""
    seconds = ntp >> 32
    if seconds < NTP_ERA_PIVOT:
        seconds += 1 << 32
    return seconds - NTP_UNIX_OFFSET + (ntp & 0xFFFF_FFFF) / (1 << 32)


def compact_ntp(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (16.16 seconds), as used in LSR and DLSR."""
    return (ntp >> 16) & 0xFFFF_FFFF


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    """Frame ``body`` with an RTCP header, padding it to 32 bits with the P bit if needed."""
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"RTCP count field {count} is not in 0..31")
    first = (RTCP_VERSION << 6) | count
    padding = -len(body) % 4
    if padding:
        first |= 0x20
        body += bytes(padding - 1) + bytes([padding])
    words = len(body) // 4
    if words > 0xFFFF:
        raise ValueError(f"RTCP packet of {len(body) + 4} bytes exceeds the length field")
    return _HEADER.pack(first, packet_type, words) + body


@dataclass
class ReportBlock:
    """RFC 3550 §6.4.1 reception report block."""

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    """Cumulative number of packets lost, signed 24-bit (saturated when encoding)."""
    highest_sequence: int = 0
    """Extended highest sequence number received."""
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> ReportBlock:
        if len(data) - offset < REPORT_BLOCK_SIZE:
            raise ValueError(
                f"report block needs {REPORT_BLOCK_SIZE} bytes, {len(data) - offset} remain"
            )
        ssrc, fraction_lost, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(
            data, offset
        )
        return cls(
            ssrc=ssrc,
            fraction_lost=fraction_lost,
            packets_lost=int.from_bytes(lost, "big", signed=True),
            highest_sequence=highest,
            jitter=jitter,
            lsr=lsr,
            dlsr=dlsr,
        )

    def __bytes__(self) -> bytes:
        lost = min(max(self.packets_lost, -0x80_0000), 0x7F_FFFF)
        return _REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _parse_report_blocks(body: bytes, offset: int, count: int, name: str) -> list[ReportBlock]:
    end = offset + count * REPORT_BLOCK_SIZE
    if end > len(body):
        raise ValueError(
            f"{name} announces {count} report blocks ({end} bytes) "
            f"but its body is {len(body)} bytes"
        )
    return [ReportBlock.parse(body, pos) for pos in range(offset, end, REPORT_BLOCK_SIZE)]


@dataclass
class SenderReport:
    """RFC 3550 §6.4.1 SR. Profile-specific extensions are skipped when parsing."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, count: int, body: bytes) -> SenderReport:
        if len(body) < SR_INFO_SIZE:
            raise ValueError(f"SR body is {len(body)} bytes, sender info needs {SR_INFO_SIZE}")
        ssrc, ntp, rtp, packets, octets = _SR_INFO.unpack_from(body, 0)
        return cls(
            ssrc=ssrc,
            ntp_timestamp=ntp,
            rtp_timestamp=rtp,
            packet_count=packets,
            octet_count=octets,
            reports=_parse_report_blocks(body, SR_INFO_SIZE, count, "SR"),
        )

    def __bytes__(self) -> bytes:
        info = _SR_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        blocks = b"".join(bytes(report) for report in self.reports)
        return _packet(RTCP_SR, len(self.reports), info + blocks)


@dataclass
class ReceiverReport:
    """RFC 3550 §6.4.2 RR. Profile-specific extensions are skipped when parsing."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, count: int, body: bytes) -> ReceiverReport:
        if len(body) < 4:
            raise ValueError(f"RR body is {len(body)} bytes, the sender SSRC needs 4")
        return cls(
            ssrc=_U32.unpack_from(body, 0)[0],
            reports=_parse_report_blocks(body, 4, count, "RR"),
        )

    def __bytes__(self) -> bytes:
        blocks = b"".join(bytes(report) for report in self.reports)
        return _packet(RTCP_RR, len(self.reports), _U32.pack(self.ssrc) + blocks)


SdesChunk = tuple[int, list[tuple[int, bytes]]]
"""``(ssrc, [(item_type, value), ...])``."""


@dataclass
class SourceDescription:
    """RFC 3550 §6.5 SDES: chunks of ``(ssrc, [(item_type, value)])``."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def parse(cls, count: int, body: bytes) -> SourceDescription:
        chunks: list[SdesChunk] = []
        pos = 0
        size = len(body)
        for index in range(count):
            if pos + 4 > size:
                raise ValueError(f"SDES chunk {index} SSRC is truncated at byte {pos}")
            ssrc = _U32.unpack_from(body, pos)[0]
            pos += 4
            items: list[tuple[int, bytes]] = []
            while True:
                if pos >= size:
                    raise ValueError(f"SDES chunk {index} has no END item")
                item_type = body[pos]
                if item_type == SDES_END:
                    # The END octet and the null padding that follows reach a 32-bit boundary.
                    pos = (pos + 4) & ~3
                    if pos > size:
                        raise ValueError(f"SDES chunk {index} padding is truncated")
                    break
                if pos + 2 > size:
                    raise ValueError(f"SDES chunk {index} item {item_type} has no length")
                end = pos + 2 + body[pos + 1]
                if end > size:
                    raise ValueError(
                        f"SDES chunk {index} item {item_type} ends at byte {end}, "
                        f"beyond the {size}-byte body"
                    )
                items.append((item_type, bytes(body[pos + 2 : end])))
                pos = end
            chunks.append((ssrc, items))
        if pos != size:
            raise ValueError(f"SDES has {size - pos} bytes after its {count} chunks")
        return cls(chunks=chunks)

    def __bytes__(self) -> bytes:
        parts: list[bytes] = []
        for ssrc, items in self.chunks:
            chunk = bytearray(_U32.pack(ssrc))
            for item_type, value in items:
                if not 1 <= item_type <= 255:
                    raise ValueError(f"SDES item type {item_type} is not in 1..255")
                if len(value) > 255:
                    raise ValueError(f"SDES item {item_type} is {len(value)} bytes, max 255")
                chunk += bytes([item_type, len(value)]) + value
            chunk += bytes(4 - len(chunk) % 4)
            parts.append(bytes(chunk))
        return _packet(RTCP_SDES, len(self.chunks), b"".join(parts))


@dataclass
class Goodbye:
    """RFC 3550 §6.6 BYE. A reason that is not UTF-8 is decoded with replacement."""

    ssrcs: list[int] = field(default_factory=list)
    reason: str | None = None

    @classmethod
    def parse(cls, count: int, body: bytes) -> Goodbye:
        end = count * 4
        if end > len(body):
            raise ValueError(f"BYE announces {count} SSRCs but its body is {len(body)} bytes")
        ssrcs = list(struct.unpack_from(f"!{count}I", body, 0))
        reason = None
        if end < len(body):
            reason_end = end + 1 + body[end]
            if reason_end > len(body):
                raise ValueError(
                    f"BYE reason ends at byte {reason_end}, beyond the {len(body)}-byte body"
                )
            reason = bytes(body[end + 1 : reason_end]).decode("utf-8", errors="replace")
        return cls(ssrcs=ssrcs, reason=reason)

    def __bytes__(self) -> bytes:
        body = b"".join(_U32.pack(ssrc) for ssrc in self.ssrcs)
        if self.reason is not None:
            reason = self.reason.encode("utf-8")
            if len(reason) > 255:
                raise ValueError(f"BYE reason is {len(reason)} bytes, max 255")
            body += bytes([len(reason)]) + reason
            body += bytes(-len(body) % 4)
        return _packet(RTCP_BYE, len(self.ssrcs), body)


def _feedback_ssrcs(body: bytes, name: str) -> tuple[int, int]:
    if len(body) < 8:
        raise ValueError(f"{name} body is {len(body)} bytes, sender and media SSRC need 8")
    return _TWO_U32.unpack_from(body, 0)


def _nack_items(lost: list[int]) -> list[tuple[int, int]]:
    """Compress sequence numbers (in wraparound order) into ``(pid, blp)`` pairs."""
    items: list[tuple[int, int]] = []
    pid = -1
    blp = 0
    for seq in lost:
        if not 0 <= seq <= 0xFFFF:
            raise ValueError(f"sequence number {seq} is not in 0..65535")
        if pid >= 0:
            distance = diff(seq, pid, SEQUENCE_NUMBER_BITS)
            if distance == 0:
                continue
            if 1 <= distance <= NACK_BITMASK_BITS:
                blp |= 1 << (distance - 1)
                continue
            items.append((pid, blp))
        pid = seq
        blp = 0
    if pid >= 0:
        items.append((pid, blp))
    return items


@dataclass
class GenericNack:
    """RFC 4585 §6.2.1 generic NACK, with the PID+BLP pairs expanded into ``lost``.

    ``bytes()`` compresses ``lost`` into pairs; it round-trips when ``lost`` is in
    wraparound order without duplicates.
    """

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes) -> GenericNack:
        sender_ssrc, media_ssrc = _feedback_ssrcs(body, "NACK")
        if (len(body) - 8) % 4:
            raise ValueError(f"NACK FCI is {len(body) - 8} bytes, not a multiple of 4")
        lost: list[int] = []
        for pid, blp in _NACK_ITEM.iter_unpack(body[8:]):
            lost.append(pid)
            bit = 0
            while blp:
                if blp & 1:
                    lost.append((pid + bit + 1) & 0xFFFF)
                blp >>= 1
                bit += 1
        return cls(sender_ssrc=sender_ssrc, media_ssrc=media_ssrc, lost=lost)

    def __bytes__(self) -> bytes:
        fci = b"".join(_NACK_ITEM.pack(pid, blp) for pid, blp in _nack_items(self.lost))
        return _packet(
            RTCP_RTPFB, RTPFB_NACK, _TWO_U32.pack(self.sender_ssrc, self.media_ssrc) + fci
        )


@dataclass
class TransportFeedback:
    """draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1; the FCI is kept raw."""

    sender_ssrc: int
    media_ssrc: int
    fci: bytes = b""

    @classmethod
    def parse(cls, body: bytes) -> TransportFeedback:
        sender_ssrc, media_ssrc = _feedback_ssrcs(body, "transport-cc")
        return cls(sender_ssrc=sender_ssrc, media_ssrc=media_ssrc, fci=bytes(body[8:]))

    def __bytes__(self) -> bytes:
        return _packet(
            RTCP_RTPFB,
            RTPFB_TRANSPORT_CC,
            _TWO_U32.pack(self.sender_ssrc, self.media_ssrc) + self.fci,
        )


@dataclass
class PictureLossIndication:
    """RFC 4585 §6.3.1 PLI."""

    sender_ssrc: int
    media_ssrc: int

    @classmethod
    def parse(cls, body: bytes) -> PictureLossIndication:
        sender_ssrc, media_ssrc = _feedback_ssrcs(body, "PLI")
        if len(body) != 8:
            raise ValueError(f"PLI has {len(body) - 8} bytes of FCI, expected none")
        return cls(sender_ssrc=sender_ssrc, media_ssrc=media_ssrc)

    def __bytes__(self) -> bytes:
        return _packet(RTCP_PSFB, PSFB_PLI, _TWO_U32.pack(self.sender_ssrc, self.media_ssrc))


@dataclass
class FullIntraRequest:
    """RFC 5104 §4.3.1 FIR: ``entries`` of ``(ssrc, command sequence number)``."""

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes) -> FullIntraRequest:
        sender_ssrc, _media_ssrc = _feedback_ssrcs(body, "FIR")
        if (len(body) - 8) % _FIR_ENTRY.size:
            raise ValueError(f"FIR FCI is {len(body) - 8} bytes, not a multiple of 8")
        return cls(sender_ssrc=sender_ssrc, entries=list(_FIR_ENTRY.iter_unpack(body[8:])))

    def __bytes__(self) -> bytes:
        fci = b"".join(_FIR_ENTRY.pack(ssrc, seq) for ssrc, seq in self.entries)
        # RFC 5104 §4.3.1.2: the media source SSRC field is unused and set to 0.
        return _packet(RTCP_PSFB, PSFB_FIR, _TWO_U32.pack(self.sender_ssrc, 0) + fci)


def _remb_encode(bitrate: int) -> tuple[int, int]:
    """``(exponent, mantissa)`` with ``mantissa << exponent <= bitrate``, rounding down."""
    if bitrate < 0:
        raise ValueError(f"REMB bitrate {bitrate} is negative")
    exponent = max(bitrate.bit_length() - REMB_MANTISSA_BITS, 0)
    if exponent > REMB_EXPONENT_MAX:
        raise ValueError(f"REMB bitrate {bitrate} exceeds the 6-bit exponent")
    return exponent, bitrate >> exponent


@dataclass
class ReceiverEstimatedMaxBitrate:
    """draft-alvestrand-rmcat-remb §2.2 REMB (PSFB application layer feedback).

    ``bitrate`` is in bits per second; encoding keeps the top 18 significant bits, so
    larger values round down.
    """

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes) -> ReceiverEstimatedMaxBitrate:
        sender_ssrc, _media_ssrc = _feedback_ssrcs(body, "REMB")
        if len(body) < 16:
            raise ValueError(f"REMB body is {len(body)} bytes, expected at least 16")
        _identifier, count, high, low = _REMB_HEADER.unpack_from(body, 8)
        if len(body) != 16 + 4 * count:
            raise ValueError(
                f"REMB announces {count} SSRCs but has {len(body) - 16} bytes for them"
            )
        mantissa = ((high & 0x03) << 16) | low
        return cls(
            sender_ssrc=sender_ssrc,
            bitrate=mantissa << (high >> 2),
            ssrcs=list(struct.unpack_from(f"!{count}I", body, 16)),
        )

    def __bytes__(self) -> bytes:
        exponent, mantissa = _remb_encode(self.bitrate)
        if len(self.ssrcs) > 255:
            raise ValueError(f"REMB lists {len(self.ssrcs)} SSRCs, at most 255")
        fci = _REMB_HEADER.pack(
            REMB_IDENTIFIER, len(self.ssrcs), (exponent << 2) | (mantissa >> 16), mantissa & 0xFFFF
        ) + b"".join(_U32.pack(ssrc) for ssrc in self.ssrcs)
        return _packet(RTCP_PSFB, PSFB_AFB, _TWO_U32.pack(self.sender_ssrc, 0) + fci)


@dataclass
class UnknownRtcp:
    """Any other RTCP packet, kept as its body without header and padding."""

    packet_type: int
    fmt: int
    payload: bytes = b""

    def __bytes__(self) -> bytes:
        return _packet(self.packet_type, self.fmt, self.payload)


RtcpPacket = (
    SenderReport
    | ReceiverReport
    | SourceDescription
    | Goodbye
    | GenericNack
    | TransportFeedback
    | PictureLossIndication
    | FullIntraRequest
    | ReceiverEstimatedMaxBitrate
    | UnknownRtcp
)


def _parse_packet(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == RTCP_SR:
        return SenderReport.parse(count, body)
    if packet_type == RTCP_RR:
        return ReceiverReport.parse(count, body)
    if packet_type == RTCP_SDES:
        return SourceDescription.parse(count, body)
    if packet_type == RTCP_BYE:
        return Goodbye.parse(count, body)
    if packet_type == RTCP_RTPFB:
        if count == RTPFB_NACK:
            return GenericNack.parse(body)
        if count == RTPFB_TRANSPORT_CC:
            return TransportFeedback.parse(body)
    elif packet_type == RTCP_PSFB:
        if count == PSFB_PLI:
            return PictureLossIndication.parse(body)
        if count == PSFB_FIR:
            return FullIntraRequest.parse(body)
        if count == PSFB_AFB and body[8:12] == REMB_IDENTIFIER:
            return ReceiverEstimatedMaxBitrate.parse(body)
    return UnknownRtcp(packet_type=packet_type, fmt=count, payload=bytes(body))


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse an RTCP compound (or a single, reduced-size RTCP packet)."""
    size = len(data)
    if size == 0:
        raise ValueError("RTCP compound is empty")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < size:
        if size - pos < 4:
            raise ValueError(f"RTCP header at byte {pos} is truncated: {size - pos} bytes remain")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != RTCP_VERSION:
            raise ValueError(f"RTCP packet at byte {pos} has version {first >> 6}, expected 2")
        end = pos + 4 + words * 4
        if end > size:
            raise ValueError(
                f"RTCP packet at byte {pos} ends at byte {end}, beyond the {size}-byte compound"
            )
        body_end = end
        if first & 0x20:
            padding = data[end - 1]
            if padding == 0 or padding > words * 4:
                raise ValueError(
                    f"RTCP packet at byte {pos} has padding count {padding} "
                    f"for a {words * 4}-byte body"
                )
            body_end -= padding
        packets.append(_parse_packet(packet_type, first & 0x1F, data[pos + 4 : body_end]))
        pos = end
    return packets
