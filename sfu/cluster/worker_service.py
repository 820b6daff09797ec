"""``sfu worker``: one media worker served on the cluster bus.

The service registers the worker with its load on every heartbeat, renews the
leases of the rooms it hosts, answers the signaling nodes' requests
(:mod:`sfu.cluster.rpc`) by calling :class:`sfu.worker.Worker`, and appends every
event for a participant to that participant's stream. Nothing on the packet path
touches the store: when Redis goes away, rooms keep forwarding and only signaling
stops; heartbeats and subscriptions resume on their own when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from sfu.cluster.admin import LocalAdmin
from sfu.cluster.backend import BackendUnavailable, ClusterBackend, WorkerInfo
from sfu.cluster.rpc import RpcServer
from sfu.config import Settings
from sfu.protocol import (
    ErrorCode,
    ErrorMessage,
    IceServer,
    JoinedMessage,
    ServerMessage,
    client_message_adapter,
)
from sfu.worker import Worker
from sfu.worker_api import Grant, HttpSessionOffer, ProtocolError

logger = logging.getLogger(__name__)

EVENT_STREAM_TTL = 120.0
"""Seconds a participant's event stream outlives its last event."""
OUTBOX_LIMIT = 100_000
"""Events waiting for the store; beyond that (a long outage) new ones are dropped."""

_MESSAGE_METHODS = {
    "publish_offer": "publish_offer",
    "subscribe_answer": "subscribe_answer",
    "candidate": "add_candidate",
    "mute": "mute",
    "track_settings": "track_settings",
}
"""Client message type → the :class:`~sfu.worker_api.MediaWorker` method serving it."""


