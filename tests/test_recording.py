"""Track recording through the room API, against the embedded server: a headless
Chromium publisher recorded for 10 s (VP8 and Opus to WebM), an H.264 simulcast
publisher recorded to Matroska across forced layer switches, a Python publisher that
reconnects (a second segment), and the bad inputs. Every file is checked with
Debian's ffprobe (codec, size, duration) and decoded by ffmpeg (``-v error``: no
output allowed). Run with ``-s`` to see the measured figures."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from browser import chromium_available, chromium_context, page_state, wait_until
from cluster import api
from server import ServerUrl, run_sfu_server, serve_module
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from sfu.access_token import mint_token
from sfu.client import SyntheticVideoTrack, connect, dev_token
from sfu.config import DEV_API_KEY, DEV_API_SECRET

pytestmark = pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="needs Debian's ffmpeg (tests/run.sh installs it)"
)
needs_chromium = pytest.mark.skipif(
    not chromium_available(),
    reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
)

RECORD_SECONDS = 10.0
DURATION_TOLERANCE = 0.5
UI_TIMEOUT_MS = 20_000
LAYER_TIMEOUT = 20.0
"""Seconds for the recorder to reach a layer (the publisher's ramp-up included)."""


@pytest.fixture(scope="module")
def recording_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recordings")


@pytest.fixture(scope="module")
def sfu_server(recording_dir: Path) -> Iterator[ServerUrl]:
    yield from serve_module(extra_args=["--recording-dir", str(recording_dir)])


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with chromium_context() as context:
        yield context


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def api_error(url: str, path: str, method: str = "GET", body: Any = None) -> tuple[int, str]:
    """(HTTP status, detail) of a call that must fail."""
    with pytest.raises(urllib.error.HTTPError) as failure:
        api(url, path, method, body)
    return failure.value.code, json.loads(failure.value.read())["detail"]


def probe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_streams", "-show_format", str(path)],
        capture_output=True,
        check=True,
        text=True,
    )
    return json.loads(result.stdout)


def decode_errors(path: Path) -> str:
    """What ``ffmpeg -v error`` says decoding the whole file (nothing, for a good one)."""
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    return result.stderr if result.returncode == 0 or result.stderr else f"rc {result.returncode}"


