"""The Router of a room: which consumers each producer's streams feed, and the fan-out.

Named and shaped after mediasoup's ``Router`` (it owns the producer → consumers map
and fans a producer's packets out) and LiveKit's split of deciding what to forward
(``Forwarder``) from sending it (``DownTrack``): a packet goes down one way,

    transport → demultiplexer → Producer → ProducerRoute → Consumer → send batch

and no object below calls back up. A :class:`~sfu.producer.Producer` receives (receive
statistics, NACK generation, key-frame detection) and tells its listener, a
:class:`ProducerRoute`; a :class:`~sfu.consumer.Consumer` rewrites and sends what the
route hands it. Which stream a consumer forwards, which one it waits to switch to and
which layer it aims at (the layer-switch state) live here only, in one
:class:`Forwarding` per consumer, with per-stream lists of the consumers on it kept in
step for the fan-out.

Layer switches (mediasoup's SimulcastConsumer, LiveKit's Forwarder): the allocator sets
a consumer's target layer; the route makes it pending on that layer's stream and asks
the publisher for a key frame; at the stream's next key frame (audio: next packet) the
consumer switches, and only then leaves its current stream, so the subscriber's decoder
never sees a frame it cannot decode.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from sfu.allocator import LayerInfo, TrackAllocationInput
from sfu.svc_consumer import SvcConsumer
from sfu.vp9_layer_selector import ALL_LAYERS

if TYPE_CHECKING:
    from sfu.consumer import Consumer, SendRtp
    from sfu.producer import Producer, RtpStream


class Forwarding:
    """What one consumer forwards of its producer: the layer-switch state."""

    __slots__ = ("consumer", "pending", "stream", "target_layer")

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.stream: RtpStream | None = None
        """The stream forwarded now; None until a switch point (a key frame for video,
        any packet for audio) of :attr:`pending` arrives."""
        self.pending: RtpStream | None = None
        """The stream to switch to at its next switch point."""
        self.target_layer: int | None = None
        """The layer the allocator chose (None: not forwarding)."""

    @property
    def current_layer(self) -> int | None:
        if self.stream is None:
            return None
        consumer = self.consumer
        if isinstance(consumer, SvcConsumer) and consumer.producer.svc:
            return min(consumer.current_spatial_layer, spatial_layer_count(self.stream) - 1)
        return self.stream.layer


def spatial_layer_count(stream: RtpStream) -> int:
    """Spatial layers of a VP9 SVC stream: what its key pictures say, or what flows."""
    return max(len(stream.spatial_sizes), len(stream.spatial_bitrates), 1)


class ProducerRoute:
    """The consumers of one producer and which of its streams each is on; the
    producer's listener (:class:`sfu.producer.ProducerListener`)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.forwardings: dict[str, Forwarding] = {}
        """By consumer id."""
        self._on_stream: dict[RtpStream, list[Consumer]] = {}
        """Consumers forwarding each stream (the fan-out's hot-path index)."""
        self._pending_on: dict[RtpStream, list[Forwarding]] = {}
        """Consumers waiting for each stream's next switch point."""

    # --- the producer's listener -------------------------------------------------------

    def wants(self, stream: RtpStream) -> bool:
        """Whether any consumer forwards ``stream`` or waits for it."""
        return bool(self._on_stream.get(stream) or self._pending_on.get(stream))

    def on_rtp(
        self,
        stream: RtpStream,
        marker: int,
        seq: int,
        ts: int,
        payload: bytes,
        tid: int,
        switch_point: bool,
        now: float,
    ) -> None:
        """One packet of ``stream``: consumers pending on it switch at a switch point
        (the producer says whether this packet is one: a key frame's, or audio, and the
        newest of the stream), then every consumer on the stream forwards it."""
        if switch_point:
            pending = self._pending_on.get(stream)
            if pending:
                for forwarding in list(pending):
                    self._switch(forwarding, stream, seq, ts, payload, now)
        consumers = self._on_stream.get(stream)
        if consumers:
            for consumer in consumers:
                consumer.forward(marker, seq, ts, payload, tid)

    def on_padding(self, stream: RtpStream, seq: int) -> None:
        """A padding-only packet of ``stream``: consumers leave no gap for it."""
        consumers = self._on_stream.get(stream)
        if consumers:
            for consumer in consumers:
                consumer.skip(seq)

    def on_stream_added(self, stream: RtpStream, previous: RtpStream | None) -> None:
        """The producer bound a new SSRC; ``previous`` is the stream it replaces (the
        publisher restarted that layer). Consumers of the old stream, and active ones
        that had nothing to forward yet, start over on their target layer."""
        if previous is not None:
            self._on_stream.pop(previous, None)
            self._pending_on.pop(previous, None)
        for forwarding in self.forwardings.values():
            replaced = forwarding.stream is previous or forwarding.pending is previous
            if (previous is not None and replaced) or (
                forwarding.consumer.active and forwarding.stream is None
            ):
                if forwarding.stream is previous:
                    forwarding.stream = None
                if forwarding.pending is previous:
                    forwarding.pending = None
                self._restart(forwarding)

    # --- consumers ---------------------------------------------------------------------

    def add(self, consumer: Consumer) -> None:
        self.forwardings[consumer.id] = Forwarding(consumer)
        consumer.request_key_frame = partial(self.request_key_frame, consumer)

    def remove(self, consumer: Consumer) -> None:
        forwarding = self.forwardings.pop(consumer.id, None)
        if forwarding is not None:
            self._leave_stream(forwarding)
            self._unpend(forwarding)

    def activate(
        self,
        consumer: Consumer,
        payload_type: int,
        rtx_payload_type: int | None,
        send_rtp: SendRtp | None,
        red_payload_type: int | None = None,
    ) -> None:
        """The subscriber accepted ``consumer``'s m-line and its transport is up: it
        starts (video from the next key frame of its target layer)."""
        if consumer.activate(payload_type, rtx_payload_type, send_rtp, red_payload_type):
            self._restart(self.forwardings[consumer.id])

    def restart(self, consumer: Consumer) -> None:
        """Start over from the next switch point of the target layer."""
        self._restart(self.forwardings[consumer.id])

    def set_target_layer(self, consumer: Consumer, layer: int | None) -> None:
        """Forward ``layer`` from its next key frame on; None stops forwarding. For a
        VP9 SVC track the layer is a spatial layer of its one stream, which the
        consumer selects (going up asks for a key picture)."""
        forwarding = self.forwardings[consumer.id]
        if layer is None:
            forwarding.target_layer = None
            self._leave_stream(forwarding)
            self._unpend(forwarding)
            return
        forwarding.target_layer = layer
        stream = self.producer.stream_for_layer(layer)
        if stream is None:
            return
        svc = consumer if isinstance(consumer, SvcConsumer) and self.producer.svc else None
        if svc is not None:
            # The spatial layers of the one stream are the consumer's to select.
            svc.set_target_spatial_layer(layer)
        if stream is forwarding.stream:
            self._unpend(forwarding)
            current = forwarding.current_layer
            top = spatial_layer_count(stream) - 1
            if svc is not None and current is not None and min(layer, top) > current:
                # K-SVC: a higher spatial layer starts at a key picture.
                self.producer.request_key_frame(stream)
            return
        if stream is not forwarding.pending:
            self._unpend(forwarding)
            forwarding.pending = stream
            self._pending_on.setdefault(stream, []).append(forwarding)
        self.producer.request_key_frame(stream)

    def request_key_frame(self, consumer: Consumer) -> None:
        """The subscriber lost its picture (PLI, FIR): ask the publisher for a key frame
        of the stream the consumer forwards, or of the one it waits to start on, not of
        every layer."""
        forwarding = self.forwardings[consumer.id]
        stream = forwarding.stream if forwarding.stream is not None else forwarding.pending
        if stream is not None:
            self.producer.request_key_frame(stream)

    def allocation_input(
        self, consumer: Consumer, priority: int, now: float
    ) -> TrackAllocationInput:
        """What the allocator and dynacast need to know about ``consumer``."""
        forwarding = self.forwardings[consumer.id]
        only = self.producer.layers[0]
        if only is not None and isinstance(consumer, SvcConsumer) and self.producer.svc:
            layers = svc_layers(only, now)
        else:
            layers = [
                LayerInfo(
                    spatial=index,
                    bitrate=stream.available_bitrate(now) if stream is not None else 0,
                    width=stream.width if stream is not None else 0,
                    height=stream.height if stream is not None else 0,
                    temporal_bitrates=stream.temporal_bitrates if stream is not None else (),
                )
                for index, stream in enumerate(self.producer.layers)
            ]
        return TrackAllocationInput(
            consumer_id=consumer.id,
            layers=layers,
            priority=priority,
            paused=consumer.paused,
            max_spatial_layer=consumer.max_spatial_layer,
            max_width=consumer.max_width,
            max_height=consumer.max_height,
            current_layer=forwarding.current_layer,
            current_temporal_layer=consumer.current_temporal_layer,
        )

    # --- internals ---------------------------------------------------------------------

    def _restart(self, forwarding: Forwarding) -> None:
        self._leave_stream(forwarding)
        target = forwarding.target_layer
        if target is None:
            # The top layer until the allocator has measured the layers.
            target = ALL_LAYERS if self.producer.svc else len(self.producer.rids)
        self.set_target_layer(forwarding.consumer, target)

    def _switch(
        self,
        forwarding: Forwarding,
        stream: RtpStream,
        seq: int,
        ts: int,
        payload: bytes,
        now: float,
    ) -> None:
        consumer = forwarding.consumer
        switched = forwarding.stream is not None
        self._unpend(forwarding)
        self._leave_stream(forwarding)
        forwarding.stream = stream
        self._on_stream.setdefault(stream, []).append(consumer)
        consumer.start_layer(seq, ts, payload, now, switched)

    def _leave_stream(self, forwarding: Forwarding) -> None:
        stream = forwarding.stream
        if stream is not None:
            consumers = self._on_stream.get(stream)
            if consumers is not None and forwarding.consumer in consumers:
                consumers.remove(forwarding.consumer)
            forwarding.stream = None
            forwarding.consumer.stop()

    def _unpend(self, forwarding: Forwarding) -> None:
        stream = forwarding.pending
        if stream is not None:
            pending = self._pending_on.get(stream)
            if pending is not None and forwarding in pending:
                pending.remove(forwarding)
            forwarding.pending = None


