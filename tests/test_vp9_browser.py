"""VP9 SVC end to end: a headless Chromium publisher sends one VP9 encoding with
``scalabilityMode`` L3T3_KEY (the demo page's ``?codec=vp9&svc=L3T3_KEY``), and each
subscriber gets the spatial layers its preferences and its link allow, out of that one
stream.

Chromium 156 sends a 640x480 camera asked for L3T3_KEY as two spatial layers (320x240
and 640x480: its ``outbound-rtp`` says L2T3_KEY, a third layer would be below libvpx's
minimum size) with three temporal layers. One
subscriber is unconstrained; one caps the track at its lowest layer (the page's
``setMaxQuality(..., "low")``, a ``set_preferences`` message); one runs inside a
network namespace whose downlink a ``tc`` token bucket shapes, then lifts. Needs root
for the namespace (skips otherwise). Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
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
    wait_until,
    watch_decoding,
)
from firefox import firefox, firefox_available, open_demo
from netns import VethNamespace, netns_unavailable_reason, veth_namespace
from server import ServerUrl, serve_module

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

TOP_WIDTH = 640
SENT_MODES = {"L3T3_KEY", "L2T3_KEY"}
"""What Chromium reports sending for L3T3_KEY: L2T3_KEY at 640x480."""
LOW_WIDTH = 320
VP9 = "video/VP9"
RAMP_UP_TIMEOUT = 20.0
MIN_FPS = 8.0
"""The fake camera sends 20 fps; a loaded 2-core machine decodes fewer."""
MAX_FREEZE = 1.0
"""Seconds a subscriber may go without a new decoded frame, layer switches included."""
VIEWPORT = {"width": 1600, "height": 1200}
"""Big enough that a remote tile renders wider than the top layer."""

CODEC_JS = """async (participantId) => {
    const pc = window.sfu.subscribePc;
    if (!pc) return null;
    const report = await pc.getStats();
    for (const s of report.values()) {
        if (s.type !== "inbound-rtp" || s.kind !== "video") continue;
        const info = window.sfu.subscribeTracks[s.mid];
        if (info && info.participant_id === participantId) {
            const codec = report.get(s.codecId);
            return codec ? codec.mimeType : null;
        }
    }
    return null;
}"""

OUTBOUND_JS = """async () => {
    const report = await window.sfu.publishPc.getStats();
    const out = [];
    for (const s of report.values()) {
        if (s.type !== "outbound-rtp" || s.kind !== "video") continue;
        const codec = report.get(s.codecId);
        out.push({ mimeType: codec ? codec.mimeType : null, scalabilityMode: s.scalabilityMode,
                   frameWidth: s.frameWidth, framesEncoded: s.framesEncoded,
                   qualityLimitationReason: s.qualityLimitationReason });
    }
    return out;
}"""


@pytest.fixture(scope="module")
def link() -> Iterator[VethNamespace]:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with veth_namespace("vp9") as created:
        yield created


@pytest.fixture(scope="module")
def sfu_server(link: VethNamespace) -> Iterator[ServerUrl]:
    yield from serve_module(host="0.0.0.0", ice_addresses=["127.0.0.1", link.host_address])


@dataclass
class Room:
    name: str
    loopback: Any
    """The Chromium on loopback (publisher, direct and capped subscribers)."""
    publisher: Any
    publisher_id: str
    direct: Any
    capped: Any
    constrained: Any
    link: VethNamespace


@pytest.fixture(scope="module")
def room(link: VethNamespace, sfu_server: ServerUrl) -> Iterator[Room]:
    from playwright.sync_api import sync_playwright

    port = sfu_server.rsplit(":", 1)[1]
    remote = f"http://{link.host_address}:{port}"
    name = f"vp9-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profiles,
        sync_playwright() as pw,
    ):
        common = {"headless": True, "viewport": VIEWPORT}
        loopback = pw.chromium.launch_persistent_context(
            f"{profiles}/loopback", executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS,
            **common,
        )  # fmt: skip
        constrained_browser = pw.chromium.launch_persistent_context(
            f"{profiles}/constrained",
            executable_path=str(link.wrapper(CHROMIUM_PATH, profiles)),
            args=[*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={remote}"],
            **common,
        )
        try:
            publisher = open_demo_page(
                loopback, f"{sfu_server}/?room={name}&name=svc&codec=vp9&svc=L3T3_KEY"
            )
            direct = open_demo_page(loopback, f"{sfu_server}/?room={name}&name=direct&publish=0")
            capped = open_demo_page(loopback, f"{sfu_server}/?room={name}&name=capped&publish=0")
            constrained = open_demo_page(
                constrained_browser, f"{remote}/?room={name}&name=shaped&publish=0"
            )
            publisher_id = publisher.evaluate("() => window.sfu.participantId")
            yield Room(name, loopback, publisher, publisher_id, direct, capped, constrained, link)
            link.unlimit_downlink()
            for page in (publisher, direct, capped, constrained):
                assert page.uncaught_errors == [], page.url
                assert page.evaluate("() => window.sfu.lastError") is None, page_state(page)
                page.close(run_before_unload=True)
        finally:
            constrained_browser.close()
            loopback.close()


def width_of(page: Any, participant_id: str) -> int:
    inbound = inbound_video_of(page_stats(page), participant_id)
    return inbound["frameWidth"] if inbound else 0


def describe(watched: Any) -> str:
    return (
        f"{watched.last.get('frameWidth')}x{watched.last.get('frameHeight')}, {watched.fps:.1f}"
        f" fps, longest gap {watched.longest_gap:.2f}s, widths {sorted(set(watched.widths))},"
        f" key frames +{watched.delta('keyFramesDecoded')}, freezes +{watched.delta('freezeCount')}"
    )


def test_an_unconstrained_subscriber_decodes_the_top_spatial_layer(room: Room) -> None:
    start = time.monotonic()
    outbound = wait_until(
        lambda: [
            s
            for s in room.publisher.evaluate(OUTBOUND_JS)
            if s["mimeType"] == VP9 and s["scalabilityMode"] in SENT_MODES and s["framesEncoded"]
        ],
        "the publisher to encode VP9 L3T3_KEY",
        RAMP_UP_TIMEOUT,
        lambda: room.publisher.evaluate(OUTBOUND_JS),
    )
    answer = room.publisher.evaluate("() => window.sfu.publishPc.remoteDescription.sdp")
    assert "VP9/90000" in answer and "a=simulcast" not in answer
    wait_until(
        lambda: width_of(room.direct, room.publisher_id) == TOP_WIDTH,
        f"the direct subscriber to decode {TOP_WIDTH} px",
        RAMP_UP_TIMEOUT,
        lambda: (page_stats(room.direct), page_state(room.direct)),
    )
    assert room.direct.evaluate(CODEC_JS, room.publisher_id) == VP9
    watched = watch_decoding(room.direct, room.publisher_id, 3.0)
    print(
        f"\npublisher {outbound}; direct after {time.monotonic() - start:.1f}s: {describe(watched)}"
    )
    assert watched.fps >= MIN_FPS and watched.longest_gap < MAX_FREEZE, watched
    assert set(watched.widths) == {TOP_WIDTH}


def test_a_subscriber_capped_by_preference_gets_the_low_spatial_layer(room: Room) -> None:
    page = room.capped
    wait_until(
        lambda: width_of(page, room.publisher_id) > 0,
        "the capped subscriber to decode",
        RAMP_UP_TIMEOUT,
        lambda: page_stats(page),
    )
    assert page.evaluate(f"() => window.sfu.setMaxQuality('{room.publisher_id}', 'low')")
    start = time.monotonic()
    wait_until(
        lambda: width_of(page, room.publisher_id) == LOW_WIDTH,
        f"{LOW_WIDTH} px once capped at the lowest layer",
        RAMP_UP_TIMEOUT,
        lambda: page_stats(page),
    )
    switched = time.monotonic() - start
    watched = watch_decoding(page, room.publisher_id, 3.0)
    print(f"\ncapped: {LOW_WIDTH} px after {switched:.1f}s; {describe(watched)}")
    assert set(watched.widths) == {LOW_WIDTH}
    assert watched.fps >= MIN_FPS and watched.longest_gap < MAX_FREEZE, watched
    wait_until(
        lambda: width_of(room.direct, room.publisher_id) == TOP_WIDTH,
        "the other subscriber to keep (or regain) the top layer",
        RAMP_UP_TIMEOUT,
        lambda: (page_stats(room.direct), room.publisher.evaluate(OUTBOUND_JS)),
    )

    assert page.evaluate(f"() => window.sfu.setMaxQuality('{room.publisher_id}', 'auto')")
    start = time.monotonic()
    wait_until(
        lambda: width_of(page, room.publisher_id) == TOP_WIDTH,
        f"{TOP_WIDTH} px again once the cap is lifted (at a key picture)",
        RAMP_UP_TIMEOUT,
        lambda: page_stats(page),
    )
    print(f"cap lifted: {TOP_WIDTH} px after {time.monotonic() - start:.1f}s")


def test_a_constrained_subscriber_decodes_the_low_layer_and_climbs_back(room: Room) -> None:
    page = room.constrained
    wait_until(
        lambda: width_of(page, room.publisher_id) == TOP_WIDTH,
        f"the subscriber in the namespace to decode {TOP_WIDTH} px before the limit",
        RAMP_UP_TIMEOUT,
        lambda: (page_stats(page), page_state(page)),
    )
    room.link.limit_downlink("300kbit", "16kbit", "100ms")
    start = time.monotonic()
    wait_until(
        lambda: 0 < width_of(page, room.publisher_id) <= LOW_WIDTH,
        f"a layer ≤ {LOW_WIDTH} px on the 300 kbit/s link",
        RAMP_UP_TIMEOUT,
        lambda: (page_stats(page), room.link.qdisc()),
    )
    dropped_after = time.monotonic() - start
    watched = watch_decoding(page, room.publisher_id, 4.0)
    print(f"\n300 kbit/s: {LOW_WIDTH} px after {dropped_after:.1f}s; {describe(watched)}")
    assert max(watched.widths) <= LOW_WIDTH, watched
    assert watched.frames > 0 and watched.longest_gap < 2 * MAX_FREEZE, watched

    room.link.unlimit_downlink()
    start = time.monotonic()
    wait_until(
        lambda: width_of(page, room.publisher_id) == TOP_WIDTH,
        f"the climb back to {TOP_WIDTH} px once the limit is lifted",
        RAMP_UP_TIMEOUT,
        lambda: (page_stats(page), room.link.qdisc()),
    )
    print(f"limit lifted: back to {TOP_WIDTH} px in {time.monotonic() - start:.1f}s")


def test_vp9_simulcast_switches_layers_at_their_key_frames(
    room: Room, sfu_server: ServerUrl
) -> None:
    """Three rids of VP9 in L1T3 (``?codec=vp9&svc=L1T3``) go the simulcast way: each a
    stream of its own, switched at its key frames (the producer's VP9 key-frame
    detection), picture ids continued across switches: from q (where a consumer
    starts before the layers are measured, or f) up to f, then down to q."""
    name = f"vp9-simulcast-{uuid.uuid4().hex[:8]}"
    publisher = open_demo_page(
        room.loopback, f"{sfu_server}/?room={name}&name=sim&codec=vp9&svc=L1T3"
    )
    viewer = open_demo_page(room.loopback, f"{sfu_server}/?room={name}&name=viewer&publish=0")
    try:
        publisher_id = publisher.evaluate("() => window.sfu.participantId")
        answer = publisher.evaluate("() => window.sfu.publishPc.remoteDescription.sdp")
        assert "VP9/90000" in answer and "a=simulcast:recv q;h;f" in answer
        for choice, width in (("auto", TOP_WIDTH), ("low", 160)):
            assert viewer.evaluate(f"() => window.sfu.setMaxQuality('{publisher_id}', '{choice}')")
            start = time.monotonic()
            wait_until(
                lambda width=width: width_of(viewer, publisher_id) == width,
                f"{width} px of VP9 simulcast ({choice})",
                RAMP_UP_TIMEOUT,
                lambda: page_stats(viewer),
            )
            watched = watch_decoding(viewer, publisher_id, 2.0)
            print(
                f"\n{choice}: {width} px after {time.monotonic() - start:.1f}s; {describe(watched)}"
            )
            assert watched.fps >= MIN_FPS and watched.longest_gap < MAX_FREEZE, watched
        assert viewer.evaluate(CODEC_JS, publisher_id) == VP9
        for page in (publisher, viewer):
            assert page.uncaught_errors == [], page.url
    finally:
        for page in (publisher, viewer):
            page.close(run_before_unload=True)


@pytest.mark.skipif(not firefox_available(), reason="needs /usr/bin/firefox-esr (firefox-esr)")
def test_a_firefox_subscriber_decodes_the_svc_stream(room: Room, sfu_server: ServerUrl) -> None:
    """Firefox (ESR 153) offered the VP9 track decodes it, all layers (its own
    profile and Marionette process: about 10 s of the test's time is its start)."""
    with firefox() as fox:
        open_demo(fox, sfu_server, room.name, "fox", publish=False)
        start = time.monotonic()
        wait_until(
            lambda: width_of(fox, room.publisher_id) == TOP_WIDTH,
            f"Firefox to decode {TOP_WIDTH} px of VP9",
            RAMP_UP_TIMEOUT,
            lambda: (page_stats(fox), fox.uncaught_errors),
        )
        watched = watch_decoding(fox, room.publisher_id, 3.0)
        took = time.monotonic() - start
        print(f"\nFirefox: {TOP_WIDTH} px after {took:.1f}s; {describe(watched)}")
        assert watched.fps >= MIN_FPS and watched.longest_gap < MAX_FREEZE, watched
        assert fox.uncaught_errors == []
