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

from sfu.rtp.vp9 import rewrite_vp9_picture, vp9_picture_id, vp9_tl0picidx

_PICTURE_ID_MASK = 0x7FFF
_TL0PICIDX_MASK = 0xFF


class Vp9Munger:
    """Rewrites picture ids and TL0PICIDX of one consumer's forwarded VP9 stream.

    All arithmetic is modulo the fields' widths (15 bits, of which a 7-bit picture id
    takes the low 7; 8 bits), so nothing is unwrapped per packet: the munger keeps the
    last payload it let through, whose values are the last the subscriber saw, and
    reads them at the next switch. While the offsets are 0 (the first stream a
    consumer forwards, or a stream that continues the numbering) payloads pass
    unchanged.
    """

    __slots__ = ("_last", "_picture_offset", "_tl0_offset")

    def __init__(self) -> None:
        self._last: bytes | None = None
        """The last payload forwarded, as sent."""
        self._picture_offset = 0
        self._tl0_offset = 0

    def switch(self, payload: bytes) -> None:
        """The consumer starts a stream at this packet (a key picture's first): its
        picture gets the picture id after the last one sent, its TL0PICIDX the one
        after the last sent. Fields either payload lacks keep their values."""
        self._picture_offset = self._tl0_offset = 0
        last = self._last
        if last is None:
            return
        sent, first = vp9_picture_id(last), vp9_picture_id(payload)
        if sent >= 0 and first >= 0:
            self._picture_offset = (sent + 1 - first) & _PICTURE_ID_MASK
        sent, first = vp9_tl0picidx(last), vp9_tl0picidx(payload)
        if sent >= 0 and first >= 0:
            self._tl0_offset = (sent + 1 - first) & _TL0PICIDX_MASK

    def rewrite(self, payload: bytes) -> bytes:
        """The forwarded ``payload`` with the switch's offsets applied."""
        if self._picture_offset or self._tl0_offset:
            picture = vp9_picture_id(payload)
            if picture >= 0:
                tl0 = vp9_tl0picidx(payload)
                payload = rewrite_vp9_picture(
                    payload,
                    picture + self._picture_offset,
                    tl0 + self._tl0_offset if tl0 >= 0 else None,
                )
        self._last = payload
        return payload
