"""The recordings of one worker: started and stopped through the room API.

A recording is either one track (``track_id``) or every track of a room, those
published later included. Each recorded track is one :class:`TrackRecorder` and one
file, ``<recording_dir>/<room>/<recording id>/<identity>-<source>-<track id>.<ext>``
(room and identity reduced to ``[A-Za-z0-9._-]``).

Publisher reconnects: a participant that joins again gets new track ids, so its
tracks are new files (*segments*). A room recording records them as it records any
new track. A track recording whose track is unpublished waits
``reconnect_grace_seconds`` for the same identity to publish a track of the same kind
and source, and records it as its next segment; otherwise it ends. A new SSRC within
the same track (an ICE restart, a renegotiation) continues the same file. A room
whose last participant left keeps its recordings for the same grace, then they end.

Limits: ``max_recordings`` files written at once by this worker, and
``recording_min_free_bytes`` free on the disk (checked at start, and by each file's
writer every few seconds). Every finished file is announced to the room as a
:class:`~sfu.protocol.RecordingFinishedMessage` and counted for the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sfu.protocol import (
    ErrorCode,
    RecordingFinishedMessage,
    RecordingInfo,
    RecordingTrack,
)
from sfu.recording.clock import ParticipantClock
from sfu.recording.muxer import MuxResult
from sfu.recording.recorder import FILE_EXTENSIONS, TrackRecorder
from sfu.worker_api import ProtocolError

if TYPE_CHECKING:
    from sfu.config import Settings
    from sfu.participant import Participant
    from sfu.producer import Producer
    from sfu.room import Room
    from sfu.worker import Worker

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""Seconds a stop waits for the files to be closed."""
MAX_NAME_LENGTH = 64
"""Characters of a room name or identity kept in a path."""

Reason = Literal["stopped", "track_ended", "room_closed", "disk_full", "error", "shutdown"]
FINISH_REASONS: tuple[Reason, ...] = (
    "stopped",
    "track_ended",
    "room_closed",
    "disk_full",
    "error",
    "shutdown",
)


