"""The media worker driven through its MediaWorker interface with real browser offers.

Transports gather real UDP sockets on loopback; packets are fed to the publish
transport's handler as bytes, so routing, learning and bad input are checked without
a browser.
"""

import asyncio
from pathlib import Path

import pytest

import sfu.worker
from sfu.config import Settings
from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    IceCandidate,
    JoinedMessage,
    MuteMessage,
    ParticipantJoinedMessage,
    ParticipantLeftMessage,
    PublishOfferMessage,
    SubscribeAnswerMessage,
    SubscribeOfferMessage,
    TrackInfo,
    TrackMutedMessage,
    TrackSettingsMessage,
    TrackUnpublishedMessage,
)
from sfu.rtp.packet import build_rtp_packet
from sfu.sdp import SessionDescription
from sfu.send_batch import flush_scheduler
from sfu.worker import TICK_INTERVAL, TICK_SLACK, Worker
from sfu.worker_api import Grant, ProtocolError

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
CHROME_MID, CHROME_RID, CHROME_RRID = 4, 10, 11  # extmap ids in chrome-simulcast-offer.sdp


@pytest.fixture
async def worker():
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    yield worker
    await worker.stop()


class Inbox(list):
    def of(self, cls):
        return [m for m in self if isinstance(m, cls)]


async def join(worker, pid, room="r", **grant):
    inbox = Inbox()
    await worker.join(pid, Grant(room=room, identity=pid, name=pid, **grant), inbox.append)
    return inbox


def offer(name: str) -> str:
    return (FIXTURES / name).read_text()


def chrome_packet(ssrc, pt, seq, mid, rid=None, rrid=None, payload=b"\x10\x00\x9d\x01\x2a"):
    extensions = {CHROME_MID: mid.encode()}
    if rid:
        extensions[CHROME_RID] = rid.encode()
    if rrid:
        extensions[CHROME_RRID] = rrid.encode()
    return build_rtp_packet(
        payload_type=pt,
        sequence_number=seq,
        timestamp=seq * 3000,
        ssrc=ssrc,
        payload=payload,
        extensions=extensions,
    )


async def test_join_announces_and_replies_first(worker):
    alice = await join(worker, "PA_a")
    assert isinstance(alice[0], JoinedMessage) and alice[0].participants == []
    bob = await join(worker, "PA_b")
    assert isinstance(bob[0], JoinedMessage)
    assert [p.participant_id for p in bob[0].participants] == ["PA_a"]
    assert alice.of(ParticipantJoinedMessage)[0].participant.participant_id == "PA_b"
    with pytest.raises(ProtocolError) as error:
        await join(worker, "PA_a")
    assert error.value.code == ErrorCode.ALREADY_JOINED


async def test_chrome_simulcast_publish_learns_layers_by_mid_and_rid(worker):
    await join(worker, "PA_a")
    bob = await join(worker, "PA_b")
    answer = await worker.publish_offer(
        "PA_a",
        PublishOfferMessage(
            sdp=offer("chrome-simulcast-offer.sdp"), tracks={"1": TrackInfo(source="camera")}
        ),
    )
    parsed = SessionDescription.parse(answer.sdp)
    video = parsed.media_by_mid("1")
    assert [r.id for r in video.rids] == ["q", "h", "f"]
    assert set(answer.tracks) == {"0", "1"}
    # Bob is offered both tracks, one m-line each, with their owner.
    offers = bob.of(SubscribeOfferMessage)
    assert offers and {t.participant_id for t in offers[-1].tracks.values()} == {"PA_a"}

    alice = worker.participants["PA_a"]
    producer = alice.producers["1"]
    for ssrc, rid in [(0x100, "q"), (0x200, "h"), (0x300, "f")]:
        alice.publisher.on_rtp(chrome_packet(ssrc, 96, 1, "1", rid=rid))
    assert {s.rid for s in producer.streams.values()} == {"q", "h", "f"}
    # RTX (payload type 97, apt 96) with a repaired RID is bound but not forwarded.
    alice.publisher.on_rtp(chrome_packet(0x101, 97, 1, "1", rrid="q"))
    assert 0x101 not in producer.streams
    assert alice.publisher.demultiplexer.repaired(0x101) == (producer, producer.streams[0x100])
    # Audio by MID only.
    alice.publisher.on_rtp(chrome_packet(0x400, 111, 1, "0", payload=b"opus"))
    assert 0x400 in alice.producers["0"].streams
    # Once learned, packets without extensions route by SSRC.
    stats = producer.streams[0x300].statistics
    alice.publisher.on_rtp(
        build_rtp_packet(payload_type=96, sequence_number=2, timestamp=1, ssrc=0x300)
    )
    assert stats.packets_received == 2


