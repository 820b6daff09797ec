"""One UDP port per worker and ICE-TCP, end to end: ``python -m sfu serve`` as a
subprocess (so that its sockets can be counted in /proc), Python clients (aiortc) and
Chromium tabs, some of them in network namespaces.

- Python clients and Chromium tabs on one server whose process holds one UDP socket.
- Two tabs of one Chromium in a namespace share its source address with different
  ports and are told apart.
- A tab in a namespace whose UDP nftables drops joins over ICE-TCP, decodes, and its
  selected candidate pair is TCP.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aioice.ice
import av
import pytest
from async_browser import chromium, open_demo
from browser import CHROMIUM_PATH, chromium_available, decoding_video
from netns import (
    VethNamespace,
    netns_unavailable_reason,
    nftables_unavailable_reason,
    veth_namespace,
)
from server import ServerUrl, serve_module, udp_sockets
from test_metrics import scrape, total

from sfu.client import RoomClient, SyntheticVideoTrack, connect, dev_token

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason="browser tests need Chromium at /usr/bin/chromium (Debian package 'chromium')",
    ),
]

MEDIA_TIMEOUT = 45.0
SELECTED_PAIR_JS = """async (which) => {
    const pc = window.sfu[which];
    if (!pc) return null;
    const stats = await pc.getStats();
    for (const s of stats.values()) {
        if (s.type !== "transport" || !s.selectedCandidatePairId) continue;
        const pair = stats.get(s.selectedCandidatePairId);
        const local = stats.get(pair.localCandidateId);
        const remote = stats.get(pair.remoteCandidateId);
        return {
            protocol: local.protocol, tcpType: local.tcpType ?? null,
            remote: [remote.protocol, remote.address, remote.port],
        };
    }
    return null;
}"""
"""The selected candidate pair of a page's publish or subscribe PeerConnection."""

PUBLIC_ADDRESS_JS = """async (which) => {
    const stats = await window.sfu[which].getStats();
    for (const s of stats.values()) {
        if (s.type !== "transport" || !s.selectedCandidatePairId) continue;
        const local = stats.get(stats.get(s.selectedCandidatePairId).localCandidateId);
        return [local.address, local.port];
    }
    return null;
}"""
"""The local (address, port) of a PeerConnection's selected pair: what the server sees."""


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python clients gather on 127.0.0.1 only (aioice skips it otherwise)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def room_name() -> str:
    return f"port-{uuid.uuid4().hex[:8]}"


async def python_client(server: str, room: str, name: str, publish: bool = True) -> RoomClient:
    token = await dev_token(server, room, name, name=name)
    client = await connect(server, token, name=name, data=False)
    if publish:
        await client.publish_tracks([(SyntheticVideoTrack(320, 240), "camera")])
    return client


async def client_decodes(client: RoomClient, participant_id: str) -> None:
    remote = await client.wait_for_track(
        participant_id=participant_id, kind="video", timeout=MEDIA_TIMEOUT
    )
    async with asyncio.timeout(MEDIA_TIMEOUT):
        frames = [await remote.track.recv() for _ in range(5)]
    assert all(isinstance(frame, av.VideoFrame) and frame.width > 0 for frame in frames)


async def page_decodes(page: Any, participant_ids: set[str]) -> None:
    """Wait until ``page`` decodes video from every one of ``participant_ids``, and
    keeps decoding it."""
    deadline = time.monotonic() + MEDIA_TIMEOUT
    stats: dict[str, Any] = {}
    while not participant_ids <= set(decoding_video(stats)):
        assert time.monotonic() < deadline, f"{page.url} decodes no video from all of" + (
            f" {participant_ids}: {stats}"
        )
        await asyncio.sleep(0.5)
        stats = await page.evaluate("() => window.sfu.stats()")
    first = decoding_video(stats)
    await asyncio.sleep(1.0)
    later = decoding_video(await page.evaluate("() => window.sfu.stats()"))
    assert all(later[pid] > first[pid] for pid in participant_ids), (first, later)


# --- one socket ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sfu_server() -> Iterator[ServerUrl]:
    yield from serve_module()  # the default: one UDP port, on 127.0.0.1 only


