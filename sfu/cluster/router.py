"""The signaling node's side of the cluster: a :class:`~sfu.worker_api.MediaWorker`
that places rooms and carries every call to the worker hosting the room.

Per participant the node keeps the socket's sink, the worker and a cursor into the
participant's event stream. One reader loop reads the streams of every local
participant and delivers their events in order. A monitor loop checks that the
workers of local participants are alive; when one dies, its participants get a
fatal ``worker_lost`` error (their clients rejoin and the room is placed again).

A socket that drops without ``leave`` is *detached*: the participant stays on its
worker for ``reconnect_grace_seconds`` and any node may take it over with the
resume token handed out in ``joined`` (the events meanwhile wait in the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter

from sfu.cluster.admin import RoomSummary
from sfu.cluster.backend import BackendUnavailable, ClusterBackend, WorkerInfo
from sfu.cluster.rpc import RpcClient, WorkerGone
from sfu.config import Settings
from sfu.protocol import (
    CandidateMessage,
    ErrorCode,
    ErrorMessage,
    JoinedMessage,
    MuteMessage,
    Participant,
    PublishAnswerMessage,
    PublishOfferMessage,
    RecordingInfo,
    ServerMessage,
    SubscribeAnswerMessage,
)
from sfu.worker_api import EventSink, Grant, HttpSession, HttpSessionOffer, ProtocolError

logger = logging.getLogger(__name__)

READ_BLOCK_SECONDS = 1.0
RETRY_SECONDS = 0.5

_server_message: TypeAdapter[ServerMessage] = TypeAdapter(
    Annotated[ServerMessage, Field(discriminator="type")]
)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass
class _Local:
    """A participant whose socket this node holds."""

    sink: EventSink
    worker_id: str
    room: str
    cursor: str
    resume_token: str


class ClusterRouter:
    """:class:`~sfu.worker_api.MediaWorker` and :class:`~sfu.cluster.admin.RoomAdmin`
    for one signaling node."""

    def __init__(self, settings: Settings, backend: ClusterBackend, node_id: str) -> None:
        self.settings = settings
        self.backend = backend
        self.node_id = node_id
        self._rpc = RpcClient(backend, node_id, settings.rpc_timeout)
        self._local: dict[str, _Local] = {}
        self._detached: dict[str, asyncio.Task[None]] = {}
        self._missing: dict[str, float] = {}
        """Worker id → when the monitor first missed it in the registry."""
        self._wake_stream = f"wake:{node_id}"
        self._wake_cursor = "0"
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._rpc.start()
        with contextlib.suppress(BackendUnavailable):
            await self.backend.register_node(self.node_id, self.settings.heartbeat_ttl)
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="node-events"),
            asyncio.create_task(self._monitor_loop(), name="node-monitor"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._detached.values()]:
            task.cancel()
        for task in [*self._tasks, *self._detached.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._rpc.stop()

    # --- MediaWorker ------------------------------------------------------------------

    async def join(self, participant_id: str, grant: Grant, sink: EventSink) -> JoinedMessage:
        for _attempt in range(2):
            worker_id = await self._place(grant.room)
            try:
                return await self._join_on(worker_id, participant_id, grant, sink)
            except WorkerGone:
                # Died since its last heartbeat: forget it and place the room again.
                logger.warning("worker %s is gone; placing %s again", worker_id, grant.room)
                with contextlib.suppress(BackendUnavailable):
                    await self.backend.evict_worker(worker_id)
        raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "no media worker answered")

    async def _place(self, room: str) -> str:
        try:
            worker_id = await self.backend.place_room(room, self.settings.room_lease)
        except BackendUnavailable as exc:
            raise ProtocolError(
                ErrorCode.WORKER_UNAVAILABLE, f"cannot place the room (cluster store: {exc})"
            ) from exc
        if worker_id is None:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "no media worker can take the room")
        return worker_id

    async def _join_on(
        self, worker_id: str, participant_id: str, grant: Grant, sink: EventSink
    ) -> JoinedMessage:
        secret = secrets.token_urlsafe(18)
        # Registered before the call: the joined event may arrive before the reply.
        self._local[participant_id] = _Local(
            sink, worker_id, grant.room, "0", f"{participant_id}.{secret}"
        )
        self._wake()
        try:
            await self.backend.save_participant(
                participant_id,
                {
                    "room": grant.room,
                    "identity": grant.identity,
                    "worker": worker_id,
                    "node": self.node_id,
                    "resume": _hash(secret),
                    "cursor": "0",
                },
            )
            result = await self._rpc.call(
                worker_id,
                "join",
                participant_id=participant_id,
                grant=dataclasses.asdict(grant),
                node=self.node_id,
            )
        except BaseException as exc:
            self._local.pop(participant_id, None)
            if not isinstance(exc, WorkerGone):
                # A join that timed out may still complete on the worker: undo it.
                self._spawn(self._quiet_leave(worker_id, participant_id))
            with contextlib.suppress(BackendUnavailable):
                await self.backend.delete_participant(participant_id)
            if isinstance(exc, BackendUnavailable):
                raise ProtocolError(
                    ErrorCode.WORKER_UNAVAILABLE, f"cannot join (cluster store: {exc})"
                ) from exc
            raise
        return JoinedMessage.model_validate(result)

    async def _forward(self, participant_id: str, message: BaseModel) -> Any:
        local = self._local.get(participant_id)
        if local is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, "not in a room")
        return await self._rpc.call(
            local.worker_id,
            "message",
            participant_id=participant_id,
            message=message.model_dump(mode="json"),
        )

    async def publish_offer(
        self, participant_id: str, message: PublishOfferMessage
    ) -> PublishAnswerMessage:
        result = await self._forward(participant_id, message)
        return PublishAnswerMessage.model_validate(result)

    async def subscribe_answer(self, participant_id: str, message: SubscribeAnswerMessage) -> None:
        await self._forward(participant_id, message)

    async def add_candidate(self, participant_id: str, message: CandidateMessage) -> None:
        await self._forward(participant_id, message)

    async def mute(self, participant_id: str, message: MuteMessage) -> None:
        await self._forward(participant_id, message)

    async def track_settings(self, participant_id: str, message: BaseModel) -> None:
        await self._forward(participant_id, message)

    async def leave(self, participant_id: str) -> None:
        local = self._local.pop(participant_id, None)
        if local is None:
            return
        try:
            await self._rpc.call(local.worker_id, "leave", participant_id=participant_id)
        finally:
            await self._forget(participant_id)

    # --- WHIP / WHEP ------------------------------------------------------------------
    #
    # An HTTP session has no socket, so no node holds it: its id names the worker
    # (``<worker id>.<the worker's session id>``) and any node carries its PATCH and
    # DELETE there. The worker's part of the id is the secret that allows them.

    async def open_http_session(self, grant: Grant, offer: HttpSessionOffer) -> HttpSession:
        for _attempt in range(2):
            worker_id = await self._place(grant.room)
            try:
                result = await self._rpc.call(
                    worker_id,
                    "http_open",
                    grant=dataclasses.asdict(grant),
                    offer=dataclasses.asdict(offer),
                )
            except WorkerGone:
                logger.warning("worker %s is gone; placing %s again", worker_id, grant.room)
                with contextlib.suppress(BackendUnavailable):
                    await self.backend.evict_worker(worker_id)
                continue
            session = HttpSession(**result)
            return dataclasses.replace(session, session_id=f"{worker_id}.{session.session_id}")
        raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "no media worker answered")

    async def _http_call(self, session_id: str, method: str, **params: Any) -> None:
        worker_id, _, local = session_id.rpartition(".")
        if not worker_id or not local or len(worker_id) > 128 or not worker_id.isprintable():
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "no such session (it may have ended)")
        try:
            await self._rpc.call(worker_id, method, session_id=local, **params)
        except WorkerGone:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION, "no such session (its media worker is gone)"
            ) from None

    async def patch_http_session(
        self, session_id: str, fragment: str, if_match: str | None
    ) -> None:
        await self._http_call(session_id, "http_patch", fragment=fragment, if_match=if_match)

    async def close_http_session(self, session_id: str) -> None:
        await self._http_call(session_id, "http_close")

    async def _forget(self, participant_id: str) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self.backend.delete_participant(participant_id)
            await self.backend.delete_events(participant_id)

    # --- resume -----------------------------------------------------------------------

    async def detach(self, participant_id: str) -> None:
        """The socket dropped without ``leave``: keep the media session for the grace
        period, then leave unless another socket resumed it."""
        local = self._local.pop(participant_id, None)
        if local is None:
            return
        task = asyncio.create_task(self._expire(participant_id, local.worker_id))
        self._detached[participant_id] = task
        task.add_done_callback(lambda _: self._detached.pop(participant_id, None))

    async def _expire(self, participant_id: str, worker_id: str) -> None:
        await asyncio.sleep(self.settings.reconnect_grace_seconds)
        try:
            record = await self.backend.load_participant(participant_id)
            if record is not None and record.get("node") != self.node_id:
                return  # resumed on another node
            # ``node`` makes the worker ignore this if the session moved meanwhile.
            await self._rpc.call(
                worker_id, "leave", participant_id=participant_id, node=self.node_id
            )
            await self._forget(participant_id)
        except (ProtocolError, BackendUnavailable) as exc:
            logger.info("participant %s: leave after grace failed: %s", participant_id, exc)

    async def resume(self, resume_token: str, grant: Grant, sink: EventSink) -> str:
        """Take over the session of ``resume_token`` for this socket; delivers a
        ``joined`` with ``resumed`` set, then the events the client missed. Returns
        the participant id."""
        participant_id, _, secret = resume_token.partition(".")
        try:
            record = await self.backend.load_participant(participant_id)
        except BackendUnavailable as exc:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, f"cannot resume: {exc}") from exc
        if (
            record is None
            or not secret
            or not secrets.compare_digest(record.get("resume", ""), _hash(secret))
            or record.get("room") != grant.room
            or record.get("identity") != grant.identity
        ):
            raise ProtocolError(ErrorCode.RESUME_FAILED, "no such session to resume; join again")
        if participant_id in self._local:
            raise ProtocolError(ErrorCode.ALREADY_JOINED, "the session is still connected")
        pending = self._detached.pop(participant_id, None)
        if pending is not None:
            pending.cancel()
        worker_id = record["worker"]
        result = await self._rpc.call(
            worker_id, "resume", participant_id=participant_id, node=self.node_id
        )
        try:
            await self.backend.save_participant(participant_id, {"node": self.node_id})
        except BackendUnavailable as exc:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, f"cannot resume: {exc}") from exc
        joined = JoinedMessage.model_validate(result).model_copy(
            update={"resume_token": resume_token}
        )
        sink(joined)
        self._local[participant_id] = _Local(
            sink, worker_id, record["room"], record.get("cursor", "0"), resume_token
        )
        self._wake()
        return participant_id

    # --- events -----------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _quiet_leave(self, worker_id: str, participant_id: str) -> None:
        with contextlib.suppress(ProtocolError):
            await self._rpc.call(worker_id, "leave", participant_id=participant_id)

    def _wake(self) -> None:
        """Make the reader pick up a new stream now rather than after its block."""

        async def append() -> None:
            with contextlib.suppress(BackendUnavailable):
                await self.backend.append_events([(self._wake_stream, "")], 60.0)

        self._spawn(append())

    async def _read_loop(self) -> None:
        while True:
            cursors = {pid: local.cursor for pid, local in self._local.items()}
            cursors[self._wake_stream] = self._wake_cursor
            try:
                entries = await self.backend.read_events(cursors, READ_BLOCK_SECONDS)
            except BackendUnavailable as exc:
                logger.debug("event read failed: %s", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            delivered: dict[str, str] = {}
            for stream, entry_id, data in entries:
                if stream == self._wake_stream:
                    self._wake_cursor = entry_id
                    continue
                local = self._local.get(stream)
                if local is None:
                    continue
                local.cursor = delivered[stream] = entry_id
                self._deliver(stream, local, data)
            for participant_id, cursor in delivered.items():
                with contextlib.suppress(BackendUnavailable):
                    await self.backend.save_participant(participant_id, {"cursor": cursor})

    def _deliver(self, participant_id: str, local: _Local, data: str) -> None:
        try:
            message = _server_message.validate_json(data)
        except ValueError:
            logger.warning("participant %s: unparsable event %.200r", participant_id, data)
            return
        if isinstance(message, JoinedMessage):
            message = message.model_copy(update={"resume_token": local.resume_token})
        elif isinstance(message, ErrorMessage) and message.fatal:
            # The worker ended this participant (moved, removed, transport failed).
            self._local.pop(participant_id, None)
        local.sink(message)

    # --- failure detection --------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval)
            try:
                await self.backend.register_node(self.node_id, self.settings.heartbeat_ttl)
                lost = await self._lost_workers()
            except BackendUnavailable:
                continue  # cannot tell; running rooms keep forwarding meanwhile
            for participant_id, local in list(self._local.items()):
                if local.worker_id in lost:
                    self._lose(participant_id, local)

    async def _lost_workers(self) -> set[str]:
        """Workers of local participants that are gone: evicted (their listener
        vanished: a dead process), or missing for a whole heartbeat TTL. A worker that
        is merely missing may be re-registering with a Redis that just restarted."""
        live = {w.worker_id for w in await self.backend.live_workers()}
        now = time.monotonic()
        lost = set()
        for worker_id in {local.worker_id for local in self._local.values()} - live:
            since = self._missing.setdefault(worker_id, now)
            if now - since >= self.settings.heartbeat_ttl or await self.backend.worker_dead(
                worker_id
            ):
                lost.add(worker_id)
        for worker_id in live | lost:
            self._missing.pop(worker_id, None)
        return lost

    def _lose(self, participant_id: str, local: _Local) -> None:
        logger.warning(
            "participant %s: worker %s is gone, asking the client to rejoin",
            participant_id,
            local.worker_id,
        )
        self._local.pop(participant_id, None)
        local.sink(
            ErrorMessage(
                code=ErrorCode.WORKER_LOST,
                message="the media worker hosting this session is gone; rejoin",
                fatal=True,
            )
        )
        self._spawn(self._forget(participant_id))

    # --- RoomAdmin ----------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        try:
            return await self.backend.live_workers()
        except BackendUnavailable as exc:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, str(exc)) from exc

    async def _ask_all(self, method: str, **params: Any) -> list[Any]:
        results = await asyncio.gather(
            *(self._rpc.call(w.worker_id, method, **params) for w in await self.workers()),
            return_exceptions=True,
        )
        return [r for r in results if not isinstance(r, BaseException)]

    async def list_rooms(self) -> list[RoomSummary]:
        rooms = [
            RoomSummary.model_validate(room)
            for found in await self._ask_all("rooms")
            for room in found
        ]
        return sorted(rooms, key=lambda r: (r.room, r.worker_id))

    async def _room_worker(self, room: str) -> str:
        for summary in await self.list_rooms():
            if summary.room == room:
                return summary.worker_id
        raise ProtocolError(ErrorCode.NOT_JOINED, f"no room {room!r}")

    async def list_participants(self, room: str) -> list[Participant]:
        worker_id = await self._room_worker(room)
        found = await self._rpc.call(worker_id, "participants", room=room)
        return [Participant.model_validate(p) for p in found]

    async def remove_participant(self, room: str, participant_id: str) -> None:
        worker_id = await self._room_worker(room)
        await self._rpc.call(worker_id, "remove", room=room, participant_id=participant_id)

    async def mute_track(self, room: str, participant_id: str, track_id: str, muted: bool) -> None:
        worker_id = await self._room_worker(room)
        await self._rpc.call(
            worker_id,
            "mute_track",
            room=room,
            participant_id=participant_id,
            track_id=track_id,
            muted=muted,
        )

    async def start_recording(self, room: str, track_id: str | None) -> RecordingInfo:
        worker_id = await self._room_worker(room)
        found = await self._rpc.call(worker_id, "start_recording", room=room, track_id=track_id)
        return RecordingInfo.model_validate(found)

    async def list_recordings(self, room: str) -> list[RecordingInfo]:
        worker_id = await self._room_worker(room)
        found = await self._rpc.call(worker_id, "recordings", room=room)
        return [RecordingInfo.model_validate(r) for r in found]

    async def stop_recording(self, room: str, recording_id: str | None) -> list[RecordingInfo]:
        worker_id = await self._room_worker(room)
        found = await self._rpc.call(
            worker_id, "stop_recording", room=room, recording_id=recording_id
        )
        return [RecordingInfo.model_validate(r) for r in found]

    async def drain_worker(self, worker_id: str, timeout: float | None) -> None:
        await self._rpc.call(worker_id, "drain", timeout=timeout)
