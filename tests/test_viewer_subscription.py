"""The worker's WHIP/WHEP sessions with real browser offers, in-process (no client
connects): what a WHEP viewer's answer says, and how its m-lines follow the tracks."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu.config import Settings
from sfu.sdp import SessionDescription
from sfu.worker import Worker
from sfu.worker_api import Grant, HttpSessionOffer, ProtocolError

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
RECVONLY = (FIXTURES / "chrome-recvonly-offer.sdp").read_text()
"""Chromium 156: recvonly audio and video transceivers and a data channel, max-bundle."""


@pytest.fixture
async def worker():
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    yield worker
    await worker.stop()


def grant(identity: str) -> Grant:
    return Grant(room="r", identity=identity, name=identity)


async def publish(worker: Worker, identity: str, fixture: str) -> str:
    offer = HttpSessionOffer(kind="whip", sdp=(FIXTURES / fixture).read_text())
    return (await worker.open_http_session(grant(identity), offer)).session_id


async def view(
    worker: Worker, identity: str, publisher: str | None
) -> tuple[str, SessionDescription]:
    offer = HttpSessionOffer(kind="whep", sdp=RECVONLY, publisher=publisher)
    session = await worker.open_http_session(grant(identity), offer)
    return session.participant_id, SessionDescription.parse(session.sdp)


def consumed(worker: Worker, participant_id: str) -> list[str]:
    return sorted(c.producer.codec.name for c in worker.participants[participant_id].consumers())


async def test_viewer_answer_for_a_vp8_simulcast_publisher(worker: Worker) -> None:
    await publish(worker, "cam", "chrome-simulcast-offer.sdp")
    viewer, answer = await view(worker, "v", "cam")
    offered = SessionDescription.parse(RECVONLY)
    audio, video, data = answer.media
    assert [m.mid for m in answer.media] == [m.mid for m in offered.media]
    assert answer.bundle_groups == [[audio.mid, video.mid]]
    assert data.port == 0  # a viewer gets no data channel
    for section in (audio, video):
        assert section.direction == "sendonly"
        assert section.setup == "passive"
        assert section.candidates and section.end_of_candidates
        assert len(section.ssrcs) >= 1
    assert [c.name for c in audio.codecs] == ["opus"]
    assert audio.codecs[0].payload_type == offered.media[0].codecs[0].payload_type
    vp8, rtx = video.codecs
    assert (vp8.name, rtx.name, rtx.apt) == ("VP8", "rtx", vp8.payload_type)
    assert video.ssrc_groups[0].semantics == "FID"
    # The viewer's own transport-cc id, echoed so its feedback drives the estimate.
    offered_cc = offered.media[1].header_extension_ids()
    assert video.header_extension_ids() == {
        uri: i for uri, i in offered_cc.items() if "transport-wide-cc" in uri
    }
    assert consumed(worker, viewer) == ["VP8", "opus"]
    assert worker.participants[viewer].subscribe is not None
    assert worker.participants[viewer].publish is None


async def test_viewer_gets_the_publishers_h264_profile(worker: Worker) -> None:
    await publish(worker, "h264cam", "chrome-h264-simulcast-offer.sdp")
    _, answer = await view(worker, "v", "h264cam")
    video = answer.media[1]
    h264 = video.codecs[0]
    assert h264.name == "H264"
    assert h264.parameters["packetization-mode"] == "1"
    assert h264.parameters["profile-level-id"] == "42e01f"


async def test_lines_follow_the_pinned_identity(worker: Worker) -> None:
    """Lines answered before the publisher arrives take its tracks when it publishes,
    fall silent when it leaves, and take the tracks of its next session."""
    await publish(worker, "someone-else", "chrome-simulcast-offer.sdp")
    viewer, answer = await view(worker, "v", "encoder")
    assert [m.direction for m in answer.media[:2]] == ["sendonly", "sendonly"]
    assert consumed(worker, viewer) == []
    first = await publish(worker, "encoder", "chrome-simulcast-offer.sdp")
    assert consumed(worker, viewer) == ["VP8", "opus"]
    ssrcs = {c.ssrc for c in worker.participants[viewer].consumers()}
    assert ssrcs == {s for m in answer.media[:2] for s in list(m.ssrcs)[:1]}
    await worker.close_http_session(first)
    assert consumed(worker, viewer) == []
    await publish(worker, "encoder", "chrome-simulcast-offer.sdp")
    assert consumed(worker, viewer) == ["VP8", "opus"]
    assert {c.ssrc for c in worker.participants[viewer].consumers()} == ssrcs


async def test_unpinned_viewer_takes_the_first_tracks_of_the_room(worker: Worker) -> None:
    await publish(worker, "a", "chrome-simulcast-offer.sdp")
    await publish(worker, "b", "chrome-simulcast-offer.sdp")
    viewer, _ = await view(worker, "v", None)
    owners = {c.producer.participant_id for c in worker.participants[viewer].consumers()}
    assert len(owners) == 1  # both of one publisher's tracks (join order), not a mix


async def test_a_refused_offer_leaves_nobody(worker: Worker) -> None:
    publisher_offer = (FIXTURES / "chrome-simulcast-offer.sdp").read_text()
    with pytest.raises(ProtocolError) as raised:
        await worker.open_http_session(
            grant("v"), HttpSessionOffer(kind="whep", sdp=publisher_offer)
        )
    assert raised.value.code == "bad_sdp"
    with pytest.raises(ProtocolError) as raised:
        await worker.open_http_session(grant("p"), HttpSessionOffer(kind="whip", sdp=RECVONLY))
    assert raised.value.code == "bad_sdp"
    assert worker.participants == {}
    assert worker.rooms == {}
