"""Vp9Munger: VP9 picture ids and TL0PICIDX continuous across stream switches.

A VP9 receiver finds references by picture id and TL0PICIDX (RFC 9628 section 4.2):
in flexible mode a P_DIFF is a distance in picture ids, in non-flexible mode the
position of a picture in its group of frames is its picture-id distance from the
group's start. So within one source stream the SFU keeps the publisher's numbering
as it is, gaps included: pictures of temporal layers above a subscriber's limit leave
gaps the receiver reads as "not received, not needed" (LiveKit and mediasoup forward
VP9 the same way), while closing them would break every reference across them. Only a
switch to another stream (a VP9 simulcast layer, or the same stream after a pause)
changes the numbering: its first picture, a key picture, continues from the last one
the subscriber saw (LiveKit ``codecmunger``, mediasoup ``Codecs::VP9::EncodingContext``),
and the offset then stays until the next switch.
"""

from __future__ import annotations

from sfu.rtp.seqnum import diff
from sfu.rtp.vp9 import Vp9Descriptor, rewrite_vp9_picture

_PICTURE_ID_BITS = 15
_TL0PICIDX_BITS = 8


class Vp9Munger:
    """Rewrites picture ids and TL0PICIDX of one consumer's forwarded VP9 stream.

    Before the first :meth:`switch`, and while the offsets are 0 (the first stream a
    consumer forwards), payloads pass unchanged.
    """

    __slots__ = (
        "_highest_picture",
        "_highest_tl0",
        "_last_out_picture",
        "_last_out_tl0",
        "_picture_offset",
        "_tl0_offset",
    )

    def __init__(self) -> None:
        self._picture_offset = 0
        self._tl0_offset = 0
        self._highest_picture: int | None = None
        """Highest extended picture id of the current stream forwarded so far."""
        self._highest_tl0: int | None = None
        self._last_out_picture: int | None = None
        self._last_out_tl0: int | None = None

    def switch(self, payload: bytes) -> None:
        """The consumer starts a stream at this packet (a key picture's first): its
        picture gets the picture id after the last one sent, its TL0PICIDX the next
        TL0PICIDX. Without a picture id (or malformed) the stream passes unchanged."""
        self._picture_offset = self._tl0_offset = 0
        self._highest_picture = self._highest_tl0 = None
        try:
            descriptor = Vp9Descriptor.parse(payload)
        except ValueError:
            return
        if descriptor.picture_id is None:
            return
        picture = descriptor.picture_id
        self._highest_picture = picture
        if self._last_out_picture is not None:
            self._picture_offset = self._last_out_picture + 1 - picture
        if descriptor.tl0picidx is not None:
            self._highest_tl0 = descriptor.tl0picidx
            if self._last_out_tl0 is not None:
                self._tl0_offset = self._last_out_tl0 + 1 - descriptor.tl0picidx

    def rewrite(self, payload: bytes) -> bytes:
        """The forwarded ``payload`` with the switch's offsets applied (a layer frame
        the caller decided to send; its descriptor was validated by the producer)."""
        highest = self._highest_picture
        if highest is None or not payload[0] & 0x80 or len(payload) < 3:
            return payload
        if payload[1] & 0x80:
            picture_id = ((payload[1] & 0x7F) << 8) | payload[2]
            picture = highest + diff(picture_id, highest & 0x7FFF, _PICTURE_ID_BITS)
        else:
            picture = highest + diff(payload[1], highest & 0x7F, 7)
        tl0 = None
        first = payload[0]
        if first & 0x20 and not first & 0x10 and self._highest_tl0 is not None:
            index = 4 if payload[1] & 0x80 else 3
            if len(payload) > index:
                top = self._highest_tl0
                tl0 = top + diff(payload[index], top & 0xFF, _TL0PICIDX_BITS)
                if tl0 >= top:
                    self._highest_tl0 = tl0
                    self._last_out_tl0 = tl0 + self._tl0_offset
        if picture > highest:
            self._highest_picture = picture
        if picture >= highest or self._last_out_picture is None:
            self._last_out_picture = picture + self._picture_offset
        if not self._picture_offset and not self._tl0_offset:
            return payload
        return rewrite_vp9_picture(
            payload,
            picture + self._picture_offset,
            None if tl0 is None else tl0 + self._tl0_offset,
        )
