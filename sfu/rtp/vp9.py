"""VP9 RTP payload descriptor (RFC 9628 section 4.2), key frames and layer indices.

::

       0 1 2 3 4 5 6 7
      +-+-+-+-+-+-+-+-+
      |I|P|L|F|B|E|V|Z| (REQUIRED)
      +-+-+-+-+-+-+-+-+
 I:   |M| PICTURE ID  | (REQUIRED when I)
      +-+-+-+-+-+-+-+-+
 M:   | EXTENDED PID  | (15-bit picture id when M)
      +-+-+-+-+-+-+-+-+
 L:   | TID |U| SID |D| (when L)
      +-+-+-+-+-+-+-+-+
      |   TL0PICIDX   | (when L and not F: non-flexible mode)
      +-+-+-+-+-+-+-+-+
 P,F: | P_DIFF      |N| (flexible mode, inter-picture predicted: up to 3)
      +-+-+-+-+-+-+-+-+
 V:   | SS            | (scalability structure, section 4.2.1)

The forwarding path reads only the first bytes (:func:`vp9_layers`: one int of bit
fields); the full parse (:meth:`Vp9Descriptor.parse`) runs for key frames (their
scalability structure gives each spatial layer's size) and in tests. Both are bounded
by the descriptor's own size limits (at most 3 P_DIFFs, 8 spatial layers, 255 pictures
in a group with 3 references each) and reject truncated input with ``ValueError`` or
-1, never reading past the payload.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_REFERENCES = 3
"""P_DIFFs a layer frame (or a picture of the group of frames) may carry."""

_I = 0x80
_P = 0x40
_L = 0x20
_F = 0x10
_B = 0x08
_E = 0x04
_V = 0x02
_Z = 0x01
_M = 0x80
_SS_Y = 0x10
_SS_G = 0x08

# Bit fields of the word vp9_layers returns.
LAYER_TID = 0x07
"""Temporal layer index (bits 0-2)."""
LAYER_SID_SHIFT = 3
LAYER_SID = 0x07 << LAYER_SID_SHIFT
"""Spatial layer index (bits 3-5)."""
LAYER_SWITCHING_UP = 0x40
"""U: a temporal switching-up point."""
LAYER_INTER_LAYER = 0x80
"""D: the layer frame depends on the spatial layer below in the same picture."""
LAYER_START = 0x100
"""B: the first packet of a layer frame."""
LAYER_END = 0x200
"""E: the last packet of a layer frame."""
LAYER_INTER_PICTURE = 0x400
"""P: the layer frame refers to earlier pictures (not a key or switching point)."""
LAYER_INDICES = 0x800
"""The descriptor carries layer indices (L); without them TID and SID read 0."""


@dataclass(frozen=True, slots=True)
class PictureInGroup:
    """One picture of a scalability structure's group of frames (non-flexible mode)."""

    tid: int
    switching_up: bool
    p_diffs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ScalabilityStructure:
    """The SS of RFC 9628 section 4.2.1: spatial layers, their sizes (when Y) and the
    group of frames (when G)."""

    spatial_layers: int
    sizes: tuple[tuple[int, int], ...] = ()
    """(width, height) per spatial layer, lowest first; empty without the Y bit."""
    group: tuple[PictureInGroup, ...] | None = None
    """The pictures of the group of frames; None without the G bit."""


