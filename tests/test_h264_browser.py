"""An H.264-only publisher (what Safari prefers) in headless Chromium: the demo page's
``?codec=h264`` keeps only H.264 in its offer (``setCodecPreferences``), with simulcast
q/h/f, and two Chromium subscribers decode it, across layer switches. A Firefox
subscriber (no H.264 decoder here) is told so on the publisher's tile.

Chromium 156 on Debian encodes H.264 with OpenH264 (``encoderImplementation``), one
encoder per simulcast layer, and decodes it with FFmpeg. Run with ``-s`` to see the
measured figures.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from browser import (
    CHROMIUM_ARGS,
    CHROMIUM_PATH,
    chromium_available,
    inbound_video_of,
    open_demo_page,
    page_state,
    page_stats,
    receiving_audio,
    watch_decoding,
)
from firefox import firefox, firefox_available, open_demo
from server import ServerUrl, serve_module

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

RIDS = ("q", "h", "f")
TOP_WIDTH = 640
LOW_WIDTH = 160
H264 = "video/H264"
RAMP_UP_TIMEOUT = 20.0
MIN_FPS = 10.0
"""The fake camera sends 20 fps; a loaded 2-core machine decodes fewer."""
MAX_FREEZE = 1.0
"""Seconds a subscriber may go without a new decoded frame, layer switches included."""
VIEWPORT = {"width": 1600, "height": 1200}
"""Big enough that a remote tile renders wider than the top layer."""

CODECS_JS = """async () => {
    const codecs = { inbound: {}, outbound: {} };
    const mime = (report, s) => {
        const codec = report.get(s.codecId);
        return codec ? codec.mimeType : null;
    };
    const sub = window.sfu.subscribePc;
    if (sub) {
        const report = await sub.getStats();
        for (const s of report.values()) {
            if (s.type !== "inbound-rtp" || s.kind !== "video") continue;
            const info = window.sfu.subscribeTracks[s.mid];
            codecs.inbound[info ? info.participant_id : s.mid] = mime(report, s);
        }
    }
    const pub = window.sfu.publishPc;
    if (pub) {
        const report = await pub.getStats();
        for (const s of report.values()) {
            if (s.type !== "outbound-rtp" || s.kind !== "video") continue;
            codecs.outbound[s.rid] = [mime(report, s), s.encoderImplementation ?? null];
        }
    }
    return codecs;
}"""


def codecs(page: Any) -> dict[str, dict[str, Any]]:
    """{"inbound": {participant id: mimeType}, "outbound": {rid: [mimeType, encoder]}}."""
    return page.evaluate(CODECS_JS)


@pytest.fixture(scope="module")
def sfu_server() -> Iterator[ServerUrl]:
    yield from serve_module()


@dataclass
class Room:
    publisher: Any
    publisher_id: str
    subscribers: list[Any]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium process; each room's tabs are its pages."""
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM_PATH),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def room(chromium: Any, sfu_server: ServerUrl) -> Iterator[Room]:
    name = f"h264-{uuid.uuid4().hex[:8]}"
    publisher = open_demo_page(chromium, f"{sfu_server}/?room={name}&name=safari&codec=h264")
    subscribers = [
        open_demo_page(chromium, f"{sfu_server}/?room={name}&name=viewer{i}&publish=0")
        for i in range(2)
    ]
    publisher_id = publisher.evaluate("() => window.sfu.participantId")
    yield Room(publisher, publisher_id, subscribers)
    for page in (publisher, *subscribers):
        assert page.uncaught_errors == [], page.url
        assert page.evaluate("() => window.sfu.lastError") is None, page_state(page)
        page.close(run_before_unload=True)


