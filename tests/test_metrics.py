"""Metrics: the plain-int collector over real media objects, and ``/metrics`` of a
running server with a room of real Python clients (loss induced on the clients)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aioice.ice
import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport
from prometheus_client.parser import text_string_to_metric_families

from sfu.client import (
    RoomClient,
    SfuError,
    SyntheticVideoTrack,
    ToneAudioTrack,
    connect,
    dev_token,
)
from sfu.connection_quality import QUALITY_LABELS, ConnectionQualityTracker, ParticipantSample
from sfu.consumer import Consumer
from sfu.metrics.worker import Histogram, WorkerMetrics
from sfu.producer import Producer
from sfu.router import Router
from sfu.rtcp_budget import RtcpBudget
from sfu.sdp import Codec

DROP_EVERY = 15
"""Every n-th RTP packet a client sends, and every n-th it receives, is dropped."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


# --- the collector over real objects, no network ---------------------------------------


VP8 = Codec(payload_type=96, name="VP8", clock_rate=90000)


def _participant(
    pid: str, producers: dict[str, Producer], consumers: list[Consumer], router: Router
) -> Any:
    return SimpleNamespace(
        id=pid,
        room=SimpleNamespace(router=router),
        estimated_bitrate=None,
        producers=producers,
        consumers=lambda: list(consumers),
        publish=None,
        subscribe=None,
        packets_unroutable=0,
        rtcp_errors=0,
        rtcp_budget=RtcpBudget(0.02),
        joined_at=0.0,
        grant=SimpleNamespace(identity=pid),
    )


def _vp8_key_frame(seq: int) -> bytes:
    header = bytes([0x80, 0x80 | 96]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big")
    return header + b"\x00\x00\x00\x00" + bytes([0x10, 0x00, 0x9D, 0x01, 0x2A]) + b"\x00" * 20


def test_counters_survive_departures_and_join_latency_is_observed(monkeypatch):
    producer = Producer("TR_a", "PA_a", "video", "0", [VP8], [], "camera", lambda ssrc: None)
    sent: list[bytes] = []
    consumer = Consumer(
        "CO_b", producer, "PA_b", lambda header, payload: sent.append(header + payload)
    )
    router = Router()
    router.add_producer(producer)
    router.add_consumer(consumer)
    monkeypatch.setattr(producer, "request_key_frame", lambda stream: None)
    router.activate(consumer, 96)
    stream = producer.add_stream(1234, None)
    publisher = _participant("PA_a", {"0": producer}, [], router)
    subscriber = _participant("PA_b", {}, [consumer], router)
    subscriber.joined_at = consumer.created_at - 0.2
    quality = ConnectionQualityTracker()
    quality.update(0.0, {"PA_a": ParticipantSample(), "PA_b": ParticipantSample(rtt=0.9)})
    worker = SimpleNamespace(
        participants={"PA_a": publisher, "PA_b": subscriber},
        rooms={"r": SimpleNamespace(name="r", participants={}, quality=quality)},
        settings=SimpleNamespace(capacity=10),
        ice_drops=dict,
        tick_failures=0,
    )
    metrics = WorkerMetrics(worker)  # type: ignore[arg-type]

    for seq in (1, 2, 4):  # 3 is lost
        packet = _vp8_key_frame(seq)
        producer.receive(stream, packet, 12, 1000.0 + seq / 100)
    resent = int.from_bytes(sent[1][2:4], "big")  # the subscriber's sequence numbers
    consumer.retransmit([resent, (resent + 7) & 0xFFFF], now=1.0)
    consumer.plis_received += 1
    metrics.sample(consumer.created_at + 1)

    totals = metrics.totals()
    assert totals[("sfu_rtp_received_packets", "video")] == 3
    assert totals[("sfu_rtp_lost_packets", "video")] == 1
    assert totals[("sfu_rtp_sent_packets", "video")] == 3 == len(sent) - 1
    assert totals[("sfu_rtp_retransmitted_packets", "video")] == 1
    assert totals[("sfu_rtcp_feedback_received", "nack")] == 1
    assert totals[("sfu_rtcp_feedback_received", "pli")] == 1
    assert totals[("sfu_rtp_received_packets", "audio")] == 0
    join = metrics.histograms[("sfu_join_latency_seconds", "")]
    assert join.count == 1
    assert 0.2 <= join.sum < 1.0
    assert metrics.histograms[("sfu_jitter_seconds", "video")].count == 1
    gauges = metrics.gauges()
    assert gauges[("sfu_participants", "")] == 2
    assert gauges[("sfu_publishers", "")] == 1
    assert gauges[("sfu_consumers", "video")] == 1
    assert gauges[("sfu_video_consumers", "single")] == 1
    assert gauges[("sfu_worker_load_ratio", "")] == 0.2
    by_quality = {q: gauges[("sfu_participants_by_connection_quality", q)] for q in QUALITY_LABELS}
    assert by_quality == {"excellent": 1, "good": 0, "poor": 1}

    # Both leave; their last packets arrived after the previous walk.
    producer.receive(stream, _vp8_key_frame(5), 12, 1000.06)
    del worker.participants["PA_a"], worker.participants["PA_b"]
    after = metrics.totals()
    assert after[("sfu_rtp_received_packets", "video")] == 4
    assert after[("sfu_rtp_sent_packets", "video")] == 4
    assert after[("sfu_rtp_lost_packets", "video")] == 1
    assert metrics.gauges()[("sfu_participants", "")] == 0
    assert metrics.totals() == after  # folded once, not again


def test_histogram_buckets_are_cumulative_and_inclusive():
    histogram = Histogram((0.1, 0.5))
    for value in (0.1, 0.2, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 1.0), ("0.5", 3.0), ("+Inf", 4.0)]
    assert histogram.sum == pytest.approx(3.8)


