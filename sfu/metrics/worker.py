"""Media-worker metrics, read at scrape time from the counters the media objects keep.

The packet path never calls prometheus_client: ``Counter.inc`` takes a lock, which at
tens of thousands of packets per second costs more than the forwarding itself. The
media objects already count in plain ints (``Consumer.packets_sent``,
``ReceiveStatistics.packets_received``, ``KeyFrameRequestManager.requests_sent`` …);
:class:`WorkerMetrics` walks the worker's rooms when Prometheus scrapes and sums them.

So that a ``_total`` counter never goes down when a participant leaves, every object
seen by a walk is remembered (a strong reference) until the next walk; an object no
longer reachable from the worker then has its final counts folded into a per-worker
accumulator and is released. Objects that come and go between two walks (less than
:data:`SAMPLE_INTERVAL`) are not counted.

Distributions (RTT, jitter, subscriber loss and bandwidth, event-loop lag, join
latency) are histograms fed by a sampler task once per :data:`SAMPLE_INTERVAL`: one
observation per subscriber (RTT, bandwidth), per published stream (jitter) or per
consumer (loss) and tick, so their quantiles are over participant-seconds. They are
plain-int histograms too, exported by the same collector.

The layer a video consumer forwards comes from its room's router
(:class:`sfu.router.Forwarding`). ``Worker.recordings`` (:mod:`sfu.recording`) is
read with a default: a stand-in worker may have none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sfu.connection_quality import QUALITY_LABELS
from sfu.ice_tcp import CLOSE_REASONS
from sfu.recording.manager import FINISH_REASONS
from sfu.udp_mux import DROP_REASONS

if TYPE_CHECKING:
    from sfu.consumer import Consumer
    from sfu.participant import Participant
    from sfu.producer import Producer, RtpStream
    from sfu.router import Forwarding
    from sfu.worker import Worker

SAMPLE_INTERVAL = 1.0
"""Seconds between two samples of the distributions (and walks for departed objects)."""
JOIN_WINDOW = 5.0
"""A consumer created this long after its subscriber joined still counts for the join
latency (tracks published right after the join); later ones are not join latency."""
DEFAULT_CAPACITY = 500
"""Participants per worker when the settings have no ``capacity``."""
KINDS = ("audio", "video")

CounterKey = tuple[str, str]
"""(counter name, value of its one label, or "" for none)."""

# name: (help, label name or "")
COUNTERS: dict[str, tuple[str, str]] = {
    "sfu_rtp_received_packets": ("RTP packets received from publishers", "kind"),
    "sfu_rtp_received_bytes": ("RTP bytes (header and payload) received from publishers", "kind"),
    "sfu_rtp_lost_packets": (
        "RTP packets from publishers that never arrived (RFC 3550 cumulative loss)",
        "kind",
    ),
    "sfu_rtp_sent_packets": ("RTP packets forwarded to subscribers", "kind"),
    "sfu_rtp_sent_bytes": ("RTP payload bytes forwarded to subscribers", "kind"),
    "sfu_rtp_retransmitted_packets": (
        "RTP packets resent to subscribers from the NACK cache",
        "kind",
    ),
    "sfu_rtp_dropped_packets": (
        "Incoming packets dropped, by reason (srtp: failed authentication, "
        "malformed_rtp, malformed_rtcp, unroutable: no stream for the SSRC, "
        "padding: bandwidth probes, i.e. padding-only packets and RTX copies of "
        "packets already received, malformed_red: RED payloads, RFC 2198, a consumer "
        "could not unwrap, malformed_dependency_descriptor: an AV1 packet whose "
        "dependency descriptor is malformed or refers to no structure received)",
        "reason",
    ),
    "sfu_rtcp_feedback_received": ("RTCP feedback from subscribers, by type", "type"),
    "sfu_rtcp_dropped_packets": (
        "RTCP compounds dropped unhandled, by reason (budget: the participant's RTCP had "
        "used its rtcp_budget of event-loop time this second)",
        "reason",
    ),
    "sfu_rtp_retransmissions_over_budget": (
        "NACKed packets not resent because the consumer's retransmission rate was used up",
        "kind",
    ),
    "sfu_rtcp_feedback_sent": ("RTCP feedback sent to publishers, by type", "type"),
    "sfu_layer_switches": ("Simulcast layer switches of consumers", ""),
    "sfu_rtp_red_recovered_packets": (
        "Packets a RED publisher's link lost (RFC 2198) that subscribers without RED got "
        "from the next packet's redundant block",
        "",
    ),
    "sfu_transport_errors": (
        "Transport errors, by type (send: sendto/protect failed, handler: exception "
        "in a packet handler)",
        "type",
    ),
    "sfu_ice_dropped_packets": (
        "Packets the media ports dropped, by reason: datagrams the single UDP port "
        "routed to no ICE connection (unknown_address: not STUN, from an address no "
        "connection owns; unknown_ufrag: a STUN request naming no connection; "
        "unknown_transaction: a STUN response to no request; malformed_stun), and "
        "tcp_queue_full: an ICE-TCP packet to a stream whose send queue is full",
        "reason",
    ),
    "sfu_ice_tcp_closed_connections": (
        "ICE-TCP streams the worker closed, by reason (bad_frame_length, unknown_ufrag, "
        "malformed_stun, timeout: first or incomplete frame too slow, or idle; "
        "per_ip_limit, connection_limit)",
        "reason",
    ),
    "sfu_periodic_work_failures": (
        "Exceptions in the worker's periodic work (a participant's raises it out of the "
        "room: see the log)",
        "",
    ),
    "sfu_recordings_finished": (
        "Recorded files finished, by reason (stopped, track_ended, room_closed, disk_full, "
        "error, shutdown)",
        "reason",
    ),
    "sfu_recorded_bytes": ("Bytes of finished recorded files", ""),
    "sfu_recording_frames_lost": (
        "Frames not written to recordings (packets lost, waiting for a key frame, disk too slow)",
        "",
    ),
}
COUNTER_LABELS: dict[str, tuple[str, ...]] = {
    "sfu_rtp_dropped_packets": (
        "srtp",
        "malformed_rtp",
        "malformed_rtcp",
        "unroutable",
        "padding",
        "malformed_red",
        "malformed_dependency_descriptor",
    ),
    "sfu_rtcp_feedback_received": ("nack", "pli", "fir"),
    "sfu_rtcp_dropped_packets": ("budget",),
    "sfu_rtcp_feedback_sent": ("nack", "pli"),
    "sfu_layer_switches": ("",),
    "sfu_rtp_red_recovered_packets": ("",),
    "sfu_transport_errors": ("send", "handler"),
    "sfu_ice_dropped_packets": DROP_REASONS,
    "sfu_ice_tcp_closed_connections": CLOSE_REASONS,
    "sfu_periodic_work_failures": ("",),
    "sfu_recordings_finished": FINISH_REASONS,
    "sfu_recorded_bytes": ("",),
    "sfu_recording_frames_lost": ("",),
}
"""Label values exported even at zero, so that every series exists from the start."""

RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BANDWIDTH_BUCKETS = tuple(
    bits / 8 for bits in (1e5, 2.5e5, 5e5, 1e6, 1.5e6, 2.5e6, 4e6, 6e6, 1e7, 2e7)
)
"""100 kbit/s to 20 Mbit/s, in bytes per second (Prometheus base unit)."""
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
JOIN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Histogram:
    """A Prometheus histogram in plain ints, observed from the event loop only."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds that bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        result = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            result.append((floatToGoString(bound), float(cumulative)))
        return result


