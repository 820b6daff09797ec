"""A subscriber on a lossy link keeps decoding: NACK/RTX and PLI repair 5 % random loss.

A headless Chromium subscriber runs in its own network namespace behind a veth pair;
an nftables rule inside the namespace drops 5 % of the UDP packets it receives from
the server, at random (``tc netem`` does not exist on these machines). The publisher
is a Chromium tab on loopback (VP8 simulcast, the demo page's default). Needs root and
nftables; skips otherwise. Run with ``-s`` to see the measured figures.
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
    watch_decoding,
)
from netns import (
    VethNamespace,
    netns_unavailable_reason,
    nftables_unavailable_reason,
    veth_namespace,
)
from server import ServerUrl, serve_module

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

LOSS_PERCENT = 5
WATCH_SECONDS = 15.0
MAX_FREEZE = 1.0
"""Seconds the subscriber may go without a new decoded frame."""
MIN_FPS = 10.0
"""The fake camera sends 20 fps; a loaded 2-core machine decodes fewer."""
START_TIMEOUT = 30.0
VIEWPORT = {"width": 1600, "height": 1200}
COUNTERS = ("packetsLost", "nackCount", "pliCount", "freezeCount", "keyFramesDecoded")
RETRANSMITTED_JS = """async () => {
    let total = 0;
    for (const s of (await window.sfu.subscribePc.getStats()).values()) {
        if (s.type === "inbound-rtp" && s.kind === "video") {
            total += s.retransmittedPacketsReceived ?? 0;
        }
    }
    return total;
}"""
"""Video packets the subscriber received on RTX streams (Chromium's inbound-rtp): the
server answers its NACKs there (RFC 4588)."""


@pytest.fixture(scope="module")
def link() -> Iterator[VethNamespace]:
    reason = netns_unavailable_reason() or nftables_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with veth_namespace("sfuloss") as created:
        yield created


@pytest.fixture(scope="module")
def sfu_server(link: VethNamespace) -> Iterator[ServerUrl]:
    yield from serve_module(host="0.0.0.0", ice_addresses=["127.0.0.1", link.host_address])


@dataclass
class Room:
    publisher: Any
    publisher_id: str
    subscriber: Any
    """the Chromium tab inside ``link``'s namespace"""
    link: VethNamespace


@pytest.fixture(scope="module")
def room(link: VethNamespace, sfu_server: ServerUrl) -> Iterator[Room]:
    from playwright.sync_api import sync_playwright

    name = f"lossy-{uuid.uuid4().hex[:8]}"
    remote_origin = f"http://{link.host_address}:{sfu_server.rsplit(':', 1)[1]}"
    with (
        tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profiles,
        sync_playwright() as pw,
    ):
        common = {"headless": True, "viewport": VIEWPORT}
        loopback = pw.chromium.launch_persistent_context(
            f"{profiles}/loopback", executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS, **common
        )
        try:
            lossy = pw.chromium.launch_persistent_context(
                f"{profiles}/lossy",
                executable_path=str(link.wrapper(CHROMIUM_PATH, profiles)),
                args=[
                    *CHROMIUM_ARGS,
                    f"--unsafely-treat-insecure-origin-as-secure={remote_origin}",
                ],
                **common,
            )
            try:
                publisher = open_demo_page(loopback, f"{sfu_server}/?room={name}&name=publisher")
                lossy_url = f"{remote_origin}/?room={name}&name=lossy&publish=0"
                subscriber = open_demo_page(lossy, lossy_url)
                publisher_id = publisher.evaluate("() => window.sfu.participantId")
                yield Room(publisher, publisher_id, subscriber, link)
                for page in (publisher, subscriber):
                    assert page.uncaught_errors == [], page.url
            finally:
                link.undrop_downlink()
                lossy.close()
        finally:
            loopback.close()


def test_five_percent_loss_is_repaired_without_freezes(room: Room) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while (inbound_video_of(page_stats(room.subscriber), room.publisher_id) or {}).get(
        "framesDecoded", 0
    ) < 20:
        assert time.monotonic() < deadline, (
            f"the subscriber in the namespace never decoded: {page_state(room.subscriber)}"
        )
        time.sleep(0.25)
    clean = watch_decoding(room.subscriber, room.publisher_id, 3.0)

    room.link.drop_downlink(LOSS_PERCENT)
    retransmitted = room.subscriber.evaluate(RETRANSMITTED_JS)
    watched = watch_decoding(room.subscriber, room.publisher_id, WATCH_SECONDS)
    dropped = room.link.dropped_packets()
    figures = {counter: watched.delta(counter) for counter in COUNTERS}
    figures["retransmittedPacketsReceived"] = (
        room.subscriber.evaluate(RETRANSMITTED_JS) - retransmitted
    )
    print(
        f"\nclean link: {clean.fps:.1f} fps at {clean.last['frameWidth']} px"
        f"\n{LOSS_PERCENT} % loss for {watched.seconds:.0f}s: {dropped} packets dropped by"
        f" nftables; {watched.fps:.1f} fps decoded, longest gap {watched.longest_gap:.2f}s,"
        f" widths {sorted(set(watched.widths))}; {figures}"
    )
    assert dropped > 0, "the loss rule dropped nothing"
    assert figures["packetsLost"] > 0 or figures["nackCount"] > 0, figures
    assert figures["nackCount"] > 0, "the subscriber never NACKed: no repair was needed?"
    assert figures["retransmittedPacketsReceived"] > 0, f"no repair came on RTX: {figures}"
    assert watched.longest_gap < MAX_FREEZE, (
        f"froze for {watched.longest_gap:.2f}s: {watched}; {page_state(room.subscriber)}"
    )
    assert watched.fps >= MIN_FPS, watched
