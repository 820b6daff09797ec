"""The subscribe transport: the server offers other participants' tracks, the client
answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu.client._aiortc import route_offered_ssrcs
from sfu.client.ice import add_remote_candidate
from sfu.client.serial import SerialQueue
from sfu.client.signaling import SignalingChannel
from sfu.client.tracks import RemoteMediaTrack, RemoteTrack
from sfu.protocol import (
    IceCandidate,
    SubscribeAnswerMessage,
    SubscribeOfferMessage,
    SubscribeTrack,
)
from sfu.sdp import SessionDescription

logger = logging.getLogger(__name__)


class Subscriber:
    """One ``recvonly`` peer connection carrying every track the client receives.

    Offers and trickled candidates are applied strictly in the order they arrive.
    Each m-line's decoded frames go to the :class:`RemoteTrack` it currently
    carries; when the server moves the m-line to another track (or makes it
    inactive), the previous one ends.
    """

    def __init__(
        self,
        configuration: RTCConfiguration,
        signaling: SignalingChannel,
        on_track: Callable[[RemoteTrack], None],
        on_track_ended: Callable[[RemoteTrack], None],
    ) -> None:
        self._pc = RTCPeerConnection(configuration)
        self._signaling = signaling
        self._on_track = on_track
        self._on_track_ended = on_track_ended
        self._bindings: dict[str, RemoteTrack] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._unpublished: set[str] = set()
        self._serial = SerialQueue("sfu-client-subscribe")

    def handle_offer(self, offer: SubscribeOfferMessage) -> None:
        """Queue a server offer; it is answered after every earlier one."""
        self._serial.submit(lambda: self._apply_offer(offer))

    def use_signaling(self, signaling: SignalingChannel) -> None:
        """Send later answers over ``signaling`` (a resumed session's socket)."""
        self._signaling = signaling

    def add_candidate(self, candidate: IceCandidate | None) -> None:
        """Queue a candidate the server trickled for the subscribe transport."""
        self._serial.submit(lambda: add_remote_candidate(self._pc, candidate))

    def end_track(self, track_id: str) -> None:
        """End the remote track ``track_id`` now (it was unpublished); an offer still
        queued that carries it will not bring it back."""
        self._unpublished.add(track_id)
        for mid, binding in list(self._bindings.items()):
            if binding.track_id == track_id:
                self._unbind(mid)

    async def close(self) -> None:
        await self._serial.close()
        for mid in list(self._bindings):
            self._unbind(mid)
        for task in self._pumps.values():
            task.cancel()
        for task in self._pumps.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._pc.close()

    async def _apply_offer(self, offer: SubscribeOfferMessage) -> None:
        pc = self._pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        route_offered_ssrcs(pc, offer.sdp)
        for mid, binding in list(self._bindings.items()):
            carried = offer.tracks.get(mid)
            if carried is None or carried.track_id != binding.track_id:
                self._unbind(mid)
        await self._signaling.send(
            SubscribeAnswerMessage(sdp=pc.localDescription.sdp, revision=offer.revision)
        )
        answered_at = time.monotonic()
        codecs = _offered_codecs(offer.sdp)
        for mid, carried in offer.tracks.items():
            if mid not in self._bindings and carried.track_id not in self._unpublished:
                self._bind(mid, carried, answered_at, codecs.get(mid, ""))

    def _bind(self, mid: str, carried: SubscribeTrack, answered_at: float, codec: str) -> None:
        transceiver = next((t for t in self._pc.getTransceivers() if t.mid == mid), None)
        if transceiver is None or transceiver.receiver.track is None:
            logger.warning("subscribe offer names mid %s, which receives nothing", mid)
            return
        remote = RemoteTrack(
            track_id=carried.track_id,
            participant_id=carried.participant_id,
            kind=carried.kind,
            track=RemoteMediaTrack(carried.kind),
            mid=mid,
            subscribed_at=answered_at,
            codec=codec,
        )
        self._bindings[mid] = remote
        if mid not in self._pumps:
            self._pumps[mid] = asyncio.create_task(
                self._pump(mid, transceiver.receiver.track), name=f"sfu-client-pump-{mid}"
            )
        self._on_track(remote)

    def _unbind(self, mid: str) -> None:
        remote = self._bindings.pop(mid, None)
        if remote is not None:
            remote.track.stop()
            self._on_track_ended(remote)

    async def _pump(self, mid: str, source: MediaStreamTrack) -> None:
        """Move decoded frames from the m-line's receiver to its current track."""
        try:
            while True:
                frame = await source.recv()
                remote = self._bindings.get(mid)
                if remote is not None:
                    remote.track.deliver(frame)
        except MediaStreamError:
            self._unbind(mid)


def _offered_codecs(sdp: str) -> dict[str, str]:
    """Per MID of a subscribe offer: the MIME type of the codec the track is sent in
    (the server offers a track in exactly its publisher's codec)."""
    offered = {}
    for media in SessionDescription.parse(sdp).media:
        primary = next((c for c in media.codecs if not c.is_rtx), None)
        if media.mid is not None and primary is not None:
            offered[media.mid] = primary.mime_type
    return offered