HISTOGRAMS: dict[str, tuple[str, tuple[float, ...], str]] = {
    "sfu_rtt_seconds": (
        "Round-trip time to subscribers from their receiver reports, one sample per "
        "subscriber and second",
        RTT_BUCKETS,
        "",
    ),
    "sfu_jitter_seconds": (
        "Interarrival jitter of published streams (RFC 3550), one sample per stream and second",
        JITTER_BUCKETS,
        "kind",
    ),
    "sfu_subscriber_loss_ratio": (
        "Fraction lost that subscribers report per consumer, one sample per consumer and second",
        LOSS_BUCKETS,
        "kind",
    ),
    "sfu_subscriber_estimated_bandwidth_bytes_per_second": (
        "Estimated downlink bandwidth of subscribers (bytes/s), one sample per subscriber "
        "and second",
        BANDWIDTH_BUCKETS,
        "",
    ),
    "sfu_event_loop_lag_seconds": (
        "How late the worker's event loop woke the sampler (a busy loop delays packets)",
        LOOP_LAG_BUCKETS,
        "",
    ),
    "sfu_join_latency_seconds": (
        "Join request to the first media packet forwarded to the new subscriber, for "
        "participants that joined a room with media",
        JOIN_BUCKETS,
        "",
    ),
}


def _histogram_labels(label: str) -> tuple[str, ...]:
    return KINDS if label == "kind" else ("",)


