"""VP9 SVC forwarding without sockets: a real Producer, Router and SvcConsumer fed the
golden packets of a Chromium L3T3_KEY publisher (two spatial layers at 640x480, three
temporal layers, flexible mode; ``sfu/bench/captures/``).

Per consumer the spatial and temporal layers above its targets are dropped with no
sequence-number gap, the marker moves to the last packet of the highest forwarded
spatial layer, a spatial layer goes up only at a key picture (asked for with a PLI),
a temporal layer at a switching-up point; the allocator sees the spatial layers of the
one stream as layers, measured from it. VP9 simulcast keeps picture ids and TL0PICIDX
continuous across a switch. And the negotiation: VP9 is accepted from a publisher that
prefers it and offered to subscribers for a VP9 track only.
"""

from __future__ import annotations

import asyncio
import itertools
import re

from test_sdp import LOCAL, fixture_text
from test_vp9 import golden

from sfu.allocator import StreamAllocator
from sfu.keyframe_request_manager import MIN_REQUEST_INTERVAL
from sfu.producer import Producer
from sfu.router import Router
from sfu.rtp.packet import build_rtp_packet
from sfu.rtp.vp9 import Vp9Descriptor, is_vp9_keyframe
from sfu.sdp import Codec, SessionDescription
from sfu.sdp.negotiation import create_publish_answer, outgoing_codecs_for
from sfu.svc_consumer import SvcConsumer

ROWS = golden("chromium-l3t3-key.jsonl")
KEY_PICTURES = [i for i, row in enumerate(ROWS) if is_vp9_keyframe(row["head"])]


def descriptor(row: dict) -> Vp9Descriptor:
    return Vp9Descriptor.parse(row["head"])


class SvcRoom:
    """One VP9 producer (SVC unless ``rids``) in a router, consumers recording what they send."""

    def __init__(self, rids: tuple[str, ...] = ()) -> None:
        self.plis: list[int] = []
        self.sent: dict[str, list[tuple[bytes, bytes]]] = {}
        self.producer = Producer(
            "TR_cam", "PA_pub", "video", "1", [Codec(98, "VP9", 90000)], list(rids), "camera",
            self.plis.append,
        )  # fmt: skip
        self.router = Router()
        self.router.add_producer(self.producer)
        self.streams = [
            self.producer.add_stream(1 + i, rid) for i, rid in enumerate(rids or [None])
        ]
        self.seq = 0

    def consumer(self, name: str) -> SvcConsumer:
        sent = self.sent.setdefault(name, [])
        consumer = SvcConsumer(name, self.producer, "PA_sub", lambda h, p: sent.append((h, p)))
        self.router.add_consumer(consumer)
        self.router.activate(consumer, 98)
        return consumer

    def feed(self, rows: list[dict], layer: int = 0, renumber: bool = False) -> None:
        """Receive ``rows`` on the stream of ``layer``, padded to their captured size;
        ``renumber``: with sequence numbers and times that continue the last fed."""
        ts0 = ROWS[0]["ts"]
        for index, row in enumerate(rows):
            seq = (self.seq + 1) & 0xFFFF if renumber else row["seq"]
            ts = (row["ts"] + 90000 * 10 + index * 1500) if renumber else row["ts"]
            payload = row["head"] + bytes(max(0, row["size"] - len(row["head"])))
            data = build_rtp_packet(
                payload_type=98, sequence_number=seq, timestamp=ts & 0xFFFFFFFF,
                ssrc=self.streams[layer].ssrc, payload=payload, marker=bool(row["marker"]),
            )  # fmt: skip
            self.seq = seq
            self.producer.receive(self.streams[layer], data, 12, now=1000.0 + (ts - ts0) / 90000)


def sequence_numbers(sent: list[tuple[bytes, bytes]]) -> list[int]:
    return [int.from_bytes(header[2:4], "big") for header, _ in sent]


def markers(sent: list[tuple[bytes, bytes]]) -> list[int]:
    return [header[1] >> 7 for header, _ in sent]


def assert_contiguous(sent: list[tuple[bytes, bytes]]) -> None:
    seqs = sequence_numbers(sent)
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs


async def test_an_unconstrained_consumer_gets_every_layer_as_sent():
    room = SvcRoom()
    consumer = room.consumer("CO_a")
    assert room.plis == [1], "it waits for a key picture, and asks for one"
    room.feed(ROWS)
    sent = room.sent["CO_a"]
    assert len(sent) == len(ROWS)
    assert_contiguous(sent)
    assert markers(sent) == [row["marker"] for row in ROWS]
    assert [payload[: len(row["head"])] for (_, payload), row in zip(sent, ROWS, strict=True)] == [
        row["head"] for row in ROWS
    ], "one SVC stream: picture ids pass unchanged"
    assert consumer.current_spatial_layer == 7 and consumer.current_temporal_layer is None


