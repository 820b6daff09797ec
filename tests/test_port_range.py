"""UDP port range and announced address of the media transports (NAT deployments)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiortc.rtcdtlstransport import RTCCertificate
from server import free_port
from test_aiortc_adapter import connected_pair, rtp, wait_for

from sfu.aiortc_adapter import DtlsSrtpSession, use_host_addresses, use_port_range
from sfu.transport import Transport


@pytest.fixture
def port_range() -> Iterator[tuple[int, int]]:
    low = free_port()  # a TCP port that was free: its UDP twin and neighbours likely are
    ports = (low, low + 2)
    use_port_range(ports)
    yield ports
    use_port_range(None)


def session(certificate: RTCCertificate) -> DtlsSrtpSession:
    return DtlsSrtpSession(certificate, False, lambda d: None, lambda d: None, lambda e: None)


async def test_transports_bind_inside_the_range_until_it_is_full(port_range):
    use_host_addresses(["127.0.0.1"])
    certificate = RTCCertificate.generateCertificate()
    sessions = [session(certificate) for _ in range(4)]
    try:
        for s in sessions:
            await s.gather()
        ports = [c.port for s in sessions[:3] for c in s.local_candidates()]
        assert sorted(ports) == list(range(port_range[0], port_range[1] + 1))
        assert sessions[3].local_candidates() == []  # the range is full: no candidate
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


async def test_media_flows_over_ports_in_the_range(port_range):
    server, client = await connected_pair()
    try:
        for candidate in server.session.local_candidates():
            assert port_range[0] <= candidate.port <= port_range[1]
        client.session.send_rtp(rtp(96, 1, 0x1234, b"\x10payload"))
        await wait_for(lambda: server.rtp)
    finally:
        await asyncio.gather(server.session.close(), client.session.close())


def test_bad_ranges_are_refused():
    for bad in ((0, 10), (5000, 4000), (60000, 70000)):
        with pytest.raises(ValueError):
            use_port_range(bad)


async def test_announced_ip_replaces_host_candidate_addresses():
    use_host_addresses(["127.0.0.1"])
    transport = Transport(
        "subscribe",
        RTCCertificate.generateCertificate(),
        on_rtp=lambda d: None,
        on_rtcp=lambda d: None,
        on_connected=lambda t: None,
        on_failed=lambda t: None,
        announced_ip="203.0.113.7",
    )
    try:
        await transport.gather()
        candidates = transport.local_parameters().candidates
        assert candidates and all(" 203.0.113.7 " in c for c in candidates)
    finally:
        await transport.close()
