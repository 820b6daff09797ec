"""The demo page in a small window: every tile fits the viewport without scrolling, the
tiles that would get too small go on further pages, and a tile on another page is
paused (the server forwards nothing for it) until its page is shown.

One 640x480 tab and two tabs of the default size; for the pager, cheap Python
participants (a synthetic 160x120 camera, every video they are offered paused) fill
the room beyond what the small window holds. Run with ``-s`` to see the screenshot path.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from browser import (
    ConsoleErrors,
    Stats,
    chromium_available,
    chromium_context,
    decoding_video,
    page_state,
    page_stats,
)

from sfu.client import RoomClient, SyntheticVideoTrack, connect, dev_token, use_loopback_ice

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

SMALL_VIEWPORT = {"width": 640, "height": 480}
LARGE_VIEWPORT = {"width": 1280, "height": 800}
MEDIA_TIMEOUT = 45.0
UI_TIMEOUT_MS = 20_000
# Long enough for a paused or resumed tile to show it: quality.js debounces a resize
# by 0.5 s, and a resumed video waits for a key frame.
SETTLE_TIMEOUT = 15.0
FLOW_WINDOW_S = 2.0
EXTRA_ON_PAGE_TWO = 2
"""Participants beyond what the first page holds."""

T = TypeVar("T")


@dataclass
class Tab:
    page: Any
    name: str
    participant_id: str
    console: ConsoleErrors

    def uncaught_errors(self) -> list[str]:
        return [e for e in self.console.errors if e.startswith("pageerror")]


@dataclass
class Room:
    name: str
    small: Tab
    """The 640x480 tab whose layout is checked"""
    others: list[Tab]


@pytest.fixture(scope="module")
def room(sfu_server: str) -> Iterator[Room]:
    """Three tabs in one room: one in a 640x480 window, two of the default size."""
    name = f"layout-{uuid.uuid4().hex[:8]}"
    with chromium_context() as context:
        tabs = []
        for index in range(3):
            page = context.new_page()
            console = ConsoleErrors(page)
            if index == 0:
                page.set_viewport_size(SMALL_VIEWPORT)
            page.goto(f"{sfu_server}/?room={name}&name=tab{index}")
            page.wait_for_function("() => window.sfu.participantId !== null", timeout=UI_TIMEOUT_MS)
            pid = page.evaluate("() => window.sfu.participantId")
            tabs.append(Tab(page, f"tab{index}", pid, console))
        yield Room(name, tabs[0], tabs[1:])


class CheapParticipants:
    """Python participants publishing a synthetic camera, run in an event loop of their
    own thread (the sync Playwright owns this one). Each pauses every video it is
    offered, so it costs little more than its 160x120 encoder."""

    def __init__(self, server: str, room: str) -> None:
        self.server = server
        self.room = room
        self.clients: list[RoomClient] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def join(self, count: int) -> list[str]:
        """Join ``count`` participants (names py0, py1, …); their participant ids."""
        return self.run(self._join(count))

    async def _join(self, count: int) -> list[str]:
        use_loopback_ice()
        joined = []
        for index in range(len(self.clients), len(self.clients) + count):
            token = await dev_token(self.server, self.room, f"py{index}-{self.room}", f"py{index}")
            client = await connect(self.server, token, name=f"py{index}", data=False)
            self.clients.append(client)
            self._tasks.append(asyncio.create_task(self._pause_videos(client)))
            await client.publish_tracks([(SyntheticVideoTrack(160, 120, fps=15), "camera")])
            joined.append(client.participant_id)
        return joined

    @staticmethod
    async def _pause_videos(client: RoomClient) -> None:
        paused: set[str] = set()
        while True:
            remote = await client.wait_for_track(
                lambda r: r.kind == "video" and r.track_id not in paused, timeout=None
            )
            paused.add(remote.track_id)
            await client.set_track_settings(remote.track_id, paused=True)

    def leave_all(self) -> None:
        self.run(self._leave_all())

    async def _leave_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(client.leave() for client in self.clients))
        self.clients.clear()
        self._tasks.clear()

    def close(self) -> None:
        if self.clients:
            self.leave_all()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def wait_until(check: Callable[[], bool], what: str, detail: Callable[[], Any]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {SETTLE_TIMEOUT:.0f}s: {what}: {detail()}")
        time.sleep(0.25)


def layout(page: Any) -> dict[str, Any]:
    """Where the page put its tiles: participant id ("" for our own tile) → its box and
    whether it is displayed, the pager, the top of the controls bar, the viewport."""
    return page.evaluate(
        """() => {
            const box = (el) => {
                const r = el.getBoundingClientRect();
                return {left: r.left, top: r.top, right: r.right, bottom: r.bottom,
                        width: r.width, height: r.height};
            };
            const tiles = {};
            for (const tile of document.querySelectorAll("#grid .tile")) {
                tiles[tile.dataset.participantId] = {shown: !tile.hidden, ...box(tile)};
            }
            const pager = document.getElementById("pager");
            return {
                tiles,
                pager: Boolean(pager && !pager.hidden),
                pageLabel: pager ? document.getElementById("page-label").textContent : null,
                controlsTop: box(document.getElementById("controls")).top,
                viewport: {width: window.innerWidth, height: window.innerHeight},
            };
        }"""
    )


def page_capacity(page: Any) -> int:
    """How many tiles the page's stage holds on one page, by the page's own rule."""
    return page.evaluate(
        """async () => {
            const {pageCapacity} = await import("/gallery.js");
            const stage = document.getElementById("stage");
            const s = getComputedStyle(stage);
            const gap = parseFloat(getComputedStyle(document.getElementById("grid")).columnGap);
            return pageCapacity(
                stage.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight),
                stage.clientHeight - parseFloat(s.paddingTop) - parseFloat(s.paddingBottom),
                gap,
            );
        }"""
    )


def assert_fits(page: Any, tile_ids: set[str]) -> None:
    """The tiles ``tile_ids`` are displayed, whole, inside the viewport and above the
    controls bar, and do not overlap each other."""
    state = layout(page)
    boxes = {pid: state["tiles"][pid] for pid in tile_ids}
    for pid, box in boxes.items():
        assert box["shown"], f"tile {pid!r} is not displayed: {state}"
        assert box["width"] > 0 and box["height"] > 0, (pid, state)
        assert box["left"] >= 0 and box["top"] >= 0, (pid, state)
        assert box["right"] <= state["viewport"]["width"], (pid, state)
        assert box["bottom"] <= state["controlsTop"], (pid, state)
    ordered = sorted(boxes.values(), key=lambda b: (b["top"], b["left"]))
    for index, a in enumerate(ordered):
        for b in ordered[index + 1 :]:
            apart = (
                a["right"] <= b["left"]
                or b["right"] <= a["left"]
                or a["bottom"] <= b["top"]
                or b["bottom"] <= a["top"]
            )
            assert apart, f"tiles overlap: {a} {b}"


def video_counters(stats: Stats) -> dict[str, tuple[int, int]]:
    """participant id → (packetsReceived, framesDecoded) of its inbound video."""
    return {
        s["participantId"]: (s["packetsReceived"], s["framesDecoded"])
        for s in stats.get("inbound", [])
        if s["kind"] == "video" and s["participantId"]
    }


def flow(page: Any, participant_ids: set[str]) -> dict[str, tuple[int, int]]:
    """Packets and frames received from each of ``participant_ids`` in FLOW_WINDOW_S."""
    before = video_counters(page_stats(page))
    page.wait_for_timeout(FLOW_WINDOW_S * 1000)
    after = video_counters(page_stats(page))
    zero = (0, 0)
    return {
        pid: (
            after.get(pid, zero)[0] - before.get(pid, zero)[0],
            after.get(pid, zero)[1] - before.get(pid, zero)[1],
        )
        for pid in participant_ids
    }


def wait_for_frames(page: Any, participant_ids: set[str]) -> None:
    """Wait until the page decodes new frames from every one of ``participant_ids``
    (polled, not a fixed window: a loaded machine may starve a publisher for a while)."""
    before = video_counters(page_stats(page))

    def advanced() -> dict[str, bool]:
        now = video_counters(page_stats(page))
        return {
            pid: now.get(pid, (0, 0))[1] > before.get(pid, (0, 0))[1] for pid in participant_ids
        }

    wait_until(
        lambda: all(advanced().values()),
        "new frames decoded",
        lambda: (
            f"{advanced()}; paused: {paused_of(page)}; before: {before}; "
            f"stats: {page_stats(page)}; {page_state(page)}"
        ),
    )


def paused_of(page: Any) -> dict[str, bool]:
    """participant id → whether the page asked the server to pause its video."""
    return page.evaluate(
        """() => {
            const s = window.sfu;
            const result = {};
            for (const id of Object.keys(s.tiles())) {
                const trackId = s.session.remoteTrackOf(id, 'video')?.trackId;
                const settings = trackId && s.trackSettings[trackId];
                if (settings) result[id] = settings.paused;
            }
            return result;
        }"""
    )


def wait_for_decoding(page: Any, participant_ids: set[str]) -> None:
    deadline = time.monotonic() + MEDIA_TIMEOUT
    while not participant_ids <= set(decoding_video(page_stats(page))):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no video from {sorted(participant_ids)} after {MEDIA_TIMEOUT:.0f}s: "
                f"{page_stats(page)}; {page_state(page)}"
            )
        page.wait_for_timeout(500)


GAP = 12  # the grid's 0.75rem


@pytest.mark.parametrize(
    ("count", "width", "height", "expected"),
    [
        # what the 640x480 page's stage holds: one row of three, or two rows of 160x120
        (3, 616, 268, {"columns": 3, "rows": 1, "width": 197, "height": 147}),
        (6, 616, 268, {"columns": 3, "rows": 2, "width": 170, "height": 127}),
        (1, 616, 268, {"columns": 1, "rows": 1, "width": 357, "height": 267}),
        # a wide area: side by side; a square one: two by two
        (2, 1200, 400, {"columns": 2, "rows": 1, "width": 533, "height": 399}),
        (4, 1000, 800, {"columns": 2, "rows": 2, "width": 494, "height": 370}),
        # a tall narrow one (a phone): one column
        (3, 336, 1000, {"columns": 1, "rows": 3, "width": 336, "height": 252}),
    ],
)
def test_best_fit(
    room: Room, count: int, width: int, height: int, expected: dict[str, int]
) -> None:
    fit = room.small.page.evaluate(
        """async ([count, width, height, gap]) => {
            const {bestFit} = await import("/gallery.js");
            return bestFit(count, width, height, gap);
        }""",
        [count, width, height, GAP],
    )
    assert fit == expected


def test_three_participants_fit_a_640x480_window(room: Room, tmp_path: Path) -> None:
    page = room.small.page
    remote_ids = {tab.participant_id for tab in room.others}
    wait_for_decoding(page, remote_ids)

    assert_fits(page, {"", *remote_ids})
    assert not layout(page)["pager"], layout(page)
    # Each remote tile decodes, and its settings are what the tile is: shown, and the
    # size hint the size it is rendered at (the allocator picks the fitting layer).
    wait_for_frames(page, remote_ids)
    wait_until(
        lambda: paused_of(page) == dict.fromkeys(remote_ids, False),
        "both remote tiles not paused",
        lambda: page.evaluate("() => window.sfu.trackSettings"),
    )

    def hints_match() -> bool:
        hints = page.evaluate("() => window.sfu.tiles()")
        sizes = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll(".tile.remote video")]
                .map((v) => [v.closest(".tile").dataset.participantId,
                             [v.clientWidth, v.clientHeight]]))"""
        )
        return all([hints[pid]["width"], hints[pid]["height"]] == sizes[pid] for pid in remote_ids)

    wait_until(
        hints_match,
        "size hints follow the tiles",
        lambda: page.evaluate("() => window.sfu.tiles()"),
    )
    shot = tmp_path / "page-640x480-three.png"
    page.screenshot(path=str(shot))
    print(f"\nscreenshot: {shot}; tiles: {layout(page)['tiles']}")
    assert room.small.uncaught_errors() == []


