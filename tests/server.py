"""Run the embedded server (``python -m sfu serve``) as a subprocess for tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerUrl(str):
    """The server's base URL (``http://127.0.0.1:<port>``), plus its process and log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self, limit: int = 20000) -> str:
        """The tail of the server's combined stdout/stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]


class ServerStartError(RuntimeError):
    pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def run_sfu_server(
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    ice_addresses: list[str] | None = None,
    dev: bool = True,
) -> Iterator[ServerUrl]:
    """Start ``sfu serve`` on a free port, wait for /healthz, stop it on exit.

    ``host`` is the HTTP bind address (``0.0.0.0`` for every interface; the URL
    yielded then names 127.0.0.1); ``ice_addresses`` the media addresses (default: the
    loopback address). ``dev`` starts it in development mode (``--dev``: the published
    key and secret, dev tokens), which the tests' clients use; without it the caller
    passes a secret.
    """
    local = "127.0.0.1" if host in ("0.0.0.0", "127.0.0.1") else host
    port = free_port(local)
    ice_args = [arg for ip in ice_addresses or [local] for arg in ("--ice-address", ip)]
    cmd = [
        sys.executable,
        "-m",
        "sfu",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        *ice_args,
        *(["--dev"] if dev else []),
        *(extra_args or []),
    ]
    with tempfile.TemporaryDirectory(prefix="sfu-server-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        url = ServerUrl(f"http://{local}:{port}")
        url.process = process
        url.log_path = log_path
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not _healthy(url):
                if process.poll() is not None:
                    raise ServerStartError(
                        f"{' '.join(cmd)} exited with {process.returncode}:\n{url.log()}"
                    )
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{url}/healthz not ready after {STARTUP_TIMEOUT:.0f}s:\n{url.log()}"
                    )
                time.sleep(0.1)
            yield url
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


def serve_module(**options: Any) -> Iterator[ServerUrl]:
    """The body of a module-scoped server fixture (``yield from serve_module(...)``):
    :func:`run_sfu_server` with ``options``; a server that does not start fails the
    test with its output instead of erroring in setup. Name the fixture ``sfu_server``
    so that a failing test gets the server's log in its report (conftest.py)."""
    server = run_sfu_server(**options)
    try:
        url = server.__enter__()
    except ServerStartError as exc:
        failure = str(exc)
    else:
        try:
            yield url
        finally:
            server.__exit__(None, None, None)
        return
    pytest.fail(f"could not start the sfu server: {failure}", pytrace=False)


def udp_sockets(pid: int) -> list[tuple[str, int]]:
    """The (address, port) of every UDP socket process ``pid`` holds: the inodes of its
    ``/proc/<pid>/fd`` sockets that ``/proc/<pid>/net/udp`` and ``udp6`` list."""
    bound: dict[str, tuple[str, int]] = {}
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            bound[fields[9]] = (socket.inet_ntop(family, packed), int(port, 16))
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target[8:-1] in bound:
            found.append(bound[target[8:-1]])
    return sorted(found)
