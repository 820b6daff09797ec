"""A step of the server's wall clock (NTP, ``date -s``) changes nothing on the media
path: control loops (feedback, NACK, key-frame throttling, allocation, renegotiation
deadlines) run on the monotonic clock, and only the NTP time in sender reports reads
the wall clock.

The server runs with ``tests/wall_clock/sitecustomize.py``, which moves its
``time.time`` by an hour on SIGUSR1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import aioice.ice
import av
import pytest

from sfu.client import RemoteTrack, RoomClient, SyntheticVideoTrack, connect, dev_token

HERE = Path(__file__).parent
STEP = 3600.0
FRAMES = 15


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture(scope="module", params=[-STEP, STEP], ids=["backward", "forward"])
def sfu_server(request: pytest.FixtureRequest) -> Iterator[str]:
    from server import serve_module

    env = {"PYTHONPATH": str(HERE / "wall_clock"), "WALL_CLOCK_STEP": str(request.param)}
    yield from serve_module(env=env)


async def join(url: str, room: str, identity: str) -> RoomClient:
    return await connect(url, await dev_token(url, room, identity), name=identity)


async def frames_within(remote: RemoteTrack, count: int, seconds: float) -> int:
    received = 0
    try:
        async with asyncio.timeout(seconds):
            while received < count:
                if isinstance(await remote.track.recv(), av.VideoFrame):
                    received += 1
    except TimeoutError:
        pass
    return received


async def test_media_flows_across_a_wall_clock_step(sfu_server):
    room = f"clock-{uuid.uuid4().hex[:8]}"
    publisher = await join(sfu_server, room, "publisher")
    watcher = await join(sfu_server, room, "watcher")
    late: RoomClient | None = None
    try:
        track_id = await publisher.publish(SyntheticVideoTrack(320, 240), "camera")
        remote = await watcher.wait_for_track(track_id=track_id, timeout=10)
        assert await frames_within(remote, FRAMES, 5) == FRAMES

        os.kill(sfu_server.process.pid, signal.SIGUSR1)
        await asyncio.sleep(0.5)
        assert await frames_within(remote, FRAMES, 5) == FRAMES, "the subscriber stalled"

        # A subscriber that joins after the step needs a key frame from the publisher:
        # a throttle or a tick timed by the wall clock would hold it back for an hour.
        late = await join(sfu_server, room, "late")
        late_remote = await late.wait_for_track(track_id=track_id, timeout=10)
        assert await frames_within(late_remote, FRAMES, 5) == FRAMES, "no key frame after the step"
        assert await frames_within(remote, FRAMES, 5) == FRAMES
    finally:
        await asyncio.gather(
            *(client.leave() for client in (publisher, watcher, late) if client is not None)
        )
