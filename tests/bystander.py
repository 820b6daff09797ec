"""A bystander room and an attacker room on one live server, for the stall tests.

The bystander room has a publisher, a subscriber counting the media it receives, and a
participant pinging over its WebSocket: if anything holds the worker's event loop, its
pongs come late and the subscriber's packets stop. The attacker room has a publisher
and a subscriber that negotiated transport-cc (so the server keeps a send history for
it) and sends whatever RTCP the test gives it, over its real DTLS-SRTP session. All are
the SFU's own lean benchmark participants (:mod:`sfu.bench.participants`): real ICE,
DTLS and SRTP on loopback, no decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiortc.rtcdtlstransport import RTCCertificate
from websockets.asyncio.client import ClientConnection, connect

from sfu.access_token import mint_token
from sfu.bench.media import Clip, ClipPacket
from sfu.bench.participants import BenchPublisher, BenchSubscriber
from sfu.config import DEV_API_KEY, DEV_API_SECRET

MEDIA_TIMEOUT = 20.0
PING_INTERVAL = 0.02
FRAME_PACKETS = 3
PACKET_SIZE = 1000
FPS = 30
VP8_KEY = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])  # descriptor S=1, frame header P=0
VP8_DELTA = bytes([0x10, 0x01, 0x00, 0x00, 0x00])


def synthetic_clip(frames: int = 2 * FPS) -> Clip:
    """VP8-shaped packets (a key frame first, the others delta frames), about 700
    kbit/s: enough for the SFU's key-frame detection, no encoder needed."""
    packets = []
    for frame in range(frames):
        start = VP8_KEY if frame == 0 else VP8_DELTA
        for index in range(FRAME_PACKETS):
            head = start if index == 0 else b"\x00"
            packets.append(
                ClipPacket(
                    head + bytes(PACKET_SIZE - len(head)),
                    index == FRAME_PACKETS - 1,
                    90000 // FPS if index == 0 else 0,
                    frame == 0 and index == 0,
                )
            )
    return Clip.from_packets(packets, 90000)


def token(room: str, identity: str, publish: bool) -> str:
    return mint_token(
        DEV_API_KEY,
        DEV_API_SECRET,
        room=room,
        identity=identity,
        can_publish=publish,
        can_subscribe=not publish,
    )


def websocket_url(server: str) -> str:
    return server.replace("http://", "ws://") + "/ws"


@dataclass
class Pinger:
    """A participant that pings every :data:`PING_INTERVAL` and records round trips."""

    ws: ClientConnection
    rtts: list[tuple[float, float]] = field(default_factory=list)
    """(sent at, round trip) in seconds, monotonic clock."""

    async def run(self) -> None:
        while True:
            sent = time.monotonic()
            await self.ws.send(json.dumps({"type": "ping"}))
            while json.loads(await self.ws.recv()).get("type") != "pong":
                pass
            self.rtts.append((sent, time.monotonic() - sent))
            await asyncio.sleep(PING_INTERVAL)

    def worst_since(self, start: float) -> float:
        return max((rtt for sent, rtt in self.rtts if sent >= start), default=0.0)

    def count_since(self, start: float) -> int:
        return sum(1 for sent, _ in self.rtts if sent >= start)


@dataclass
class Rooms:
    bystander: BenchSubscriber
    attacker: BenchSubscriber
    pinger: Pinger
    server: str
    hostile_room: str

    def bystander_packets(self) -> int:
        return sum(s.packets_received for s in self.bystander.streams.values())

    def attacker_stream(self) -> tuple[int, int]:
        """(SSRC, newest sequence number) of a stream the attacker receives: a NACK
        for the packets before it names packets still in the server's cache."""
        ssrc, statistics = next(iter(self.attacker.streams.items()))
        block = statistics.report_block(time.time())
        assert block is not None
        return ssrc, block.highest_sequence & 0xFFFF

    @contextlib.asynccontextmanager
    async def attacker_socket(self) -> AsyncIterator[ClientConnection]:
        """A second attacker in the hostile room, joined with the publish grant, for
        signaling attacks."""
        async with connect(websocket_url(self.server), max_size=None, close_timeout=1) as ws:
            await ws.send(
                json.dumps({"type": "join", "token": token(self.hostile_room, "mallory", True)})
            )
            while json.loads(await ws.recv()).get("type") != "joined":
                pass
            yield ws

    def send_rtcp(self, compound: bytes) -> None:
        """Send one RTCP compound from the attacker over its SRTP session."""
        assert self.attacker.session is not None
        self.attacker.session.send_rtcp(compound)


async def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + MEDIA_TIMEOUT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def two_rooms(server: str) -> AsyncIterator[Rooms]:
    """Both rooms, running, with media flowing to both subscribers."""
    certificate = RTCCertificate.generateCertificate()
    url = websocket_url(server)
    clip = synthetic_clip()
    quiet, hostile = f"quiet-{uuid.uuid4().hex[:6]}", f"hostile-{uuid.uuid4().hex[:6]}"
    participants = [
        BenchPublisher(url, token(quiet, "pub", True), certificate, [clip]),
        BenchSubscriber(url, token(quiet, "sub", False), certificate, transport_cc=True),
        BenchPublisher(url, token(hostile, "pub", True), certificate, [clip]),
        BenchSubscriber(url, token(hostile, "attacker", False), certificate, transport_cc=True),
    ]
    tasks = [asyncio.create_task(p.run()) for p in participants]
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "join", "token": token(quiet, "pinger", False)}))
        while json.loads(await ws.recv()).get("type") != "joined":
            pass
        pinger = Pinger(ws)
        rooms = Rooms(participants[1], participants[3], pinger, server, hostile)  # type: ignore[arg-type]
        try:
            await _until(
                lambda: all(
                    sum(s.packets_received for s in sub.streams.values()) > 30
                    for sub in (rooms.bystander, rooms.attacker)
                ),
                "media did not reach both subscribers",
            )
            tasks.append(asyncio.create_task(pinger.run()))
            await asyncio.sleep(0.5)
            yield rooms
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(p.close() for p in participants), return_exceptions=True)


async def scrape(server: str) -> dict[str, float]:
    """The server's ``/metrics`` as ``{'name{labels}': value}``."""
    reader, writer = await asyncio.open_connection(*server.removeprefix("http://").split(":"))
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: sfu\r\n\r\n")
    body = (await reader.read()).decode().split("\r\n\r\n", 1)[1]
    writer.close()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values