@dataclass(frozen=True, slots=True)
class Vp9Descriptor:
    """A parsed VP9 payload descriptor; ``size`` is its length in bytes."""

    inter_picture_predicted: bool
    flexible: bool
    start_of_frame: bool
    end_of_frame: bool
    not_reference_for_upper: bool
    picture_id: int | None = None
    picture_id_length: int = 0
    """0 (absent), 7 or 15 bits."""
    tid: int | None = None
    """Temporal layer index; None without layer indices (L)."""
    switching_up: bool = False
    sid: int | None = None
    inter_layer_dependency: bool = False
    tl0picidx: int | None = None
    p_diffs: tuple[int, ...] = ()
    scalability: ScalabilityStructure | None = None
    size: int = 1

    @classmethod
    def parse(cls, payload: bytes) -> Vp9Descriptor:
        """Parse the descriptor at the start of a VP9 RTP payload; ValueError when it is
        truncated or breaks the RFC's limits."""
        end = len(payload)
        if end < 1:
            raise ValueError("VP9 payload descriptor is empty")
        first = payload[0]
        pos = 1
        picture_id = None
        picture_id_length = 0
        if first & _I:
            if pos >= end:
                raise ValueError("VP9 descriptor is truncated in its picture id")
            if payload[pos] & _M:
                if pos + 2 > end:
                    raise ValueError("VP9 descriptor is truncated in its 15-bit picture id")
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                picture_id_length = 15
                pos += 2
            else:
                picture_id = payload[pos]
                picture_id_length = 7
                pos += 1
        tid = sid = tl0picidx = None
        switching_up = inter_layer = False
        if first & _L:
            if pos >= end:
                raise ValueError("VP9 descriptor is truncated before its layer indices")
            byte = payload[pos]
            pos += 1
            tid = byte >> 5
            switching_up = bool(byte & 0x10)
            sid = (byte >> 1) & 0x07
            inter_layer = bool(byte & 0x01)
            if not first & _F:
                if pos >= end:
                    raise ValueError("VP9 descriptor is truncated before TL0PICIDX")
                tl0picidx = payload[pos]
                pos += 1
        p_diffs: tuple[int, ...] = ()
        if first & _F and first & _P:
            p_diffs, pos = _p_diffs(payload, pos, "layer frame")
        scalability = None
        if first & _V:
            scalability, pos = _scalability_structure(payload, pos)
        return cls(
            inter_picture_predicted=bool(first & _P),
            flexible=bool(first & _F),
            start_of_frame=bool(first & _B),
            end_of_frame=bool(first & _E),
            not_reference_for_upper=bool(first & _Z),
            picture_id=picture_id,
            picture_id_length=picture_id_length,
            tid=tid,
            switching_up=switching_up,
            sid=sid,
            inter_layer_dependency=inter_layer,
            tl0picidx=tl0picidx,
            p_diffs=p_diffs,
            scalability=scalability,
            size=pos,
        )


def _p_diffs(payload: bytes, pos: int, what: str) -> tuple[tuple[int, ...], int]:
    """P_DIFF bytes from ``pos`` while their N bit says another follows (at most 3)."""
    diffs = []
    end = len(payload)
    while True:
        if pos >= end:
            raise ValueError(f"VP9 descriptor is truncated in a {what}'s P_DIFF")
        byte = payload[pos]
        pos += 1
        diffs.append(byte >> 1)
        if not byte & 0x01:
            return tuple(diffs), pos
        if len(diffs) == MAX_REFERENCES:
            raise ValueError(f"VP9 {what} has more than {MAX_REFERENCES} P_DIFFs")


def _scalability_structure(payload: bytes, pos: int) -> tuple[ScalabilityStructure, int]:
    end = len(payload)
    if pos >= end:
        raise ValueError("VP9 descriptor is truncated before its scalability structure")
    header = payload[pos]
    pos += 1
    spatial_layers = (header >> 5) + 1
    sizes: tuple[tuple[int, int], ...] = ()
    if header & _SS_Y:
        if pos + 4 * spatial_layers > end:
            raise ValueError("VP9 scalability structure is truncated in its sizes")
        sizes = tuple(
            (
                (payload[p] << 8) | payload[p + 1],
                (payload[p + 2] << 8) | payload[p + 3],
            )
            for p in range(pos, pos + 4 * spatial_layers, 4)
        )
        pos += 4 * spatial_layers
    group = None
    if header & _SS_G:
        if pos >= end:
            raise ValueError("VP9 scalability structure is truncated before N_G")
        count = payload[pos]
        pos += 1
        pictures = []
        for _ in range(count):
            if pos >= end:
                raise ValueError("VP9 scalability structure is truncated in its group")
            byte = payload[pos]
            pos += 1
            references = (byte >> 2) & 0x03
            if pos + references > end:
                raise ValueError("VP9 scalability structure is truncated in a P_DIFF")
            diffs = tuple(payload[pos : pos + references])
            pos += references
            pictures.append(PictureInGroup(byte >> 5, bool(byte & 0x10), diffs))
        group = tuple(pictures)
    return ScalabilityStructure(spatial_layers, sizes, group), pos


