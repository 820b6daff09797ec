"""Run a real cluster for tests: redis-server, ``sfu worker`` and ``sfu signaling``
processes, and Debian's haproxy in front of the signaling nodes (deploy/haproxy.cfg).

Redis always gets a free port of its own (never the system's 6379).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from server import ROOT, free_port

from sfu.config import DEV_API_KEY, DEV_API_SECRET

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
STARTUP_TIMEOUT = 60.0


def cluster_available() -> bool:
    return Path(REDIS_SERVER).exists() and Path(HAPROXY).exists()


def wait_for(check: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


class Process:
    """A child process with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed machine would."""
        if self.popen is not None and self.running:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.popen is None or not self.running:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)

    def log(self, limit: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


class RedisServer(Process):
    """redis-server on a free port of its own (never the system's 6379), keeping
    nothing on disk; :meth:`start` returns once it answers PING. ``args`` add to its
    command line (``--replicaof …``)."""

    def __init__(self, log_dir: Path, name: str = "redis", args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(log_dir)]
        # --dir: a replica's full sync writes dump.rdb there, not into the checkout
        # (where the next redis-server would load it).
        super().__init__(name, [*cmd, "--save", "", "--appendonly", "no", *args], log_dir, {})

    def start(self) -> None:
        super().start()
        wait_for(self.ready, "redis-server", timeout=10)

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _http(url: str, method: str = "GET", body: Any = None, auth: bool = True) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth:
        credentials = base64.b64encode(f"{DEV_API_KEY}:{DEV_API_SECRET}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
        return json.loads(text) if text else None


def api(base_url: str, path: str, method: str = "GET", body: Any = None, auth: bool = True) -> Any:
    """Call the room administration API of a server (HTTP Basic with the dev key: the
    nodes run with ``--dev``)."""
    return _http(f"{base_url}{path}", method, body, auth)


def healthy(url: str) -> bool:
    try:
        _http(f"{url}/healthz", auth=False)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


class Cluster:
    """redis + ``workers`` media workers + ``nodes`` signaling nodes + haproxy.

    ``env`` adds to every process's environment; with ``redis_url`` the processes use
    that store (a Sentinel URL, say) instead of a redis-server of the cluster's own.
    """

    def __init__(
        self,
        workers: int = 3,
        nodes: int = 2,
        env: dict[str, str] | None = None,
        redis_url: str | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="sfu-cluster-")
        self.log_dir = Path(self._tmp.name)
        self.redis = RedisServer(self.log_dir) if redis_url is None else None
        self.redis_url = redis_url or self._redis().url
        self.recording_dir = self.log_dir / "recordings"
        self.env = {
            "SFU_REDIS_URL": self.redis_url,
            "SFU_RECORDING_DIR": str(self.recording_dir),
            "SFU_LOG_LEVEL": "info",
            "SFU_ICE_ADDRESSES": '["127.0.0.1"]',
            "SFU_HOST": "127.0.0.1",
            **(env or {}),
        }
        self.metrics_ports = {f"w{i}": free_port() for i in range(workers)}
        self.workers = {
            name: self._process(
                name, ["worker", "--worker-id", name], {"SFU_METRICS_PORT": str(port)}
            )
            for name, port in self.metrics_ports.items()
        }
        self.node_ports = [free_port() for _ in range(nodes)]
        self.nodes = [
            self._process(
                f"node{i}", ["signaling", "--dev", "--port", str(port), "--node-id", f"node{i}"]
            )
            for i, port in enumerate(self.node_ports)
        ]
        self.lb_port = free_port()
        self.lb_url = f"http://127.0.0.1:{self.lb_port}"
        self.haproxy = Process(
            "haproxy",
            [HAPROXY, "-db", "-f", str(HAPROXY_CONFIG)],
            self.log_dir,
            {
                "SFU_LB_BIND": f"127.0.0.1:{self.lb_port}",
                "SFU_SIGNALING_1": f"127.0.0.1:{self.node_ports[0]}",
                "SFU_SIGNALING_2": f"127.0.0.1:{self.node_ports[-1]}",
            },
        )
        try:
            for url in self.node_urls:
                wait_for(lambda url=url: healthy(url), f"signaling node {url}")
            wait_for(lambda: len(self.live_workers()) == workers, f"{workers} workers")
            wait_for(lambda: healthy(self.lb_url), "haproxy")
        except TimeoutError as exc:
            logs = self.logs()
            self.close()
            raise RuntimeError(f"{exc}\n{logs}") from exc

    @property
    def node_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.node_ports]

    def _process(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        return Process(
            name, [sys.executable, "-m", "sfu", *args], self.log_dir, {**self.env, **(env or {})}
        )

    def _redis(self) -> RedisServer:
        assert self.redis is not None, "this cluster uses an external Redis"
        return self.redis

    def stop_redis(self) -> None:
        self._redis().kill()

    def start_redis(self) -> None:
        self._redis().start()

    def live_workers(self, base_url: str | None = None) -> list[dict[str, Any]]:
        try:
            return list(api(base_url or self.node_urls[0], "/api/workers"))
        except (urllib.error.URLError, OSError, ValueError):
            return []

    def rooms(self) -> list[dict[str, Any]]:
        return list(api(self.node_urls[0], "/api/rooms"))

    def worker_of(self, room: str) -> str:
        hosts = [r["worker_id"] for r in self.rooms() if r["room"] == room]
        assert len(hosts) == 1, f"room {room} on {hosts}"
        return hosts[0]

    def restart_node(self, index: int) -> None:
        self.nodes[index].start()
        wait_for(lambda: healthy(self.node_urls[index]), f"node {index} again")

    def logs(self) -> str:
        parts = []
        for process in [*self._own_redis(), *self.workers.values(), *self.nodes, self.haproxy]:
            parts.append(f"--- {process.name} ---\n{process.log()}")
        return "\n".join(parts)

    def close(self) -> None:
        for process in [self.haproxy, *self.nodes, *self.workers.values()]:
            process.stop()
        for redis in self._own_redis():
            redis.stop(signal.SIGTERM)
        self._tmp.cleanup()

    def _own_redis(self) -> list[RedisServer]:
        return [self.redis] if self.redis is not None else []