def safe_name(value: str) -> str:
    """``value`` as one harmless path component."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value)[:MAX_NAME_LENGTH]
    return "_" + cleaned if cleaned.startswith(".") or not cleaned else cleaned


@dataclass
class _Segment:
    """One recorded file."""

    recorder: TrackRecorder
    track: RecordingTrack
    started_at: float
    reason: Reason = "stopped"
    announced: asyncio.Future[RecordingFinishedMessage] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Recording:
    id: str
    room: str
    track_id: str | None
    started_at: float
    directory: Path
    segments: dict[str, _Segment] = field(default_factory=dict)
    """Open files by producer id."""
    clocks: dict[str, ParticipantClock] = field(default_factory=dict)
    """The media clock of each recorded participant, by participant id."""
    finished: list[RecordingFinishedMessage] = field(default_factory=list)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """Segments so far per (identity, kind, source)."""
    awaiting: tuple[str, str, str] | None = None
    """A track recording whose track went away: the (identity, kind, source) that
    continues it."""
    expiry: asyncio.TimerHandle | None = None

    def info(self) -> RecordingInfo:
        return RecordingInfo(
            recording_id=self.id,
            room=self.room,
            track_id=self.track_id,
            started_at=self.started_at,
            tracks=[
                segment.track.model_copy(update={"layer": segment.recorder.layer})
                for segment in self.segments.values()
            ],
            finished=list(self.finished),
        )


class RecordingManager:
    """Every recording of one :class:`~sfu.worker.Worker`; see the module docstring."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._settings: Settings = worker.settings
        self._recordings: dict[str, _Recording] = {}
        self.finished_total: Counter[str] = Counter()
        """Files finished, by reason."""
        self.bytes_total = 0
        self.frames_lost_total = 0

    @property
    def active(self) -> int:
        """Files being written."""
        return sum(len(r.segments) for r in self._recordings.values())

    # --- the room API ---------------------------------------------------------------

    async def start(self, room_name: str, track_id: str | None) -> RecordingInfo:
        room = self._worker.rooms.get(room_name)
        if room is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, f"no room {room_name!r}")
        producers = [
            (participant, producer)
            for participant in room.participants.values()
            for producer in participant.producers.values()
            if track_id is None or producer.id == track_id
        ]
        if track_id is not None:
            if not producers:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_TRACK, f"no track {track_id!r} in room {room_name!r}"
                )
            codec = producers[0][1].codec.name
            if codec.lower() not in FILE_EXTENSIONS:
                raise ProtocolError(
                    ErrorCode.CODEC_UNSUPPORTED,
                    f"{codec} cannot be recorded (VP8, H.264 and Opus can)",
                )
        producers = [(o, p) for o, p in producers if p.codec.name.lower() in FILE_EXTENSIONS]
        for recording in self._recordings.values():
            if recording.room == room_name and recording.track_id == track_id:
                what = f"track {track_id!r}" if track_id else f"every track of room {room_name!r}"
                raise ProtocolError(
                    ErrorCode.ALREADY_RECORDING,
                    f"{what} is already being recorded ({recording.id})",
                )
        free = self._settings.max_recordings - self.active
        if len(producers) > free:
            raise ProtocolError(
                ErrorCode.RECORDING_LIMIT,
                f"{len(producers)} tracks to record, {free} of max_recordings="
                f"{self._settings.max_recordings} free on this worker",
            )
        recording_id = "RE_" + secrets.token_urlsafe(9)
        directory = await asyncio.to_thread(self._prepare, safe_name(room_name), recording_id)
        recording = _Recording(recording_id, room_name, track_id, time.time(), directory)
        self._recordings[recording_id] = recording
        for participant, producer in producers:
            self._record(recording, participant, producer)
        logger.info("recording %s of room %s started", recording_id, room_name)
        return recording.info()

    def _prepare(self, room: str, recording_id: str) -> Path:
        """Create the recording's directory and check the disk (in a thread)."""
        base = self._settings.recording_dir
        if base is None:
            raise ProtocolError(
                ErrorCode.STORAGE_UNAVAILABLE,
                "recording is off on this server: set --recording-dir (SFU_RECORDING_DIR)",
            )
        try:
            base.mkdir(parents=True, exist_ok=True)
            probe = base / f".write-test-{recording_id}"
            probe.write_bytes(b"")
            probe.unlink()
            free = shutil.disk_usage(base).free
        except OSError as exc:
            raise ProtocolError(
                ErrorCode.STORAGE_UNAVAILABLE,
                f"cannot write to the recording directory {base}: {exc.strerror or exc}",
            ) from exc
        minimum = self._settings.recording_min_free_bytes
        if free < minimum:
            raise ProtocolError(
                ErrorCode.STORAGE_UNAVAILABLE,
                f"{free} bytes free in {base}, below recording_min_free_bytes={minimum}",
            )
        directory = base / room / recording_id
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProtocolError(
                ErrorCode.STORAGE_UNAVAILABLE,
                f"cannot create {directory}: {exc.strerror or exc}",
            ) from exc
        return directory

    def list(self, room_name: str) -> list[RecordingInfo]:
        if room_name not in self._worker.rooms and not any(
            r.room == room_name for r in self._recordings.values()
        ):
            raise ProtocolError(ErrorCode.NOT_JOINED, f"no room {room_name!r}")
        return [r.info() for r in self._recordings.values() if r.room == room_name]

    async def stop(self, room_name: str, recording_id: str | None) -> list[RecordingInfo]:
        """Stop one recording of the room (every one when ``recording_id`` is None);
        returns them with their finished files."""
        if recording_id is None:
            stopping = [r for r in self._recordings.values() if r.room == room_name]
        else:
            found = self._recordings.get(recording_id)
            if found is None or found.room != room_name:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_RECORDING,
                    f"no recording {recording_id!r} in room {room_name!r}",
                )
            stopping = [found]
        await asyncio.gather(*(self._end(recording, "stopped") for recording in stopping))
        return [recording.info() for recording in stopping]

    async def close(self) -> None:
        """The worker stops: every recording ends."""
        await asyncio.gather(
            *(self._end(recording, "shutdown") for recording in list(self._recordings.values()))
        )

    # --- room events ----------------------------------------------------------------

    def tracks_changed(
        self,
        room: Room,
        owner: Participant,
        published: Sequence[Producer],
        unpublished: Sequence[Producer],
    ) -> None:
        """Called by the room for every change of its tracks (see the module docstring)."""
        for recording in [r for r in self._recordings.values() if r.room == room.name]:
            for producer in unpublished:
                segment = recording.segments.get(producer.id)
                if segment is not None:
                    self._finish(recording, producer.id, "track_ended")
                    if recording.track_id is not None:
                        recording.awaiting = self._key(segment.track.identity, producer)
                        self._expire_later(recording, "track_ended")
            for producer in published:
                self._maybe_record(recording, owner, producer)
            if not room.size:
                self._expire_later(recording, "room_closed")

    def _maybe_record(self, recording: _Recording, owner: Participant, producer: Producer) -> None:
        if recording.track_id is not None:
            if recording.awaiting != self._key(owner.grant.identity, producer):
                return
            recording.awaiting = None
        if recording.expiry is not None:
            recording.expiry.cancel()
            recording.expiry = None
        if producer.codec.name.lower() not in FILE_EXTENSIONS:
            return
        if self.active >= self._settings.max_recordings:
            logger.warning(
                "recording %s: track %s not recorded, max_recordings=%d reached",
                recording.id,
                producer.id,
                self._settings.max_recordings,
            )
            return
        self._record(recording, owner, producer)

    @staticmethod
    def _key(identity: str, producer: Producer) -> tuple[str, str, str]:
        return identity, producer.kind, producer.source

    def _expire_later(self, recording: _Recording, reason: Reason) -> None:
        if recording.expiry is None:
            recording.expiry = asyncio.get_running_loop().call_later(
                self._settings.reconnect_grace_seconds, self._expire, recording, reason
            )

    def _expire(self, recording: _Recording, reason: Reason) -> None:
        recording.expiry = None
        room = self._worker.rooms.get(recording.room)
        gone = room is None or not room.size
        if gone or (recording.track_id is not None and recording.awaiting is not None):
            asyncio.get_running_loop().create_task(self._end(recording, reason))

    # --- files ----------------------------------------------------------------------

    def _record(self, recording: _Recording, participant: Participant, producer: Producer) -> None:
        identity = participant.grant.identity
        key = self._key(identity, producer)
        recording.counts[key] += 1
        name = f"{safe_name(identity)}-{safe_name(producer.source)}-{producer.id}"
        path = recording.directory / f"{name}.{FILE_EXTENSIONS[producer.codec.name.lower()]}"
        clock = recording.clocks.get(participant.id)
        if clock is None:
            # Packets are stamped with the monotonic clock on arrival (sfu.participant).
            clock = ParticipantClock(time.monotonic(), time.time())
            recording.clocks[participant.id] = clock
        recorder = TrackRecorder(producer, path, clock, self._settings.recording_min_free_bytes)
        base = self._settings.recording_dir
        assert base is not None
        track = RecordingTrack(
            track_id=producer.id,
            participant_id=participant.id,
            identity=identity,
            kind=producer.kind,
            codec=f"{producer.kind}/{producer.codec.name}",
            file=str(path.relative_to(base)),
            segment=recording.counts[key],
        )
        segment = _Segment(recorder, track, clock.started_at)
        recording.segments[producer.id] = segment
        recorder.done.add_done_callback(
            lambda done: self._announce(recording, segment, done.result())
        )

    def _finish(self, recording: _Recording, producer_id: str, reason: Reason) -> _Segment | None:
        segment = recording.segments.get(producer_id)
        if segment is not None:
            segment.reason = reason
            segment.recorder.finish()
        return segment

    async def _end(self, recording: _Recording, reason: Reason) -> None:
        """Finish every file of ``recording`` and forget it."""
        if recording.expiry is not None:
            recording.expiry.cancel()
            recording.expiry = None
        self._recordings.pop(recording.id, None)
        segments = [self._finish(recording, pid, reason) for pid in list(recording.segments)]
        waiting = [segment.announced for segment in segments if segment is not None]
        if waiting:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await asyncio.gather(*waiting)
            except TimeoutError:
                logger.warning("recording %s: files still being written", recording.id)
        logger.info("recording %s of room %s ended (%s)", recording.id, recording.room, reason)

    def _announce(self, recording: _Recording, segment: _Segment, result: MuxResult | None) -> None:
        """A file is closed: tell the room, count it."""
        recording.segments.pop(segment.track.track_id, None)
        reason = segment.reason
        if result is not None and result.disk_full:
            reason = "disk_full"
        elif result is not None and result.error is not None:
            reason = "error"
        recorder = segment.recorder
        track = segment.track
        lost = recorder.frames_lost + recorder.frames_skipped + recorder.frames_refused
        message = RecordingFinishedMessage(
            recording_id=recording.id,
            room=recording.room,
            track_id=track.track_id,
            participant_id=track.participant_id,
            identity=track.identity,
            kind=track.kind,
            codec=track.codec,
            file=track.file if result is not None else None,
            segment=track.segment,
            started_at=segment.started_at,
            duration=result.duration if result is not None else 0.0,
            bytes=result.bytes if result is not None else 0,
            frames=result.frames if result is not None else 0,
            frames_lost=lost,
            reason=reason,
            error=result.error if result is not None else None,
        )
        recording.finished.append(message)
        self.finished_total[reason] += 1
        self.bytes_total += message.bytes
        self.frames_lost_total += lost
        room = self._worker.rooms.get(recording.room)
        if room is not None:
            room.broadcast(message)
        logger.info(
            "recording %s: %s finished (%s, %.1f s, %d bytes)",
            recording.id,
            track.file,
            reason,
            message.duration,
            message.bytes,
        )
        if not segment.announced.done():
            segment.announced.set_result(message)
