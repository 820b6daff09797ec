"""The publish transport: the client offers its tracks, the server answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from sfu.client.errors import CODEC_UNAVAILABLE, PROTOCOL_VIOLATION, SfuError
from sfu.client.ice import add_remote_candidate
from sfu.client.serial import SerialQueue
from sfu.client.signaling import SignalingChannel
from sfu.protocol import IceCandidate, PublishAnswerMessage, PublishOfferMessage, TrackInfo

Source = Literal["camera", "microphone", "screen", "screen_audio", "unknown"]
"""What a published track is (:attr:`sfu.protocol.TrackInfo.source`)."""


class Publisher:
    """One ``sendonly`` peer connection carrying every track the client publishes.

    Each :meth:`publish` renegotiates the whole connection; negotiations and the
    server's trickled candidates are applied in order.
    """

    def __init__(self, configuration: RTCConfiguration, signaling: SignalingChannel) -> None:
        self._configuration = configuration
        self._signaling = signaling
        self._pc: RTCPeerConnection | None = None
        self._sources: dict[str, TrackInfo] = {}
        self.track_ids: dict[str, str] = {}
        """Per MID: the track id the server assigned."""
        self.tracks: dict[str, MediaStreamTrack] = {}
        """Per server track id: the local track being sent."""
        self._codecs: dict[str, str | None] = {}
        """Per MID: the video codec the track was published in, when one was asked for."""
        self._serial = SerialQueue("sfu-client-publish")
        self._has_data = False

    async def publish(
        self, tracks: Sequence[tuple[MediaStreamTrack, Source]], codec: str | None = None
    ) -> list[str]:
        """Add ``tracks`` (with their sources) and return their server track ids; video
        goes out in ``codec`` only (``"VP8"``, ``"H264"``) when given."""
        infos = [TrackInfo(source=source) for _, source in tracks]
        return await self._serial.run(lambda: self._negotiate(tracks, infos, codec))

    async def open_data(self, attach: Callable[[RTCPeerConnection], None]) -> None:
        """Negotiate data channels: ``attach`` creates them on the peer connection.

        The data channels ride on the publish transport (the server runs SCTP there),
        so a client that publishes no media still has this peer connection.
        """

        async def negotiate() -> None:
            if self._pc is None:
                self._pc = RTCPeerConnection(self._configuration)
            attach(self._pc)
            self._has_data = True
            await self._negotiate([], [], None)

        await self._serial.run(negotiate)

    def use_signaling(self, signaling: SignalingChannel) -> None:
        """Send later negotiations over ``signaling`` (a resumed session's socket)."""
        self._signaling = signaling

    def published(self) -> list[tuple[MediaStreamTrack, Source, str | None]]:
        """The local tracks published so far, with their sources and the codec asked
        for, in order."""
        return [
            (self.tracks[track_id], self._sources[mid].source, self._codecs.get(mid))
            for mid, track_id in self.track_ids.items()
            if mid in self._sources
        ]

    def add_candidate(self, candidate: IceCandidate | None) -> None:
        """Apply a candidate the server trickled for the publish transport."""
        self._serial.submit(lambda: self._add_candidate(candidate))

    async def close(self) -> None:
        await self._serial.close()
        if self._pc is not None:
            await self._pc.close()

    async def _add_candidate(self, candidate: IceCandidate | None) -> None:
        if self._pc is not None:
            await add_remote_candidate(self._pc, candidate)

    async def _negotiate(
        self,
        tracks: Sequence[tuple[MediaStreamTrack, Source]],
        infos: list[TrackInfo],
        codec: str | None,
    ) -> list[str]:
        preferences = None if codec is None else _video_codec_preferences(codec)
        if self._pc is None:
            self._pc = RTCPeerConnection(self._configuration)
        pc = self._pc
        added: list[RTCRtpTransceiver] = [
            pc.addTransceiver(track, direction="sendonly") for track, _ in tracks
        ]
        if preferences is not None:
            for transceiver in added:
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(preferences)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            for transceiver, info in zip(added, infos, strict=True):
                self._sources[_mid(transceiver)] = info
            answer = await self._signaling.request(
                PublishOfferMessage(sdp=pc.localDescription.sdp, tracks=dict(self._sources)),
                PublishAnswerMessage,
            )
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        except BaseException:
            await self._abandon(added)
            raise
        track_ids: list[str] = []
        for transceiver, (track, _) in zip(added, tracks, strict=True):
            mid = _mid(transceiver)
            track_id = answer.tracks.get(mid)
            if track_id is None:
                raise SfuError(PROTOCOL_VIOLATION, f"publish_answer has no track id for mid {mid}")
            self.track_ids[mid] = track_id
            self.tracks[track_id] = track
            self._codecs[mid] = codec if track.kind == "video" else None
            track_ids.append(track_id)
        return track_ids

    async def _abandon(self, added: list[RTCRtpTransceiver]) -> None:
        """Forget a failed negotiation: without tracks or data channels, start over next
        time; otherwise stop the transceivers the server did not accept."""
        for transceiver in added:
            if transceiver.mid is not None:
                self._sources.pop(transceiver.mid, None)
        if not self.track_ids and not self._has_data and self._pc is not None:
            await self._pc.close()
            self._pc = None
            return
        for transceiver in added:
            await transceiver.stop()


def _video_codec_preferences(codec: str) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for sending video in ``codec`` only (with its rtx)."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    wanted = [c for c in capabilities if c.mimeType.lower() == f"video/{codec.lower()}"]
    if not wanted:
        names = sorted({c.mimeType.split("/")[1] for c in capabilities} - {"rtx"})
        message = f"cannot send video in {codec!r}; this client sends {names}"
        raise SfuError(CODEC_UNAVAILABLE, message)
    return wanted + [c for c in capabilities if c.mimeType.lower() == "video/rtx"]


def _mid(transceiver: RTCRtpTransceiver) -> str:
    if transceiver.mid is None:
        raise RuntimeError("transceiver has no mid before negotiation")
    return transceiver.mid