async def test_a_consumer_capped_at_the_low_spatial_layer_gets_it_with_end_of_picture_markers():
    room = SvcRoom()
    consumer = room.consumer("CO_low")
    room.router.set_target_layer(consumer, 0)
    room.feed(ROWS)
    sent = room.sent["CO_low"]
    low = [row for row in ROWS if descriptor(row).sid == 0]
    assert [payload[:32] for _, payload in sent] == [row["head"] for row in low]
    assert_contiguous(sent)
    assert markers(sent) == [int(descriptor(row).end_of_frame) for row in low], (
        "the marker ends each picture at its last spatial-layer-0 packet"
    )
    assert consumer.packets_dropped_spatial == len(ROWS) - len(low)
    assert room.router.forwarding(consumer).current_layer == 0


async def test_a_temporal_cap_drops_whole_pictures_without_gaps():
    room = SvcRoom()
    consumer = room.consumer("CO_t0")
    consumer.set_target_temporal_layer(0)
    room.feed(ROWS)
    sent = room.sent["CO_t0"]
    base = [row for row in ROWS if descriptor(row).tid == 0]
    assert [payload[:32] for _, payload in sent] == [row["head"] for row in base]
    assert_contiguous(sent)
    assert markers(sent) == [row["marker"] for row in base]
    assert consumer.current_temporal_layer == 0


async def test_the_spatial_layer_goes_up_only_at_a_key_picture_and_asks_for_one():
    room = SvcRoom()
    consumer = room.consumer("CO_up")
    room.router.set_target_layer(consumer, 0)
    room.feed(ROWS[:150])
    assert room.router.forwarding(consumer).current_layer == 0
    room.router.set_target_layer(consumer, 1)
    await asyncio.sleep(MIN_REQUEST_INTERVAL + 0.05)  # the PLI at the start throttles this one
    assert room.plis == [1, 1], "a key picture is asked for: only there can layer 1 start"
    before = len(room.sent["CO_up"])
    room.feed(ROWS[150:])
    after_deltas = room.sent["CO_up"][before:]
    assert all(Vp9Descriptor.parse(p).sid == 0 for _, p in after_deltas), (
        "no spatial layer 1 from a delta picture: it refers to pictures never sent"
    )
    assert room.router.forwarding(consumer).current_layer == 0
    # The publisher answers the PLI: a key picture (the captured second one), renumbered.
    key = KEY_PICTURES[1]
    start = len(room.sent["CO_up"])
    room.feed(ROWS[key : key + 60], renumber=True)
    upswitched = room.sent["CO_up"][start:]
    sids = [Vp9Descriptor.parse(p).sid for _, p in upswitched]
    assert sids == [descriptor(row).sid for row in ROWS[key : key + 60]], "everything from the key"
    first_high = sids.index(1)
    assert not Vp9Descriptor.parse(upswitched[first_high][1]).inter_picture_predicted
    assert room.router.forwarding(consumer).current_layer == 1
    assert_contiguous(room.sent["CO_up"])


async def test_the_temporal_layer_goes_up_at_a_switching_up_point():
    room = SvcRoom()
    consumer = room.consumer("CO_tu")
    consumer.set_target_temporal_layer(0)
    room.feed(ROWS[:100])
    consumer.set_target_temporal_layer(None)
    start = len(room.sent["CO_tu"])
    room.feed(ROWS[100:])
    resumed = [Vp9Descriptor.parse(p) for _, p in room.sent["CO_tu"][start:]]
    first = next(d for d in resumed if d.tid)
    assert first.start_of_frame and first.switching_up and first.sid == 0
    rest = ROWS[100:]
    switch = next(i for i, r in enumerate(rest) if descriptor(r).tid and descriptor(r).sid == 0)
    assert resumed[-(len(rest) - switch) :] == [descriptor(r) for r in rest[switch:]], (
        "from the first switching-up picture on, every layer"
    )
    assert consumer.current_temporal_layer == 2, "the highest the stream has"
    assert_contiguous(room.sent["CO_tu"])