def frame_sizes(path: Path) -> list[tuple[int, int]]:
    """The decoded size of every video frame, in order."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=width,height",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        check=True,
        text=True,
    )
    return [tuple(map(int, line.split(",")[:2])) for line in result.stdout.split()]  # type: ignore[misc]


class Observer:
    """A participant that neither publishes nor subscribes and reads its events."""

    def __init__(self, url: str, room: str) -> None:
        token = mint_token(
            DEV_API_KEY,
            DEV_API_SECRET,
            room=room,
            identity=unique("observer"),
            can_publish=False,
            can_subscribe=False,
        )
        self.socket: ClientConnection = ws_connect(url.replace("http", "ws") + "/ws").__enter__()
        self.socket.send(json.dumps({"type": "join", "token": token}))
        joined = json.loads(self.socket.recv(timeout=10))
        assert joined["type"] == "joined", joined

    def events(self, kind: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message["type"] == kind:
                found.append(message)
        return found

    def close(self) -> None:
        self.socket.close()


def open_publisher(context: Any, base: str, query: str) -> tuple[Any, str]:
    page = context.new_page()
    page.goto(f"{base}/?{query}")
    page.wait_for_function("() => window.sfu.participantId !== null", timeout=UI_TIMEOUT_MS)
    return page, page.evaluate("() => window.sfu.participantId")


def published_tracks(url: str, room: str, participant_id: str, count: int) -> dict[str, str]:
    """kind → track id of the participant's tracks, once it publishes ``count``."""

    def tracks() -> dict[str, str] | None:
        for participant in api(url, f"/api/rooms/{room}/participants"):
            if participant["participant_id"] == participant_id:
                found = {t["kind"]: t["track_id"] for t in participant["tracks"]}
                return found if len(found) == count else None
        return None

    return wait_until(tracks, f"{count} tracks of {participant_id}", timeout=20)


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.browser
@needs_chromium
def test_ten_second_recording_of_a_chromium_publisher(
    sfu_server: ServerUrl, chromium: Any, recording_dir: Path
) -> None:
    """Every track of the room, 10 s: a VP8 WebM at the camera's 640x480 and an Opus
    WebM, each as long as the recording ran (±0.5 s), decoding without an error; the
    room's participants get a recording_finished event for each file."""
    room = unique("rec")
    observer = Observer(sfu_server, room)
    page, publisher = open_publisher(chromium, sfu_server, f"room={room}&name=cam&simulcast=0")
    try:
        published_tracks(sfu_server, room, publisher, 2)
        started = api(sfu_server, f"/api/rooms/{room}/recordings", "POST", {})
        start = time.monotonic()
        assert started["track_id"] is None and len(started["tracks"]) == 2
        time.sleep(RECORD_SECONDS)
        stopped = api(
            sfu_server, f"/api/rooms/{room}/recordings/{started['recording_id']}", "DELETE"
        )
        elapsed = time.monotonic() - start
        files = {f["kind"]: f for f in stopped["finished"]}
        assert set(files) == {"audio", "video"}, stopped
        events = observer.events("recording_finished", 2)
        assert {e["file"] for e in events} == {f["file"] for f in files.values()}
    finally:
        observer.close()
        page.close()
    for kind, finished in files.items():
        path = recording_dir / finished["file"]
        info = probe(path)
        stream = info["streams"][0]
        duration = float(info["format"]["duration"])
        print(
            f"{kind}: {finished['codec']} {path.suffix} {finished['bytes']} bytes, "
            f"{finished['frames']} frames, {duration:.3f} s of {elapsed:.3f} s recorded, "
            f"{finished['frames_lost']} lost"
        )
        assert finished["reason"] == "stopped" and path.stat().st_size == finished["bytes"]
        assert abs(duration - elapsed) <= DURATION_TOLERANCE, info
        assert abs(finished["duration"] - elapsed) <= DURATION_TOLERANCE
        if kind == "video":
            assert (stream["codec_name"], stream["width"], stream["height"]) == ("vp8", 640, 480)
        else:
            assert stream["codec_name"] == "opus" and path.suffix == ".webm"
        assert decode_errors(path) == ""
    assert metric(sfu_server, "sfu_recordings_finished_total") >= 2
    assert metric(sfu_server, "sfu_recorded_bytes_total") >= sum(f["bytes"] for f in files.values())


SET_LAYER_JS = """async ([rid, active]) => {
    const pc = window.sfu.publishPc;
    const sender = pc.getSenders().find((s) => s.track && s.track.kind === "video");
    const params = sender.getParameters();
    for (const encoding of params.encodings) {
        if (encoding.rid === rid) encoding.active = active;
    }
    await sender.setParameters(params);
}"""


@pytest.mark.browser
@needs_chromium
def test_h264_simulcast_recording_across_layer_switches(
    sfu_server: ServerUrl, chromium: Any, recording_dir: Path
) -> None:
    """An H.264 simulcast publisher's video recorded to Matroska: the recorder takes
    the top layer; when the publisher stops it the recording goes on from the middle
    layer, and back to the top once it resumes. One file, both sizes, no decode error."""
    room = unique("rec-h264")
    page, publisher = open_publisher(chromium, sfu_server, f"room={room}&name=safari&codec=h264")
    try:
        video = published_tracks(sfu_server, room, publisher, 2)["video"]
        started = api(sfu_server, f"/api/rooms/{room}/recordings", "POST", {"track_id": video})
        start = time.monotonic()
        path = f"/api/rooms/{room}/recordings"

        def layer() -> int | None:
            (recording,) = api(sfu_server, path)
            return recording["tracks"][0]["layer"]

        def reach(wanted: int) -> float:
            since = time.monotonic()
            wait_until(
                lambda: layer() == wanted,
                f"the recorder on layer {wanted}",
                timeout=LAYER_TIMEOUT,
                detail=lambda: (layer(), page_state(page)),
            )
            return time.monotonic() - since

        ramp = reach(2)
        time.sleep(2)
        page.evaluate(SET_LAYER_JS, ["f", False])
        down = reach(1)
        time.sleep(2)
        page.evaluate(SET_LAYER_JS, ["f", True])
        up = reach(2)
        time.sleep(1)
        stopped = api(sfu_server, f"{path}/{started['recording_id']}", "DELETE")
        elapsed = time.monotonic() - start
    finally:
        page.close()
    (finished,) = stopped["finished"]
    file = recording_dir / finished["file"]
    info = probe(file)
    sizes = frame_sizes(file)
    duration = float(info["format"]["duration"])
    print(
        f"H.264 {file.suffix}: top layer after {ramp:.1f} s, middle {down:.1f} s after the "
        f"top stopped, top again {up:.1f} s after it resumed; {len(sizes)} frames "
        f"{sorted(set(sizes))}, {duration:.3f} s of {elapsed:.3f} s, {finished['frames_lost']} lost"
    )
    assert file.suffix == ".mkv" and info["streams"][0]["codec_name"] == "h264"
    assert {(640, 480), (320, 240)} <= set(sizes)
    assert sizes[-1] == (640, 480)
    assert abs(duration - elapsed) <= DURATION_TOLERANCE
    assert decode_errors(file) == ""