def svc_layers(stream: RtpStream, now: float) -> list[LayerInfo]:
    """The spatial layers of a VP9 SVC stream as the allocator's layers: each costs
    its own bitrate and that of the layers below (it refers to them), the lowest one
    has the stream's temporal layers."""
    flowing = stream.available_bitrate(now) > 0
    bitrates = stream.spatial_bitrates or (stream.bitrate,)
    sizes = stream.spatial_sizes
    return [
        LayerInfo(
            spatial=index,
            bitrate=bitrates[index] if flowing and index < len(bitrates) else 0,
            width=sizes[index][0] if index < len(sizes) else 0,
            height=sizes[index][1] if index < len(sizes) else 0,
            temporal_bitrates=stream.temporal_bitrates if index == 0 else (),
        )
        for index in range(spatial_layer_count(stream))
    ]


class Router:
    """The producers of one room and the routes to their consumers."""

    def __init__(self) -> None:
        self._routes: dict[str, ProducerRoute] = {}
        """By producer id."""

    def add_producer(self, producer: Producer) -> ProducerRoute:
        route = self._routes[producer.id] = ProducerRoute(producer)
        producer.listener = route
        return route

    def remove_producer(self, producer: Producer) -> None:
        if self._routes.pop(producer.id, None) is not None:
            producer.stop_listening()

    def route(self, producer: Producer) -> ProducerRoute:
        return self._routes[producer.id]

    def add_consumer(self, consumer: Consumer) -> None:
        self._routes[consumer.producer.id].add(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        route = self._routes.get(consumer.producer.id)
        if route is not None:
            route.remove(consumer)

    def forwarding(self, consumer: Consumer) -> Forwarding | None:
        route = self._routes.get(consumer.producer.id)
        return None if route is None else route.forwardings.get(consumer.id)

    def consumers(self, producer: Producer) -> list[Consumer]:
        route = self._routes.get(producer.id)
        return [] if route is None else [f.consumer for f in route.forwardings.values()]

    def activate(
        self,
        consumer: Consumer,
        payload_type: int,
        rtx_payload_type: int | None = None,
        send_rtp: SendRtp | None = None,
        red_payload_type: int | None = None,
    ) -> None:
        self._routes[consumer.producer.id].activate(
            consumer, payload_type, rtx_payload_type, send_rtp, red_payload_type
        )

    def set_target_layer(self, consumer: Consumer, layer: int | None) -> None:
        self._routes[consumer.producer.id].set_target_layer(consumer, layer)

    def request_key_frame(self, consumer: Consumer) -> None:
        self._routes[consumer.producer.id].request_key_frame(consumer)

    def allocation_input(
        self, consumer: Consumer, priority: int, now: float
    ) -> TrackAllocationInput:
        return self._routes[consumer.producer.id].allocation_input(consumer, priority, now)
