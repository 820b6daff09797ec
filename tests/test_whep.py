"""WHEP egress against ``sfu serve``: a Chromium page and an aiortc client receive a
WHIP publisher's simulcast track over WHEP and decode it; a viewer behind a
300 kbit/s link gets a lower layer; a viewer pinned to a publisher that is not there
yet gets its tracks when it publishes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from browser import CHROMIUM_ARGS, CHROMIUM_PATH, chromium_available, wait_until
from netns import VethNamespace, netns_unavailable_reason, veth_namespace
from server import ServerUrl, serve_module
from whip_pages import INBOUND_VIDEO_JS, OUTBOUND_VIDEO_JS, WHEP_VIEW_JS, WHIP_PUBLISH_JS, token

from sfu.client import SyntheticVideoTrack, connect, use_loopback_ice

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(), reason="needs Chromium at /usr/bin/chromium (Debian 'chromium')"
    ),
]

ROOM = f"whep-{uuid.uuid4().hex[:8]}"
PUBLISHER = "camera-1"


@pytest.fixture(scope="module")
def link() -> Iterator[VethNamespace | None]:
    """A namespace behind a veth for the constrained viewer (None without root)."""
    if netns_unavailable_reason() is not None:
        yield None
        return
    with veth_namespace() as created:
        yield created


@pytest.fixture(scope="module")
def sfu_server(link: VethNamespace | None) -> Iterator[ServerUrl]:
    addresses = ["127.0.0.1"] + ([link.host_address] if link is not None else [])
    yield from serve_module(host="0.0.0.0", ice_addresses=addresses)


@dataclass
class Browsers:
    loopback: Any
    constrained: Any | None


@pytest.fixture(scope="module")
def browsers(link: VethNamespace | None, sfu_server: ServerUrl) -> Iterator[Browsers]:
    from playwright.sync_api import sync_playwright

    port = sfu_server.rsplit(":", 1)[1]
    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profiles, sync_playwright() as pw:
        loopback = pw.chromium.launch_persistent_context(
            f"{profiles}/loopback",
            executable_path=str(CHROMIUM_PATH),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        constrained = None
        if link is not None:
            constrained = pw.chromium.launch_persistent_context(
                f"{profiles}/constrained",
                executable_path=str(link.wrapper(CHROMIUM_PATH, profiles)),
                args=[
                    *CHROMIUM_ARGS,
                    f"--unsafely-treat-insecure-origin-as-secure=http://{link.host_address}:{port}",
                ],
                headless=True,
            )
        try:
            yield Browsers(loopback, constrained)
        finally:
            if constrained is not None:
                constrained.close()
            loopback.close()


@pytest.fixture(scope="module")
def publisher(browsers: Browsers, sfu_server: ServerUrl) -> Iterator[Any]:
    """A Chromium page publishing 640x480 VP8 simulcast q/h/f and Opus over WHIP."""
    page = browsers.loopback.new_page()
    page.goto(f"{sfu_server}/healthz")
    result = page.evaluate(
        WHIP_PUBLISH_JS,
        {
            "url": sfu_server,
            "room": ROOM,
            "token": token(ROOM, PUBLISHER),
            "simulcast": True,
            "stripCandidates": False,
            "codec": None,
        },
    )
    assert result["status"] == 201, result
    wait_until(
        lambda: len([s for s in page.evaluate(OUTBOUND_VIDEO_JS) if s["framesEncoded"] > 0]) == 3,
        "the WHIP publisher encoding three layers",
        timeout=20,
        detail=lambda: page.evaluate(OUTBOUND_VIDEO_JS),
    )
    yield page
    page.close()


def run_async(coroutine: Any) -> Any:
    """Run a coroutine on a loop of its own thread (Playwright's sync API holds this
    thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def inbound(page: Any) -> dict[str, Any]:
    return page.evaluate(INBOUND_VIDEO_JS, "whep") or {}


def open_viewer(context: Any, origin: str, participant: str | None) -> Any:
    page = context.new_page()
    page.goto(f"{origin}/healthz")
    result = page.evaluate(
        WHEP_VIEW_JS,
        {
            "url": origin,
            "room": ROOM,
            "token": token(ROOM, f"viewer-{uuid.uuid4().hex[:6]}", can_publish=False),
            "participant": participant,
        },
    )
    assert result["status"] == 201, result
    return page


def room_identities(url: str) -> list[str]:
    response = httpx.get(
        f"{url}/api/rooms/{ROOM}/participants",
        auth=("devkey", "devsecret-change-me-in-production-0123456789"),
    )
    return [p["identity"] for p in response.json()] if response.status_code == 200 else []


def test_chromium_whep_viewer(browsers: Browsers, sfu_server: ServerUrl, publisher: Any) -> None:
    """A page receives the publisher over WHEP, decoding the top layer; DELETE ends it."""
    page = open_viewer(browsers.loopback, sfu_server, PUBLISHER)
    wait_until(
        lambda: inbound(page).get("framesDecoded", 0) > 40 and inbound(page)["frameWidth"] == 640,
        "the WHEP page decoding 640x480",
        timeout=30,
        detail=lambda: inbound(page),
    )
    assert sorted(page.evaluate("() => window.whep.tracks")) == ["audio", "video"]
    status = page.evaluate(
        "async (url) => (await fetch(url + window.whep.location, {method: 'DELETE'})).status",
        sfu_server,
    )
    assert status == 200
    assert [i for i in room_identities(sfu_server) if i.startswith("viewer-")] == []
    page.close()


async def aiortc_whep(url: str, participant: str | None, frames: int) -> tuple[int, int, str]:
    """Receive over WHEP with aiortc; (video frames decoded, audio frames, width x height)."""
    use_loopback_ice()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    tracks: dict[str, Any] = {}
    pc.on("track", lambda track: tracks.setdefault(track.kind, track))
    await pc.setLocalDescription(await pc.createOffer())
    query = f"?participant={participant}" if participant else ""
    viewer = token(ROOM, f"aiortc-{uuid.uuid4().hex[:6]}", can_publish=False)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.post(
            f"/whep/{ROOM}{query}",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {viewer}"},
        )
        assert response.status_code == 201, response.text
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        try:
            decoded = size = ""
            video = 0
            async with asyncio.timeout(30):
                while "video" not in tracks or "audio" not in tracks:
                    await asyncio.sleep(0.05)
                for _ in range(frames):
                    frame = await tracks["video"].recv()
                    video += 1
                    size = f"{frame.width}x{frame.height}"
                audio = 0
                for _ in range(10):
                    await tracks["audio"].recv()
                    audio += 1
            decoded = size
        finally:
            await http.delete(response.headers["location"])
            await pc.close()
    return video, audio, decoded


def test_aiortc_whep_viewer(sfu_server: ServerUrl, publisher: Any) -> None:
    """aiortc (a Python WebRTC endpoint that decodes) receives and decodes the video."""
    video, audio, size = run_async(aiortc_whep(sfu_server, PUBLISHER, 30))
    assert video == 30
    assert audio == 10
    width, height = map(int, size.split("x"))
    assert width >= 160 and height >= 120


def test_constrained_whep_viewer_gets_a_lower_layer(
    browsers: Browsers, link: VethNamespace | None, sfu_server: ServerUrl, publisher: Any
) -> None:
    """A WHEP page behind a 300 kbit/s link: its transport-cc feedback brings the
    server's estimate down and the allocator gives it a lower layer; it keeps decoding."""
    if link is None or browsers.constrained is None:
        pytest.skip(netns_unavailable_reason() or "no namespace")
    port = sfu_server.rsplit(":", 1)[1]
    page = open_viewer(browsers.constrained, f"http://{link.host_address}:{port}", PUBLISHER)
    try:
        wait_until(
            lambda: inbound(page).get("framesDecoded", 0) > 20,
            "the constrained WHEP page decoding",
            timeout=30,
            detail=lambda: inbound(page),
        )
        link.limit_downlink("300kbit", "16kbit", "100ms")
        wait_until(
            lambda: 0 < inbound(page).get("frameWidth", 0) <= 320,
            "a lower layer behind 300 kbit/s",
            timeout=20,
            detail=lambda: inbound(page),
        )
        before = inbound(page)["framesDecoded"]
        page.wait_for_timeout(2000)
        assert inbound(page)["framesDecoded"] > before + 10, inbound(page)
    finally:
        link.unlimit_downlink()
        page.close()


async def late_publisher(url: str) -> tuple[int, str]:
    """A viewer pinned to an identity that has not joined; then it publishes."""
    use_loopback_ice()
    identity = f"late-{uuid.uuid4().hex[:6]}"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    received: asyncio.Queue[Any] = asyncio.Queue()
    pc.on("track", received.put_nowait)
    await pc.setLocalDescription(await pc.createOffer())
    viewer = token(ROOM, f"pinned-{uuid.uuid4().hex[:6]}", can_publish=False)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.post(
            f"/whep/{ROOM}?participant={identity}",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {viewer}"},
        )
        assert response.status_code == 201, response.text
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        async with await connect(url, token(ROOM, identity)) as room:
            await room.publish_tracks([(SyntheticVideoTrack(), "camera")])
            async with asyncio.timeout(30):
                track = await received.get()
                frames = 0
                for _ in range(10):
                    frame = await track.recv()
                    frames += 1
        await http.delete(response.headers["location"])
    await pc.close()
    return frames, f"{frame.width}x{frame.height}"


def test_viewer_pinned_before_the_publisher_arrives(sfu_server: ServerUrl) -> None:
    frames, size = run_async(late_publisher(sfu_server))
    assert frames == 10, size


def test_sdk_docs_whep_example(sfu_server: ServerUrl, publisher: Any) -> None:
    """docs/sdk.md's WHEP example runs as written (URL, room, publisher and token
    substituted) and prints the size of a decoded frame."""
    import contextlib
    import io
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "sdk.md").read_text()
    match = re.search(r"<!-- whep-example -->\n```python\n(.*?)```", doc, re.S)
    assert match is not None, "docs/sdk.md lost its WHEP example"
    code = (
        match[1]
        .replace('"http://127.0.0.1:8080"', repr(str(sfu_server)))
        .replace('"demo"', repr(ROOM))
        .replace('"camera-1"', repr(PUBLISHER))
    )
    code = re.sub(r"TOKEN = .*\n", f"TOKEN = {token(ROOM, 'docs', can_publish=False)!r}\n", code)
    output = io.StringIO()

    def run() -> None:
        use_loopback_ice()
        with contextlib.redirect_stdout(output):
            exec(compile(code, "docs/sdk.md", "exec"), {"__name__": "__main__"})

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(run).result(timeout=60)
    assert re.fullmatch(r"decoded \d+x\d+\n", output.getvalue()), output.getvalue()


def test_h264_publisher_to_a_whep_page(browsers: Browsers, sfu_server: ServerUrl) -> None:
    """An H.264-only WHIP publisher (what OBS sends) reaches a WHEP page as H.264."""
    identity = f"h264-{uuid.uuid4().hex[:6]}"
    encoder = browsers.loopback.new_page()
    encoder.goto(f"{sfu_server}/healthz")
    result = encoder.evaluate(
        WHIP_PUBLISH_JS,
        {
            "url": sfu_server,
            "room": ROOM,
            "token": token(ROOM, identity),
            "simulcast": False,
            "stripCandidates": False,
            "codec": "video/H264",
        },
    )
    assert result["status"] == 201, result
    page = open_viewer(browsers.loopback, sfu_server, identity)
    wait_until(
        lambda: inbound(page).get("framesDecoded", 0) > 20,
        "the WHEP page decoding H.264",
        timeout=30,
        detail=lambda: inbound(page),
    )
    assert inbound(page)["mimeType"] == "video/H264"
    page.close()
    encoder.close()
