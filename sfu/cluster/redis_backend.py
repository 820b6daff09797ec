"""The cluster backend on Redis (redis-py asyncio).

Keys (all under ``sfu:``; see the README's "Scaling out" section):

- ``sfu:worker:{id}`` hash (:class:`WorkerInfo` fields), TTL = heartbeat TTL;
  ``sfu:workers`` set of ids (cleaned lazily); ``sfu:dead:{id}`` tombstone of an
  evicted worker; ``sfu:node:{id}`` string with a TTL;
- ``sfu:room:{name}`` = worker id, with a lease the hosting worker renews;
- channels ``sfu:worker:{id}`` (requests) and ``sfu:node:{id}`` (replies);
- streams ``sfu:events:{participant id}`` (events to a participant), and
  ``sfu:participant:{id}`` hash (room, identity, worker, node, resume hash, cursor).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sfu.cluster.backend import WORKERS_SET, BackendUnavailable, WorkerInfo, worker_channel
from sfu.cluster.redis_url import is_sentinel_url, parse_sentinel_url

logger = logging.getLogger(__name__)

PREFIX = "sfu:"
STREAM_MAXLEN = 1000
"""Events kept per participant stream (a resumed session replays from its cursor)."""
PARTICIPANT_TTL = 24 * 3600
DEAD_TTL = 300
"""Seconds an evicted worker's tombstone (``sfu:dead:{id}``) is kept."""
RESUBSCRIBE_SECONDS = 0.5
REPLICA_WAIT_MS = 50
"""Behind Sentinel: how long a placement waits for a replica to acknowledge it (a
primary whose replicas are all down adds this to every join)."""
RECONNECT_GRACE = 3.0
"""Seconds after this process last failed to reach the store during which a worker
that is not live counts as reconnecting (after a restart or a failover every process
re-subscribes within RESUBSCRIBE_SECONDS and re-registers on its next heartbeat)
rather than dead: it is not evicted, and joins to its rooms are refused rather than
placed on another worker (which would split the room)."""

T = TypeVar("T")

# Atomic placement. KEYS: room key, workers set. ARGV: worker key prefix (also the
# prefix of the workers' request channels), lease ms. A worker counts if its key
# exists and it listens on its channel. A room whose worker is alive stays where it
# is (even on a draining worker: its participants must not be split); otherwise the
# least-loaded live worker that is not draining and below capacity gets it, and its
# room count goes up at once so the next placement in the same heartbeat sees it.
# ARGV[3] = '1' right after the store was unreachable (a restart, a Sentinel
# failover): a room whose worker is not live is refused rather than moved, since that
# worker is likely re-registering and re-subscribing (its heartbeat key may have
# expired during the outage), not dead.
_PLACE_ROOM = """
local function listening(id)
  return redis.call('PUBSUB', 'NUMSUB', ARGV[1] .. id)[2] > 0
end
local current = redis.call('GET', KEYS[1])
if current then
  if redis.call('EXISTS', ARGV[1] .. current) == 1 and listening(current) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return current
  end
  if ARGV[3] == '1' then
    return redis.error_reply("the room's worker is reconnecting to the store; retry")
  end
end
local best, best_score = nil, nil
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local f = redis.call('HMGET', ARGV[1] .. id, 'capacity', 'participants', 'rooms', 'draining')
  if not f[1] then
    redis.call('SREM', KEYS[2], id)
  elseif f[4] ~= '1' and listening(id) then
    local capacity = tonumber(f[1])
    local participants = tonumber(f[2]) or 0
    local rooms = tonumber(f[3]) or 0
    if capacity > 0 and participants < capacity then
      local score = (participants + rooms) / capacity
      if best == nil or score < best_score or (score == best_score and id < best) then
        best, best_score = id, score
      end
    end
  end
end
if best == nil then return false end
redis.call('SET', KEYS[1], best, 'PX', ARGV[2])
redis.call('HINCRBY', ARGV[1] .. best, 'rooms', 1)
return best
"""

# KEYS: room keys. ARGV: worker id, lease ms. Renews only rooms still (or again) ours.
_RENEW_ROOMS = """
for _, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if not current or current == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  end
end
return 0
"""

# KEYS: room key. ARGV: worker id.
_RELEASE_ROOM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


async def _guard(call: Awaitable[T]) -> T:
    try:
        return await call
    except (RedisError, OSError, RuntimeError) as exc:
        # RuntimeError: uvloop's "unable to perform operation on <TCPTransport
        # closed=True>", when a reconnect reaches a server in the instant it dies (a
        # killed primary); redis-py drops that connection, so it is one more outage.
        raise BackendUnavailable(f"redis: {exc}") from exc


