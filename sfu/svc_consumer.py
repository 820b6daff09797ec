"""SvcConsumer: a consumer of a VP9 track, which filters the layers of its stream.

Named after mediasoup's ``SvcConsumer``. The route still decides which stream it
forwards (the only one of an SVC track, or a VP9 simulcast layer) and where it starts
(a key picture); within that stream a :class:`~sfu.vp9_layer_selector.Vp9LayerSelector`
keeps the spatial and temporal layers up to the allocator's targets, and a
:class:`~sfu.vp9_munger.Vp9Munger` keeps picture ids and TL0PICIDX continuous across
stream switches. Dropped packets leave no sequence-number gap (:class:`RtpMunger`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sfu.consumer import Consumer, SendRtp
from sfu.vp9_layer_selector import ALL_LAYERS, Vp9LayerSelector
from sfu.vp9_munger import Vp9Munger

if TYPE_CHECKING:
    from sfu.producer import Producer


class SvcConsumer(Consumer):
    """Forwards one VP9 producer to one subscribe transport."""

    def __init__(
        self, consumer_id: str, producer: Producer, subscriber_id: str, send_rtp: SendRtp
    ) -> None:
        super().__init__(consumer_id, producer, subscriber_id, send_rtp)
        self._selector = Vp9LayerSelector()
        self._vp9 = Vp9Munger()
        self.packets_dropped_spatial = 0

    @property
    def current_spatial_layer(self) -> int:
        """The highest spatial layer forwarded now (:data:`ALL_LAYERS`: every one)."""
        return self._selector.spatial

    def set_target_spatial_layer(self, layer: int) -> None:
        """Forward spatial layers up to ``layer`` from the next point that allows it."""
        self._selector.spatial_target = layer

    @property
    def current_temporal_layer(self) -> int | None:
        temporal = self._selector.temporal
        return None if temporal == ALL_LAYERS else temporal

    def set_target_temporal_layer(self, layer: int | None) -> None:
        self._selector.temporal_target = ALL_LAYERS if layer is None else layer

    def start_layer(self, seq: int, ts: int, payload: bytes, now: float, switched: bool) -> None:
        super().start_layer(seq, ts, payload, now, switched)
        self._vp9.switch(payload)
        self._selector.start()

    def forward(self, marker_bit: int, seq: int, ts: int, payload: bytes, tid: int) -> None:
        """Forward one packet of the current stream if its layer frame is wanted; the
        selector sets the marker on the last packet of the highest forwarded layer."""
        if not self.active or self.paused:
            return
        selector = self._selector
        marker = selector.select(self.producer.vp9_layer_word, marker_bit)
        if marker < 0:
            self._munger.drop(seq)
            if tid > selector.temporal:
                self.packets_dropped_temporal += 1
            else:
                self.packets_dropped_spatial += 1
            return
        translated = self._munger.translate(seq, ts)
        if translated is None:
            return
        self._send_forwarded(marker, translated[0], translated[1], self._vp9.rewrite(payload))
