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
) -> Iterator[ServerUrl]:
    """Start ``sfu serve`` on a free port, wait for /healthz, stop it on exit.

    ``host`` is the HTTP bind address (``0.0.0.0`` for every interface; the URL
    yielded then names 127.0.0.1); ``ice_addresses`` the media addresses (default: the
    loopback address).
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
