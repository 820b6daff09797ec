"""A subscriber that cannot decode a track's codec gets told, and is not offered it again.

Firefox ESR 153 here has no H.264 (its OpenH264 plugin is downloaded at run time):
given an m-line that offers only H.264 it answers it with port 0. The fixtures are
real: Chromium 156's publish offer from the demo page with ``?codec=h264``
(``chrome-h264-simulcast-offer.sdp``), and Firefox 153's answers to the worker's
subscribe offers in that room (``firefox-answer-*.sdp``; the first offer carries the
publisher's audio and video together, as the worker coalesces changes into one offer).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu.config import Settings
from sfu.protocol import (
    ErrorCode,
    ErrorMessage,
    PublishOfferMessage,
    SubscribeAnswerMessage,
    SubscribeOfferMessage,
)
from sfu.sdp import SessionDescription
from sfu.worker import Worker
from sfu.worker_api import Grant

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def answer(name: str) -> str:
    """A captured answer without its candidates: Firefox's are mDNS names, which the
    worker ignores, so with its end-of-candidates ICE would fail at once; the test
    is about the m-lines."""
    lines = fixture(name).splitlines(keepends=True)
    return "".join(
        line for line in lines if not line.startswith(("a=candidate", "a=end-of-candidates"))
    )


class Inbox(list):
    def of(self, cls: type) -> list:
        return [m for m in self if isinstance(m, cls)]

    def latest_offer(self) -> SubscribeOfferMessage:
        return self.of(SubscribeOfferMessage)[-1]


@pytest.fixture
async def worker():
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    yield worker
    await worker.stop()


async def join(worker: Worker, pid: str) -> Inbox:
    inbox = Inbox()
    await worker.join(pid, Grant(room="r", identity=pid, name=pid), inbox.append)
    return inbox


async def publish_h264(worker: Worker, pid: str) -> str:
    """Publish Chromium's H.264-only simulcast offer; returns the video track id."""
    answer = await worker.publish_offer(
        pid, PublishOfferMessage(sdp=fixture("chrome-h264-simulcast-offer.sdp"))
    )
    video = SessionDescription.parse(answer.sdp).media_by_mid("1")
    assert video is not None and [c.name for c in video.codecs] == ["H264", "rtx"]
    return answer.tracks["1"]


async def test_a_subscriber_without_h264_is_told_and_not_offered_h264_again(worker) -> None:
    await join(worker, "PA_safari")
    firefox = await join(worker, "PA_firefox")
    video_id = await publish_h264(worker, "PA_safari")

    offer = firefox.latest_offer()
    assert offer.revision == 1, offer  # the publisher's audio and video in one offer
    assert offer.tracks["1"].track_id == video_id, offer.tracks
    offered = SessionDescription.parse(offer.sdp).media_by_mid("1")
    assert offered is not None and {c.name for c in offered.codecs} - {"rtx"} == {"H264"}
    assert firefox.of(ErrorMessage) == []

    await worker.subscribe_answer(
        "PA_firefox",
        SubscribeAnswerMessage(sdp=answer("firefox-answer-h264-rejected.sdp"), revision=1),
    )
    (error,) = firefox.of(ErrorMessage)
    assert (error.code, error.track_id, error.codec, error.fatal) == (
        ErrorCode.CODEC_UNSUPPORTED,
        video_id,
        "video/H264",
        False,
    )
    assert "H264" in error.message and video_id in error.message
    subscriber = worker.participants["PA_firefox"]
    assert [c.active for c in subscriber.consumers() if c.kind == "video"] == [False]

    # Another H.264 publisher: the subscriber is told at once and offered only the audio.
    await join(worker, "PA_safari2")
    second_id = await publish_h264(worker, "PA_safari2")
    assert [(e.code, e.track_id) for e in firefox.of(ErrorMessage)[1:]] == [
        (ErrorCode.CODEC_UNSUPPORTED, second_id)
    ]
    offer = firefox.latest_offer()
    assert offer.revision == 2
    assert {t.kind for t in offer.tracks.values()} == {"audio"}
    assert "H264" not in offer.sdp, "no H.264 is offered to a subscriber that rejected it"
    parsed = SessionDescription.parse(offer.sdp)
    rejected = parsed.media_by_mid("1")
    assert rejected is not None and rejected.port == 0, "a rejected m-line stays rejected"
    assert parsed.bundle_groups == [["0", "2"]]
    await worker.subscribe_answer(
        "PA_firefox",
        SubscribeAnswerMessage(sdp=answer("firefox-answer-after-rejection.sdp"), revision=2),
    )
    assert len(firefox.of(ErrorMessage)) == 2, "no error repeated for the rejected m-line"

    # The rejected m-line is never recycled: a VP8 camera gets a new one.
    await join(worker, "PA_chrome")
    await worker.publish_offer(
        "PA_chrome", PublishOfferMessage(sdp=fixture("chrome-plain-offer.sdp"))
    )
    slots = {
        (slot.kind, slot.consumer.producer.participant_id): slot.mid
        for slot in subscriber.subscriber.negotiator.slots
        if slot.consumer is not None
    }
    assert slots[("video", "PA_chrome")] not in ("1", None)
