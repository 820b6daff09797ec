"""End-to-end: Python clients (aiortc) against the real embedded server.

Every test runs ``python -m sfu serve`` (the ``sfu_server`` fixture) and joins it
with :mod:`sfu.client`; nothing on the media path is faked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aioice.ice
import av
import pytest
from aiortc.mediastreams import MediaStreamError

from sfu.access_token import mint_token
from sfu.client import (
    RemoteTrack,
    RoomClient,
    SfuError,
    SyntheticVideoTrack,
    ToneAudioTrack,
    connect,
    dev_token,
)
from sfu.config import DEV_API_KEY, DEV_API_SECRET
from sfu.protocol import ErrorCode

WIDTH, HEIGHT = 320, 240
TRACK_TIMEOUT = 10.0
FRAME_TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice skips 127.0.0.1 when gathering; the server listens on it only."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
def room_name() -> str:
    return f"it-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def join(
    sfu_server: str, room_name: str
) -> AsyncIterator[Callable[[str], Awaitable[RoomClient]]]:
    """``await join(identity)`` connects a client to this test's room; all leave at the end."""
    clients: list[RoomClient] = []

    async def _join(identity: str) -> RoomClient:
        token = await dev_token(sfu_server, room_name, identity, name=identity.title())
        client = await connect(sfu_server, token, name=identity.title())
        clients.append(client)
        return client

    yield _join
    await asyncio.gather(*(client.leave() for client in clients))


async def receive_frames(remote: RemoteTrack, count: int) -> list[av.VideoFrame | av.AudioFrame]:
    frames = []
    async with asyncio.timeout(FRAME_TIMEOUT):
        for _ in range(count):
            frames.append(await remote.track.recv())
    return frames


def publish_av(client: RoomClient) -> Awaitable[list[str]]:
    return client.publish_tracks(
        [(SyntheticVideoTrack(WIDTH, HEIGHT), "camera"), (ToneAudioTrack(), "microphone")]
    )


async def test_three_participants_receive_each_other(join):
    clients = [await join(identity) for identity in ("alice", "bob", "carol")]
    published = await asyncio.gather(*(publish_av(client) for client in clients))

    for client in clients:
        others = [other for other in clients if other is not client]
        assert set(client.participants) == {other.participant_id for other in others}
        for other, (video_id, audio_id) in zip(clients, published, strict=True):
            if other is client:
                continue
            video = await client.wait_for_track(
                participant_id=other.participant_id, kind="video", timeout=TRACK_TIMEOUT
            )
            audio = await client.wait_for_track(
                participant_id=other.participant_id, kind="audio", timeout=TRACK_TIMEOUT
            )
            assert (video.track_id, audio.track_id) == (video_id, audio_id)

            frames = await receive_frames(video, 10)
            assert all(isinstance(frame, av.VideoFrame) for frame in frames)
            assert {(frame.width, frame.height) for frame in frames} == {(WIDTH, HEIGHT)}
            assert len({frame.pts for frame in frames}) == len(frames)

            samples = await receive_frames(audio, 10)
            assert all(isinstance(frame, av.AudioFrame) for frame in samples)
            assert {frame.sample_rate for frame in samples} == {48_000}
        assert len(client.remote_tracks) == 4


async def test_leaving_removes_tracks_from_the_others(join):
    leaver, stayer, watcher = [await join(identity) for identity in ("leaver", "stayer", "watcher")]
    track_ids = set(await publish_av(leaver))
    remotes = {
        client: [
            await client.wait_for_track(
                participant_id=leaver.participant_id, kind=kind, timeout=TRACK_TIMEOUT
            )
            for kind in ("video", "audio")
        ]
        for client in (stayer, watcher)
    }
    for tracks in remotes.values():
        await receive_frames(tracks[0], 3)

    await leaver.leave()

    for client, tracks in remotes.items():
        unpublished = {(await client.next_event("track_unpublished")).track_id for _ in range(2)}
        assert unpublished == track_ids
        left = await client.next_event("participant_left")
        assert left.participant_id == leaver.participant_id
        assert leaver.participant_id not in client.participants
        for remote in tracks:
            await remote.wait_ended(timeout=5.0)
            with pytest.raises(MediaStreamError):
                async with asyncio.timeout(FRAME_TIMEOUT):
                    while True:
                        await remote.track.recv()
        assert not client.remote_tracks