async def test_rtx_copy_of_a_packet_that_arrived_is_dropped_unseen(worker):
    """libwebrtc probes with RTX copies of packets it has just sent ("payload
    padding"). Such a copy must not count towards its layer's bitrate (the allocator
    would think the layer costs several times what it does) nor reach subscribers (its
    sequence number is one they have: their SRTP replay check drops it, after the SFU
    spent a transport-wide sequence number on it, so their transport-cc reports it
    lost). An RTX packet that repairs a missing packet still gets through."""
    await join(worker, "PA_a")
    await worker.publish_offer(
        "PA_a",
        PublishOfferMessage(
            sdp=offer("chrome-simulcast-offer.sdp"), tracks={"1": TrackInfo(source="camera")}
        ),
    )
    alice = worker.participants["PA_a"]
    producer = alice.producers["1"]
    for seq in (1, 2, 4):  # 3 is lost
        alice.publisher.on_rtp(chrome_packet(0x100, 96, seq, "1", rid="q"))
    stream = producer.streams[0x100]
    assert stream.nack.missing == [3]
    received = stream.statistics.packets_received
    vp8 = b"\x10\x00\x9d\x01\x2a"

    for rtx_seq, original in enumerate((2, 1, 4), start=1):
        copy = original.to_bytes(2, "big") + vp8
        alice.publisher.on_rtp(chrome_packet(0x101, 97, rtx_seq, "1", rrid="q", payload=copy))
    assert stream.statistics.packets_received == received
    assert producer.padding_dropped == 3

    repair = (3).to_bytes(2, "big") + vp8
    alice.publisher.on_rtp(chrome_packet(0x101, 97, 4, "1", rrid="q", payload=repair))
    assert stream.statistics.packets_received == received + 1
    assert stream.nack.missing == []
    assert producer.padding_dropped == 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        b"\x80\x60\x00\x01",
        # no MID and a payload type no producer has
        build_rtp_packet(payload_type=45, sequence_number=1, timestamp=1, ssrc=0x999),
        # extension header claims 10 words but the packet ends
        b"\x90\x60\x00\x01\x00\x00\x00\x01\x00\x00\x03\x00\xbe\xde\x00\x0a\x41",
        # unknown MID
        chrome_packet(0x500, 96, 1, "7"),
        # payload type the offer never negotiated for this MID
        chrome_packet(0x600, 45, 1, "1", rid="q"),
    ],
)
async def test_corrupt_or_unroutable_rtp_is_dropped_and_counted(worker, data):
    await join(worker, "PA_a")
    await worker.publish_offer("PA_a", PublishOfferMessage(sdp=offer("chrome-plain-offer.sdp")))
    alice = worker.participants["PA_a"]
    before = alice.packets_unroutable + sum(p.packets_dropped for p in alice.producers.values())
    alice.publisher.on_rtp(data)
    after = alice.packets_unroutable + sum(p.packets_dropped for p in alice.producers.values())
    assert after == before + 1


async def test_corrupt_rtcp_is_counted(worker):
    await join(worker, "PA_a")
    alice = worker.participants["PA_a"]
    for data in (b"\x80\xc9\x00\x05abc", b"\x81\xcd\x00\x01"):
        alice.publisher.on_rtcp(data)
        alice.subscriber.on_rtcp(data)
    assert alice.rtcp_errors == 4


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda w: w.publish_offer("PA_a", PublishOfferMessage(sdp="v=0\r\nbogus")), "bad_sdp"),
        (
            lambda w: w.subscribe_answer("PA_a", SubscribeAnswerMessage(sdp="v=0", revision=9)),
            "out_of_order",
        ),
        (
            lambda w: w.add_candidate(
                "PA_a",
                CandidateMessage(
                    target="publish", candidate=IceCandidate(candidate="candidate:1 1 udp")
                ),
            ),
            "out_of_order",
        ),
        (lambda w: w.mute("PA_a", MuteMessage(track_id="TR_nope", muted=True)), "unknown_track"),
        (lambda w: w.mute("PA_zz", MuteMessage(track_id="TR_x", muted=True)), "not_joined"),
    ],
)
async def test_bad_requests_raise_protocol_errors(worker, call, code):
    await join(worker, "PA_a")
    with pytest.raises(ProtocolError) as error:
        await call(worker)
    assert error.value.code == code