def _stream_counts(kind: str, stream: RtpStream) -> Iterator[tuple[CounterKey, int]]:
    statistics = stream.statistics
    yield ("sfu_rtp_received_packets", kind), statistics.packets_received
    yield ("sfu_rtp_received_bytes", kind), statistics.bytes_received
    yield ("sfu_rtp_lost_packets", kind), max(0, statistics.packets_lost)
    yield ("sfu_rtcp_feedback_sent", "pli"), stream.key_frames.requests_sent


def _producer_counts(producer: Producer) -> Iterator[tuple[CounterKey, int]]:
    yield ("sfu_rtp_dropped_packets", "malformed_rtp"), producer.packets_dropped
    yield ("sfu_rtp_dropped_packets", "padding"), producer.padding_dropped
    yield (
        ("sfu_rtp_dropped_packets", "malformed_dependency_descriptor"),
        producer.descriptors_dropped,
    )
    yield ("sfu_rtcp_feedback_sent", "nack"), producer.nacks_sent


def _consumer_counts(consumer: Consumer) -> Iterator[tuple[CounterKey, int]]:
    kind = consumer.kind
    yield ("sfu_rtp_sent_packets", kind), consumer.packets_sent
    yield ("sfu_rtp_sent_bytes", kind), consumer.octets_sent
    yield ("sfu_rtp_retransmitted_packets", kind), consumer.retransmissions
    yield ("sfu_rtp_retransmissions_over_budget", kind), consumer.retransmissions_over_budget
    yield ("sfu_rtcp_feedback_received", "nack"), consumer.nacks_received
    yield ("sfu_rtcp_feedback_received", "pli"), consumer.plis_received
    yield ("sfu_rtcp_feedback_received", "fir"), consumer.firs_received
    yield ("sfu_layer_switches", ""), consumer.layer_switches
    yield ("sfu_rtp_dropped_packets", "malformed_red"), consumer.red_malformed
    yield ("sfu_rtp_red_recovered_packets", ""), consumer.red_recovered


def _participant_counts(participant: Participant) -> Iterator[tuple[CounterKey, int]]:
    yield ("sfu_rtp_dropped_packets", "unroutable"), participant.packets_unroutable
    yield ("sfu_rtp_dropped_packets", "malformed_rtcp"), participant.rtcp_errors
    yield ("sfu_rtcp_dropped_packets", "budget"), participant.rtcp_budget.dropped
    for transport in (participant.publish, participant.subscribe):
        if transport is not None:
            yield ("sfu_rtp_dropped_packets", "srtp"), transport.session.srtp_errors
            yield ("sfu_transport_errors", "send"), transport.session.send_errors
            yield ("sfu_transport_errors", "handler"), transport.handler_errors


def _worker_counts(worker: Worker) -> Iterator[tuple[CounterKey, int]]:
    yield ("sfu_periodic_work_failures", ""), worker.tick_failures


CountFunction = Callable[[Any], Iterator[tuple[CounterKey, int]]]


