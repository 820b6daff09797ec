"""The one small interface the cluster needs from its coordination store.

Three jobs, one store (as LiveKit does with Redis, but with our own keys and calls):

- **registry**: workers register a hash with their load and renew it with a TTL;
  signaling nodes renew a plain key. A worker counts as live while its key exists
  *and* it is subscribed to its request channel: a SIGKILLed process drops its
  subscription at once, so death is seen in one monitor tick instead of a TTL.
- **placement**: a room is put on the least-loaded live worker in one atomic step, so
  two nodes racing on a room's first joins place it once.
- **bus**: requests to a worker and replies to a node travel over pub/sub channels
  (``PUBLISH`` reports how many listened, so a request to a dead worker fails at
  once); events for a participant are appended to a per-participant stream, so the
  node holding the socket reads them in order and a node that takes the session
  over (resume) continues from the last delivered entry.

Every method raises :class:`BackendUnavailable` when the store cannot be reached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Protocol

WORKERS_SET = "workers"


class BackendUnavailable(Exception):
    """The coordination store (Redis) cannot be reached or failed the command."""


@dataclass
class WorkerInfo:
    """What a worker publishes about itself on every heartbeat."""

    worker_id: str
    address: str
    """The address clients reach its media on (announced IP or ICE address)."""
    capacity: int
    """Participants it accepts; placement skips a worker at capacity."""
    rooms: int = 0
    participants: int = 0
    packets_per_second: float = 0.0
    draining: bool = False

    def to_fields(self) -> dict[str, str]:
        values = asdict(self)
        values["draining"] = "1" if self.draining else "0"
        return {key: str(value) for key, value in values.items()}

    @classmethod
    def from_fields(cls, values: dict[str, str]) -> WorkerInfo:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in values.items() if k in known}
        return cls(
            worker_id=data["worker_id"],
            address=data.get("address", ""),
            capacity=int(data.get("capacity", "0")),
            rooms=int(data.get("rooms", "0")),
            participants=int(data.get("participants", "0")),
            packets_per_second=float(data.get("packets_per_second", "0")),
            draining=data.get("draining") == "1",
        )


def worker_channel(worker_id: str) -> str:
    return f"worker:{worker_id}"


def node_channel(node_id: str) -> str:
    return f"node:{node_id}"


class Subscription(Protocol):
    """One subscribed pub/sub channel; survives store restarts by resubscribing."""

    @property
    def active(self) -> bool:
        """Subscribed right now (false while the store is unreachable)."""
        ...

    async def get(self, timeout: float) -> str | None:
        """The next message, or ``None`` after ``timeout`` seconds without one."""
        ...

    async def close(self) -> None: ...


class ClusterBackend(Protocol):
    # --- registry -------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None: ...

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def live_workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is current and who listen on their channel; a
        worker with a heartbeat but no listener is evicted on the way."""
        ...

    async def evict_worker(self, worker_id: str) -> None:
        """Forget a worker now (it died); placement stops choosing it, and
        :meth:`worker_dead` says so until it registers again."""
        ...

    async def worker_dead(self, worker_id: str) -> bool:
        """The worker was evicted (seen without a listener). A worker merely missing
        from :meth:`live_workers` may be an emptied store it has not re-joined yet."""
        ...

    async def register_node(self, node_id: str, ttl: float) -> None: ...

    async def node_alive(self, node_id: str) -> bool: ...

    # --- placement ------------------------------------------------------------------

    async def place_room(self, room: str, lease: float) -> str | None:
        """The worker hosting ``room``, choosing the least-loaded live, non-draining
        worker with room to spare if it has none; ``None`` if no worker can take it."""
        ...

    async def renew_rooms(self, worker_id: str, rooms: list[str], lease: float) -> None:
        """Extend the lease of the rooms this worker hosts (not of rooms re-placed
        elsewhere meanwhile)."""
        ...

    async def release_room(self, worker_id: str, room: str) -> None:
        """Drop the room's placement if it is still on ``worker_id``."""
        ...

    # --- bus ------------------------------------------------------------------------

    async def publish(self, channel: str, data: str) -> int:
        """Send ``data`` to a channel's subscribers; returns how many received it."""
        ...

    async def subscribe(self, channel: str) -> Subscription: ...

    async def append_events(self, events: list[tuple[str, str]], ttl: float) -> None:
        """Append ``(stream, data)`` entries, in order; streams expire ``ttl`` seconds
        after their last entry."""
        ...

    async def read_events(
        self, cursors: dict[str, str], block: float
    ) -> list[tuple[str, str, str]]:
        """Entries after each stream's cursor as ``(stream, entry_id, data)``, waiting
        up to ``block`` seconds for the first. ``"0"`` reads from the start."""
        ...

    async def delete_events(self, stream: str) -> None: ...

    # --- participant records (for resume) --------------------------------------------

    async def save_participant(self, participant_id: str, values: dict[str, str]) -> None:
        """Create or update fields of a participant's record."""
        ...

    async def load_participant(self, participant_id: str) -> dict[str, str] | None: ...

    async def delete_participant(self, participant_id: str) -> None: ...

    async def close(self) -> None: ...
