"""An AV1 publisher in headless Chromium, decoded by Chromium subscribers.

The demo page's ``?codec=av1`` offers only AV1 (``setCodecPreferences``); the test asks
for ``scalabilityMode`` L1T3 on the camera's encoding (the demo page has no setting for
it yet, so an init script adds it to ``addTransceiver``). Chromium 156 encodes it with
libaom and sends the dependency descriptor; the server forwards it to each subscriber
that negotiated it, rewritten for the decode target it gets: all three temporal layers
for one, only the base layer (a quarter of the frames) for one capped by preference
(``track_settings`` ``max_temporal_layer``). Run with ``-s`` to see the measured
figures.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
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
    watch_decoding,
)
from server import ServerUrl, serve_module

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

AV1 = "video/AV1"
SCALABILITY_MODE = "L1T3"
TOP_WIDTH = 640
TIMEOUT = 20.0
MIN_FPS = 10.0
"""The fake camera sends 20 fps; a loaded 2-core machine decodes fewer."""
MAX_FREEZE = 1.0
CAPPED_FPS_RATIO = 0.6
"""The base layer of L1T3 is a quarter of the frames: at most this share of the full
rate (allowing for a loaded machine decoding the full stream slowly)."""
DEPENDENCY_DESCRIPTOR = "dependency-descriptor-rtp-header-extension"

SCALABILITY_JS = """(() => {
    const addTransceiver = RTCPeerConnection.prototype.addTransceiver;
    RTCPeerConnection.prototype.addTransceiver = function (trackOrKind, init) {
        const kind = typeof trackOrKind === "string" ? trackOrKind : trackOrKind.kind;
        if (kind === "video") {
            const encodings = init && init.sendEncodings && init.sendEncodings.length
                ? init.sendEncodings : [{}];
            init = { ...(init || {}),
                     sendEncodings: encodings.map((e) => ({ ...e, scalabilityMode: "$MODE" })) };
        }
        return addTransceiver.call(this, trackOrKind, init);
    };
})();""".replace("$MODE", SCALABILITY_MODE)

STATS_JS = """async () => {
    const result = { outbound: null, inbound: null };
    const codecOf = (report, s) => (report.get(s.codecId) || {}).mimeType || null;
    const pub = window.sfu.publishPc;
    if (pub) {
        const report = await pub.getStats();
        for (const s of report.values()) {
            if (s.type === "outbound-rtp" && s.kind === "video") {
                result.outbound = { codec: codecOf(report, s), mode: s.scalabilityMode,
                                    encoder: s.encoderImplementation, frames: s.framesEncoded };
            }
        }
    }
    const sub = window.sfu.subscribePc;
    if (sub) {
        const report = await sub.getStats();
        for (const s of report.values()) {
            if (s.type === "inbound-rtp" && s.kind === "video") {
                result.inbound = { codec: codecOf(report, s), decoder: s.decoderImplementation };
            }
        }
    }
    return result;
}"""


@pytest.fixture(scope="module")
def sfu_server() -> Iterator[ServerUrl]:
    yield from serve_module()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
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
            viewport={"width": 1600, "height": 1200},
        )
        try:
            yield context
        finally:
            context.close()


def sent_settings(page: Any, track: str) -> dict[str, Any]:
    """The track settings the page's SDK sent last for ``track``."""
    return page.evaluate("(id) => window.sfu.session._sentSettings[id] || {}", track)


def poll(page: Any, check: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {page_state(page)}")
        time.sleep(0.25)


def test_av1_l1t3_publisher_is_decoded_with_the_dependency_descriptor(
    chromium: Any, sfu_server: ServerUrl
) -> None:
    name = f"av1-{uuid.uuid4().hex[:8]}"
    publisher = open_demo_page(
        chromium, f"{sfu_server}/?room={name}&name=pub&codec=av1&simulcast=0", SCALABILITY_JS
    )
    viewer = open_demo_page(chromium, f"{sfu_server}/?room={name}&name=viewer&publish=0")
    capped = open_demo_page(chromium, f"{sfu_server}/?room={name}&name=capped&publish=0")
    publisher_id = publisher.evaluate("() => window.sfu.participantId")
    start = time.monotonic()

    def inbound(page: Any) -> dict[str, Any]:
        return inbound_video_of(page_stats(page), publisher_id) or {}

    poll(viewer, lambda: inbound(viewer).get("frameWidth") == TOP_WIDTH, f"{TOP_WIDTH} px")
    poll(capped, lambda: inbound(capped).get("framesDecoded", 0) > 0, "the capped viewer")
    track = inbound(capped)["trackId"]
    assert capped.evaluate("(id) => window.sfu.setMaxTemporalLayer(id, 0)", publisher_id)
    sent = publisher.evaluate(STATS_JS)["outbound"]
    received = viewer.evaluate(STATS_JS)["inbound"]
    capped.wait_for_timeout(1000)  # the cap takes effect at the next frame
    watched_capped = watch_decoding(capped, publisher_id, 3.0)
    watched = watch_decoding(viewer, publisher_id, 3.0)
    print(
        f"\npublisher: {sent}; viewer: {received}, {TOP_WIDTH} px after"
        f" {time.monotonic() - start:.1f}s, {watched.fps:.1f} fps, longest gap"
        f" {watched.longest_gap:.2f}s; capped to temporal layer 0: {watched_capped.fps:.1f}"
        f" fps, longest gap {watched_capped.longest_gap:.2f}s"
    )
    assert sent["codec"] == AV1 and sent["mode"] == SCALABILITY_MODE, sent
    assert received["codec"] == AV1, received
    for page in (viewer, capped):
        answer = page.evaluate("() => window.sfu.subscribePc.localDescription.sdp")
        assert DEPENDENCY_DESCRIPTOR in answer, "the subscriber negotiated the descriptor"
    assert watched.fps >= MIN_FPS, watched
    assert watched.longest_gap < MAX_FREEZE, watched
    assert 0 < watched_capped.fps <= CAPPED_FPS_RATIO * watched.fps, (watched_capped, watched)
    assert watched_capped.longest_gap < MAX_FREEZE, watched_capped
    assert sent_settings(capped, track)["max_temporal_layer"] == 0
    for page in (publisher, viewer, capped):
        assert page.uncaught_errors == [], page.url
        assert page.evaluate("() => window.sfu.lastError") is None, page_state(page)
        page.close(run_before_unload=True)