class RedisSubscription:
    """A pub/sub channel that subscribes again whenever the connection is lost."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._pubsub: Any = None

    @property
    def active(self) -> bool:
        return self._pubsub is not None

    async def _ensure(self) -> Any:
        if self._pubsub is None:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(PREFIX + self._channel)
            except (RedisError, OSError):
                await pubsub.aclose()
                raise
            self._pubsub = pubsub
        return self._pubsub

    async def get(self, timeout: float) -> str | None:
        try:
            pubsub = await self._ensure()
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        except (RedisError, OSError) as exc:
            logger.debug("subscription %s lost: %s", self._channel, exc)
            await self._drop()
            await asyncio.sleep(min(timeout, RESUBSCRIBE_SECONDS))
            return None
        if message is None or message.get("type") != "message":
            return None
        data = message["data"]
        return data.decode() if isinstance(data, bytes) else str(data)

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                logger.debug("closing a broken subscription failed", exc_info=True)

    async def close(self) -> None:
        await self._drop()


class RedisBackend:
    """:class:`~sfu.cluster.backend.ClusterBackend` on one Redis server, or on the
    primary that Redis Sentinel names (a ``redis+sentinel://`` URL,
    :mod:`sfu.cluster.redis_url`)."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self._url = url
        # Short socket timeouts: a dead Redis must fail a join quickly, not hang it.
        # One immediate retry on a connection error: after Redis restarts, every pooled
        # connection fails its first command ("Connection closed by server"); without
        # the retry an RPC reply or a join placement would be lost to that.
        options: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 1),
            "retry_on_error": [RedisConnectionError],
        }
        self._sentinel: Sentinel | None = None
        if is_sentinel_url(url):
            # Every connection asks the Sentinels for the current primary when it
            # (re)connects, and a connection to a demoted primary (READONLY) is dropped,
            # so after a failover the same retry lands on the promoted replica.
            location = parse_sentinel_url(url)
            self._sentinel = Sentinel(
                list(location.sentinels),
                sentinel_kwargs={"socket_connect_timeout": timeout, "socket_timeout": timeout},
            )
            credentials = {
                "db": location.db,
                "username": location.username,
                "password": location.password,
            }

            def connect(**extra: Any) -> redis.Redis:
                assert self._sentinel is not None
                return self._sentinel.master_for(
                    location.service, **{**options, **credentials, **extra}
                )
        else:

            def connect(**extra: Any) -> redis.Redis:
                return redis.Redis.from_url(url, **{**options, **extra})

        self._client = connect()
        self._unreachable_at = -RECONNECT_GRACE
        # Blocking stream reads get a connection of their own with a longer timeout.
        self._reader = connect(socket_timeout=timeout + 5.0)
        self._place = self._client.register_script(_PLACE_ROOM)
        self._renew = self._client.register_script(_RENEW_ROOMS)
        self._release = self._client.register_script(_RELEASE_ROOM)

    async def _guard(self, call: Awaitable[T]) -> T:
        try:
            return await _guard(call)
        except BackendUnavailable as exc:
            if isinstance(
                exc.__cause__, RedisConnectionError | RedisTimeoutError | OSError | RuntimeError
            ):
                self._unreachable_at = time.monotonic()
            raise

    def _reconnecting(self) -> bool:
        """The store was unreachable less than :data:`RECONNECT_GRACE` seconds ago."""
        return time.monotonic() - self._unreachable_at < RECONNECT_GRACE

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        key = _key("worker", info.worker_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=info.to_fields())
            pipe.pexpire(key, int(ttl * 1000))
            pipe.sadd(_key(WORKERS_SET), info.worker_id)
            pipe.delete(_key("dead", info.worker_id))
            await self._guard(pipe.execute())

    async def unregister_worker(self, worker_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(_key("worker", worker_id))
            pipe.srem(_key(WORKERS_SET), worker_id)
            await self._guard(pipe.execute())

    async def live_workers(self) -> list[WorkerInfo]:
        ids = sorted(await self._guard(self._client.smembers(_key(WORKERS_SET))))
        if not ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(_key("worker", worker_id))
            pipe.pubsub_numsub(*(PREFIX + worker_channel(w) for w in ids))
            results = await self._guard(pipe.execute())
        listeners = dict(results[-1])
        live = []
        for worker_id, values in zip(ids, results[:-1], strict=True):
            if not values:
                await self._guard(self._client.srem(_key(WORKERS_SET), worker_id))
            elif listeners.get(PREFIX + worker_channel(worker_id), 0) == 0:
                if self._reconnecting():
                    continue  # probably re-subscribing; reported live once it is
                logger.warning("worker %s has a heartbeat but no listener: evicted", worker_id)
                await self.evict_worker(worker_id)
            else:
                live.append(WorkerInfo.from_fields(values))
        return live

    async def evict_worker(self, worker_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(_key("worker", worker_id))
            pipe.srem(_key(WORKERS_SET), worker_id)
            pipe.set(_key("dead", worker_id), "1", ex=DEAD_TTL)
            await self._guard(pipe.execute())

    async def worker_dead(self, worker_id: str) -> bool:
        return bool(await self._guard(self._client.exists(_key("dead", worker_id))))

    async def register_node(self, node_id: str, ttl: float) -> None:
        await self._guard(self._client.set(_key("node", node_id), "1", px=int(ttl * 1000)))

    async def node_alive(self, node_id: str) -> bool:
        return bool(await self._guard(self._client.exists(_key("node", node_id))))

    async def place_room(self, room: str, lease: float) -> str | None:
        keys = [_key("room", room), _key(WORKERS_SET)]
        args = [_key("worker", ""), int(lease * 1000), "1" if self._reconnecting() else "0"]
        if self._sentinel is None:
            result = await self._guard(self._place(keys=keys, args=args))
        else:
            result = await self._guard(self._place_replicated(keys, args))
        return str(result) if result else None

    async def _place_replicated(self, keys: list[str], args: list[Any]) -> Any:
        """Placement, then ``WAIT`` until a replica has it: a placement the primary
        acknowledged but took down with it in a failover would let the next join put
        the room on a second worker before its worker renews the lease."""
        async with self._client.pipeline(transaction=False) as pipe:
            await self._place(keys=keys, args=args, client=pipe)
            pipe.wait(1, REPLICA_WAIT_MS)
            result, replicas = await pipe.execute()
        if not replicas:
            logger.debug("placement of %s not acknowledged by a replica", keys[0])
        return result

    async def renew_rooms(self, worker_id: str, rooms: list[str], lease: float) -> None:
        if rooms:
            await self._guard(
                self._renew(
                    keys=[_key("room", r) for r in rooms], args=[worker_id, int(lease * 1000)]
                )
            )

    async def release_room(self, worker_id: str, room: str) -> None:
        await self._guard(self._release(keys=[_key("room", room)], args=[worker_id]))

    async def publish(self, channel: str, data: str) -> int:
        return int(await self._guard(self._client.publish(PREFIX + channel, data)))

    async def subscribe(self, channel: str) -> RedisSubscription:
        subscription = RedisSubscription(self._client, channel)
        try:
            await subscription._ensure()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        return subscription

    async def append_events(self, events: list[tuple[str, str]], ttl: float) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, data in events:
                pipe.xadd(_key("events", stream), {"m": data}, maxlen=STREAM_MAXLEN)
            for stream in {s for s, _ in events}:
                pipe.expire(_key("events", stream), int(ttl))
            await self._guard(pipe.execute())

    async def read_events(
        self, cursors: dict[str, str], block: float
    ) -> list[tuple[str, str, str]]:
        streams = {_key("events", s): c for s, c in cursors.items()}
        reply = await self._guard(self._reader.xread(streams, block=max(1, int(block * 1000))))
        found = []
        for key, entries in reply or []:
            stream = key.removeprefix(_key("events", ""))
            found.extend((stream, entry_id, values["m"]) for entry_id, values in entries)
        return found

    async def delete_events(self, stream: str) -> None:
        await self._guard(self._client.delete(_key("events", stream)))

    async def save_participant(self, participant_id: str, values: dict[str, str]) -> None:
        key = _key("participant", participant_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=values)
            pipe.expire(key, PARTICIPANT_TTL)
            await self._guard(pipe.execute())

    async def load_participant(self, participant_id: str) -> dict[str, str] | None:
        values = await self._guard(self._client.hgetall(_key("participant", participant_id)))
        return dict(values) if values else None

    async def delete_participant(self, participant_id: str) -> None:
        await self._guard(self._client.delete(_key("participant", participant_id)))

    async def close(self) -> None:
        await self._client.aclose()
        await self._reader.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()
