"""A Python participant for the SFU: joins rooms like a browser does.

Example::

    token = await dev_token("http://127.0.0.1:8080", room="demo", identity="bot")
    async with await connect("http://127.0.0.1:8080", token, name="Bot") as room:
        await room.publish_tracks(
            [(SyntheticVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")]
        )
        remote = await room.wait_for_track(kind="video")
        frame = await remote.track.recv()  # an av.VideoFrame
"""

from sfu.client.data import DataError, DataLink, DataMessage
from sfu.client.errors import SfuError
from sfu.client.ice import use_loopback_ice
from sfu.client.media import ColorBarsTrack, SyntheticVideoTrack, ToneAudioTrack
from sfu.client.publisher import Source
from sfu.client.room import RoomClient, connect, dev_token
from sfu.client.tracks import RemoteMediaTrack, RemoteTrack

__all__ = [
    "ColorBarsTrack",
    "DataError",
    "DataLink",
    "DataMessage",
    "RemoteMediaTrack",
    "RemoteTrack",
    "RoomClient",
    "SfuError",
    "Source",
    "SyntheticVideoTrack",
    "ToneAudioTrack",
    "connect",
    "dev_token",
    "use_loopback_ice",
]
