"""WHIP and WHEP through a cluster (tests/cluster.py: Redis, 2 workers, 2 signaling
nodes, haproxy): aiortc publishes over WHIP and another aiortc client watches over
WHEP, both through haproxy; the sessions' PATCH and DELETE go to the other node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aioice
import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from cluster import Cluster, api, cluster_available
from whip_pages import token

from sfu.client import SyntheticVideoTrack

pytestmark = pytest.mark.skipif(
    not cluster_available(), reason="needs redis-server and haproxy (Debian packages)"
)


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    running = Cluster(workers=2, nodes=2)
    try:
        yield running
    finally:
        running.close()


async def offer(pc: RTCPeerConnection, http: httpx.AsyncClient, path: str, bearer: str) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    response = await http.post(
        path,
        content=pc.localDescription.sdp,
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {bearer}"},
    )
    assert response.status_code == 201, response.text
    await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
    return response.headers["location"]


async def publish_and_watch(cluster: Cluster, room: str) -> dict[str, Any]:
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    publisher.addTrack(SyntheticVideoTrack())
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer.addTransceiver("video", direction="recvonly")
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    viewer.on("track", tracks.put_nowait)
    result: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(base_url=cluster.lb_url, timeout=10) as lb,
        httpx.AsyncClient(base_url=cluster.node_urls[1], timeout=10) as node,
    ):
        whip = await offer(publisher, lb, f"/whip/{room}", token(room, "encoder"))
        whep = await offer(viewer, lb, f"/whep/{room}?participant=encoder", token(room, "viewer"))
        async with asyncio.timeout(30):
            track = await tracks.get()
            for _ in range(10):
                frame = await track.recv()
        result["frame"] = (frame.width, frame.height)
        result["identities"] = sorted(
            p["identity"] for p in api(cluster.node_urls[0], f"/api/rooms/{room}/participants")
        )
        end = "a=end-of-candidates\r\n"
        result["patch"] = (
            await node.patch(
                whip, content=end, headers={"Content-Type": "application/trickle-ice-sdpfrag"}
            )
        ).status_code
        result["delete"] = [(await node.delete(whep)).status_code]
        result["delete"].append((await node.delete(whip)).status_code)
        result["again"] = (await node.delete(whip)).status_code
        result["forged"] = (await node.delete(f"/whip/{room}/w9.nothing")).status_code
    await asyncio.gather(publisher.close(), viewer.close())
    rooms = api(cluster.node_urls[0], "/api/rooms")
    result["left"] = [r for r in rooms if r["room"] == room and r["participants"]]
    return result


def test_whip_and_whep_through_haproxy(cluster: Cluster) -> None:
    room = f"whip-cluster-{uuid.uuid4().hex[:8]}"
    result = asyncio.run(publish_and_watch(cluster, room))
    assert result["frame"][0] > 0
    assert result["identities"] == ["encoder", "viewer"]
    assert result["patch"] == 204
    assert result["delete"] == [200, 200]
    assert result["again"] == 404
    assert result["forged"] == 404
    assert result["left"] == []
