"""VP8 RTP payload descriptor (RFC 7741 §4.2) and key frame detection."""

from __future__ import annotations

from dataclasses import dataclass

PICTURE_ID_7_BIT_MAX = 0x7F

_X = 0x80
_N = 0x20
_S = 0x10
_I = 0x80
_L = 0x40
_T = 0x20
_K = 0x10
_M = 0x80
_Y = 0x20


@dataclass
class Vp8Descriptor:
    """A parsed VP8 payload descriptor.

    ``picture_id_length`` is 0 (absent), 7 or 15 bits; when a ``picture_id`` is given with
    length 0 the 15-bit form is chosen. ``size`` is the descriptor length in bytes (the
    offset of the VP8 payload); 0 means "compute the minimal size". ``layer_sync`` is only
    meaningful when ``tid`` is present.
    """

    start_of_partition: bool
    partition_id: int = 0
    non_reference: bool = False
    picture_id: int | None = None
    picture_id_length: int = 0
    tl0picidx: int | None = None
    tid: int | None = None
    layer_sync: bool = False
    keyidx: int | None = None
    size: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.partition_id <= 7:
            raise ValueError(f"VP8 partition id {self.partition_id} is not in 0..7")
        if self.picture_id is None:
            if self.picture_id_length:
                raise ValueError("VP8 picture id length is set but there is no picture id")
        else:
            if self.picture_id_length == 0:
                self.picture_id_length = 15
            if self.picture_id_length not in (7, 15):
                raise ValueError(f"VP8 picture id length {self.picture_id_length} is not 7 or 15")
            if not 0 <= self.picture_id < 1 << self.picture_id_length:
                raise ValueError(
                    f"VP8 picture id {self.picture_id} does not fit {self.picture_id_length} bits"
                )
        if self.tl0picidx is not None and not 0 <= self.tl0picidx <= 0xFF:
            raise ValueError(f"VP8 TL0PICIDX {self.tl0picidx} is not in 0..255")
        if self.tid is not None and not 0 <= self.tid <= 3:
            raise ValueError(f"VP8 TID {self.tid} is not in 0..3")
        if self.keyidx is not None and not 0 <= self.keyidx <= 31:
            raise ValueError(f"VP8 KEYIDX {self.keyidx} is not in 0..31")
        minimal = self._minimal_size()
        if self.size == 0:
            self.size = minimal
        elif self.size != minimal and not (minimal == 1 and self.size == 2):
            raise ValueError(f"VP8 descriptor size {self.size} does not match its fields")

    def _minimal_size(self) -> int:
        size = 1
        if self.picture_id is not None:
            size += 2 if self.picture_id_length == 15 else 1
        if self.tl0picidx is not None:
            size += 1
        if self.tid is not None or self.keyidx is not None:
            size += 1
        return size if size == 1 else size + 1

    @classmethod
    def parse(cls, payload: bytes) -> Vp8Descriptor:
        """Parse the descriptor at the start of a VP8 RTP payload."""
        return _parse(payload, 0)

    def __bytes__(self) -> bytes:
        first = (
            (_N if self.non_reference else 0)
            | (_S if self.start_of_partition else 0)
            | self.partition_id
        )
        if self.size == 1:
            return bytes([first])
        extension = 0
        tail = bytearray()
        if self.picture_id is not None:
            extension |= _I
            if self.picture_id_length == 15:
                tail += bytes([_M | (self.picture_id >> 8), self.picture_id & 0xFF])
            else:
                tail.append(self.picture_id)
        if self.tl0picidx is not None:
            extension |= _L
            tail.append(self.tl0picidx)
        if self.tid is not None or self.keyidx is not None:
            byte = 0
            if self.tid is not None:
                extension |= _T
                byte |= (self.tid << 6) | (_Y if self.layer_sync else 0)
            if self.keyidx is not None:
                extension |= _K
                byte |= self.keyidx
            tail.append(byte)
        return bytes([first | _X, extension]) + bytes(tail)


