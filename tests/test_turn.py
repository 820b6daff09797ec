"""TURN: credentials minted by signaling, and media through a real coturn.

coturn (Debian's ``coturn``) runs on loopback with ``--allow-loopback-peers`` and the
TURN REST shared secret; the server hands out time-limited credentials in
``joined.ice_servers``. A Python client and a Chromium tab, both with
``iceTransportPolicy=relay``, exchange audio and video through it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioice.stun
import pytest
from browser import CHROMIUM_ARGS, CHROMIUM_PATH, chromium_available, decoding_video
from server import ServerUrl, free_port, run_sfu_server

from sfu.client import SyntheticVideoTrack, ToneAudioTrack, connect, dev_token
from sfu.config import Settings
from signaling.turn import turn_credentials, turn_ice_servers

TURNSERVER = shutil.which("turnserver")
SECRET = "turn-test-secret-" + uuid.uuid4().hex
REALM = "pysfu.test"


def test_credentials_follow_the_turn_rest_scheme():
    username, password = turn_credentials("s3cret", "alice", 3600, now=1_000_000.5)
    assert username == "1003600:alice"
    expected = hmac.new(b"s3cret", b"1003600:alice", hashlib.sha1).digest()
    assert base64.b64decode(password) == expected

    settings = Settings(turn_urls=["turn:turn.example:3478"], turn_secret="s3cret")
    (server,) = turn_ice_servers(settings, "bob")
    assert server.urls == ["turn:turn.example:3478"]
    expiry, identity = server.username.split(":", 1)  # type: ignore[union-attr]
    assert identity == "bob"
    assert abs(int(expiry) - (time.time() + settings.turn_ttl_seconds)) < 5
    assert turn_ice_servers(Settings(turn_urls=["turn:x"]), "bob") == []  # no secret, no TURN


def _stun_answers(port: int) -> bool:
    request = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(bytes(request), ("127.0.0.1", port))
        try:
            return bool(sock.recv(2048))
        except OSError:
            return False


class Coturn:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    def usernames(self) -> set[str]:
        """Users that got an allocation (the credential check passed)."""
        text = self.log.read_text(errors="replace")
        return set(re.findall(r"user <([^>]+)>: incoming packet ALLOCATE processed, success", text))


@pytest.fixture(scope="module")
def coturn() -> Iterator[Coturn]:
    if TURNSERVER is None:
        pytest.skip("Debian's coturn is not installed (tests/run.sh installs it)")
    port = free_port()
    relay_base = random.randrange(40000, 48000, 100)
    with tempfile.TemporaryDirectory(prefix="sfu-coturn-") as tmp:
        log = Path(tmp) / "turnserver.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    TURNSERVER,
                    "-n",  # no configuration file: everything is on this line
                    "--listening-ip=127.0.0.1",
                    "--relay-ip=127.0.0.1",
                    f"--listening-port={port}",
                    f"--min-port={relay_base}",
                    f"--max-port={relay_base + 99}",
                    "--use-auth-secret",
                    f"--static-auth-secret={SECRET}",
                    f"--realm={REALM}",
                    "--allow-loopback-peers",
                    "--fingerprint",
                    "--no-cli",
                    "--no-tls",
                    "--no-dtls",
                    "--verbose",
                    "--log-file=stdout",
                    f"--pidfile={tmp}/turnserver.pid",
                    f"--userdb={tmp}/turndb",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 15
            while not _stun_answers(port):
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "coturn does not answer STUN"
            yield Coturn(port, log)
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def turn_server(coturn: Coturn) -> Iterator[ServerUrl]:
    """``sfu serve`` handing out credentials for ``coturn``."""
    env = {
        "SFU_TURN_URLS": json.dumps([f"turn:127.0.0.1:{coturn.port}?transport=udp"]),
        "SFU_TURN_SECRET": SECRET,
    }
    with run_sfu_server(env=env) as url:
        yield url


@pytest.fixture
async def chromium_page() -> AsyncIterator[Any]:
    if not chromium_available():
        pytest.skip("no Chromium")
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="sfu-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM_PATH), headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield await context.new_page()
            finally:
                await context.close()


SELECTED_PAIR_TYPES = """async () => {
    const types = {};
    const pcs = [["publish", window.sfu.publishPc], ["subscribe", window.sfu.subscribePc]];
    for (const [name, pc] of pcs) {
        if (!pc) continue;
        const stats = [...(await pc.getStats()).values()];
        const byId = new Map(stats.map((s) => [s.id, s]));
        const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
        const pair = transport && byId.get(transport.selectedCandidatePairId);
        if (pair) types[name] = byId.get(pair.localCandidateId).candidateType;
    }
    return types;
}"""


async def test_python_client_and_chromium_exchange_media_through_turn(
    turn_server, coturn, chromium_page
):
    room = f"turn-{uuid.uuid4().hex[:8]}"
    token = await dev_token(turn_server, room, "py-relay")
    client = await connect(turn_server, token, name="Py", relay_only=True)
    try:
        (server,) = [s for s in client.joined.ice_servers if s.username]
        assert server.username.endswith(":py-relay")  # type: ignore[union-attr]
        await client.publish_tracks(
            [(SyntheticVideoTrack(320, 240), "camera"), (ToneAudioTrack(), "microphone")]
        )
        page = chromium_page
        await page.goto(f"{turn_server}/?room={room}&name=Tab&identity=tab-relay&relay=1")

        # The tab's video reaches the Python client through TURN ...
        remote = await client.wait_for_track(kind="video", timeout=30)
        async with asyncio.timeout(15):
            frame = await remote.track.recv()
        assert frame.width > 0
        # ... and the client's video is decoded in the tab.
        deadline = time.monotonic() + 30
        while not decoding_video(await page.evaluate("() => window.sfu.stats()")):
            assert time.monotonic() < deadline, "the tab decodes no video"
            await asyncio.sleep(0.5)

        types = await page.evaluate(SELECTED_PAIR_TYPES)
        assert types == {"publish": "relay", "subscribe": "relay"}, types
        users = {name.split(":", 1)[1] for name in coturn.usernames()}
        assert {"py-relay", "tab-relay"} <= users, coturn.log.read_text(errors="replace")[-3000:]
    finally:
        await client.leave()