async def test_clients_and_tabs_share_one_udp_socket_and_spoofs_are_dropped(sfu_server):
    room = room_name()
    async with chromium() as context:
        tabs = [
            await open_demo(context, sfu_server, room, f"tab{i}", identity=f"tab{i}-{room}")
            for i in range(2)
        ]
        clients = [await python_client(sfu_server, room, f"py{i}") for i in range(2)]
        try:
            tab_ids = [await tab.evaluate("() => window.sfu.participantId") for tab in tabs]
            client_ids = [c.participant_id for c in clients]
            everyone = set(tab_ids) | set(client_ids)
            await asyncio.gather(
                *(page_decodes(t, everyone - {p}) for t, p in zip(tabs, tab_ids, strict=True)),
                *(
                    client_decodes(client, other)
                    for client in clients
                    for other in everyone - {client.participant_id}
                ),
            )
            sockets = udp_sockets(sfu_server.process.pid)
            # One file descriptor of one socket: no copy per transport either.
            assert len(sockets) == 1, f"the server holds {sockets}"
            # Eight transports (two per participant) on it; a spoofed datagram from an
            # address none of them owns is dropped, counted, and reaches no session.
            _, before = scrape(sfu_server)
            spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            spoofer.sendto(b"\x80\x60" + os.urandom(60), sockets[0])
            spoofer.close()
            deadline = time.monotonic() + 5
            while True:
                _, after = scrape(sfu_server)
                dropped = total(after, "sfu_ice_dropped_packets_total", reason="unknown_address")
                if dropped > total(
                    before, "sfu_ice_dropped_packets_total", reason="unknown_address"
                ):
                    break
                assert time.monotonic() < deadline, "the spoofed datagram was not counted"
                await asyncio.sleep(0.2)
            assert total(after, "sfu_rtp_dropped_packets_total", reason="srtp") == total(
                before, "sfu_rtp_dropped_packets_total", reason="srtp"
            ), "the spoofed datagram reached a session"
            for tab in tabs:
                assert tab.uncaught_errors == []
        finally:
            await asyncio.gather(*(client.leave() for client in clients))


# --- namespaces: one source address, and UDP blocked --------------------------------


@pytest.fixture(scope="module")
def links() -> Iterator[tuple[VethNamespace, VethNamespace]]:
    reason = netns_unavailable_reason() or nftables_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with veth_namespace("sfunat") as shared, veth_namespace("sfutcp") as tcp_only:
        tcp_only.block_udp()
        yield shared, tcp_only


@pytest.fixture(scope="module")
def netns_server(links: tuple[VethNamespace, VethNamespace]) -> Iterator[ServerUrl]:
    shared, tcp_only = links
    yield from serve_module(
        host="0.0.0.0",
        ice_addresses=["127.0.0.1", shared.host_address, tcp_only.host_address],
        extra_args=["--tcp-port", "0"],
    )


def origin(link: VethNamespace, server: str) -> str:
    return f"http://{link.host_address}:{server.rsplit(':', 1)[1]}"


async def open_in(
    context: Any, link: VethNamespace, server: str, room: str, name: str, publish: bool = True
) -> Any:
    return await open_demo(
        context,
        origin(link, server),
        room,
        name,
        identity=f"{name}-{room}",
        query="" if publish else "&publish=0",
    )


def insecure_origin(link: VethNamespace, server: str) -> list[str]:
    return [f"--unsafely-treat-insecure-origin-as-secure={origin(link, server)}"]


async def test_two_tabs_behind_one_address_and_a_tab_without_udp(links, netns_server, tmp_path):
    shared, tcp_only = links
    room = room_name()
    publisher = await python_client(netns_server, room, "publisher")
    try:
        async with (
            chromium(
                insecure_origin(shared, netns_server), shared.wrapper(CHROMIUM_PATH, tmp_path)
            ) as shared_browser,
            chromium(
                insecure_origin(tcp_only, netns_server), tcp_only.wrapper(CHROMIUM_PATH, tmp_path)
            ) as tcp_browser,
        ):
            # Two tabs of one browser: one source address, a port per PeerConnection.
            first = await open_in(shared_browser, shared, netns_server, room, "first")
            second = await open_in(shared_browser, shared, netns_server, room, "second", False)
            tcp_tab = await open_in(tcp_browser, tcp_only, netns_server, room, "tcp", False)
            first_id = await first.evaluate("() => window.sfu.participantId")
            await asyncio.gather(
                page_decodes(first, {publisher.participant_id}),
                page_decodes(second, {publisher.participant_id, first_id}),
                page_decodes(tcp_tab, {publisher.participant_id, first_id}),
                client_decodes(publisher, first_id),
            )
            pairs = {
                name: await page.evaluate(SELECTED_PAIR_JS, "subscribePc")
                for name, page in (("first", first), ("second", second), ("tcp", tcp_tab))
            }
            assert pairs["first"]["protocol"] == pairs["second"]["protocol"] == "udp", pairs
            assert pairs["tcp"]["protocol"] == "tcp", pairs
            assert pairs["tcp"]["remote"][0] == "tcp" and pairs["tcp"]["tcpType"] == "active"
            assert tcp_only.blocked_udp_packets() > 0, "the namespace's UDP was never tried"
            # The server saw both shared-address tabs from one IP, on different ports.
            subscribe_ports = {
                tuple(await page.evaluate(PUBLIC_ADDRESS_JS, "subscribePc"))
                for page in (first, second)
            }
            assert len(subscribe_ports) == 2 and len({a for a, _ in subscribe_ports}) == 1
            for page in (first, second, tcp_tab):
                assert page.uncaught_errors == [], page.url
    finally:
        await publisher.leave()
