"""Simulcast end to end: a headless Chromium publisher sends three layers (q/h/f), and
subscribers get the layer their link and their preferences allow.

One subscriber runs on loopback; another is a Chromium launched inside a network
namespace reached over a veth pair whose root-side egress (the namespace's downlink) is
shaped with a ``tc`` token bucket. Needs root (namespaces, veth, tc); skips otherwise.
Run with ``-s`` to see the measured figures.
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
    Stats,
    chromium_available,
    open_demo_page,
    page_state,
    page_stats,
    wait_until,
)
from netns import VethNamespace, netns_unavailable_reason, veth_namespace
from server import ServerUrl, serve_module

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

RIDS = ("q", "h", "f")
TOP_WIDTH = 640  # Chromium's fake camera at the 640x480 the page asks for
LOW_WIDTH = 160  # rid q: scaleResolutionDownBy 4
RAMP_UP_TIMEOUT = 20.0
CLIMB_BACK_LIMIT = 10.0
# Big enough that one remote tile renders wider than the top layer, so the size the
# page reports (max_width/max_height) never caps a subscriber below 640.
VIEWPORT = {"width": 1600, "height": 1200}


@pytest.fixture(scope="module")
def link() -> Iterator[VethNamespace]:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with veth_namespace() as created:
        yield created


@pytest.fixture(scope="module")
def sfu_server(link: VethNamespace) -> Iterator[ServerUrl]:
    """The embedded server on every interface, ICE on loopback and on the veth's root
    side (named ``sfu_server`` so a failing test gets its log in the report)."""
    yield from serve_module(host="0.0.0.0", ice_addresses=["127.0.0.1", link.host_address])


@dataclass
class Browsers:
    loopback: Any
    """Chromium in the root namespace (publisher, unconstrained subscribers)"""
    constrained: Any
    """Chromium inside ``link``'s namespace"""


@pytest.fixture(scope="module")
def browsers(link: VethNamespace, sfu_server: ServerUrl) -> Iterator[Browsers]:
    from playwright.sync_api import sync_playwright

    port = sfu_server.rsplit(":", 1)[1]
    remote_origin = f"http://{link.host_address}:{port}"
    with (
        tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profiles,
        sync_playwright() as pw,
    ):
        common = {"headless": True, "viewport": VIEWPORT}
        loopback = pw.chromium.launch_persistent_context(
            f"{profiles}/loopback",
            executable_path=str(CHROMIUM_PATH),
            args=CHROMIUM_ARGS,
            **common,
        )
        try:
            constrained = pw.chromium.launch_persistent_context(
                f"{profiles}/constrained",
                executable_path=str(link.wrapper(CHROMIUM_PATH, profiles)),
                args=[
                    *CHROMIUM_ARGS,
                    # The page is served over plain http from a non-loopback address.
                    f"--unsafely-treat-insecure-origin-as-secure={remote_origin}",
                ],
                **common,
            )
            try:
                yield Browsers(loopback, constrained)
            finally:
                constrained.close()
        finally:
            loopback.close()


@dataclass
class Room:
    publisher: Any
    publisher_id: str
    direct: Any
    """subscriber on loopback"""
    constrained: Any
    """subscriber inside the namespace"""
    link: VethNamespace


@pytest.fixture(scope="module")
def room(browsers: Browsers, sfu_server: ServerUrl, link: VethNamespace) -> Iterator[Room]:
    name = f"simulcast-{uuid.uuid4().hex[:8]}"
    port = sfu_server.rsplit(":", 1)[1]
    publisher = open_demo_page(browsers.loopback, f"{sfu_server}/?room={name}&name=publisher")
    direct = open_demo_page(browsers.loopback, f"{sfu_server}/?room={name}&name=direct&publish=0")
    shaped = f"http://{link.host_address}:{port}/?room={name}&name=shaped&publish=0"
    constrained = open_demo_page(browsers.constrained, shaped)
    publisher_id = publisher.evaluate("() => window.sfu.participantId")
    yield Room(publisher, publisher_id, direct, constrained, link)
    link.unlimit_downlink()
    for page in (publisher, direct, constrained):
        assert page.uncaught_errors == [], page.url
        page.close(run_before_unload=True)


# --- stats ---------------------------------------------------------------------------


def outbound_video(stats: Stats) -> dict[str, dict[str, Any]]:
    """rid → the publisher's outbound-rtp video stats."""
    return {s["rid"]: s for s in stats["outbound"] if s["kind"] == "video" and s["rid"]}


