"""End-to-end: the demo page in headless Chromium against ``python -m sfu serve``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import av
import pytest
from async_browser import chromium, open_demo
from browser import (
    ConsoleErrors,
    chromium_available,
    chromium_context,
    decoding_video,
    page_state,
    page_stats,
    receiving_audio,
    remote_tile_names,
    wait_for_stats,
    wait_until,
)

from sfu.client import SyntheticVideoTrack, ToneAudioTrack, connect, dev_token, use_loopback_ice

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

MEDIA_TIMEOUT = 60.0
UI_TIMEOUT_MS = 20_000


def unique_room() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


class Tab:
    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.console = ConsoleErrors(page)

    @property
    def participant_id(self) -> str:
        return self.page.evaluate("() => window.sfu.participantId")

    def remote_tile(self, participant_id: str) -> Any:
        return self.page.locator(f'.tile.remote[data-participant-id="{participant_id}"]')

    def uncaught_errors(self) -> list[str]:
        return [e for e in self.console.errors if e.startswith("pageerror")]


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    with chromium_context() as context:
        yield context


@pytest.fixture
def open_tab(browser_context: Any, sfu_server: str) -> Iterator[Callable[[str, str], Tab]]:
    """open_tab(room, name): a page that joined ``room`` as ``name`` (closed after the test)."""
    tabs: list[Tab] = []

    def open_(room: str, name: str) -> Tab:
        tab = Tab(browser_context.new_page(), name)
        tabs.append(tab)
        tab.page.goto(f"{sfu_server}/?room={room}&name={name}")
        tab.page.wait_for_function("() => window.sfu.participantId !== null", timeout=UI_TIMEOUT_MS)
        return tab

    yield open_
    for tab in tabs:
        tab.page.close(run_before_unload=True)


def wait_for_media_from(tab: Tab, others: list[Tab]) -> None:
    """Wait until ``tab`` decodes video and receives audio from every tab in ``others``."""
    expected = {other.participant_id for other in others}
    wait_for_stats(
        tab.page,
        lambda s: expected <= set(decoding_video(s)) and expected <= receiving_audio(s),
        timeout=MEDIA_TIMEOUT,
        what=f"{tab.name}: video frames and audio packets from {sorted(expected)}",
    )


def test_three_tabs_see_and_hear_each_other(open_tab):
    room = unique_room()
    tabs = [open_tab(room, f"tab{i}") for i in range(3)]
    ids = {tab.name: tab.participant_id for tab in tabs}
    assert len(set(ids.values())) == 3, ids

    for tab in tabs:
        others = [other for other in tabs if other is not tab]
        wait_for_media_from(tab, others)

    # Video keeps flowing: framesDecoded grows for every remote participant.
    first = {tab.name: decoding_video(page_stats(tab.page)) for tab in tabs}
    tabs[0].page.wait_for_timeout(2000)
    for tab in tabs:
        later = decoding_video(page_stats(tab.page))
        for other in tabs:
            if other is tab:
                continue
            pid = ids[other.name]
            assert later.get(pid, 0) > first[tab.name].get(pid, 0), (
                f"{tab.name}: video from {other.name} stalled: "
                f"{first[tab.name]} -> {later}; {page_state(tab.page)}"
            )

    # Every tab shows one tile per remote participant, with its name.
    for tab in tabs:
        expected = sorted(other.name for other in tabs if other is not tab)
        wait_until(
            lambda tab=tab, expected=expected: remote_tile_names(tab.page) == expected,
            f"{tab.name}: tiles {expected}",
            detail=lambda tab=tab: remote_tile_names(tab.page),
        )
        assert tab.page.locator(".tile.remote video").count() == 2

    # tab0 leaves: it is back at the join form and its tile disappears elsewhere.
    leaver, stayers = tabs[0], tabs[1:]
    leaver.page.click("#leave")
    leaver.page.locator("#join-form").wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert leaver.page.evaluate("() => window.sfu.ws") is None
    for tab in stayers:
        tab.remote_tile(ids[leaver.name]).wait_for(state="detached", timeout=UI_TIMEOUT_MS)
        assert remote_tile_names(tab.page) == sorted(t.name for t in stayers if t is not tab)
        assert ids[leaver.name] not in tab.page.evaluate(
            "() => [...window.sfu.participants.keys()]"
        )

    for tab in tabs:
        assert tab.uncaught_errors() == [], tab.name


def test_mute_shows_indicator_to_others(open_tab):
    room = unique_room()
    speaker = open_tab(room, "speaker")
    listener = open_tab(room, "listener")
    wait_for_media_from(listener, [speaker])
    # The mute message needs the track ids from publish_answer.
    speaker.page.wait_for_function(
        "() => Object.keys(window.sfu.publishedTracks).length >= 2", timeout=UI_TIMEOUT_MS
    )
    tile = listener.remote_tile(speaker.participant_id)
    assert "is-mic-muted" not in (tile.get_attribute("class") or "")

    speaker.page.click("#mute-mic")
    assert speaker.page.get_attribute("#mute-mic", "aria-pressed") == "true"
    assert speaker.page.evaluate(
        "() => window.sfu.session.localStream.getAudioTracks().every((t) => !t.enabled)"
    )
    listener.page.locator(
        f'.tile.remote[data-participant-id="{speaker.participant_id}"].is-mic-muted'
        " .indicator.mic-muted"
    ).wait_for(state="visible", timeout=UI_TIMEOUT_MS)

    speaker.page.click("#mute-mic")
    listener.page.locator(
        f'.tile.remote[data-participant-id="{speaker.participant_id}"]:not(.is-mic-muted)'
    ).wait_for(state="attached", timeout=UI_TIMEOUT_MS)
    assert speaker.uncaught_errors() == [] and listener.uncaught_errors() == []


def test_late_joiner_after_a_leave_is_shown_in_its_own_tile(open_tab):
    """The server may reuse the m-lines of a participant who left for a newcomer's
    tracks (same mid, new track id): the page must re-map them on every offer."""
    room = unique_room()
    stayer = open_tab(room, "stayer")
    leaver = open_tab(room, "leaver")
    wait_for_media_from(stayer, [leaver])
    leaver_id = leaver.participant_id
    leaver.page.click("#leave")
    stayer.remote_tile(leaver_id).wait_for(state="detached", timeout=UI_TIMEOUT_MS)

    newcomer = open_tab(room, "newcomer")
    newcomer_id = newcomer.participant_id
    wait_for_media_from(stayer, [newcomer])
    before = decoding_video(page_stats(stayer.page)).get(newcomer_id, 0)
    stayer.page.wait_for_timeout(2000)
    after = decoding_video(page_stats(stayer.page)).get(newcomer_id, 0)
    assert after > before, f"video from newcomer stalled; {page_state(stayer.page)}"

    assert remote_tile_names(stayer.page) == ["newcomer"]
    kinds = stayer.page.evaluate(
        """(id) => window.sfu.participants.get(id).stream.getTracks()
            .filter((t) => t.readyState === "live").map((t) => t.kind).sort()""",
        newcomer_id,
    )
    assert kinds == ["audio", "video"], page_state(stayer.page)
    assert stayer.uncaught_errors() == [] and newcomer.uncaught_errors() == []


def test_bad_message_shows_error_and_session_continues(open_tab):
    room = unique_room()
    first = open_tab(room, "first")
    first.page.evaluate('() => window.sfu.ws.send("not json")')
    status = first.page.locator("#status.error")
    status.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert "bad_json" in status.inner_text()
    assert first.page.evaluate("() => window.sfu.ws.readyState") == 1  # still OPEN

    # The session still works: someone joining later is seen, heard and shown.
    second = open_tab(room, "second")
    wait_for_media_from(first, [second])
    wait_for_media_from(second, [first])
    first.remote_tile(second.participant_id).wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    assert remote_tile_names(first.page) == ["second"]
    assert first.page.evaluate("() => window.sfu.ws.readyState") == 1
    assert first.uncaught_errors() == [] and second.uncaught_errors() == []


def test_tab_and_python_client_see_each_other(sfu_server):
    """A Chromium tab and an SDK participant (aiortc) in one room: the tab decodes the
    client's video, the client decodes the tab's video frames."""
    # The module's sync Playwright owns this thread's event loop: run the asyncio
    # participant and its own (async) Chromium in a thread of their own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, tab_and_python_client(sfu_server)).result()


async def tab_and_python_client(sfu_server: str) -> None:
    use_loopback_ice()  # aioice skips 127.0.0.1 otherwise; the server listens on it only
    room = unique_room()
    async with chromium() as context:
        page = await open_demo(context, sfu_server, room, "tab", identity=f"tab-{room}")
        token = await dev_token(sfu_server, room, "python", name="Python")
        client = await connect(sfu_server, token, name="Python")
        try:
            await client.publish_tracks(
                [(SyntheticVideoTrack(320, 240), "camera"), (ToneAudioTrack(), "microphone")]
            )
            tab_id = await page.evaluate("() => window.sfu.participantId")
            client_id = client.participant_id

            # The client decodes the tab's camera (whatever simulcast layer it gets).
            remote = await client.wait_for_track(participant_id=tab_id, kind="video", timeout=20)
            async with asyncio.timeout(MEDIA_TIMEOUT):
                frames = [await remote.track.recv() for _ in range(10)]
            assert all(isinstance(frame, av.VideoFrame) for frame in frames)
            assert all(frame.width > 0 and frame.height > 0 for frame in frames)
            assert len({frame.pts for frame in frames}) == len(frames)

            # The tab decodes the client's 320x240 video, and keeps decoding it.
            deadline = time.monotonic() + MEDIA_TIMEOUT
            stats: dict[str, Any] = {}
            while client_id not in decoding_video(stats):
                assert time.monotonic() < deadline, (
                    f"tab decodes no video from {client_id}: {stats}"
                )
                await asyncio.sleep(0.5)
                stats = await page.evaluate("() => window.sfu.stats()")
            first = decoding_video(stats)[client_id]
            await asyncio.sleep(1.5)
            stats = await page.evaluate("() => window.sfu.stats()")
            assert decoding_video(stats)[client_id] > first, stats
            inbound = [s for s in stats["inbound"] if s["participantId"] == client_id]
            assert {
                (s["frameWidth"], s["frameHeight"]) for s in inbound if s["kind"] == "video"
            } == {(320, 240)}
            names = await page.locator(".tile.remote .name").all_inner_texts()
            assert names == ["Python"]
            assert page.uncaught_errors == []
        finally:
            await client.leave()