async def test_late_joiner_gets_a_key_frame_within_a_second(join):
    publisher = await join("early")
    (track_id,) = [await publisher.publish(SyntheticVideoTrack(WIDTH, HEIGHT), "camera")]
    # The encoder's first key frame is long gone by the time the late joiner arrives;
    # aiortc's VP8 encoder sends another one only when asked (PLI/FIR).
    await asyncio.sleep(2.0)

    joined_at = time.monotonic()
    late = await join("late")
    remote = await late.wait_for_track(track_id=track_id, timeout=TRACK_TIMEOUT)
    async with asyncio.timeout(FRAME_TIMEOUT):
        frame = await remote.track.recv()
    decoded_at = time.monotonic()

    assert isinstance(frame, av.VideoFrame)
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    since_answer = decoded_at - remote.subscribed_at
    assert since_answer < 1.0, (
        f"first frame {since_answer:.3f} s after the subscribe answer "
        f"({decoded_at - joined_at:.3f} s after joining)"
    )


async def test_a_publisher_chooses_its_video_codec(join):
    """``publish(codec="H264")``: aiortc offers only H.264 for the camera, the server
    forwards it as such, and a subscriber decodes it; a codec aiortc cannot send is
    refused before anything is offered."""
    publisher = await join("h264")
    track_id = await publisher.publish(SyntheticVideoTrack(WIDTH, HEIGHT), "camera", codec="H264")
    viewer = await join("viewer")
    remote = await viewer.wait_for_track(track_id=track_id, timeout=TRACK_TIMEOUT)
    assert remote.codec == "video/H264"
    async with asyncio.timeout(FRAME_TIMEOUT):
        frame = await remote.track.recv()
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    with pytest.raises(SfuError) as refused:
        await publisher.publish(SyntheticVideoTrack(WIDTH, HEIGHT), "screen", codec="VP9")
    assert refused.value.code == "codec_unavailable"
    default = await join("default")
    other = await default.publish(SyntheticVideoTrack(WIDTH, HEIGHT), "camera")
    assert (await viewer.wait_for_track(track_id=other, timeout=TRACK_TIMEOUT)).codec == "video/VP8"


async def test_bad_token_is_refused(sfu_server):
    with pytest.raises(SfuError) as refused:
        await connect(sfu_server, "not-a-token")
    assert refused.value.code == ErrorCode.BAD_TOKEN


async def test_publishing_without_the_grant_is_not_allowed(sfu_server, room_name):
    token = mint_token(
        DEV_API_KEY, DEV_API_SECRET, room=room_name, identity="viewer", can_publish=False
    )
    async with await connect(sfu_server, token, name="Viewer", loopback_only=True) as viewer:
        assert not viewer.joined.can_publish
        with pytest.raises(SfuError) as refused:
            await viewer.publish(SyntheticVideoTrack(WIDTH, HEIGHT))
        assert refused.value.code == ErrorCode.NOT_ALLOWED
        await viewer.ping()  # the session goes on


async def test_mute_is_announced_to_the_others(join):
    speaker, listener = await join("speaker"), await join("listener")
    (track_id,) = await speaker.publish_tracks([(ToneAudioTrack(), "microphone")])
    await listener.wait_for_track(track_id=track_id, timeout=TRACK_TIMEOUT)

    await speaker.mute(track_id, True)
    muted = await listener.next_event("track_muted")
    assert (muted.track_id, muted.participant_id, muted.muted) == (
        track_id,
        speaker.participant_id,
        True,
    )
    (track,) = listener.participants[speaker.participant_id].tracks
    assert track.muted

    with pytest.raises(SfuError) as refused:
        await speaker.mute("TR_unknown", True)
    assert refused.value.code == ErrorCode.UNKNOWN_TRACK


async def test_reused_m_lines_carry_the_new_tracks(join):
    """The server may recycle a departed publisher's m-lines (same MID, new SSRC)."""
    watcher, first, second = [await join(identity) for identity in ("watcher", "first", "second")]
    await publish_av(first)
    await publish_av(second)
    for kind in ("video", "audio"):
        remote = await watcher.wait_for_track(
            participant_id=first.participant_id, kind=kind, timeout=TRACK_TIMEOUT
        )
        await receive_frames(remote, 3)
    await first.leave()
    for _ in range(2):
        await watcher.next_event("track_unpublished")

    third = await join("third")
    await publish_av(third)
    for kind in ("video", "audio"):
        remote = await watcher.wait_for_track(
            participant_id=third.participant_id, kind=kind, timeout=TRACK_TIMEOUT
        )
        frames = await receive_frames(remote, 5)
        if kind == "video":
            assert {(frame.width, frame.height) for frame in frames} == {(WIDTH, HEIGHT)}
    assert len(watcher.remote_tracks) == 4