def test_track_recording_continues_after_a_reconnect(
    sfu_server: ServerUrl, recording_dir: Path
) -> None:
    """A publisher that joins again (new participant, new track ids) continues a track
    recording in a second file; the first ends with reason track_ended. Bad calls on
    the way: unknown track 404, the same track twice 409, unknown recording 404."""
    # A loop of its own in a thread: Playwright's sync API holds this thread's.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _reconnect(sfu_server, recording_dir)).result()


async def _reconnect(sfu_server: ServerUrl, recording_dir: Path) -> None:
    room = unique("rec-again")
    base = f"/api/rooms/{room}/recordings"
    call = asyncio.to_thread
    first = await connect(sfu_server, await dev_token(sfu_server, room=room, identity="cam"))
    await first.publish_tracks([(SyntheticVideoTrack(320, 240, 15), "camera")])
    (participant,) = await call(api, sfu_server, f"/api/rooms/{room}/participants")
    video = participant["tracks"][0]["track_id"]
    status, detail = await call(api_error, sfu_server, base, "POST", {"track_id": "TR_nope"})
    assert (status, detail) == (404, f"no track 'TR_nope' in room '{room}'")
    started = await call(api, sfu_server, base, "POST", {"track_id": video})
    status, detail = await call(api_error, sfu_server, base, "POST", {"track_id": video})
    assert status == 409 and started["recording_id"] in detail
    await asyncio.sleep(2)
    second = await connect(sfu_server, await dev_token(sfu_server, room=room, identity="cam"))
    await second.publish_tracks([(SyntheticVideoTrack(320, 240, 15), "camera")])

    async def second_segment() -> bool:
        (recording,) = await call(api, sfu_server, base)
        return [t["segment"] for t in recording["tracks"]] == [2] and recording["finished"]

    deadline = time.monotonic() + 20
    while not await second_segment():
        assert time.monotonic() < deadline, await call(api, sfu_server, base)
        await asyncio.sleep(0.25)
    await asyncio.sleep(2)
    stopped = await call(api, sfu_server, f"{base}/{started['recording_id']}", "DELETE")
    status, _ = await call(api_error, sfu_server, f"{base}/{started['recording_id']}", "DELETE")
    assert status == 404
    await second.leave()
    await first.leave()
    segments = stopped["finished"]
    assert [(s["segment"], s["reason"]) for s in segments] == [(1, "track_ended"), (2, "stopped")]
    assert segments[0]["track_id"] == video and segments[1]["track_id"] != video
    for segment in segments:
        path = recording_dir / segment["file"]
        stream = probe(path)["streams"][0]
        assert (stream["codec_name"], stream["width"]) == ("vp8", 320)
        assert segment["duration"] > 1.0 and decode_errors(path) == ""


def test_bad_recording_requests(sfu_server: ServerUrl, tmp_path: Path) -> None:
    """No room 404, no recording 404; a recording directory that cannot be created is
    507 with the reason, and nothing is recorded."""
    room = unique("rec-bad")
    status, detail = api_error(sfu_server, f"/api/rooms/{room}/recordings", "POST", {})
    assert (status, detail) == (404, f"no room '{room}'")
    status, _ = api_error(sfu_server, f"/api/rooms/{room}/recordings/RE_x", "DELETE")
    assert status == 404
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with run_sfu_server(["--recording-dir", str(blocker / "recordings")]) as url:
        observer = Observer(url, room)
        try:
            status, detail = api_error(url, f"/api/rooms/{room}/recordings", "POST", {})
            assert api(url, f"/api/rooms/{room}/recordings") == []
        finally:
            observer.close()
    assert status == 507
    assert detail == (
        f"cannot write to the recording directory {blocker / 'recordings'}: Not a directory"
    )