def _parse(data: bytes, offset: int) -> Vp8Descriptor:
    end = len(data)
    if offset >= end:
        raise ValueError("VP8 payload descriptor is empty")
    first = data[offset]
    pos = offset + 1
    picture_id = None
    picture_id_length = 0
    tl0picidx = None
    tid = None
    layer_sync = False
    keyidx = None
    if first & _X:
        if pos >= end:
            raise ValueError("VP8 descriptor is truncated before its extension byte")
        extension = data[pos]
        pos += 1
        if extension & _I:
            if pos >= end:
                raise ValueError("VP8 descriptor is truncated in its picture id")
            if data[pos] & _M:
                if pos + 2 > end:
                    raise ValueError("VP8 descriptor is truncated in its 15-bit picture id")
                picture_id = ((data[pos] & 0x7F) << 8) | data[pos + 1]
                picture_id_length = 15
                pos += 2
            else:
                picture_id = data[pos]
                picture_id_length = 7
                pos += 1
        if extension & _L:
            if pos >= end:
                raise ValueError("VP8 descriptor is truncated before TL0PICIDX")
            tl0picidx = data[pos]
            pos += 1
        if extension & (_T | _K):
            if pos >= end:
                raise ValueError("VP8 descriptor is truncated before TID/KEYIDX")
            byte = data[pos]
            pos += 1
            if extension & _T:
                tid = byte >> 6
                layer_sync = bool(byte & _Y)
            if extension & _K:
                keyidx = byte & 0x1F
    return Vp8Descriptor(
        start_of_partition=bool(first & _S),
        partition_id=first & 0x07,
        non_reference=bool(first & _N),
        picture_id=picture_id,
        picture_id_length=picture_id_length,
        tl0picidx=tl0picidx,
        tid=tid,
        layer_sync=layer_sync,
        keyidx=keyidx,
        size=pos - offset,
    )


def is_vp8_keyframe(payload: bytes) -> bool:
    """True for the first packet of a key frame: start of partition 0 and P bit 0.

    Truncated or malformed payloads return False.
    """
    # Most packets continue a frame: S bit clear (or another partition), no parse.
    if not is_vp8_frame_start(payload):
        return False
    try:
        descriptor = _parse(payload, 0)
    except ValueError:
        return False
    if not descriptor.start_of_partition or descriptor.partition_id != 0:
        return False
    return len(payload) > descriptor.size and not payload[descriptor.size] & 0x01


def _tid_byte(data: bytes, offset: int) -> int:
    """Index of the TID/Y/KEYIDX byte of the VP8 payload descriptor at ``offset``, -1
    when it has none (no T bit) or is truncated; byte reads only (per-packet path)."""
    size = len(data)
    if size < offset + 2 or not data[offset] & _X:
        return -1
    extension = data[offset + 1]
    if not extension & _T:
        return -1
    pos = offset + 2
    if extension & _I:
        pos += 2 if size > pos and data[pos] & _M else 1
    if extension & _L:
        pos += 1
    return pos if pos < size else -1


def vp8_temporal_id(data: bytes, offset: int = 0) -> int:
    """The temporal layer index (TID) of the VP8 payload descriptor at ``offset``, -1
    when it carries none or is truncated."""
    pos = _tid_byte(data, offset)
    return data[pos] >> 6 if pos >= 0 else -1


def vp8_layer_sync(payload: bytes) -> bool:
    """The Y bit of a VP8 payload descriptor (RFC 7741 section 4.2): this frame refers
    only to base-layer (TL0) frames, so a receiver can start its temporal layer here.
    False when the descriptor carries no TID or is truncated."""
    pos = _tid_byte(payload, 0)
    return pos >= 0 and bool(payload[pos] & _Y)


def is_vp8_frame_start(payload: bytes) -> bool:
    """True for the first packet of a frame (start of partition 0)."""
    return bool(payload) and payload[0] & 0x17 == _S


def rewrite_vp8_descriptor(
    buf: bytearray, offset: int, picture_id: int, tl0picidx: int | None
) -> None:
    """Overwrite the picture id (and TL0PICIDX unless None) of the descriptor at ``offset``.

    The existing picture id width is kept and ``picture_id`` is taken modulo it, so a
    forwarder may pass an unwrapped counter. Raises ValueError when the descriptor lacks a
    field that is to be written.
    """
    descriptor = _parse(buf, offset)
    if descriptor.picture_id is None:
        raise ValueError("VP8 descriptor has no picture id to rewrite")
    if tl0picidx is not None and descriptor.tl0picidx is None:
        raise ValueError("VP8 descriptor has no TL0PICIDX to rewrite")
    pos = offset + 2
    if descriptor.picture_id_length == 15:
        buf[pos] = _M | ((picture_id >> 8) & 0x7F)
        buf[pos + 1] = picture_id & 0xFF
        pos += 2
    else:
        buf[pos] = picture_id & PICTURE_ID_7_BIT_MAX
        pos += 1
    if tl0picidx is not None:
        buf[pos] = tl0picidx & 0xFF