class WorkerMetrics:
    """The metrics of one :class:`~sfu.worker.Worker`; see the module docstring.

    :meth:`start` adds the worker to this process's ``/metrics`` (the default
    registry) and starts the sampler; :meth:`stop` undoes both. Several workers in one
    process are summed.
    """

    def __init__(self, worker: Worker, sample_interval: float = SAMPLE_INTERVAL) -> None:
        self.worker = worker
        self.sample_interval = sample_interval
        self.histograms: dict[CounterKey, Histogram] = {
            (name, value): Histogram(bounds)
            for name, (_, bounds, label) in HISTOGRAMS.items()
            for value in _histogram_labels(label)
        }
        self._folded: Counter[CounterKey] = Counter()
        """Final counts of objects that left the worker."""
        self._known: dict[int, tuple[Any, CountFunction]] = {}
        """Objects seen by the last walk, by id (kept alive until folded)."""
        self._reported: dict[CounterKey, int] = {}
        """Last exported value per counter: a counter never goes down (see totals)."""
        self._join_pending: dict[int, Participant] = {}
        self._join_done: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        _collector().workers.add(self)
        self._task = asyncio.get_running_loop().create_task(self._sample_loop())

    async def stop(self) -> None:
        _collector().workers.discard(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- walking the worker ----------------------------------------------------------

    def _walk(self) -> dict[int, tuple[Any, CountFunction]]:
        live: dict[int, tuple[Any, CountFunction]] = {
            id(self.worker): (self.worker, _worker_counts)
        }
        for participant in self.worker.participants.values():
            live[id(participant)] = (participant, _participant_counts)
            for producer in participant.producers.values():
                live[id(producer)] = (producer, _producer_counts)
                kind = producer.kind
                for stream in producer.streams.values():
                    live[id(stream)] = (stream, lambda s, k=kind: _stream_counts(k, s))
            for consumer in participant.consumers():
                live[id(consumer)] = (consumer, _consumer_counts)
        return live

    def _reconcile(self) -> dict[int, tuple[Any, CountFunction]]:
        """Fold the final counts of departed objects; returns the live ones."""
        live = self._walk()
        for key, (obj, counts) in self._known.items():
            if key not in live:
                self._folded.update(dict(counts(obj)))
        self._known = live
        return live

    def totals(self) -> dict[CounterKey, int]:
        """Every counter: departed objects' final counts plus the live objects' counts.

        A live count can go down (RFC 3550 loss shrinks when duplicates arrive), so the
        exported value is the highest ever reported.
        """
        live = self._reconcile()
        current: Counter[CounterKey] = Counter(self._folded)
        for obj, counts in live.values():
            for key, value in counts(obj):
                current[key] += value
        recordings = getattr(self.worker, "recordings", None)
        if recordings is not None:
            for reason, count in recordings.finished_total.items():
                current[("sfu_recordings_finished", reason)] += count
            current[("sfu_recorded_bytes", "")] += recordings.bytes_total
            current[("sfu_recording_frames_lost", "")] += recordings.frames_lost_total
        current.update(self.worker.ice_drops())
        for name, values in COUNTER_LABELS.items():
            for value in values:
                current[(name, value)] += 0
        for kind in KINDS:
            for name in COUNTERS:
                if COUNTERS[name][1] == "kind":
                    current[(name, kind)] += 0
        for key, value in current.items():
            self._reported[key] = max(self._reported.get(key, 0), value)
        return dict(self._reported)

    def gauges(self) -> dict[CounterKey, float]:
        participants = list(self.worker.participants.values())
        result: Counter[CounterKey] = Counter()
        result[("sfu_rooms", "")] = len(self.worker.rooms)
        result[("sfu_rtcp_slowest_compound_seconds", "")] = max(
            (p.rtcp_budget.slowest for p in participants), default=0.0
        )
        result[("sfu_participants", "")] = len(participants)
        recordings = getattr(self.worker, "recordings", None)
        result[("sfu_recordings", "")] = recordings.active if recordings is not None else 0
        result[("sfu_publishers", "")] = sum(1 for p in participants if p.producers)
        for kind in KINDS:
            result[("sfu_producers", kind)] += 0
            result[("sfu_consumers", kind)] += 0
        for layer in ("single", "paused"):
            result[("sfu_video_consumers", layer)] += 0
        for room in self.worker.rooms.values():
            for quality, count in room.quality.counts().items():
                result[("sfu_participants_by_connection_quality", quality)] += count
        for quality in QUALITY_LABELS:
            result[("sfu_participants_by_connection_quality", quality)] += 0
        for participant in participants:
            for producer in participant.producers.values():
                result[("sfu_producers", producer.kind)] += 1
            for consumer in participant.consumers():
                result[("sfu_consumers", consumer.kind)] += 1
                if consumer.kind == "video":
                    layer = _layer(consumer, participant.room.router.forwarding(consumer))
                    result[("sfu_video_consumers", layer)] += 1
        capacity = getattr(self.worker.settings, "capacity", DEFAULT_CAPACITY)
        result[("sfu_worker_capacity_participants", "")] = capacity
        result[("sfu_worker_load_ratio", "")] = len(participants) / capacity if capacity else 0
        return dict(result)

    # --- sampling --------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.sample_interval
            await asyncio.sleep(self.sample_interval)
            self.histograms[("sfu_event_loop_lag_seconds", "")].observe(max(0.0, loop.time() - due))
            self.sample(time.monotonic())

    def sample(self, now: float) -> None:
        """One observation per live object into the distributions (see module docstring)."""
        self._reconcile()
        histograms = self.histograms
        for participant in self.worker.participants.values():
            for producer in participant.producers.values():
                for stream in producer.streams.values():
                    statistics = stream.statistics
                    if statistics.packets_received:
                        histograms[("sfu_jitter_seconds", producer.kind)].observe(
                            statistics.jitter / statistics.clock_rate
                        )
            consumers = participant.consumers()
            rtts = [c.rtt for c in consumers if c.rtt is not None]
            if rtts:
                histograms[("sfu_rtt_seconds", "")].observe(min(rtts))
            for consumer in consumers:
                if consumer.active and consumer.packets_sent:
                    histograms[("sfu_subscriber_loss_ratio", consumer.kind)].observe(
                        consumer.fraction_lost / 256
                    )
            bitrate = participant.estimated_bitrate
            if bitrate:
                histograms[("sfu_subscriber_estimated_bandwidth_bytes_per_second", "")].observe(
                    bitrate / 8
                )
            self._sample_join(participant, consumers, now)
        gone = self._join_done - {id(p) for p in self.worker.participants.values()}
        self._join_done -= gone

    def _sample_join(self, participant: Participant, consumers: list[Consumer], now: float) -> None:
        key = id(participant)
        if key in self._join_done:
            return
        joined_at = participant.joined_at
        window_end = joined_at + JOIN_WINDOW
        first = [
            c.first_forwarded_at
            for c in consumers
            if c.first_forwarded_at is not None and c.created_at <= window_end
        ]
        if first:
            self.histograms[("sfu_join_latency_seconds", "")].observe(min(first) - joined_at)
            self._join_done.add(key)
        elif now > window_end and not any(c.created_at <= window_end for c in consumers):
            self._join_done.add(key)  # joined an empty room: no join latency to measure


def _layer(consumer: Consumer, forwarding: Forwarding | None) -> str:
    """The label of the layer a video consumer forwards (bounded: single, paused, 0-2,
    or none while it waits for a key frame)."""
    if consumer.paused:
        return "paused"
    if not consumer.producer.simulcast:
        return "single"
    layer = None if forwarding is None else forwarding.current_layer
    return "none" if layer is None else str(layer)


GAUGES: dict[str, tuple[str, str]] = {
    "sfu_rooms": ("Rooms on this worker", ""),
    "sfu_participants": ("Participants on this worker", ""),
    "sfu_publishers": ("Participants publishing at least one track", ""),
    "sfu_producers": ("Published tracks, by kind", "kind"),
    "sfu_consumers": ("Forwarded tracks (one per subscriber and track), by kind", "kind"),
    "sfu_video_consumers": (
        "Video consumers by the layer they forward (single: not simulcast)",
        "layer",
    ),
    "sfu_participants_by_connection_quality": (
        "Participants by their connection quality score (excellent, good, poor)",
        "quality",
    ),
    "sfu_worker_capacity_participants": ("Participants this worker is sized for", ""),
    "sfu_worker_load_ratio": ("Participants divided by capacity", ""),
    "sfu_recordings": ("Tracks being recorded (files being written)", ""),
    "sfu_rtcp_slowest_compound_seconds": (
        "CPU seconds of the event loop the slowest RTCP compound of a current participant took",
        "",
    ),
}


class WorkerCollector(Collector):
    """Sums the :class:`WorkerMetrics` of every worker started in this process."""

    def __init__(self) -> None:
        self.workers: set[WorkerMetrics] = set()

    def describe(self) -> Iterable[Any]:
        return []  # the families depend on the workers running; collected on scrape

    def collect(self) -> Iterable[Any]:
        if not self.workers:
            return
        counters: Counter[CounterKey] = Counter()
        gauges: Counter[CounterKey] = Counter()
        histograms: dict[CounterKey, Histogram] = {}
        for metrics in self.workers:
            counters.update(metrics.totals())
            gauges.update(metrics.gauges())
            for key, histogram in metrics.histograms.items():
                merged = histograms.setdefault(key, Histogram(histogram.bounds))
                merged.merge(histogram)
        for name, (help_text, label) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=[label] if label else [])
            for (key_name, value), count in sorted(counters.items()):
                if key_name == name:
                    family.add_metric([value] if label else [], count)
            yield family
        for name, (help_text, label) in GAUGES.items():
            gauge = GaugeMetricFamily(name, help_text, labels=[label] if label else [])
            for (key_name, value), amount in sorted(gauges.items()):
                if key_name == name:
                    gauge.add_metric([value] if label else [], amount)
            yield gauge
        for name, (help_text, _, label) in HISTOGRAMS.items():
            histogram_family = HistogramMetricFamily(
                name, help_text, labels=[label] if label else []
            )
            for (key_name, value), histogram in sorted(histograms.items()):
                if key_name == name:
                    histogram_family.add_metric(
                        [value] if label else [], histogram.buckets(), histogram.sum
                    )
            yield histogram_family


_shared: WorkerCollector | None = None


def _collector() -> WorkerCollector:
    """The process's one worker collector, registered on first use (a process without
    a media worker, such as a signaling node, exports no worker families)."""
    global _shared
    if _shared is None:
        _shared = WorkerCollector()
        REGISTRY.register(_shared)
    return _shared
