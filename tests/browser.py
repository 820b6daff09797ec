"""Helpers for driving the demo page in headless Chromium (Debian's /usr/bin/chromium).

Chromium gets fake media devices (a test pattern camera and a beeping microphone)
and no permission prompts, so a page can publish without any user interaction.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM_PATH = Path("/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Tabs that are not in front must keep decoding and running timers.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/",
]

Stats = dict[str, list[dict[str, Any]]]


def chromium_available() -> bool:
    return CHROMIUM_PATH.exists()


@contextlib.contextmanager
def chromium_context(extra_args: list[str] | None = None) -> Iterator[Any]:
    """A persistent Chromium context in a throw-away profile directory.

    Yields a Playwright ``BrowserContext``; its pages share one browser process.
    """
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM_PATH),
            headless=True,
            args=[*CHROMIUM_ARGS, *(extra_args or [])],
            viewport={"width": 1024, "height": 720},
        )
        try:
            yield context
        finally:
            context.close()


class ConsoleErrors:
    """Collects console errors and uncaught exceptions of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console.error: {message.text}")


UI_TIMEOUT_MS = 20_000
"""How long a demo page may take to join."""


def open_demo_page(context: Any, url: str, init_script: str | None = None) -> Any:
    """A new page of ``context`` at the demo page ``url`` (``init_script`` run before
    its own), once it has joined; its uncaught errors collect in ``uncaught_errors``."""
    page = context.new_page()
    if init_script is not None:
        page.add_init_script(init_script)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.uncaught_errors = errors
    page.goto(url)
    page.wait_for_function("() => window.sfu.participantId !== null", timeout=UI_TIMEOUT_MS)
    return page


def page_stats(page: Any) -> Stats:
    """``window.sfu.stats()`` of a page: {"inbound": [...], "outbound": [...]}."""
    return page.evaluate("() => window.sfu.stats()")


def wait_for_stats(
    page: Any,
    predicate: Callable[[Stats], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.5,
    what: str = "stats condition",
) -> Stats:
    """Poll ``window.sfu.stats()`` until ``predicate`` holds; fail with the last stats."""
    deadline = time.monotonic() + timeout
    stats: Stats = {}
    while True:
        stats = page_stats(page)
        if predicate(stats):
            return stats
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} on {page.url}; "
                f"last stats: {stats}; state: {page_state(page)}"
            )
        page.wait_for_timeout(interval * 1000)


def page_state(page: Any) -> dict[str, Any]:
    """What a failing test should print about a page: ids, mappings, status bar, pc states."""
    return page.evaluate(
        """() => {
            const s = window.sfu;
            const pcState = (pc) => pc ? {
                signaling: pc.signalingState, ice: pc.iceConnectionState,
                connection: pc.connectionState,
            } : null;
            return {
                participantId: s.participantId,
                participants: [...s.participants.values()].map((p) => ({
                    id: p.participant_id, name: p.name,
                    tracks: [...p.tracks.values()],
                    streamTracks: p.stream.getTracks().map((t) => t.kind),
                })),
                publishedTracks: s.publishedTracks,
                subscribeTracks: s.subscribeTracks,
                publishPc: pcState(s.publishPc),
                subscribePc: pcState(s.subscribePc),
                status: document.getElementById("status").textContent,
            };
        }"""
    )


def remote_tile_names(page: Any) -> list[str]:
    """Display names on the remote tiles, sorted."""
    return sorted(page.locator(".tile.remote .name").all_inner_texts())


def decoding_video(stats: Stats) -> dict[str, int]:
    """participant id → framesDecoded of the inbound video streams mapped to someone."""
    return {
        s["participantId"]: s["framesDecoded"]
        for s in stats.get("inbound", [])
        if s["kind"] == "video" and s["participantId"] and s["framesDecoded"] > 0
    }


def decode_fps(pages: Sequence[Any], seconds: float = 2.0) -> list[dict[str, float]]:
    """Per page, participant id → video frames decoded per second over ``seconds``
    (every page sampled at the same moments; any page with ``evaluate``: Playwright's,
    or tests/firefox.py's)."""

    def sample() -> list[tuple[float, dict[str, int]]]:
        samples = []
        for page in pages:
            frames = decoding_video(page_stats(page))
            samples.append((time.monotonic(), frames))
        return samples

    before = sample()
    time.sleep(seconds)
    after = sample()
    return [
        {
            pid: round((frames - first[pid]) / (end - start), 1)
            for pid, frames in later.items()
            if pid in first
        }
        for (start, first), (end, later) in zip(before, after, strict=True)
    ]


def receiving_audio(stats: Stats) -> set[str]:
    """Participant ids whose inbound audio has packets."""
    return {
        s["participantId"]
        for s in stats.get("inbound", [])
        if s["kind"] == "audio" and s["participantId"] and s["packetsReceived"] > 0
    }


@dataclass
class DecodeWatch:
    """What a subscriber decoded of one remote video over a watched interval."""

    seconds: float
    frames: int
    """Frames decoded during the interval."""
    longest_gap: float
    """The longest time between two samples that saw framesDecoded grow, in seconds
    (at least the sampling interval)."""
    widths: list[int]
    """frameWidth at every sample, in order."""
    first: dict[str, Any]
    last: dict[str, Any]
    """The inbound-rtp summaries at the start and the end."""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def delta(self, counter: str) -> int:
        """How much an inbound-rtp counter grew during the interval."""
        return self.last.get(counter, 0) - self.first.get(counter, 0)


def inbound_video_of(stats: Stats, participant_id: str) -> dict[str, Any] | None:
    """The inbound-rtp video summary of the video from ``participant_id``."""
    for s in stats.get("inbound", []):
        if s["kind"] == "video" and s["participantId"] == participant_id:
            return s
    return None


def watch_decoding(
    page: Any, participant_id: str, seconds: float, interval: float = 0.15
) -> DecodeWatch:
    """Sample the video from ``participant_id`` every ``interval`` seconds for
    ``seconds``: frames decoded, the longest stretch without a new frame, widths."""
    first = inbound_video_of(page_stats(page), participant_id) or {}
    start = last_growth = time.monotonic()
    frames = first.get("framesDecoded", 0)
    longest = 0.0
    widths: list[int] = []
    last = first
    while time.monotonic() - start < seconds:
        page.wait_for_timeout(interval * 1000)
        last = inbound_video_of(page_stats(page), participant_id) or {}
        now = time.monotonic()
        longest = max(longest, now - last_growth)
        if last.get("framesDecoded", 0) > frames:
            frames = last["framesDecoded"]
            last_growth = now
        widths.append(last.get("frameWidth", 0))
    return DecodeWatch(
        seconds=time.monotonic() - start,
        frames=frames - first.get("framesDecoded", 0),
        longest_gap=longest,
        widths=widths,
        first=first,
        last=last,
    )


def wait_until(
    check: Callable[[], Any],
    what: str,
    timeout: float = 20.0,
    detail: Callable[[], Any] = lambda: None,
    interval: float = 0.25,
) -> Any:
    """Call ``check`` until it returns something truthy; fail with ``detail()``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {detail()}")
        time.sleep(interval)