def inbound_video(stats: Stats, participant_id: str) -> dict[str, Any] | None:
    for s in stats["inbound"]:
        if s["kind"] == "video" and s["participantId"] == participant_id:
            return s
    return None


def received(page: Any, participant_id: str) -> tuple[int, int, int]:
    """(frameWidth, frameHeight, framesDecoded) of the video from ``participant_id``."""
    s = inbound_video(page_stats(page), participant_id)
    return (s["frameWidth"], s["frameHeight"], s["framesDecoded"]) if s else (0, 0, 0)


def subscriber_state(page: Any, participant_id: str) -> dict[str, Any]:
    """What a failing subscriber assertion prints: what it receives and what it asked for."""
    return {
        "received": received(page, participant_id),
        "tiles": page.evaluate("() => window.sfu.tiles()"),
        "track_settings": page.evaluate("() => window.sfu.trackSettings"),
        "last_error": page.evaluate("() => window.sfu.lastError"),
    }


def encoding_rids(page: Any, seconds: float = 1.0) -> tuple[set[str], dict[str, Any]]:
    """The rids whose framesEncoded grew over ``seconds``, and the latest stats by rid."""
    before = outbound_video(page_stats(page))
    time.sleep(seconds)
    after = outbound_video(page_stats(page))
    growing = {
        rid
        for rid, s in after.items()
        if s["framesEncoded"] > before.get(rid, {}).get("framesEncoded", 0)
    }
    return growing, after