async def test_settings_for_a_track_not_received_name_the_track(worker):
    """Settings that crossed the track's unpublishing: the error says which track, so a
    client can tell them from a mistake of its own."""
    await join(worker, "PA_a")
    with pytest.raises(ProtocolError) as error:
        await worker.track_settings("PA_a", TrackSettingsMessage(track_id="TR_gone", paused=True))
    assert (error.value.code, error.value.track_id) == (ErrorCode.UNKNOWN_TRACK, "TR_gone")


async def test_bad_candidate_after_offer(worker):
    await join(worker, "PA_a")
    await worker.publish_offer("PA_a", PublishOfferMessage(sdp=offer("chrome-plain-offer.sdp")))
    with pytest.raises(ProtocolError) as error:
        await worker.add_candidate(
            "PA_a",
            CandidateMessage(target="publish", candidate=IceCandidate(candidate="candidate:x")),
        )
    assert error.value.code == ErrorCode.BAD_CANDIDATE


async def test_publish_needs_the_grant(worker):
    await join(worker, "PA_v", can_publish=False)
    with pytest.raises(ProtocolError) as error:
        await worker.publish_offer(
            "PA_v", PublishOfferMessage(sdp=offer("firefox-plain-offer.sdp"))
        )
    assert error.value.code == ErrorCode.NOT_ALLOWED


async def test_mute_and_leave_reach_the_others_and_recycle_m_lines(worker):
    await join(worker, "PA_a")
    bob = await join(worker, "PA_b")
    answer = await worker.publish_offer(
        "PA_a", PublishOfferMessage(sdp=offer("firefox-plain-offer.sdp"))
    )
    audio_id = answer.tracks["0"]
    await worker.mute("PA_a", MuteMessage(track_id=audio_id, muted=True))
    assert bob.of(TrackMutedMessage)[0].muted is True
    first = bob.of(SubscribeOfferMessage)[-1]
    await worker.leave("PA_a")
    assert {m.track_id for m in bob.of(TrackUnpublishedMessage)} == set(answer.tracks.values())
    assert bob.of(ParticipantLeftMessage)[0].participant_id == "PA_a"
    assert "PA_a" not in worker.participants
    # Bob has not answered the first offer yet: no second offer is sent before that.
    assert bob.of(SubscribeOfferMessage)[-1] is first


class TickRecorder:
    """Stands in for a room: records when the worker's periodic work runs."""

    name = "ticks"

    def __init__(self) -> None:
        self.participants: dict = {}
        self.times: list[float] = []

    def tick(self, now: float) -> None:
        self.times.append(asyncio.get_running_loop().time())


class FlushRecorder:
    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


async def settle() -> None:
    """Let the flush scheduled in this iteration run."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_ticks_run_on_their_timer_while_no_media_flows(worker):
    room = worker.rooms["ticks"] = TickRecorder()
    await asyncio.sleep(0.45)
    # Due every TICK_INTERVAL, run by the timer TICK_SLACK later: about 4 (a 50 ms
    # timer of its own would have run 9).
    assert 2 <= len(room.times) <= 5


async def test_a_due_tick_rides_on_a_send_instead_of_its_timer(monkeypatch):
    monkeypatch.setattr(sfu.worker, "TICK_SLACK", 10.0)  # keeps the timer out of the way
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    try:
        room = worker.rooms["ticks"] = TickRecorder()
        batch = FlushRecorder()
        flush_scheduler().schedule(batch)  # what a forwarded packet does
        await settle()
        assert batch.flushes == 1
        assert room.times == []  # not due yet
        await asyncio.sleep(TICK_INTERVAL + 0.01)
        assert room.times == []  # due, but nothing woke the worker
        flush_scheduler().schedule(batch)
        await settle()
        assert len(room.times) == 1
        flush_scheduler().schedule(batch)
        await settle()
        assert len(room.times) == 1  # the next one is due TICK_INTERVAL later
    finally:
        await worker.stop()


async def test_a_stopped_worker_neither_ticks_nor_rides_on_sends():
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    room = worker.rooms["ticks"] = TickRecorder()
    await worker.stop()
    await asyncio.sleep(TICK_INTERVAL + TICK_SLACK + 0.02)
    flush_scheduler().schedule(FlushRecorder())
    await settle()
    assert room.times == []