# --- /metrics of a running server ------------------------------------------------------


@pytest.fixture
def lossy_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Loopback ICE, and every DROP_EVERY-th RTP packet lost in each direction."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    send_rtp = RTCDtlsTransport._send_rtp
    handle_rtp = RTCDtlsTransport._handle_rtp_data
    counts = {"sent": 0, "received": 0}

    async def lossy_send(self: RTCDtlsTransport, data: bytes) -> None:
        if not 192 <= data[1] <= 223:  # RTP, not RTCP
            counts["sent"] += 1
            if counts["sent"] % DROP_EVERY == 0:
                return
        await send_rtp(self, data)

    async def lossy_receive(self: RTCDtlsTransport, data: bytes, arrival_time_ms: int) -> None:
        counts["received"] += 1
        if counts["received"] % DROP_EVERY == 0:
            return
        await handle_rtp(self, data, arrival_time_ms)

    monkeypatch.setattr(RTCDtlsTransport, "_send_rtp", lossy_send)
    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", lossy_receive)
    yield


async def _until(predicate: Any, url: str, timeout: float, what: str) -> Samples:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        _, samples = await asyncio.to_thread(scrape, url)
        if predicate(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def test_metrics_move_with_a_room_of_clients(sfu_server, lossy_clients):
    _, before = await asyncio.to_thread(scrape, sfu_server)
    assert total(before, "sfu_participants") == 0
    assert total(before, "sfu_signaling_errors_total", code="bad_token") == 0
    room = f"metrics-{uuid.uuid4().hex[:8]}"
    clients: list[RoomClient] = []
    try:
        for identity in ("alice", "bob", "carol"):
            token = await dev_token(sfu_server, room, identity)
            clients.append(await connect(sfu_server, token, name=identity))
        for client in clients[:2]:
            await client.publish_tracks(
                [(SyntheticVideoTrack(320, 240), "camera"), (ToneAudioTrack(), "microphone")]
            )
        for client in clients:
            for remote in client.remote_tracks.values():
                assert remote.track is not None

        def moving(s: Samples) -> bool:
            return (
                total(s, "sfu_rtp_received_packets_total", kind="video") > 200
                and total(s, "sfu_rtp_lost_packets_total") > 0
                and total(s, "sfu_rtcp_feedback_received_total", type="nack") > 0
                and total(s, "sfu_rtp_retransmitted_packets_total") > 0
                and total(s, "sfu_join_latency_seconds_count") >= 1
                and total(s, "sfu_rtt_seconds_count") > 0
            )

        during = await _until(moving, sfu_server, 30, "packets, loss, NACKs, join latency")
        assert total(during, "sfu_rooms") == 1
        assert total(during, "sfu_participants") == 3
        assert total(during, "sfu_publishers") == 2
        assert total(during, "sfu_producers", kind="video") == 2
        assert total(during, "sfu_consumers", kind="audio") == 4
        assert total(during, "sfu_websocket_connections") == 3
        assert total(during, "sfu_rtp_sent_packets_total", kind="video") > 200
        assert total(during, "sfu_rtp_sent_bytes_total", kind="audio") > 0
        assert total(during, "sfu_rtcp_feedback_sent_total", type="pli") >= 2
        assert 0 < total(during, "sfu_join_latency_seconds_sum") < 10
        assert total(during, "sfu_jitter_seconds_count", kind="audio") > 0
        assert total(during, "sfu_event_loop_lag_seconds_count") > 0
        assert total(during, "process_cpu_seconds_total") > 0

        await clients[0].leave()
        after = await _until(
            lambda s: total(s, "sfu_participants") == 2, sfu_server, 10, "the leave"
        )
        with pytest.raises(SfuError):
            await connect(sfu_server, "not-a-token")
        _, refused = await asyncio.to_thread(scrape, sfu_server)
        assert total(refused, "sfu_signaling_errors_total", code="bad_token") == 1
        assert total(refused, "sfu_websocket_accepted_connections_total") == 4
        for name in (
            "sfu_rtp_received_packets_total",
            "sfu_rtp_sent_packets_total",
            "sfu_rtp_lost_packets_total",
            "sfu_rtcp_feedback_received_total",
            "sfu_rtp_retransmitted_packets_total",
        ):
            assert total(after, name) >= total(during, name), name
    finally:
        await asyncio.gather(*(client.leave() for client in clients))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian prometheus not installed")
def test_exposition_passes_promtool_lint(sfu_server):
    text, _ = scrape(sfu_server)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