def summary(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("framesEncoded", "frameWidth", "active", "qualityLimitationReason", "targetBitrate")
    return {rid: {k: s.get(k) for k in keys} for rid, s in stats.items()}


def assert_decoding(page: Any, participant_id: str, seconds: float, max_width: int) -> list[int]:
    """framesDecoded grows in every second of ``seconds`` and the width stays
    ≤ ``max_width``; returns the widths seen."""
    widths = []
    _, _, last = received(page, participant_id)
    for _ in range(int(seconds)):
        time.sleep(1.0)
        width, _, decoded = received(page, participant_id)
        assert decoded > last, (
            f"video froze at frame {decoded};"
            f" inbound: {inbound_video(page_stats(page), participant_id)}; {page_state(page)}"
        )
        assert 0 < width <= max_width, f"received {width} px wide, expected ≤ {max_width}"
        widths.append(width)
        last = decoded
    return widths


# --- the tests -----------------------------------------------------------------------


def test_publisher_encodes_three_layers_and_direct_subscriber_gets_the_top(room: Room):
    start = time.monotonic()
    latest: dict[str, Any] = {}

    def all_three() -> bool:
        growing, stats = encoding_rids(room.publisher, 0.5)
        latest.update(stats)
        return growing >= set(RIDS) and all(stats[rid].get("frameWidth", 0) > 0 for rid in RIDS)

    wait_until(all_three, "framesEncoded growing for q, h and f", RAMP_UP_TIMEOUT, lambda: latest)
    layers = {rid: (s["frameWidth"], s["frameHeight"]) for rid, s in latest.items()}
    print(f"\npublisher: 3 layers encoding after {time.monotonic() - start:.1f}s: {layers}")
    assert layers["f"][0] == TOP_WIDTH and layers["q"][0] == LOW_WIDTH, layers

    start = time.monotonic()
    wait_until(
        lambda: received(room.direct, room.publisher_id)[0] == TOP_WIDTH,
        f"the loopback subscriber to receive {TOP_WIDTH} px",
        RAMP_UP_TIMEOUT,
        lambda: (subscriber_state(room.direct, room.publisher_id), page_state(room.direct)),
    )
    width, height, _ = received(room.direct, room.publisher_id)
    print(f"loopback subscriber: {width}x{height} after {time.monotonic() - start:.1f}s")
    assert (width, height) == (640, 480)
    # The tile's own readout refreshes once a second.
    wait_until(
        lambda: (
            room.direct.evaluate("() => window.sfu.tiles()")
            .get(room.publisher_id, {})
            .get("frameWidth")
            == TOP_WIDTH
        ),
        f"the tile to show {TOP_WIDTH} px",
        5,
        lambda: room.direct.evaluate("() => window.sfu.tiles()"),
    )


def test_constrained_subscriber_gets_a_lower_layer_and_climbs_back(room: Room):
    start = time.monotonic()
    wait_until(
        lambda: received(room.constrained, room.publisher_id)[0] == TOP_WIDTH,
        f"the subscriber in the namespace to receive {TOP_WIDTH} px before the limit",
        RAMP_UP_TIMEOUT,
        lambda: (
            subscriber_state(room.constrained, room.publisher_id),
            page_state(room.constrained),
        ),
    )
    print(f"\nnamespace subscriber: {TOP_WIDTH} px after {time.monotonic() - start:.1f}s")
    # A few seconds unconstrained first: the link drops during a call, with an estimate.
    assert_decoding(room.constrained, room.publisher_id, 3, TOP_WIDTH)

    room.link.limit_downlink("300kbit", "16kbit", "100ms")
    start = time.monotonic()
    wait_until(
        lambda: 0 < received(room.constrained, room.publisher_id)[0] <= 320,
        "a layer ≤ 320 px on the 300 kbit/s link",
        RAMP_UP_TIMEOUT,
        lambda: (subscriber_state(room.constrained, room.publisher_id), room.link.qdisc()),
    )
    dropped_after = time.monotonic() - start
    widths = assert_decoding(room.constrained, room.publisher_id, 5, 320)
    print(f"300 kbit/s: down to {widths[0]} px after {dropped_after:.1f}s; widths {widths}")

    room.link.unlimit_downlink()
    start = time.monotonic()
    wait_until(
        lambda: received(room.constrained, room.publisher_id)[0] == TOP_WIDTH,
        f"the climb back to {TOP_WIDTH} px once the limit is lifted",
        CLIMB_BACK_LIMIT,
        lambda: (subscriber_state(room.constrained, room.publisher_id), room.link.qdisc()),
    )
    climb = time.monotonic() - start
    print(f"limit lifted: back to {TOP_WIDTH} px in {climb:.1f}s")


def test_low_preference_and_dynacast(room: Room):
    subscribers = (room.direct, room.constrained)
    for page in subscribers:
        assert page.evaluate(f"() => window.sfu.setMaxQuality('{room.publisher_id}', 'low')")
    for page in subscribers:
        wait_until(
            lambda page=page: received(page, room.publisher_id)[0] == LOW_WIDTH,
            f"{LOW_WIDTH} px after asking for low",
            RAMP_UP_TIMEOUT,
            lambda page=page: subscriber_state(page, room.publisher_id),
        )
    widths = assert_decoding(room.direct, room.publisher_id, 3, LOW_WIDTH)
    assert set(widths) == {LOW_WIDTH}
    settings = room.direct.evaluate("() => window.sfu.trackSettings")
    assert [s["max_spatial_layer"] for s in settings.values()] == [0], settings

    # Nobody wants h or f: the publisher stops encoding them, q goes on.
    def upper_paused() -> bool:
        growing, stats = encoding_rids(room.publisher, 1.0)
        inactive = {rid for rid, s in stats.items() if s["active"] is False}
        return "q" in growing and {"h", "f"} <= (inactive | (set(RIDS) - growing))

    start = time.monotonic()
    wait_until(
        upper_paused,
        "h and f paused (dynacast)",
        RAMP_UP_TIMEOUT,
        lambda: encoding_rids(room.publisher),
    )
    print(f"\ndynacast: h and f paused {time.monotonic() - start:.1f}s after both asked for low")
    print(f"publisher: {summary(encoding_rids(room.publisher)[1])}")

    # One subscriber wants high again: the layers resume and it gets 640.
    room.direct.evaluate(f"() => window.sfu.setMaxQuality('{room.publisher_id}', 'high')")
    start = time.monotonic()
    wait_until(
        lambda: encoding_rids(room.publisher, 0.5)[0] >= set(RIDS),
        "h and f encoding again",
        RAMP_UP_TIMEOUT,
        lambda: summary(encoding_rids(room.publisher)[1]),
    )
    resumed = time.monotonic() - start
    wait_until(
        lambda: received(room.direct, room.publisher_id)[0] == TOP_WIDTH,
        f"{TOP_WIDTH} px after asking for high",
        RAMP_UP_TIMEOUT,
        lambda: subscriber_state(room.direct, room.publisher_id),
    )
    print(
        f"dynacast: layers resumed after {resumed:.1f}s, loopback subscriber back to "
        f"{TOP_WIDTH} px after {time.monotonic() - start:.1f}s"
    )
    assert received(room.constrained, room.publisher_id)[0] == LOW_WIDTH
    for page in (room.publisher, *subscribers):
        assert page.evaluate("() => window.sfu.lastError") is None, page_state(page)
