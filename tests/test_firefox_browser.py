"""Firefox in the room: the demo page in headless Firefox ESR (over Marionette, see
tests/firefox.py) with other Firefox and Chromium participants, against one
``python -m sfu serve`` for the module.

Two Firefox processes serve every test (a Firefox participant costs 25-55 % of a core
and 1 GB), each test room has at most three browser participants. The simulcast test
also runs a Chromium inside a network namespace behind a ``tc``-shaped veth (needs
root; it skips otherwise). Run with ``-s`` to see the decode rates measured.
"""

from __future__ import annotations

import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from browser import (
    CHROMIUM_ARGS,
    CHROMIUM_PATH,
    Stats,
    chromium_available,
    decode_fps,
    decoding_video,
    page_state,
    page_stats,
    receiving_audio,
    wait_for_stats,
    wait_until,
)
from firefox import FirefoxPage, firefox_available, firefox_pages, open_demo
from netns import VethNamespace, netns_unavailable_reason, veth_namespace
from server import ServerUrl, serve_module

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not firefox_available(),
        reason="Firefox tests need /usr/bin/firefox-esr (Debian package 'firefox-esr') "
        "and marionette-driver",
    ),
    pytest.mark.skipif(
        not chromium_available(),
        reason="Firefox tests meet Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

MEDIA_TIMEOUT = 45.0
UI_TIMEOUT = 20.0
MIN_FPS = 15.0
"""Frames decoded per second each participant must get from every other: the fake
cameras send 20 (Chromium) and 30 (Firefox)."""
STILL_DECODING_FPS = 1.0
"""Enough to show that a video decodes (framesDecoded grows)."""
FPS_WINDOW = 3.0
FPS_ATTEMPTS = 3
TOP_WIDTH = 640
LOW_WIDTH_LIMIT = 320
VIEWPORT = {"width": 1600, "height": 1200}
"""Big enough that every remote tile is in view (a hidden tile is paused) and renders
wider than the top layer."""


def unique_room(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- fixtures: one server, two Firefox processes, Chromium contexts -------------------


@pytest.fixture(scope="module")
def link() -> Iterator[VethNamespace | None]:
    """A namespace behind a veth pair for the constrained subscriber; None without root."""
    if netns_unavailable_reason() is not None:
        yield None
        return
    with veth_namespace("sfufx") as created:
        yield created


@pytest.fixture(scope="module")
def sfu_server(link: VethNamespace | None) -> Iterator[ServerUrl]:
    """The embedded server, with ICE also on the veth's root side when there is one
    (named ``sfu_server`` so a failing test gets its log in the report)."""
    if link is None:
        yield from serve_module()
    else:
        yield from serve_module(host="0.0.0.0", ice_addresses=["127.0.0.1", link.host_address])


@pytest.fixture(scope="module")
def foxes() -> Iterator[list[FirefoxPage]]:
    with firefox_pages(2) as pages:
        yield pages


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def chromium(playwright: Any) -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
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
def constrained_chromium(
    playwright: Any, link: VethNamespace | None, sfu_server: ServerUrl
) -> Iterator[Any]:
    """Chromium inside ``link``'s namespace, whose downlink the test shapes."""
    if link is None:
        pytest.skip(netns_unavailable_reason() or "no network namespace")
    port = sfu_server.rsplit(":", 1)[1]
    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(link.wrapper(CHROMIUM_PATH, profile)),
            headless=True,
            args=[
                *CHROMIUM_ARGS,
                # The page is served over plain http from a non-loopback address.
                f"--unsafely-treat-insecure-origin-as-secure=http://{link.host_address}:{port}",
            ],
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


@dataclass
class Participant:
    """A joined demo page, Firefox or Chromium; ``page`` has ``evaluate``."""

    name: str
    page: Any
    browser: str
    participant_id: str

    def uncaught_errors(self) -> list[str]:
        if isinstance(self.page, FirefoxPage):
            return self.page.uncaught_errors
        return list(self.page.uncaught_errors)

    def last_error(self) -> str | None:
        return self.page.evaluate("() => window.sfu.lastError")

    def tile_classes(self, participant_id: str) -> str | None:
        """The class list of ``participant_id``'s remote tile, None when there is none."""
        return self.page.evaluate(
            """(id) => {
                const tile = document.querySelector(
                    `.tile.remote[data-participant-id="${id}"]`);
                return tile ? tile.className : null;
            }""",
            participant_id,
        )


@pytest.fixture
def rooms(
    foxes: list[FirefoxPage], chromium: Any, sfu_server: ServerUrl
) -> Iterator[Callable[..., Participant]]:
    """join(room, name, browser="firefox"|"chromium", publish=True, context=None,
    base=None): a page that joined ``room``. Chromium pages close after the test; the
    Firefox pages are reused, left blank after the test (which leaves the room)."""
    free_foxes = list(foxes)
    chromium_pages: list[Any] = []

    def join(
        room: str,
        name: str,
        browser: str = "firefox",
        *,
        publish: bool = True,
        context: Any = None,
        base: str | None = None,
    ) -> Participant:
        if browser == "firefox":
            page = open_demo(free_foxes.pop(0), base or sfu_server, room, name, publish=publish)
        else:
            page = (context or chromium).new_page()
            chromium_pages.append(page)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.uncaught_errors = errors
            query = f"room={room}&name={name}" + ("" if publish else "&publish=0")
            page.goto(f"{base or sfu_server}/?{query}")
            page.wait_for_function(
                "() => window.sfu.participantId !== null", timeout=UI_TIMEOUT * 1000
            )
        participant_id = page.evaluate("() => window.sfu.participantId")
        return Participant(name, page, browser, participant_id)

    yield join
    for page in chromium_pages:
        page.close(run_before_unload=True)
    for fox in foxes:
        if fox not in free_foxes:
            fox.goto("about:blank")  # leaves the room: no media load for the next test


# --- helpers ----------------------------------------------------------------------


def wait_for_media(receiver: Participant, senders: list[Participant]) -> None:
    """``receiver`` decodes video and receives audio from every one of ``senders``."""
    expected = {sender.participant_id for sender in senders}
    wait_for_stats(
        receiver.page,
        lambda s: expected <= set(decoding_video(s)) and expected <= receiving_audio(s),
        timeout=MEDIA_TIMEOUT,
        what=f"{receiver.name}: video and audio from {sorted(s.name for s in senders)}",
    )


def measure_fps(participants: list[Participant]) -> dict[str, dict[str, float]]:
    """receiver name → sender name → video frames decoded per second; printed."""
    names = {p.participant_id: p.name for p in participants}
    rates = decode_fps([p.page for p in participants], FPS_WINDOW)
    table = {
        receiver.name: {names.get(pid, pid): fps for pid, fps in sorted(rate.items())}
        for receiver, rate in zip(participants, rates, strict=True)
    }
    for receiver, rate in table.items():
        print(f"  {receiver} decodes: {rate}")
    return table


def assert_everyone_decodes_everyone(
    participants: list[Participant], min_fps: float = MIN_FPS
) -> None:
    """Every participant decodes every other at >= ``min_fps`` over one
    :data:`FPS_WINDOW`; up to :data:`FPS_ATTEMPTS` windows, because one congestion
    signal on a loaded machine sends a subscriber down a layer for about 5 s by design
    (the allocator's hold-off and up-hold times)."""
    for attempt in range(1, FPS_ATTEMPTS + 1):
        table = measure_fps(participants)
        slow = [
            (receiver.name, sender.name, table[receiver.name].get(sender.name, 0.0))
            for receiver in participants
            for sender in participants
            if sender is not receiver and table[receiver.name].get(sender.name, 0.0) < min_fps
        ]
        if not slow:
            return
        if attempt == FPS_ATTEMPTS:
            receiver = next(p for p in participants if p.name == slow[0][0])
            raise AssertionError(
                f"decoding below {min_fps} fps (receiver, sender, fps): {slow}; {table}; "
                f"{page_state(receiver.page)}; {page_stats(receiver.page)['inbound']}"
            )


def assert_clean(participants: list[Participant]) -> None:
    for participant in participants:
        assert participant.uncaught_errors() == [], participant.name
        assert participant.last_error() is None, (participant.name, page_state(participant.page))


def video_from(stats: Stats, participant_id: str) -> dict[str, Any] | None:
    return next(
        (
            s
            for s in stats["inbound"]
            if s["kind"] == "video" and s["participantId"] == participant_id
        ),
        None,
    )


def received(participant: Participant, sender: Participant) -> tuple[int, int]:
    """(frameWidth, framesDecoded) of the video ``participant`` gets from ``sender``."""
    s = video_from(page_stats(participant.page), sender.participant_id)
    return (s["frameWidth"], s["framesDecoded"]) if s else (0, 0)


def assert_keeps_decoding(
    participant: Participant, sender: Participant, seconds: int, max_width: int
) -> list[int]:
    """framesDecoded grows in every second of ``seconds``, at most ``max_width`` wide."""
    widths = []
    _, last = received(participant, sender)
    for _ in range(seconds):
        time.sleep(1.0)
        width, decoded = received(participant, sender)
        assert decoded > last, (
            f"{participant.name}: video of {sender.name} froze at frame {decoded}; "
            f"{video_from(page_stats(participant.page), sender.participant_id)}"
        )
        assert 0 < width <= max_width, f"{participant.name} received {width} px, want ≤ {max_width}"
        widths.append(width)
        last = decoded
    return widths


# --- the tests ----------------------------------------------------------------------


def test_two_firefox_participants(rooms):
    """See and hear each other, mute reaches the other, a third participant (Chromium)
    joins and leaves (both renegotiate their subscriptions), and leave removes the
    tile."""
    room = unique_room("fx2")
    a = rooms(room, "fox-a")
    b = rooms(room, "fox-b")
    wait_for_media(a, [b])
    wait_for_media(b, [a])
    print("\ntwo Firefox participants:")
    assert_everyone_decodes_everyone([a, b])

    # Mute and unmute the microphone: the other's tile shows it.
    a.page.wait_for_function("() => Object.keys(window.sfu.publishedTracks).length >= 2")
    assert "is-mic-muted" not in (b.tile_classes(a.participant_id) or "")
    a.page.click("#mute-mic")
    wait_until(
        lambda: "is-mic-muted" in (b.tile_classes(a.participant_id) or ""),
        "fox-b to show fox-a muted",
        detail=lambda: b.tile_classes(a.participant_id),
    )
    a.page.click("#mute-mic")
    wait_until(
        lambda: "is-mic-muted" not in (b.tile_classes(a.participant_id) or "is-mic-muted"),
        "fox-b to show fox-a unmuted",
        detail=lambda: b.tile_classes(a.participant_id),
    )

    # A third participant's tracks come and go: both Firefox subscriptions renegotiate.
    c = rooms(room, "chromium-c", "chromium")
    for receiver in (a, b):
        wait_for_media(receiver, [c])
    print("with a Chromium tab:")
    # Renegotiation is what this step tests: the new track decodes, the old ones go on.
    # (The rate is printed; the 15 fps room check is the next test's.)
    assert_everyone_decodes_everyone([a, b, c], min_fps=STILL_DECODING_FPS)
    c.page.click("#leave")
    for receiver in (a, b):
        wait_until(
            lambda receiver=receiver: receiver.tile_classes(c.participant_id) is None,
            f"{receiver.name}: the tile of chromium-c to go",
            detail=lambda receiver=receiver: page_state(receiver.page),
        )
    print("after the Chromium tab left:")
    assert_everyone_decodes_everyone([a, b], min_fps=STILL_DECODING_FPS)
    for receiver in (a, b):
        state = page_state(receiver.page)
        assert state["subscribePc"]["signaling"] == "stable", state

    b.page.click("#leave")
    wait_until(
        lambda: a.tile_classes(b.participant_id) is None,
        "fox-a: the tile of fox-b to go",
        detail=lambda: page_state(a.page),
    )
    assert b.page.evaluate("() => window.sfu.ws") is None
    assert_clean([a, b, c])


def dropped_probes(server: str) -> float:
    """``sfu_rtp_dropped_packets{reason="padding"}``: padding-only packets and RTX copies
    of packets that had arrived (Chromium's payload padding when it probes)."""
    with urllib.request.urlopen(f"{server}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sfu_rtp_dropped_packets") and 'reason="padding"' in line
    )


def test_firefox_and_two_chromium_tabs(rooms, sfu_server):
    """Firefox joins two Chromium publishers (the order of the report in issue 13: it
    decoded one of them at about 5 fps, the other not at all, while Chromium's RTX
    probes, copies of packets it had sent, were metered and forwarded); everyone
    decodes everyone at >= 15 fps."""
    room = unique_room("fxc2")
    c1 = rooms(room, "chromium-1", "chromium")
    c2 = rooms(room, "chromium-2", "chromium")
    fox = rooms(room, "fox")
    everyone = [c1, c2, fox]
    for receiver in everyone:
        wait_for_media(receiver, [p for p in everyone if p is not receiver])
    print("\nFirefox with two Chromium tabs:")
    assert_everyone_decodes_everyone(everyone)
    print(f"  RTX copies of received packets dropped so far: {dropped_probes(sfu_server):.0f}")
    assert_clean(everyone)


def test_firefox_simulcast_publisher_and_constrained_chromium(
    rooms, constrained_chromium, link, sfu_server
):
    """Firefox publishes three simulcast layers; a Chromium subscriber on loopback gets
    the top one, one behind a 300 kbit/s link a lower one and keeps decoding."""
    room = unique_room("fxsim")
    fox = rooms(room, "fox")
    direct = rooms(room, "direct", "chromium", publish=False)
    port = sfu_server.rsplit(":", 1)[1]
    shaped = rooms(
        room,
        "shaped",
        "chromium",
        publish=False,
        context=constrained_chromium,
        base=f"http://{link.host_address}:{port}",
    )

    def encoding() -> dict[str, int]:
        outbound = page_stats(fox.page)["outbound"]
        return {s["rid"]: s["frameWidth"] for s in outbound if s["kind"] == "video" and s["rid"]}

    def three_layers() -> dict[str, int] | None:
        widths = encoding()
        return widths if len(widths) == 3 and all(widths.values()) else None

    layers = wait_until(
        three_layers,
        "Firefox to encode q, h and f",
        timeout=MEDIA_TIMEOUT,
        detail=lambda: page_stats(fox.page)["outbound"],
    )
    print(f"\nFirefox simulcast layers: {layers}")
    assert layers["f"] == TOP_WIDTH and layers["q"] < layers["h"] < layers["f"], layers

    for subscriber in (direct, shaped):
        start = time.monotonic()
        wait_until(
            lambda subscriber=subscriber: received(subscriber, fox)[0] == TOP_WIDTH,
            f"{subscriber.name} to receive {TOP_WIDTH} px from Firefox",
            timeout=MEDIA_TIMEOUT,
            detail=lambda subscriber=subscriber: (
                video_from(page_stats(subscriber.page), fox.participant_id),
                page_state(subscriber.page),
            ),
        )
        print(f"{subscriber.name}: {TOP_WIDTH} px after {time.monotonic() - start:.1f}s")

    link.limit_downlink("300kbit", "16kbit", "100ms")
    try:
        start = time.monotonic()
        wait_until(
            lambda: 0 < received(shaped, fox)[0] <= LOW_WIDTH_LIMIT,
            f"a layer ≤ {LOW_WIDTH_LIMIT} px on the 300 kbit/s link",
            timeout=MEDIA_TIMEOUT,
            detail=lambda: (video_from(page_stats(shaped.page), fox.participant_id), link.qdisc()),
        )
        dropped_after = time.monotonic() - start
        widths = assert_keeps_decoding(shaped, fox, 4, LOW_WIDTH_LIMIT)
        print(f"300 kbit/s: down to {widths[0]} px after {dropped_after:.1f}s; widths {widths}")
    finally:
        link.unlimit_downlink()
    assert received(direct, fox)[0] == TOP_WIDTH
    print("decode rates:")
    table = measure_fps([fox, direct, shaped])
    assert table["direct"].get("fox", 0.0) >= MIN_FPS, table
    assert_clean([fox, direct, shaped])


def test_data_messages_between_firefox_and_chromium(rooms):
    """The data channels (reliable and lossy) and the chat, both ways."""
    room = unique_room("fxdata")
    fox = rooms(room, "fox")
    tab = rooms(room, "tab", "chromium")
    for participant in (fox, tab):
        participant.page.wait_for_function("() => window.sfu.dataReady")

    for sender, receiver in ((fox, tab), (tab, fox)):
        assert sender.page.evaluate(
            "(text) => window.sfu.sendData({text}, {topic: 'chat'})", f"hello from {sender.name}"
        )
        assert sender.page.evaluate("() => window.sfu.sendData({n: 2}, {reliable: false})")
        messages = wait_until(
            lambda receiver=receiver: receiver.page.evaluate(
                "() => window.sfu.dataMessages.length >= 2 ? window.sfu.dataMessages : null"
            ),
            f"{receiver.name} to get two messages from {sender.name}",
            detail=lambda receiver=receiver: receiver.page.evaluate(
                "() => [window.sfu.dataMessages, window.sfu.dataErrors]"
            ),
        )
        by_topic = {m.get("topic"): m for m in messages}
        chat = by_topic["chat"]
        assert chat["data"] == {"text": f"hello from {sender.name}"}, messages
        assert chat["from"]["participant_id"] == sender.participant_id
        assert chat["from"]["name"] == sender.name
        assert chat["reliable"] is True
        lossy = next(m for m in messages if m.get("topic") != "chat")
        assert lossy["data"] == {"n": 2} and lossy["reliable"] is False, messages
        lines = receiver.page.evaluate(
            "() => [...document.querySelectorAll('#chat-log .chat-line')]"
            ".map((line) => line.textContent)"
        )
        assert any(f"hello from {sender.name}" in line for line in lines), lines
        receiver.page.evaluate("() => { window.sfu.dataMessages.length = 0; }")
    wait_for_media(fox, [tab])
    wait_for_media(tab, [fox])
    print("\ndata between Firefox and Chromium; decode rates:")
    measure_fps([fox, tab])
    assert_clean([fox, tab])
