"""Vp8Munger: VP8 picture ids and TL0PICIDX continuous across simulcast layer switches.

The VP8 payload descriptor (RFC 7741 §4.2) numbers pictures (PictureID) and base-layer
pictures (TL0PICIDX). A receiver uses both to find frame references and detect lost
frames, so when the forwarder moves to another layer, whose counters are unrelated,
they must continue from the last values the subscriber saw, like the sequence numbers
(LiveKit ``codecmunger/vp8.go``, mediasoup ``Codecs::VP8::EncodingContext``).

The outgoing picture id is always written in the 15-bit form: a layer that sends 7-bit
ids can then be continued from any value, and RFC 7741 lets a receiver expect the width
to change. Pictures dropped on purpose (temporal layers above the target) are reported
with :meth:`Vp8Munger.drop` so later picture ids are shifted down and the subscriber
sees no missing picture.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import replace

from sfu.rtp.seqnum import VP8_PICTURE_ID_BITS, WrapAroundExtender, diff, expire_drops
from sfu.rtp.vp8 import Vp8Descriptor, rewrite_vp8_descriptor

PICTURE_REORDER_WINDOW = 60
"""Pictures (about 2 s at 30 fps) behind the newest for which drops are still tracked
one by one; older drops are folded into the offset. Below 64 so that 7-bit ids, which
wrap every 128 pictures, are still unambiguous."""

TRIM_STEP = 8
"""The reorder window is trimmed in steps of this many pictures, not per packet."""

_PICTURE_ID_MASK = (1 << VP8_PICTURE_ID_BITS) - 1
_PICTURE_ID_HALF = 1 << (VP8_PICTURE_ID_BITS - 1)
_TL0PICIDX_BITS = 8
_TL0PICIDX_MASK = (1 << _TL0PICIDX_BITS) - 1


class Vp8Munger:
    """Rewrites the payload descriptor of the forwarded VP8 stream of one consumer.

    Before the first :meth:`switch` payloads pass through unchanged.
    """

    __slots__ = (
        "_dropped",
        "_floor",
        "_highest_picture",
        "_identity",
        "_identity_last",
        "_last_out_picture",
        "_last_out_tl0",
        "_picture_offset",
        "_started",
        "_tl0_ext",
        "_tl0_offset",
    )

    def __init__(self) -> None:
        self._started = False
        self._highest_picture = 0
        """Highest extended picture id of the current layer seen so far."""
        self._picture_offset = 0
        self._last_out_picture: int | None = None
        self._tl0_ext = WrapAroundExtender(_TL0PICIDX_BITS)
        self._tl0_offset = 0
        self._last_out_tl0: int | None = None
        self._floor = 0
        """Extended picture id below which drops are folded into the offset."""
        self._dropped: list[int] = []
        """Extended picture ids dropped since ``_floor``, ascending."""
        self._identity = False
        """The outgoing numbering equals the source's (the first layer forwarded, no
        drops): browser-layout payloads pass untouched and only the latest is kept, in
        ``_identity_last``, to bring the state up to date when that ends (a switch, a
        drop, a payload of another layout)."""
        self._identity_last: bytes | None = None

    def switch(self, payload: bytes) -> None:
        """The forwarder starts a new layer at this key frame packet.

        Its picture gets the next outgoing picture id and, when the layer carries
        TL0PICIDX, the next TL0PICIDX (a key frame is a base-layer picture). A payload
        without a picture id leaves the munger passing payloads through.
        """
        try:
            descriptor = Vp8Descriptor.parse(payload)
        except ValueError:
            descriptor = None
        if descriptor is None or descriptor.picture_id is None:
            self._started = False
            self._identity = False
            return
        self._leave_identity()
        self._started = True
        picture = descriptor.picture_id
        self._highest_picture = picture
        self._floor = picture
        self._dropped = []
        last_picture = self._last_out_picture
        self._picture_offset = 0 if last_picture is None else last_picture + 1 - picture
        self._tl0_ext = WrapAroundExtender(_TL0PICIDX_BITS)
        if descriptor.tl0picidx is not None:
            tl0 = self._tl0_ext.update(descriptor.tl0picidx)
            last_tl0 = self._last_out_tl0
            self._tl0_offset = 0 if last_tl0 is None else last_tl0 + 1 - tl0
        self._identity = self._picture_offset == 0 and self._tl0_offset == 0
        self._identity_last = None

    def _leave_identity(self) -> None:
        """Record the newest passed-through picture as the last one sent, and number
        the following ones the general way."""
        if not self._identity:
            return
        self._identity = False
        payload = self._identity_last
        if payload is None:
            return
        picture = self._extend_picture(((payload[2] & 0x7F) << 8) | payload[3], 15)
        self._highest_picture = self._last_out_picture = self._floor = picture
        if payload[1] & 0x40:
            self._last_out_tl0 = self._tl0_ext.update(payload[4])

    def rewrite(self, payload: bytes) -> bytes:
        """The payload with its picture id and TL0PICIDX rewritten.

        Returned unchanged when the munger has not switched to a layer yet, or the
        payload is malformed or carries no picture id. Reordered packets of a picture
        get the same values as the rest of that picture.
        """
        if not self._started:
            return payload
        if len(payload) > 4 and payload[0] & 0x80 and payload[1] & 0x80 and payload[2] & 0x80:
            if self._identity:
                self._identity_last = payload
                return payload
            return self._rewrite_15_bit(payload)
        self._leave_identity()
        try:
            descriptor = Vp8Descriptor.parse(payload)
        except ValueError:
            return payload
        if descriptor.picture_id is None:
            return payload
        picture = self._extend_picture(descriptor.picture_id, descriptor.picture_id_length)
        dropped = self._dropped
        index = bisect_left(dropped, picture)
        out_picture = picture + self._picture_offset - index
        out_tl0 = None
        if descriptor.tl0picidx is not None:
            out_tl0 = self._tl0_ext.update(descriptor.tl0picidx) + self._tl0_offset
        if picture >= self._highest_picture:
            self._highest_picture = picture
            self._last_out_picture = out_picture
            if out_tl0 is not None:
                self._last_out_tl0 = out_tl0
            self._trim(picture)
        if descriptor.picture_id_length == VP8_PICTURE_ID_BITS:
            buffer = bytearray(payload)
            rewrite_vp8_descriptor(
                buffer,
                0,
                out_picture & _PICTURE_ID_MASK,
                None if out_tl0 is None else out_tl0 & _TL0PICIDX_MASK,
            )
            return bytes(buffer)
        widened = replace(
            descriptor,
            picture_id=out_picture & _PICTURE_ID_MASK,
            picture_id_length=VP8_PICTURE_ID_BITS,
            tl0picidx=None if out_tl0 is None else out_tl0 & _TL0PICIDX_MASK,
            size=0,
        )
        return bytes(widened) + payload[descriptor.size :]

    def _rewrite_15_bit(self, payload: bytes) -> bytes:
        """:meth:`rewrite` for the layout browsers send (extended control bits and a
        15-bit picture id at bytes 2-3, TL0PICIDX at byte 4 when the L bit is set),
        with byte operations instead of a parsed descriptor: it runs per packet and
        subscriber, and leaves the payload untouched when the numbering already matches.
        """
        picture_id = ((payload[2] & 0x7F) << 8) | payload[3]
        has_tl0 = payload[1] & 0x40
        highest = self._highest_picture
        delta = (picture_id - highest) & _PICTURE_ID_MASK  # _extend_picture, inlined
        if delta >= _PICTURE_ID_HALF:
            delta -= _PICTURE_ID_MASK + 1
        picture = highest + delta
        dropped = self._dropped
        index = bisect_left(dropped, picture) if dropped else 0
        out_picture = picture + self._picture_offset - index
        out_tl0 = None
        if has_tl0:
            out_tl0 = self._tl0_ext.update(payload[4]) + self._tl0_offset
        if picture >= highest:
            self._highest_picture = picture
            self._last_out_picture = out_picture
            if out_tl0 is not None:
                self._last_out_tl0 = out_tl0
            if picture - self._floor > PICTURE_REORDER_WINDOW + TRIM_STEP:
                self._trim(picture)
        out_id = out_picture & _PICTURE_ID_MASK
        if out_id == picture_id and (out_tl0 is None or out_tl0 & _TL0PICIDX_MASK == payload[4]):
            return payload
        if out_tl0 is None:
            head = bytes((payload[0], payload[1], 0x80 | (out_id >> 8), out_id & 0xFF))
        else:
            head = bytes(
                (
                    payload[0],
                    payload[1],
                    0x80 | (out_id >> 8),
                    out_id & 0xFF,
                    out_tl0 & _TL0PICIDX_MASK,
                )
            )
        # One copy of the payload, not a slice and then a concatenation.
        return b"".join((head, memoryview(payload)[len(head) :]))

    def drop(self, payload: bytes) -> None:
        """A packet of this layer is not forwarded (temporal layer filtering).

        The first dropped packet of a picture newer than every forwarded one removes
        that picture id from the outgoing numbering. Base-layer pictures are never
        dropped, so TL0PICIDX needs no adjustment.
        """
        if not self._started:
            return
        self._leave_identity()
        try:
            descriptor = Vp8Descriptor.parse(payload)
        except ValueError:
            return
        if descriptor.picture_id is None:
            return
        picture = self._extend_picture(descriptor.picture_id, descriptor.picture_id_length)
        if picture <= self._highest_picture:
            return
        self._highest_picture = picture
        self._dropped.append(picture)
        self._trim(picture)

    def _extend_picture(self, picture_id: int, width: int) -> int:
        """Place a 7- or 15-bit picture id nearest to the highest one seen.

        The width is taken from each packet, so a sender extending from 7 to 15 bits
        after 127 (RFC 7741 allows it) continues instead of jumping.
        """
        highest = self._highest_picture
        return highest + diff(picture_id, highest & ((1 << width) - 1), width)

    def _trim(self, newest: int) -> None:
        floor = newest - PICTURE_REORDER_WINDOW
        if floor <= self._floor:
            return
        self._floor = floor
        self._picture_offset -= expire_drops(self._dropped, floor)
