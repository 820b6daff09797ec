"""Redis Sentinel: the ``redis+sentinel://`` URL, and a failover under a running
cluster: a redis-server primary and replica, three Debian ``redis-sentinel``
processes, one signaling node and two workers; the primary is SIGKILLed while a room
forwards media. The room keeps its media, new joins succeed once Sentinel promotes
the replica, and the running room stays on its worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aioice.ice
import pytest
import redis
from cluster import Cluster, Process, RedisServer, cluster_available, wait_for
from server import free_port
from websockets.asyncio.client import connect as ws_connect

from sfu.access_token import mint_token
from sfu.client import RoomClient, SfuError, SyntheticVideoTrack, connect
from sfu.cluster.redis_url import SentinelUrl, parse_sentinel_url
from sfu.config import DEV_API_KEY, DEV_API_SECRET
from sfu.protocol import ErrorCode

REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
"""Sentinel's ``down-after-milliseconds``: how long the primary may be silent."""
RECOVERY_BOUND = 30.0
"""Seconds within which a join must succeed again after the primary's SIGKILL."""
FRAME_TIMEOUT = 10.0


# --- the URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster/2",
            SentinelUrl((("10.0.0.1", 26379), ("10.0.0.2", 26380)), "mymaster", 2),
        ),
        ("redis+sentinel://s1/cache", SentinelUrl((("s1", 26379),), "cache", 0)),
        (
            "redis+sentinel://:p%40ss@[::1]:5000,[fe80::1]/m/",
            SentinelUrl((("::1", 5000), ("fe80::1", 26379)), "m", 0, None, "p@ss"),
        ),
        (
            "REDIS+SENTINEL://app:secret@h:1/m/0",
            SentinelUrl((("h", 1),), "m", 0, "app", "secret"),
        ),
    ],
)
def test_sentinel_urls_parse(url, parsed):
    assert parse_sentinel_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis://h:6379/0", "not a redis+sentinel"),
        ("redis+sentinel:///mymaster", "without Sentinel addresses"),
        ("redis+sentinel://h:26379", "without a service name"),
        ("redis+sentinel://h:26379/m/x", "not a number"),
        ("redis+sentinel://h:26379/m/0/extra", "path is /service"),
        ("redis+sentinel://h:0/m", "bad port"),
        ("redis+sentinel://h:70000/m", "bad port"),
        ("redis+sentinel://h:26379,/m", "has no host"),
        ("redis+sentinel://[::1/m", "bad Sentinel address"),
        ("redis+sentinel://h/m?db=1", "no ?query"),
        ("redis+sentinel://" + ",".join(["h"] * 17) + "/m", "at most 16"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_sentinel_url(url)


# --- failover under a running cluster ---------------------------------------------------


class SentinelProcess(Process):
    """Debian's ``redis-sentinel`` on a free port, monitoring ``SERVICE``; it rewrites
    its configuration file (in ``log_dir``) as Sentinels do."""

    def __init__(self, log_dir: Path, index: int, primary_port: int) -> None:
        self.port = free_port()
        config = log_dir / f"sentinel{index}.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {log_dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        # A Sentinel whose timer runs 2 s late (a starved machine) enters TILT mode and
        # holds any failover for 30 s; as root, run it ahead of the test's own load.
        nice = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
        super().__init__(f"sentinel{index}", [*nice, REDIS_SENTINEL, str(config)], log_dir, {})

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def master(self) -> dict[str, object]:
        try:
            with self.client() as client:
                return dict(client.sentinel_master(SERVICE))
        except (redis.RedisError, OSError):
            return {}


class Store:
    """A primary, its replica and three Sentinels (quorum 2)."""

    def __init__(self, log_dir: Path) -> None:
        # No delay before the first full sync (5 s by default): until it is done, a
        # killed primary takes every write with it.
        self.primary = RedisServer(log_dir, "primary", ["--repl-diskless-sync-delay", "0"])
        self.replica = RedisServer(
            log_dir, "replica", ["--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        wait_for(self._replica_online, "the replica in sync", 10)
        self.sentinels = [SentinelProcess(log_dir, i, self.primary.port) for i in range(3)]
        wait_for(self._sentinels_ready, "three Sentinels that know the replica and each other", 20)
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _replica_online(self) -> bool:
        try:
            with redis.Redis(port=self.primary.port, socket_timeout=1) as client:
                info = client.info("replication")
        except (redis.RedisError, OSError):
            return False
        replica = info.get("slave0")
        return isinstance(replica, dict) and replica.get("state") == "online"

    def _sentinels_ready(self) -> bool:
        masters = [s.master() for s in self.sentinels]
        return all(m.get("num-slaves") == 1 and m.get("num-other-sentinels") == 2 for m in masters)

    def primary_port(self) -> int | None:
        try:
            with self.sentinels[0].client() as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
        except (redis.RedisError, OSError):
            return None
        return int(address[1]) if address else None

    def kill_primary(self) -> RedisServer:
        """SIGKILL whichever server Sentinel names the primary now (on a starved
        machine Sentinel may have failed over already); returns the other one."""
        port = self.primary_port()
        killed, other = (
            (self.primary, self.replica)
            if port == self.primary.port
            else (self.replica, self.primary)
        )
        assert port == killed.port, f"Sentinel names port {port}, neither server"
        killed.kill()
        return other

    def processes(self) -> list[Process]:
        return [self.primary, self.replica, *self.sentinels]

    def close(self) -> None:
        for process in self.processes():
            process.stop(signal.SIGTERM)


@pytest.fixture
def sentinel_cluster() -> Iterator[tuple[Store, Cluster]]:
    if not cluster_available() or not Path(REDIS_SENTINEL).exists():
        pytest.skip("needs redis-server, redis-sentinel and haproxy (Debian packages)")
    with tempfile.TemporaryDirectory(prefix="sfu-sentinel-") as tmp:
        store = Store(Path(tmp))
        try:
            running = Cluster(workers=2, nodes=1, redis_url=store.url)
        except BaseException:
            store.close()
            raise
        try:
            yield store, running
        finally:
            running.close()
            store.close()


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def token(room: str, identity: str) -> str:
    return mint_token(DEV_API_KEY, DEV_API_SECRET, room=room, identity=identity)


async def signaling_join(url: str, room: str) -> bool:
    """One join over a raw socket (no media): whether it got ``joined``."""
    async with ws_connect(url.replace("http://", "ws://") + "/ws", open_timeout=5) as socket:
        await socket.send(json.dumps({"type": "join", "token": token(room, "probe")}))
        async with asyncio.timeout(FRAME_TIMEOUT):
            reply = json.loads(await socket.recv())
    return reply["type"] == "joined"


async def first_video_frame(client: RoomClient, publisher: RoomClient) -> None:
    remote = await client.wait_for_track(participant_id=publisher.participant_id, kind="video")
    async with asyncio.timeout(FRAME_TIMEOUT):
        await remote.track.recv()


async def first_join_after(
    url: str, killed_at: float, counting: asyncio.Task[None], store: Store
) -> tuple[float, int]:
    """Join new rooms until one succeeds: (seconds since the kill, attempts)."""

    def tilted() -> list[str]:
        return [s.name for s in store.sentinels if "+tilt" in s.log(100_000)]

    attempts = 0
    while True:
        attempts += 1
        try:
            if await signaling_join(url, f"probe-{uuid.uuid4().hex[:6]}"):
                return time.monotonic() - killed_at, attempts
        except (OSError, TimeoutError):
            pass
        elapsed = time.monotonic() - killed_at
        if elapsed >= RECOVERY_BOUND and tilted():
            # Sentinel's own guard: its timer ran over 2 s late (the machine stalled),
            # so it refuses to fail over for 30 s. Nothing of ours can be judged.
            pytest.skip(f"Sentinel entered TILT mode ({', '.join(tilted())}): starved machine")
        assert elapsed < RECOVERY_BOUND, f"no join {elapsed:.0f} s after the kill"
        assert not counting.done(), "the running room lost its media"
        await asyncio.sleep(0.2)


async def test_failover_keeps_media_and_joins_resume_once_the_replica_is_promoted(
    sentinel_cluster,
):
    store, cluster = sentinel_cluster
    room = f"failover-{uuid.uuid4().hex[:8]}"
    publisher = await connect(cluster.lb_url, token(room, "pub"), data=False)
    joined = [publisher]
    try:
        await publisher.publish(SyntheticVideoTrack(160, 120))
        subscriber = await connect(cluster.lb_url, token(room, "sub"), data=False)
        joined.append(subscriber)
        remote = await subscriber.wait_for_track(
            participant_id=publisher.participant_id, kind="video"
        )
        async with asyncio.timeout(FRAME_TIMEOUT):
            await remote.track.recv()
        host = await asyncio.to_thread(cluster.worker_of, room)

        killed_at = time.monotonic()
        survivor = store.kill_primary()
        frames = 0

        async def count_frames() -> None:
            nonlocal frames
            while True:
                async with asyncio.timeout(FRAME_TIMEOUT):
                    await remote.track.recv()
                frames += 1

        counting = asyncio.create_task(count_frames())
        try:
            recovered, attempts = await first_join_after(cluster.lb_url, killed_at, counting, store)
            frames_at_recovery = frames
            promoted = store.primary_port()
            # The running room is still placed on its worker, and a newcomer gets its
            # media (refused while that worker re-subscribes to the new primary).
            while True:
                try:
                    late = await connect(cluster.lb_url, token(room, "late"), data=False)
                    break
                except SfuError as exc:
                    assert exc.code == ErrorCode.WORKER_UNAVAILABLE, exc
                    assert time.monotonic() - killed_at < RECOVERY_BOUND, "the room is refused"
                    await asyncio.sleep(0.2)
            rejoined = time.monotonic() - killed_at
            joined.append(late)
            await first_video_frame(late, publisher)
            assert not counting.done(), "the running room lost its media"
        finally:
            counting.cancel()
        rate = frames_at_recovery / recovered
        print(
            f"\nprimary SIGKILLed: a join succeeded again after {recovered:.1f} s "
            f"({attempts} attempts), a newcomer joined the running room after "
            f"{rejoined:.1f} s; the subscriber decoded {frames_at_recovery} frames until "
            f"the first join ({rate:.0f} fps); Sentinel's primary is now port {promoted}"
        )
        assert promoted == survivor.port
        assert attempts > 1, "joins must fail while there is no primary"
        assert rate > 15, f"media stalled during the failover ({frames_at_recovery} frames)"
        assert await asyncio.to_thread(cluster.worker_of, room) == host
    finally:
        await asyncio.gather(*(c.leave() for c in joined), return_exceptions=True)