async def test_the_allocator_sees_the_spatial_layers_of_the_stream():
    room = SvcRoom()
    consumer = room.consumer("CO_alloc")
    room.feed(ROWS)
    now = 1000.0 + (ROWS[-1]["ts"] - ROWS[0]["ts"]) / 90000
    track = room.router.allocation_input(consumer, 0, now)
    low, high = track.layers
    assert (low.width, low.height, high.width, high.height) == (320, 240, 640, 480)
    assert 0 < low.bitrate < high.bitrate
    assert len(low.temporal_bitrates) == 3 and low.temporal_bitrates[-1] <= low.bitrate
    assert track.current_layer == 1, "forwarding both layers"

    allocator = StreamAllocator()
    squeezed = allocator.allocate([track], (low.bitrate + high.bitrate) // 2, now)
    assert squeezed.targets == {"CO_alloc": 0}
    room.router.set_target_layer(consumer, squeezed.targets["CO_alloc"])
    consumer.set_target_temporal_layer(squeezed.temporal_targets["CO_alloc"])
    start = len(room.sent["CO_alloc"])
    room.feed(ROWS[:60], renumber=True)
    assert {Vp9Descriptor.parse(p).sid for _, p in room.sent["CO_alloc"][start:]} == {0}

    consumer.set_preferences(False, 0, None, None)
    capped = StreamAllocator().allocate(
        [room.router.allocation_input(consumer, 0, now)], 10 * high.bitrate, now
    )
    assert capped.targets == {"CO_alloc": 0}, "max_spatial_layer caps the SVC track"


def vp9_payload(picture: int, tl0: int, key: bool = False) -> bytes:
    """A one-packet non-flexible VP9 layer frame of spatial layer 0, temporal layer 0."""
    first = 0x80 | 0x20 | 0x08 | 0x04 | (0 if key else 0x40)  # I, L, B, E (P unless key)
    return bytes([first, 0x80 | picture >> 8, picture & 0xFF, 0x10, tl0, 0xFF])


async def test_vp9_simulcast_keeps_picture_ids_and_tl0picidx_continuous_across_a_switch():
    room = SvcRoom(("q", "h", "f"))
    consumer = room.consumer("CO_sim")
    q, _, f = room.streams
    assert room.plis == [f.ssrc]

    def send(stream_layer: int, seq: int, payload: bytes) -> None:
        data = build_rtp_packet(
            payload_type=98, sequence_number=seq, timestamp=seq * 3000,
            ssrc=room.streams[stream_layer].ssrc, payload=payload, marker=True,
        )  # fmt: skip
        room.producer.receive(room.streams[stream_layer], data, 12, now=1000.0 + seq / 30)

    send(2, 10, vp9_payload(1000, 50, key=True))
    send(2, 11, vp9_payload(1001, 51))
    room.router.set_target_layer(consumer, 0)
    assert room.plis[-1] == q.ssrc
    send(0, 500, vp9_payload(7, 3))
    send(2, 12, vp9_payload(1002, 52))
    send(0, 501, vp9_payload(8, 4, key=True))
    send(0, 502, vp9_payload(9, 5))
    room.router.set_target_layer(consumer, 2)
    send(2, 13, vp9_payload(0x7FFF, 255, key=True))  # back up, at a key frame about to wrap
    send(2, 14, vp9_payload(0, 0))
    sent = [Vp9Descriptor.parse(p) for _, p in room.sent["CO_sim"]]
    assert [(d.picture_id, d.tl0picidx) for d in sent] == [
        (1000, 50), (1001, 51), (1002, 52), (1003, 53), (1004, 54), (1005, 55), (1006, 56)
    ]  # fmt: skip
    assert_contiguous(room.sent["CO_sim"])


def vp9_first_offer() -> SessionDescription:
    """Firefox's offer with VP9 (profile 0: no profile-id) listed before VP8."""
    text = fixture_text("firefox-plain-offer").replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 125", "m=video 9 UDP/TLS/RTP/SAVPF 121 125 120 124"
    )
    return SessionDescription.parse(text)


def test_the_publish_answer_takes_vp9_from_a_publisher_that_prefers_it():
    answer, published = create_publish_answer(vp9_first_offer(), LOCAL)
    video = next(m for m in published if m.kind == "video")
    assert [c.name for c in video.codecs] == ["VP9", "rtx"]
    assert re.search(r"m=video \d+ \S+ 121 125\r\n", str(answer))
    # The same offer in its own order (VP8 first) keeps VP8, as before.
    _, published = create_publish_answer(
        SessionDescription.parse(fixture_text("firefox-plain-offer")), LOCAL
    )
    assert next(m for m in published if m.kind == "video").codecs[0].name == "VP8"


def test_vp9_profile_2_is_not_taken():
    text = (
        fixture_text("firefox-plain-offer")
        .replace(
            "m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 125",
            "m=video 9 UDP/TLS/RTP/SAVPF 121 125 120 124",
        )
        .replace("a=fmtp:121 max-fs=12288;max-fr=60", "a=fmtp:121 profile-id=2")
    )
    _, published = create_publish_answer(SessionDescription.parse(text), LOCAL)
    assert next(m for m in published if m.kind == "video").codecs[0].name == "VP8"


def test_subscribers_are_offered_vp9_for_a_vp9_track_only():
    vp9 = outgoing_codecs_for("video", Codec(121, "VP9", 90000))
    assert [(c.payload_type, c.name, c.parameters) for c in vp9] == [
        (98, "VP9", {"profile-id": "0"}), (99, "rtx", {"apt": "98"})
    ]  # fmt: skip
    assert [c.name for c in outgoing_codecs_for("video", Codec(120, "VP8", 90000))] == [
        "VP8",
        "rtx",
    ]