class WorkerService:
    def __init__(self, settings: Settings, backend: ClusterBackend, worker_id: str) -> None:
        self.settings = settings
        self.backend = backend
        self.worker_id = worker_id
        self.worker = Worker(settings)
        self.admin = LocalAdmin(self.worker, worker_id)
        self.draining = False
        self.finished = asyncio.Event()
        """Set when a draining worker has no participants left (the process exits)."""
        self._rpc = RpcServer(backend, worker_id, self._handle)
        self._owners: dict[str, str] = {}
        """Participant id → the signaling node holding its socket."""
        self._orphaned: dict[str, float] = {}
        """Participant id → when its node was first seen dead."""
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._packets = 0
        self._packets_at = time.monotonic()
        self._drain_deadline: float | None = None

    @property
    def address(self) -> str:
        s = self.settings
        return s.announced_ip or (s.ice_addresses[0] if s.ice_addresses else s.host)

    async def start(self) -> None:
        """Raises :class:`BackendUnavailable` (and may be called again) while the
        store is down."""
        await self._rpc.start()
        await self.worker.start()
        with contextlib.suppress(BackendUnavailable):
            await self._heartbeat()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
            asyncio.create_task(self._write_events(), name="worker-events"),
        ]
        logger.info("worker %s serving (capacity %d)", self.worker_id, self.settings.capacity)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._rpc.stop()
        with contextlib.suppress(BackendUnavailable):
            await self.backend.unregister_worker(self.worker_id)
        await self.worker.stop()

    def drain(self, timeout: float | None = None) -> None:
        """Take no new rooms; once the last participant leaves the process exits.
        Participants still here after ``timeout`` seconds are moved to other workers
        (their clients get ``worker_lost`` and rejoin)."""
        if not self.draining:
            logger.info("worker %s draining", self.worker_id)
        self.draining = True
        wait = self.settings.drain_timeout if timeout is None else timeout
        self._drain_deadline = time.monotonic() + wait

    # --- heartbeat ------------------------------------------------------------------

    def info(self) -> WorkerInfo:
        now = time.monotonic()
        sent = sum(
            consumer.packets_sent
            for participant in self.worker.participants.values()
            for consumer in participant.consumers()
        )
        elapsed = max(now - self._packets_at, 1e-3)
        rate = max(sent - self._packets, 0) / elapsed
        self._packets, self._packets_at = sent, now
        return WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            capacity=self.settings.capacity,
            rooms=len(self.worker.rooms),
            participants=len(self.worker.participants),
            packets_per_second=round(rate, 1),
            draining=self.draining,
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            # A bug in one round must not end the heartbeats: the cluster would take
            # this worker for dead and move every room off it.
            try:
                await self._heartbeat()
                await self._sweep_orphans()
            except BackendUnavailable as exc:
                logger.warning("heartbeat failed (media keeps flowing): %s", exc)
            except Exception:
                logger.exception("heartbeat round failed")
            try:
                await self._check_drain()
            except Exception:
                logger.exception("drain check failed")

    async def _heartbeat(self) -> None:
        # Registering while not subscribed would make nodes evict this worker again.
        if not self._rpc.listening:
            return
        await self.backend.register_worker(self.info(), self.settings.heartbeat_ttl)
        await self.backend.renew_rooms(
            self.worker_id, list(self.worker.rooms), self.settings.room_lease
        )

    async def _sweep_orphans(self) -> None:
        """Remove participants whose signaling node died and who did not resume
        elsewhere within the grace period."""
        now = time.monotonic()
        for participant_id, node_id in list(self._owners.items()):
            if participant_id not in self.worker.participants:  # left on its own
                del self._owners[participant_id]
                continue
            if await self.backend.node_alive(node_id):
                self._orphaned.pop(participant_id, None)
                continue
            since = self._orphaned.setdefault(participant_id, now)
            if now - since >= self.settings.reconnect_grace_seconds:
                logger.info("participant %s: node %s gone, removing", participant_id, node_id)
                await self._leave(participant_id)

    async def _check_drain(self) -> None:
        if not self.draining:
            return
        if not self.worker.participants:
            self.finished.set()
            return
        if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
            await self._migrate_all()

    async def _migrate_all(self) -> None:
        for room in list(self.worker.rooms):
            with contextlib.suppress(BackendUnavailable):
                await self.backend.release_room(self.worker_id, room)
        for participant_id, participant in list(self.worker.participants.items()):
            participant.send(
                ErrorMessage(
                    code=ErrorCode.WORKER_LOST,
                    message="the media worker is shutting down; rejoin",
                    fatal=True,
                )
            )
            await self._leave(participant_id)

    # --- events ---------------------------------------------------------------------

    def _sink(self, participant_id: str) -> Any:
        def deliver(message: ServerMessage) -> None:
            if self._outbox.qsize() >= OUTBOX_LIMIT:
                logger.warning("event outbox full, dropping %s", message.type)
                return
            self._outbox.put_nowait((participant_id, message.model_dump_json(exclude_none=True)))

        return deliver

    async def _write_events(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            while True:
                try:
                    await self.backend.append_events(batch, EVENT_STREAM_TTL)
                    break
                except BackendUnavailable as exc:
                    logger.warning("cannot deliver %d events yet: %s", len(batch), exc)
                    await asyncio.sleep(self.settings.heartbeat_interval)

    # --- requests -------------------------------------------------------------------

    async def _handle(self, method: str, params: dict[str, Any]) -> Any:
        match method:
            case "join":
                return await self._join(params)
            case "message":
                return await self._message(params)
            case "leave":
                owner = params.get("node")
                participant_id = str(params["participant_id"])
                if owner is None or self._owners.get(participant_id) == owner:
                    await self._leave(participant_id)
                return None
            case "resume":
                return self._resume(str(params["participant_id"]), str(params["node"]))
            case "rooms":
                return [room.model_dump() for room in await self.admin.list_rooms()]
            case "participants":
                found = await self.admin.list_participants(str(params["room"]))
                return [p.model_dump() for p in found]
            case "remove":
                await self.admin.remove_participant(
                    str(params["room"]), str(params["participant_id"])
                )
                return None
            case "mute_track":
                await self.admin.mute_track(
                    str(params["room"]),
                    str(params["participant_id"]),
                    str(params["track_id"]),
                    bool(params["muted"]),
                )
                return None
            case "http_open":
                return await self._open_http_session(params)
            case "http_patch":
                if_match = params.get("if_match")
                await self.worker.patch_http_session(
                    str(params["session_id"]),
                    str(params["fragment"]),
                    None if if_match is None else str(if_match),
                )
                return None
            case "http_close":
                # The room's lease lapses on its own once it is empty (not renewed).
                await self.worker.close_http_session(str(params["session_id"]))
                return None
            case "start_recording":
                track_id = params.get("track_id")
                info = await self.admin.start_recording(
                    str(params["room"]), str(track_id) if track_id is not None else None
                )
                return info.model_dump(mode="json")
            case "recordings":
                found = await self.admin.list_recordings(str(params["room"]))
                return [r.model_dump(mode="json") for r in found]
            case "stop_recording":
                recording_id = params.get("recording_id")
                stopped = await self.admin.stop_recording(
                    str(params["room"]), str(recording_id) if recording_id is not None else None
                )
                return [r.model_dump(mode="json") for r in stopped]
            case "drain":
                timeout = params.get("timeout")
                self.drain(float(timeout) if timeout is not None else None)
                return None
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown worker method {method!r}")

    async def _join(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.draining:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "the media worker is draining")
        participant_id = str(params["participant_id"])
        grant = Grant(**params["grant"])
        self._owners[participant_id] = str(params["node"])
        try:
            joined = await self.worker.join(participant_id, grant, self._sink(participant_id))
        except BaseException:
            self._owners.pop(participant_id, None)
            raise
        return joined.model_dump(mode="json")

    async def _message(self, params: dict[str, Any]) -> dict[str, Any] | None:
        message = client_message_adapter.validate_python(params["message"])
        method = getattr(self.worker, _MESSAGE_METHODS.get(message.type, ""), None)
        if method is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"{message.type} is not a worker request")
        result = await method(str(params["participant_id"]), message)
        return result.model_dump(mode="json") if result is not None else None

    async def _open_http_session(self, params: dict[str, Any]) -> dict[str, Any]:
        """A WHIP/WHEP session: no node owns it, so the orphan sweep leaves it alone;
        it ends on DELETE, on transport failure or when idle (sfu/http_session.py)."""
        if self.draining:
            raise ProtocolError(ErrorCode.WORKER_UNAVAILABLE, "the media worker is draining")
        grant = Grant(**params["grant"])
        offer = HttpSessionOffer(**params["offer"])
        session = await self.worker.open_http_session(grant, offer)
        return dataclasses.asdict(session)

    def _resume(self, participant_id: str, node_id: str) -> dict[str, Any]:
        participant = self.worker.participants.get(participant_id)
        if participant is None:
            raise ProtocolError(ErrorCode.RESUME_FAILED, "the session is gone; join again")
        self._owners[participant_id] = node_id
        self._orphaned.pop(participant_id, None)
        room = participant.room
        joined = JoinedMessage(
            room=room.name,
            participant_id=participant_id,
            identity=participant.grant.identity,
            can_publish=participant.grant.can_publish,
            can_subscribe=participant.grant.can_subscribe,
            participants=[p.info() for p in room.participants.values() if p.id != participant_id],
            ice_servers=[IceServer(urls=[url]) for url in self.settings.ice_servers],
            resumed=True,
        )
        return joined.model_dump(mode="json")

    async def _leave(self, participant_id: str) -> None:
        self._owners.pop(participant_id, None)
        self._orphaned.pop(participant_id, None)
        participant = self.worker.participants.get(participant_id)
        room = participant.room.name if participant is not None else None
        await self.worker.leave(participant_id)
        if room is not None and room not in self.worker.rooms:
            with contextlib.suppress(BackendUnavailable):
                await self.backend.release_room(self.worker_id, room)
