"""The cluster backend in one process: dictionaries, queues and a condition.

Behaves like the Redis backend (TTLs, atomic placement, listener counts, streams)
so the signaling router and the worker service can be tested against it without a
store; every instance sharing one :class:`MemoryStore` sees the same cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from sfu.cluster.backend import WorkerInfo, worker_channel


@dataclass
class MemoryStore:
    """The shared state of an in-memory cluster."""

    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)
    nodes: dict[str, float] = field(default_factory=dict)
    rooms: dict[str, tuple[str, float]] = field(default_factory=dict)
    channels: dict[str, set[asyncio.Queue[str]]] = field(default_factory=dict)
    streams: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    participants: dict[str, dict[str, str]] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    appended: asyncio.Condition = field(default_factory=asyncio.Condition)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class MemorySubscription:
    def __init__(self, store: MemoryStore, channel: str) -> None:
        self._store = store
        self._channel = channel
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        store.channels.setdefault(channel, set()).add(self._queue)

    @property
    def active(self) -> bool:
        return self._queue in self._store.channels.get(self._channel, set())

    async def get(self, timeout: float) -> str | None:
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def close(self) -> None:
        self._store.channels.get(self._channel, set()).discard(self._queue)


class MemoryBackend:
    """:class:`~sfu.cluster.backend.ClusterBackend` over a :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        self.store.workers[info.worker_id] = (info, time.monotonic() + ttl)
        self.store.dead.discard(info.worker_id)

    async def unregister_worker(self, worker_id: str) -> None:
        self.store.workers.pop(worker_id, None)

    def _alive(self, worker_id: str) -> bool:
        entry = self.store.workers.get(worker_id)
        if entry is None or entry[1] < time.monotonic():
            self.store.workers.pop(worker_id, None)
            return False
        if not self.store.channels.get(worker_channel(worker_id)):
            self.store.workers.pop(worker_id, None)
            self.store.dead.add(worker_id)
            return False
        return True

    async def live_workers(self) -> list[WorkerInfo]:
        return [self.store.workers[w][0] for w in sorted(self.store.workers) if self._alive(w)]

    async def evict_worker(self, worker_id: str) -> None:
        self.store.workers.pop(worker_id, None)
        self.store.dead.add(worker_id)

    async def worker_dead(self, worker_id: str) -> bool:
        return worker_id in self.store.dead

    async def register_node(self, node_id: str, ttl: float) -> None:
        self.store.nodes[node_id] = time.monotonic() + ttl

    async def node_alive(self, node_id: str) -> bool:
        return self.store.nodes.get(node_id, 0.0) >= time.monotonic()

    async def place_room(self, room: str, lease: float) -> str | None:
        # No await between reading and writing: atomic on one event loop.
        now = time.monotonic()
        current = self.store.rooms.get(room)
        if current is not None and current[1] >= now and self._alive(current[0]):
            self.store.rooms[room] = (current[0], now + lease)
            return current[0]
        best: WorkerInfo | None = None
        best_score = 0.0
        for worker_id in sorted(self.store.workers):
            if not self._alive(worker_id):
                continue
            info = self.store.workers[worker_id][0]
            if info.draining or info.participants >= info.capacity:
                continue
            score = (info.participants + info.rooms) / info.capacity
            if best is None or score < best_score:
                best, best_score = info, score
        if best is None:
            return None
        best.rooms += 1
        self.store.rooms[room] = (best.worker_id, now + lease)
        return best.worker_id

    async def renew_rooms(self, worker_id: str, rooms: list[str], lease: float) -> None:
        now = time.monotonic()
        for room in rooms:
            current = self.store.rooms.get(room)
            if current is None or current[1] < now or current[0] == worker_id:
                self.store.rooms[room] = (worker_id, now + lease)

    async def release_room(self, worker_id: str, room: str) -> None:
        current = self.store.rooms.get(room)
        if current is not None and current[0] == worker_id:
            del self.store.rooms[room]

    async def publish(self, channel: str, data: str) -> int:
        queues = self.store.channels.get(channel, set())
        for queue in queues:
            queue.put_nowait(data)
        return len(queues)

    async def subscribe(self, channel: str) -> MemorySubscription:
        return MemorySubscription(self.store, channel)

    async def append_events(self, events: list[tuple[str, str]], ttl: float) -> None:
        for stream, data in events:
            self.store.streams.setdefault(stream, []).append((next(self.store.ids), data))
        async with self.store.appended:
            self.store.appended.notify_all()

    def _entries_after(self, cursors: dict[str, str]) -> list[tuple[str, str, str]]:
        found = []
        for stream, cursor in cursors.items():
            after = int(cursor)
            found.extend(
                (stream, str(entry_id), data)
                for entry_id, data in self.store.streams.get(stream, [])
                if entry_id > after
            )
        return found

    async def read_events(
        self, cursors: dict[str, str], block: float
    ) -> list[tuple[str, str, str]]:
        async with self.store.appended:
            try:
                async with asyncio.timeout(block):
                    await self.store.appended.wait_for(lambda: bool(self._entries_after(cursors)))
            except TimeoutError:
                return []
        return self._entries_after(cursors)

    async def delete_events(self, stream: str) -> None:
        self.store.streams.pop(stream, None)

    async def save_participant(self, participant_id: str, values: dict[str, str]) -> None:
        self.store.participants.setdefault(participant_id, {}).update(values)

    async def load_participant(self, participant_id: str) -> dict[str, str] | None:
        record = self.store.participants.get(participant_id)
        return dict(record) if record is not None else None

    async def delete_participant(self, participant_id: str) -> None:
        self.store.participants.pop(participant_id, None)

    async def close(self) -> None:
        return None