def vp9_layers(payload: bytes) -> int:
    """The descriptor's flags and layer indices as one int of the ``LAYER_*`` bit
    fields, with byte reads only (it runs per packet and subscriber); -1 when the
    descriptor is truncated before its layer indices or TL0PICIDX.

    Only the fixed part is checked: P_DIFFs and the scalability structure follow and
    are left to :meth:`Vp9Descriptor.parse`.
    """
    size = len(payload)
    if not size:
        return -1
    first = payload[0]
    word = (
        (LAYER_START if first & _B else 0)
        | (LAYER_END if first & _E else 0)
        | (LAYER_INTER_PICTURE if first & _P else 0)
    )
    pos = 1
    if first & _I:
        if size < 2:
            return -1
        pos = 3 if payload[1] & _M else 2
    if first & _L:
        if size <= pos + (0 if first & _F else 1):
            return -1
        byte = payload[pos]
        word |= (
            LAYER_INDICES
            | (byte >> 5)
            | (((byte >> 1) & 0x07) << LAYER_SID_SHIFT)
            | (LAYER_SWITCHING_UP if byte & 0x10 else 0)
            | (LAYER_INTER_LAYER if byte & 0x01 else 0)
        )
    elif size < pos:
        return -1
    return word


def is_vp9_keyframe(payload: bytes) -> bool:
    """True for the first packet of a key picture: the start of a layer frame of the
    lowest spatial layer that refers to no earlier picture (B set, P clear, SID 0).
    Malformed payloads return False."""
    if len(payload) < 2 or payload[0] & (_B | _P) != _B:
        return False
    word = vp9_layers(payload)
    return word >= 0 and not word & LAYER_SID


def vp9_spatial_sizes(payload: bytes) -> tuple[tuple[int, int], ...]:
    """(width, height) of each spatial layer from the scalability structure of a key
    picture's first packet, lowest first; empty when it carries none or is malformed."""
    if len(payload) < 2 or not payload[0] & _V:
        return ()
    try:
        structure = Vp9Descriptor.parse(payload).scalability
    except ValueError:
        return ()
    return () if structure is None else structure.sizes


def vp9_picture_id(payload: bytes) -> int:
    """The picture id (7 or 15 bits), -1 when there is none or it is truncated."""
    if len(payload) < 2 or not payload[0] & _I:
        return -1
    if not payload[1] & _M:
        return payload[1]
    return ((payload[1] & 0x7F) << 8) | payload[2] if len(payload) > 2 else -1


def vp9_tl0picidx(payload: bytes) -> int:
    """TL0PICIDX (non-flexible mode with layer indices), -1 when there is none or it is
    truncated."""
    if not payload or payload[0] & (_L | _F) != _L:
        return -1
    pos = 2
    if payload[0] & _I:
        pos = 4 if len(payload) > 1 and payload[1] & _M else 3
    return payload[pos] if len(payload) > pos else -1


def rewrite_vp9_picture(payload: bytes, picture_id: int, tl0picidx: int | None) -> bytes:
    """``payload`` with its picture id (taken modulo the width it has) and, unless
    None or absent, its TL0PICIDX replaced. The caller checked that it has a picture id
    (I bit)."""
    buffer = bytearray(payload)
    if buffer[1] & _M:
        buffer[1] = _M | ((picture_id >> 8) & 0x7F)
        buffer[2] = picture_id & 0xFF
        pos = 3
    else:
        buffer[1] = picture_id & 0x7F
        pos = 2
    first = buffer[0]
    if tl0picidx is not None and first & _L and not first & _F and len(buffer) > pos + 1:
        buffer[pos + 1] = tl0picidx & 0xFF
    return bytes(buffer)
