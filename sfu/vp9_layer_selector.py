"""Vp9LayerSelector: which spatial and temporal layers of one VP9 SVC stream a
consumer forwards, and where it may change them (LiveKit ``videolayerselector/vp9.go``,
mediasoup ``SvcConsumer`` with ``Codecs::VP9``).

A VP9 SVC picture (``scalabilityMode`` ``L3T3_KEY``, ``L1T3``, ...) is a run of layer
frames, one per spatial layer, lowest first, all with the picture's temporal layer
(RFC 9628 section 4.2). Per packet the selector reads the descriptor's layer word
(:func:`sfu.rtp.vp9.vp9_layers`) and:

- drops layer frames above the current spatial or temporal layer;
- moves down at the start of a picture (its lowest layer frame's first packet): lower
  layers never refer to higher ones;
- moves the spatial layer up at a layer frame of a higher spatial layer that refers to
  no earlier picture (P clear; in K-SVC, ``L3T3_KEY``, only the layer frames of a key
  picture, so the route asks the publisher for one when it raises the target);
- moves the temporal layer up at the start of a picture of a higher temporal layer
  marked as a switching-up point (U), or at once at a key picture;
- puts the RTP marker on the last packet of the highest forwarded layer frame of each
  picture, where the subscriber's depacketizer ends the picture.

Packets without layer indices (a VP9 stream without scalability) pass unfiltered.
"""

from __future__ import annotations

from sfu.rtp.vp9 import (
    LAYER_END,
    LAYER_INDICES,
    LAYER_INTER_PICTURE,
    LAYER_SID,
    LAYER_SID_SHIFT,
    LAYER_START,
    LAYER_SWITCHING_UP,
    LAYER_TID,
)

ALL_LAYERS = 7
"""The limit that forwards every layer (SID and TID have three bits)."""
MARKER = 0x80


class Vp9LayerSelector:
    """The current and target layers of one consumer of a VP9 stream."""

    __slots__ = ("spatial", "spatial_target", "temporal", "temporal_target")

    def __init__(self) -> None:
        self.spatial = ALL_LAYERS
        """The highest spatial layer forwarded now."""
        self.spatial_target = ALL_LAYERS
        self.temporal = ALL_LAYERS
        """The highest temporal layer forwarded now."""
        self.temporal_target = ALL_LAYERS

    def start(self) -> None:
        """The consumer starts on the stream at a key picture: every layer up to the
        targets can be decoded from here."""
        self.spatial = self.spatial_target
        self.temporal = self.temporal_target

    def select(self, word: int, marker: int) -> int:
        """The RTP marker (0x80 or 0) to forward the packet with, -1 to drop it;
        ``word`` is its :func:`~sfu.rtp.vp9.vp9_layers`, ``marker`` the publisher's."""
        if not word & LAYER_INDICES:
            return -1 if word < 0 else marker
        sid = (word & LAYER_SID) >> LAYER_SID_SHIFT
        tid = word & LAYER_TID
        if word & LAYER_START:
            spatial = self.spatial
            if not sid:
                temporal = self.temporal
                target = self.temporal_target
                if target != temporal:
                    if target < temporal or not word & LAYER_INTER_PICTURE:
                        self.temporal = target
                    elif temporal < tid <= target and word & LAYER_SWITCHING_UP:
                        self.temporal = tid
                if self.spatial_target < spatial:
                    self.spatial = spatial = self.spatial_target
            if spatial < sid <= self.spatial_target and not word & LAYER_INTER_PICTURE:
                self.spatial = spatial = sid
        if sid > self.spatial or tid > self.temporal:
            return -1
        if word & LAYER_END and sid == self.spatial:
            return MARKER
        return marker
