"""The room administration API behind ``/api/rooms``: list, remove, mute, record.

:class:`LocalAdmin` acts on one in-process worker (the embedded server, and each
worker of a cluster when a node asks it over the bus); the cluster router
implements the same :class:`RoomAdmin` by asking every live worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pydantic import BaseModel

from sfu.protocol import ErrorCode, ErrorMessage, Participant, RecordingInfo
from sfu.worker import Worker
from sfu.worker_api import ProtocolError

if TYPE_CHECKING:
    from sfu.cluster.backend import WorkerInfo
    from sfu.participant import Participant as WorkerParticipant


class RoomSummary(BaseModel):
    room: str
    worker_id: str
    participants: int


class RoomAdmin(Protocol):
    async def list_rooms(self) -> list[RoomSummary]: ...

    async def list_participants(self, room: str) -> list[Participant]:
        """Raises ``ProtocolError(NOT_JOINED)`` if there is no such room."""
        ...

    async def remove_participant(self, room: str, participant_id: str) -> None:
        """Disconnect a participant: it gets a fatal ``removed`` error and its
        socket closes; raises ``ProtocolError(NOT_JOINED)`` if it is not there."""
        ...

    async def mute_track(self, room: str, participant_id: str, track_id: str, muted: bool) -> None:
        """Mark a published track (un)muted for the other participants."""
        ...

    async def start_recording(self, room: str, track_id: str | None) -> RecordingInfo:
        """Record one track, or every track of the room (``track_id`` None); see
        :mod:`sfu.recording.manager`."""
        ...

    async def list_recordings(self, room: str) -> list[RecordingInfo]: ...

    async def stop_recording(self, room: str, recording_id: str | None) -> list[RecordingInfo]:
        """Stop one recording (every one of the room when ``recording_id`` is None);
        returns them with their finished files."""
        ...


@runtime_checkable
class ClusterAdmin(RoomAdmin, Protocol):
    """What a cluster node adds: the workers and their drain."""

    async def workers(self) -> list[WorkerInfo]: ...

    async def drain_worker(self, worker_id: str, timeout: float | None) -> None: ...


class LocalAdmin:
    """:class:`RoomAdmin` over one :class:`~sfu.worker.Worker`."""

    def __init__(self, worker: Worker, worker_id: str = "embedded") -> None:
        self._worker = worker
        self._worker_id = worker_id

    async def list_rooms(self) -> list[RoomSummary]:
        return [
            RoomSummary(room=name, worker_id=self._worker_id, participants=len(room.participants))
            for name, room in sorted(self._worker.rooms.items())
        ]

    async def list_participants(self, room: str) -> list[Participant]:
        found = self._worker.rooms.get(room)
        if found is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, f"no room {room!r}")
        return [p.info() for p in found.participants.values()]

    def _participant_in(self, room: str, participant_id: str) -> WorkerParticipant:
        participant = self._worker.participants.get(participant_id)
        if participant is None or participant.room.name != room:
            raise ProtocolError(ErrorCode.NOT_JOINED, f"no participant {participant_id} in {room}")
        return participant

    async def remove_participant(self, room: str, participant_id: str) -> None:
        participant = self._participant_in(room, participant_id)
        participant.send(
            ErrorMessage(code=ErrorCode.REMOVED, message="removed from the room", fatal=True)
        )
        await self._worker.remove_participant(participant_id)

    async def mute_track(self, room: str, participant_id: str, track_id: str, muted: bool) -> None:
        participant = self._participant_in(room, participant_id)
        producer = participant.publisher.mute(track_id, muted)
        participant.room.track_muted(producer)

    async def start_recording(self, room: str, track_id: str | None) -> RecordingInfo:
        return await self._worker.recordings.start(room, track_id)

    async def list_recordings(self, room: str) -> list[RecordingInfo]:
        return self._worker.recordings.list(room)

    async def stop_recording(self, room: str, recording_id: str | None) -> list[RecordingInfo]:
        return await self._worker.recordings.stop(room, recording_id)