def test_participants_beyond_the_window_are_paged_and_paused(
    room: Room, sfu_server: str, tmp_path: Path
) -> None:
    page = room.small.page
    tab_ids = [tab.participant_id for tab in room.others]
    wait_for_decoding(page, set(tab_ids))
    capacity = page_capacity(page)
    extra = capacity - 3 + EXTRA_ON_PAGE_TWO
    cheap = CheapParticipants(sfu_server, room.name)
    try:
        start = time.monotonic()
        joined = cheap.join(extra)
        remote_order = tab_ids + joined  # the tiles in join order, ours first
        first_page = {"", *remote_order[: capacity - 1]}
        second_page = set(remote_order[capacity - 1 :])
        assert len(second_page) == EXTRA_ON_PAGE_TWO

        wait_until(
            lambda: set(layout(page)["tiles"]) == {"", *remote_order},
            f"tiles of {len(remote_order)} remote participants",
            lambda: layout(page),
        )
        assert layout(page)["pageLabel"] == "1 / 2" and layout(page)["pager"], layout(page)
        assert_fits(page, first_page)
        assert not any(layout(page)["tiles"][pid]["shown"] for pid in second_page)

        # Page 2's tiles are paused: the page says so and the server forwards nothing.
        wait_for_decoding(page, set(remote_order[: capacity - 1]) - set(tab_ids))
        wait_until(
            lambda: all(paused_of(page).get(pid) for pid in second_page),
            "page 2's tiles paused",
            lambda: paused_of(page),
        )
        page.wait_for_timeout(1000)  # packets already on the way
        # (packets, not frames: a loaded decoder may still be finishing earlier frames)
        flowed = flow(page, second_page)
        assert all(packets == 0 for packets, _ in flowed.values()), f"page 2 flows: {flowed}"
        wait_for_frames(page, first_page - {""})
        shots = [tmp_path / "page-640x480-page1.png", tmp_path / "page-640x480-page2.png"]
        page.screenshot(path=str(shots[0]))

        # Page 2: its tiles fit and resume; page 1's remote tiles are paused in turn.
        page.click("#page-next")
        assert layout(page)["pageLabel"] == "2 / 2"
        assert_fits(page, second_page)
        wait_until(
            lambda: (
                not any(paused_of(page)[pid] for pid in second_page)
                and all(paused_of(page)[pid] for pid in first_page - {""})
            ),
            "page 2 resumed, page 1 paused",
            lambda: paused_of(page),
        )
        wait_for_decoding(page, second_page)
        wait_for_frames(page, second_page)
        page.screenshot(path=str(shots[1]))
        print(
            f"\n{len(remote_order) + 1} participants, {capacity} per page at 640x480; "
            f"paging checked in {time.monotonic() - start:.1f}s; screenshots: {shots}"
        )

        # A larger window holds everyone: one page, every tile shown and resumed; back
        # to 640x480, the pager returns.
        page.set_viewport_size(LARGE_VIEWPORT)
        wait_until(
            lambda: not layout(page)["pager"],
            f"one page at {LARGE_VIEWPORT}",
            lambda: layout(page),
        )
        assert_fits(page, {"", *remote_order})
        wait_until(
            lambda: not any(paused_of(page).values()),
            f"every tile resumed at {LARGE_VIEWPORT}",
            lambda: paused_of(page),
        )
        page.set_viewport_size(SMALL_VIEWPORT)
        wait_until(lambda: layout(page)["pager"], "pager at 640x480", lambda: layout(page))

        # They leave: one page again, every tile shown.
        cheap.leave_all()
        wait_until(
            lambda: not layout(page)["pager"] and set(layout(page)["tiles"]) == {"", *tab_ids},
            "one page after the extra participants left",
            lambda: layout(page),
        )
        assert_fits(page, {"", *tab_ids})
    finally:
        cheap.close()
    assert room.small.uncaught_errors() == []
