"""RED (RFC 2198) over bytes: the block parser, and what a consumer of a RED publisher
sends a subscriber that negotiated RED and one that did not (primary blocks, a lost
packet's frame from the next packet's redundancy, malformed payloads dropped without a
gap in the sequence numbers); and the negotiation that enables it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.consumer import Consumer
from sfu.producer import Producer
from sfu.router import Router
from sfu.rtp.packet import build_rtp_packet
from sfu.rtp.red import (
    MAX_RED_BLOCKS,
    RedPayload,
    RedundantBlock,
    parse_red,
    red_primary_only,
    red_primary_start,
    rewrite_red_payload_types,
)
from sfu.sdp import Codec, SessionDescription
from sfu.sdp.negotiation import (
    LocalTransport,
    create_publish_answer,
    outgoing_codecs_for,
    red_block_payload_types,
)

LOCAL = LocalTransport(
    ice_ufrag="srvU",
    ice_pwd="serverpasswordserverpass",
    fingerprints=[("sha-256", ":".join(["AB"] * 32))],
    candidates=["1 1 udp 2130706431 127.0.0.1 40000 typ host"],
)
FIXTURES = Path(__file__).parent / "fixtures" / "sdp"


def fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.sdp").read_bytes().decode()


def red_header(pt: int, offset: int, length: int) -> bytes:
    return bytes((0x80 | pt,)) + ((offset << 10) | length).to_bytes(3, "big")


def red(primary: bytes, *redundant: tuple[int, bytes], pt: int = 111) -> bytes:
    """A RED payload: redundant blocks (timestamp offset, data), oldest first."""
    headers = b"".join(red_header(pt, offset, len(data)) for offset, data in redundant)
    return headers + bytes((pt,)) + b"".join(data for _, data in redundant) + primary


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes.fromhex("6f aabb"), RedPayload((), 111, 1)),
        (bytes.fromhex("6f"), RedPayload((), 111, 1)),
        (
            red(b"PRIM", (960, b"old")),
            RedPayload((RedundantBlock(111, 960, 5, 8),), 111, 8),
        ),
        (
            red(b"P", (1920, b"aa"), (960, b"bbb")),
            RedPayload(
                (RedundantBlock(111, 1920, 9, 11), RedundantBlock(111, 960, 11, 14)), 111, 14
            ),
        ),
        # the largest offset (14 bits) and length (10 bits)
        (
            red(b"", (0x3FFF, bytes(1023))),
            RedPayload((RedundantBlock(111, 0x3FFF, 5, 1028),), 111, 1028),
        ),
        (b"", None),
        (bytes.fromhex("ef 0000"), None),  # a redundant header cut short
        (bytes.fromhex("ef 000003 6f aa"), None),  # its block runs past the end
        (bytes.fromhex("ef 000001"), None),  # no primary header
        (red_header(111, 1, 0) * MAX_RED_BLOCKS + b"\x6f", None),  # too many blocks
    ],
)
def test_parse_red(payload: bytes, expected: RedPayload | None) -> None:
    assert parse_red(payload) == expected
    start = red_primary_start(payload)
    assert start == (-1 if expected is None else expected.primary_start)


@given(st.binary(max_size=64))
def test_parse_red_never_raises_and_agrees_with_the_fast_path(payload: bytes) -> None:
    parsed = parse_red(payload)
    start = red_primary_start(payload)
    if parsed is None:
        assert start == -1
    else:
        assert start == parsed.primary_start <= len(payload)
        assert all(b.start <= b.end <= parsed.primary_start for b in parsed.redundant)


def test_primary_only_and_payload_type_rewrite() -> None:
    assert red_primary_only(111, b"opus") == b"\x6fopus"
    payload = red(b"PRIM", (960, b"old"), pt=109)
    parsed = parse_red(payload)
    assert parsed is not None
    rewritten = rewrite_red_payload_types(payload, parsed, 111)
    assert rewritten == red(b"PRIM", (960, b"old"), pt=111)


def test_red_fmtp() -> None:
    assert red_block_payload_types(Codec(63, "red", 48000, 2, {"111/111": ""})) == [111, 111]
    assert red_block_payload_types(Codec(63, "red", 48000, 2, {"x/111": ""})) is None
    assert red_block_payload_types(Codec(111, "opus", 48000, 2, {"111/111": ""})) is None
    assert [c.name for c in outgoing_codecs_for("audio", Codec(111, "opus", 48000, 2))] == ["opus"]
    opus_red = outgoing_codecs_for("audio", Codec(109, "opus", 48000, 2), red=True)
    assert [(c.payload_type, c.name, c.parameters) for c in opus_red] == [
        (111, "opus", {"minptime": "10", "useinbandfec": "1"}),
        (63, "red", {"111/111": ""}),
    ]


def test_publish_answer_accepts_red_only_for_its_primary_codec() -> None:
    offer = SessionDescription.parse(fixture_text("chrome-plain-offer"))
    answer, published = create_publish_answer(offer, LOCAL)
    assert [(c.payload_type, c.name) for c in published[0].codecs] == [(111, "opus"), (63, "red")]
    assert "a=fmtp:63 111/111" in str(answer)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 63 111" in str(answer), "RED first, or Chrome won't send it"
    other = fixture_text("chrome-plain-offer").replace("a=fmtp:63 111/111", "a=fmtp:63 111/0")
    _, published = create_publish_answer(SessionDescription.parse(other), LOCAL)
    assert [c.name for c in published[0].codecs] == ["opus"]


class RedRoom:
    """A RED publisher's producer, routed to consumers that record what they send."""

    def __init__(self) -> None:
        codecs = [Codec(111, "opus", 48000, 2), Codec(63, "red", 48000, 2, {"111/111": ""})]
        self.producer = Producer("TR_mic", "PA_pub", "audio", "0", codecs, [], "microphone", print)
        self.router = Router()
        self.router.add_producer(self.producer)
        self.stream = self.producer.add_stream(1234, None)
        self.sent: dict[str, list[tuple[int, int, int, bytes]]] = {}

    def consumer(self, name: str, payload_type: int, red_payload_type: int | None) -> Consumer:
        sent = self.sent.setdefault(name, [])

        def send(header: bytes, payload: bytes) -> None:
            _, pt, seq, ts = struct.unpack_from("!BBHI", header)
            sent.append((pt & 0x7F, seq, ts, payload))

        consumer = Consumer(name, self.producer, "PA_sub", send)
        self.router.add_consumer(consumer)
        self.router.activate(consumer, payload_type, None, None, red_payload_type)
        return consumer

    def packet(self, seq: int, payload: bytes, pt: int = 63) -> None:
        data = build_rtp_packet(
            payload_type=pt, sequence_number=seq, timestamp=seq * 960, ssrc=1234, payload=payload
        )
        self.producer.receive(self.stream, data, 12, now=100.0 + seq * 0.02)

    def relative(self, name: str) -> list[tuple[int, int, int, bytes]]:
        """What ``name`` was sent, sequence numbers and timestamps from its first packet."""
        sent = self.sent[name]
        _, seq0, ts0, _ = sent[0]
        return [(pt, (seq - seq0) & 0xFFFF, (ts - ts0) // 960, p) for pt, seq, ts, p in sent]


def frame(seq: int) -> bytes:
    return f"frame{seq}".encode()


def red_of(seq: int) -> bytes:
    """Chrome's RED: the frame of the packet and the previous one's as redundancy."""
    return red(frame(seq), (960, frame(seq - 1)))


def test_a_consumer_without_red_gets_primary_blocks_and_lost_packets_from_redundancy() -> None:
    room = RedRoom()
    plain = room.consumer("plain", 111, None)
    with_red = room.consumer("red", 111, 63)
    for seq in (10, 11, 13, 14):  # 12 is lost: its frame rides in 13's redundant block
        room.packet(seq, red_of(seq))
    room.packet(15, frame(15), pt=111)  # a plain packet of the RED stream
    room.packet(16, b"\xef\x00")  # malformed: dropped without a gap
    room.packet(17, red_of(17))
    assert room.relative("plain") == [(111, n, n, frame(10 + n)) for n in range(6)] + [
        (111, 6, 7, frame(17))
    ]
    assert plain.red_recovered == 1 and plain.red_malformed == 1
    assert room.relative("red") == [
        (63, 0, 0, red_of(10)),
        (63, 1, 1, red_of(11)),
        (63, 3, 3, red_of(13)),
        (63, 4, 4, red_of(14)),
        (63, 5, 5, b"\x6f" + frame(15)),
        (63, 6, 6, b"\xef\x00"),
        (63, 7, 7, red_of(17)),
    ], "as sent, the plain packet wrapped as RED without redundancy"
    assert with_red.red_recovered == 0


def test_a_consumer_with_red_and_another_primary_payload_type_gets_block_headers_mapped() -> None:
    room = RedRoom()
    room.consumer("red", 109, 63)
    room.packet(10, red_of(10))
    assert room.sent["red"][0][0] == 63
    assert room.sent["red"][0][3] == red(frame(10), (960, frame(9)), pt=109)


def test_a_late_packet_is_not_sent_again_once_refilled() -> None:
    room = RedRoom()
    plain = room.consumer("plain", 111, None)
    # 11 and 13 come late; 13 and 14 were both missing, too many for one redundant block
    for seq in (10, 12, 11, 15, 16, 13):
        room.packet(seq, red_of(seq))
    sent = [p for _, _, _, p in room.sent["plain"]]
    assert sent == [frame(n) for n in (10, 11, 12, 15, 16, 13)]
    assert plain.red_recovered == 1


@given(st.lists(st.sampled_from(["ok", "lost", "malformed", "plain"]), min_size=1, max_size=60))
def test_unwrapped_sequence_numbers_and_timestamps_stay_in_step(events: list[str]) -> None:
    """Whatever is lost or malformed: every packet that arrives whole is sent, a lost one
    whenever the next packet's redundancy carries it (it follows one that arrived), a
    malformed one leaves no gap, and sequence numbers and timestamps stay in step with
    the source's."""
    room = RedRoom()
    room.consumer("plain", 111, None)
    room.packet(0, red_of(0))
    kinds = ["ok", *events]
    for seq, event in enumerate(kinds[1:], start=1):
        if event == "ok":
            room.packet(seq, red_of(seq))
        elif event == "plain":
            room.packet(seq, frame(seq), pt=111)
        elif event == "malformed":
            room.packet(seq, b"\xef")
    arrived = ("ok", "plain")
    expected = [
        seq
        for seq, event in enumerate(kinds)
        if event in arrived
        or (
            event == "lost"
            and kinds[seq - 1] in arrived
            and seq + 1 < len(kinds)
            and kinds[seq + 1] == "ok"
        )
    ]
    sent = room.relative("plain")
    assert [int(payload.removeprefix(b"frame")) for *_, payload in sent] == expected
    for (_, out_seq, out_ts, _), source in zip(sent, expected, strict=True):
        assert out_seq == source - kinds[:source].count("malformed")
        assert out_ts == source