def poll(check: Callable[[], Any], what: str, timeout: float, detail: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {detail()}")
        time.sleep(0.25)
    return result


def width_of(page: Any, participant_id: str) -> int:
    inbound = inbound_video_of(page_stats(page), participant_id)
    return inbound["frameWidth"] if inbound else 0


TILE_NOTICE_JS = """(participantId) => {
    const tile = document.querySelector(`.tile[data-participant-id="${participantId}"]`);
    const notice = tile && tile.querySelector(".tile-notice");
    return notice ? notice.textContent : null;
}"""


@pytest.mark.skipif(not firefox_available(), reason="needs /usr/bin/firefox-esr (firefox-esr)")
def test_firefox_subscriber_is_told_it_cannot_decode_h264(
    chromium: Any, sfu_server: ServerUrl
) -> None:
    """Firefox here has no H.264 decoder: its tile for the H.264 publisher says so, its
    audio still plays, and a Chromium subscriber in the same room decodes the video."""
    name = f"h264-firefox-{uuid.uuid4().hex[:8]}"
    with firefox() as fox:
        publisher = open_demo_page(chromium, f"{sfu_server}/?room={name}&name=safari&codec=h264")
        publisher_id = publisher.evaluate("() => window.sfu.participantId")
        open_demo(fox, sfu_server, name, "fox", publish=False)
        viewer = open_demo_page(chromium, f"{sfu_server}/?room={name}&name=viewer&publish=0")
        start = time.monotonic()
        notice = poll(
            lambda: fox.evaluate(TILE_NOTICE_JS, publisher_id),
            "the Firefox tile to say it cannot decode the video",
            RAMP_UP_TIMEOUT,
            lambda: (page_state(fox), fox.uncaught_errors),
        )
        print(f"\nFirefox tile: {notice!r} after {time.monotonic() - start:.1f}s")
        assert notice == "cannot decode H.264"
        poll(
            lambda: publisher_id in receiving_audio(page_stats(fox)),
            "Firefox to receive the publisher's audio",
            RAMP_UP_TIMEOUT,
            lambda: page_stats(fox),
        )
        assert inbound_video_of(page_stats(fox), publisher_id) is None
        assert fox.evaluate("() => window.sfu.lastError") is None, page_state(fox)
        poll(
            lambda: width_of(viewer, publisher_id) == TOP_WIDTH,
            f"the Chromium viewer to decode {TOP_WIDTH} px",
            RAMP_UP_TIMEOUT,
            lambda: page_stats(viewer),
        )
        watched = watch_decoding(viewer, publisher_id, 3.0)
        print(f"Chromium viewer in the same room: {watched.fps:.1f} fps of {H264}")
        assert watched.fps >= MIN_FPS and codecs(viewer)["inbound"][publisher_id] == H264
        assert fox.uncaught_errors == []
        for page in (publisher, viewer):
            assert page.uncaught_errors == [], page.url
            page.close(run_before_unload=True)


def test_h264_simulcast_publisher_is_decoded_by_chromium_subscribers(room: Room) -> None:
    start = time.monotonic()

    def encoding_h264_layers() -> bool:
        before = {s["rid"]: s["framesEncoded"] for s in page_stats(room.publisher)["outbound"]}
        time.sleep(0.5)
        after = {s["rid"]: s["framesEncoded"] for s in page_stats(room.publisher)["outbound"]}
        growing = {rid for rid in RIDS if after.get(rid, 0) > before.get(rid, 0)}
        outbound = codecs(room.publisher)["outbound"]
        return growing == set(RIDS) and all(outbound[rid][0] == H264 for rid in RIDS)

    poll(
        encoding_h264_layers,
        "q, h and f encoding H.264",
        RAMP_UP_TIMEOUT,
        lambda: (codecs(room.publisher), page_stats(room.publisher)["outbound"]),
    )
    encoders = {rid: enc for rid, (_, enc) in codecs(room.publisher)["outbound"].items()}
    print(f"\npublisher: q/h/f in H.264 after {time.monotonic() - start:.1f}s, {encoders}")
    answer = room.publisher.evaluate("() => window.sfu.publishPc.remoteDescription.sdp")
    fmtp = [line for line in answer.splitlines() if "profile-level-id" in line]
    print(f"publish answer: {fmtp}")

    for index, page in enumerate(room.subscribers):
        poll(
            lambda page=page: width_of(page, room.publisher_id) == TOP_WIDTH,
            f"subscriber {index} to decode {TOP_WIDTH} px",
            RAMP_UP_TIMEOUT,
            lambda page=page: (page_stats(page)["inbound"], page_state(page)),
        )
        assert codecs(page)["inbound"][room.publisher_id] == H264
        watched = watch_decoding(page, room.publisher_id, 3.0)
        print(
            f"subscriber {index}: {H264} {watched.last['frameWidth']}x"
            f"{watched.last['frameHeight']}, {watched.fps:.1f} fps decoded, longest gap "
            f"{watched.longest_gap:.2f}s, keyFramesDecoded {watched.last['keyFramesDecoded']}"
        )
        assert watched.fps >= MIN_FPS, watched
        assert watched.longest_gap < MAX_FREEZE, watched


def test_h264_layer_switches_keep_decoding(room: Room) -> None:
    """Down to q and back up to f: every switch waits for the target layer's key
    frame (a PLI to that layer's SSRC), so the picture never stops for long."""
    page = room.subscribers[0]
    poll(
        lambda: width_of(page, room.publisher_id) == TOP_WIDTH,
        f"{TOP_WIDTH} px before switching",
        RAMP_UP_TIMEOUT,
        lambda: page_stats(page)["inbound"],
    )
    for choice, width, seconds in (("low", LOW_WIDTH, 5.0), ("high", TOP_WIDTH, 9.0)):
        assert page.evaluate(f"() => window.sfu.setMaxQuality('{room.publisher_id}', '{choice}')")
        watched = watch_decoding(page, room.publisher_id, seconds)
        switched_at = next(
            (i for i, w in enumerate(watched.widths) if w == width), len(watched.widths)
        )
        switch_seconds = switched_at * watched.seconds / max(1, len(watched.widths))
        print(
            f"\n{choice}: {width} px after about {switch_seconds:.1f}s; {watched.fps:.1f} fps,"
            f" longest gap {watched.longest_gap:.2f}s, key frames decoded"
            f" +{watched.delta('keyFramesDecoded')}, freezes +{watched.delta('freezeCount')}"
        )
        assert watched.widths[-1] == width, watched
        assert watched.longest_gap < MAX_FREEZE, watched
        assert codecs(page)["inbound"][room.publisher_id] == H264
    other = watch_decoding(room.subscribers[1], room.publisher_id, 2.0)
    assert set(other.widths) == {TOP_WIDTH}, "the other subscriber stayed on f"


def test_a_small_h264_tile_gets_a_lower_layer(room: Room) -> None:
    """The page asks for no more than its tile's size; the server knows each H.264
    layer's size from its SPS, so a tile narrower than 320 px gets h, not f."""
    page = room.subscribers[1]
    page.set_viewport_size({"width": 900, "height": 700})  # three tiles in a row
    try:
        start = time.monotonic()
        poll(
            lambda: 0 < width_of(page, room.publisher_id) <= 320,
            "a layer no wider than 320 px for a tile about 290 px wide",
            RAMP_UP_TIMEOUT,
            lambda: (page.evaluate("() => window.sfu.trackSettings"), page_stats(page)),
        )
        watched = watch_decoding(page, room.publisher_id, 2.0)
        print(
            f"\nsmall tile: {watched.widths[-1]} px after {time.monotonic() - start:.1f}s,"
            f" asked for {list(page.evaluate('() => window.sfu.trackSettings').values())}"
        )
        assert max(watched.widths) <= 320 and watched.longest_gap < MAX_FREEZE, watched
    finally:
        page.set_viewport_size(VIEWPORT)
