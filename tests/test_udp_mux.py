"""The single UDP port (sfu/udp_mux.py): many ICE connections on one socket, real
ICE/DTLS/SRTP over loopback, and what the mux drops."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import aioice.ice
import aioice.stun
import pytest
from aiortc.rtcdtlstransport import RTCCertificate
from test_aiortc_adapter import connected_pair, rtp, wait_for

from sfu.aiortc_adapter import SharedPorts
from sfu.config import Settings
from sfu.stun_header import BINDING_REQUEST, StunHeader
from sfu.transport import Transport
from sfu.udp_mux import MAX_ADDRESSES_PER_CONNECTION, MAX_TRANSACTIONS, UdpMux


async def shared_ports(addresses: list[str]) -> SharedPorts:
    mux = UdpMux(addresses)
    await mux.start()
    return SharedPorts(mux, None)


@pytest.fixture
async def ports() -> AsyncIterator[SharedPorts]:
    shared = await shared_ports(["127.0.0.1"])
    yield shared
    shared.close()


def binding_request(username: str | None, password: str | None = None) -> bytes:
    request = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    if username is not None:
        request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    request.attributes["ICE-CONTROLLING"] = 1
    if password is not None:
        request.add_message_integrity(password.encode())
    request.add_fingerprint()
    return bytes(request)


VALID = binding_request("abcd:wxyz", "p" * 22)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (VALID, "abcd"),
        (binding_request(None), None),
        (binding_request("nocolon"), None),
        (VALID[:10], ValueError),  # shorter than the header
        (VALID[:-4], ValueError),  # the length field says more
        (b"\x00\x01\x00\x00" + b"\x00" * 16, ValueError),  # no magic cookie
        (VALID[:2] + b"\x00\x08" + VALID[4:20] + b"\x00\x06\x01\x00abcd", ValueError),
    ],
    ids=["request", "no-username", "no-colon", "short", "truncated", "cookie", "attribute"],
)
def test_stun_header_routing_fields(data: bytes, expected: object) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError):
            StunHeader.parse(data)
        return
    header = StunHeader.parse(data)
    assert header.message_type == BINDING_REQUEST and header.is_request
    assert header.local_ufrag == expected


async def test_transports_share_one_socket_and_each_gets_its_own_media(ports):
    pairs = [await connected_pair(ports) for _ in range(4)]
    mux = ports.udp
    assert mux is not None
    try:
        assert len(mux.sockets) == 1
        sock = mux.sockets[0].transport.get_extra_info("socket")  # type: ignore[union-attr]
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # More than one transport's own socket had (aioice's 256 KiB, doubled).
            assert sock.getsockopt(socket.SOL_SOCKET, option) > 2 * 262144
        assert {c.port for s, _ in pairs for c in s.session.local_candidates()} == {mux.port}
        for index, (server, client) in enumerate(pairs):
            client.session.send_rtp(rtp(96, 1, 0x1000 + index, b"\x10up"))
            server.session.send_rtp(rtp(96, 1, 0x2000 + index, b"\x10down"))
        await wait_for(lambda: all(s.rtp and c.rtp for s, c in pairs))
        for index, (server, client) in enumerate(pairs):
            assert [p[8:12] for p in server.rtp] == [(0x1000 + index).to_bytes(4, "big")]
            assert [p[8:12] for p in client.rtp] == [(0x2000 + index).to_bytes(4, "big")]
        assert sum(mux.drops.values()) == 0
    finally:
        for server, client in pairs:
            await asyncio.gather(server.session.close(), client.session.close())
    assert mux.sockets[0].table_sizes() == (0, 0, 0), "closed transports leave no entry"


async def test_unknown_senders_and_bad_stun_are_dropped_counted_and_harmless(ports):
    server, client = await connected_pair(ports)
    mux = ports.udp
    assert mux is not None
    target = ("127.0.0.1", mux.port)
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        srtp_like = b"\x80\x60" + os.urandom(40)
        spoofer.sendto(srtp_like, target)  # media from an address no connection owns
        spoofer.sendto(binding_request("zzzz:abcd", "x" * 22), target)  # unknown ufrag
        spoofer.sendto(binding_request(None), target)  # no USERNAME at all
        spoofer.sendto(VALID[:30], target)  # truncated STUN
        response = aioice.stun.Message(
            message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.RESPONSE
        )
        spoofer.sendto(bytes(response), target)  # answers nothing we asked
        # The right ufrag with a wrong password: aioice refuses it (401), and the
        # address stays unknown, so media from it is still dropped.
        spoofer.sendto(binding_request(f"{server.session.ice_ufrag}:zz", "wrong" * 5), target)
        await asyncio.sleep(0.1)
        spoofer.sendto(srtp_like, target)
        await wait_for(lambda: sum(mux.drops.values()) == 6)
        assert mux.drops == {
            "unknown_address": 2,
            "unknown_ufrag": 2,
            "malformed_stun": 1,
            "unknown_transaction": 1,
        }
        assert server.session.srtp_errors == 0 and server.rtp == [], "nothing reached it"
        client.session.send_rtp(rtp(96, 1, 0x1234, b"\x10after"))
        await wait_for(lambda: server.rtp)
    finally:
        spoofer.close()
        await asyncio.gather(server.session.close(), client.session.close())


async def test_a_new_ufrag_from_the_same_address_takes_the_address_over(ports):
    """An ICE restart from the same client socket (a rejoin: new ufrag, same address):
    the new connection gets the address's datagrams; closing the old one leaves the new
    one's routes alone."""
    client_ports = await shared_ports(["127.0.0.1"])
    try:
        old_server, old_client = await connected_pair(ports, client_ports)
        new_server, new_client = await connected_pair(ports, client_ports)
        assert old_server.session.ice_ufrag != new_server.session.ice_ufrag
        new_client.session.send_rtp(rtp(96, 1, 0x4444, b"\x10new"))
        new_server.session.send_rtp(rtp(96, 1, 0x5555, b"\x10new"))
        await wait_for(lambda: new_server.rtp and new_client.rtp)
        await old_server.session.close()
        await old_client.session.close()
        new_client.session.send_rtp(rtp(96, 2, 0x4444, b"\x10again"))
        await wait_for(lambda: len(new_server.rtp) == 2)
        assert old_server.rtp == []
        await asyncio.gather(new_server.session.close(), new_client.session.close())
    finally:
        client_ports.close()
    assert ports.udp is not None and ports.udp.sockets[0].table_sizes() == (0, 0, 0)


async def test_consent_freshness_runs_on_the_shared_socket_and_its_expiry_frees_it(
    ports, monkeypatch
):
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    server, client = await connected_pair(ports)
    mux = ports.udp
    assert mux is not None
    try:
        await asyncio.sleep(1.0)  # about ten consent checks each way, answered
        assert not server.session.closed.is_set()
        assert sum(mux.drops.values()) == 0
        client.session.send_rtp(rtp(96, 1, 0x1234, b"\x10alive"))
        await wait_for(lambda: server.rtp)
        # The client's network goes dark: it neither answers nor sends.
        for protocol in client.session._connection._protocols:
            protocol.datagram_received = lambda data, addr: None
            protocol.transport.sendto = lambda data, addr=None: None
        await wait_for(lambda: mux.sockets[0].table_sizes()[0] == 0, timeout=3.0)
        assert mux.sockets[0].table_sizes() == (0, 0, 0)
    finally:
        await asyncio.gather(server.session.close(), client.session.close())


async def test_dual_stack_host_candidates_and_ipv6_media():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        ports = await shared_ports(["127.0.0.1", "::1"])
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    mux = ports.udp
    assert mux is not None
    try:
        server, client = await connected_pair(ports, client_addresses=("::1",))
        hosts = {c.host for c in server.session.local_candidates()}
        assert hosts == {"127.0.0.1", "::1"}
        assert {s.sockname[1] for s in mux.sockets} == {mux.port}, "one port, both families"
        assert server.session._connection._nominated[1].remote_addr[0] == "::1"
        client.session.send_rtp(rtp(96, 1, 0x6666, b"\x10v6"))
        server.session.send_rtp(rtp(96, 1, 0x7777, b"\x10v6"))
        await wait_for(lambda: server.rtp and client.rtp)
        await asyncio.gather(server.session.close(), client.session.close())
    finally:
        ports.close()


async def test_routing_tables_are_bounded(ports):
    mux_socket = ports.udp.sockets[0]  # type: ignore[union-attr]
    connection = aioice.Connection(ice_controlling=False)
    protocol = mux_socket.register(connection, 1)
    for n in range(MAX_TRANSACTIONS + 10):
        mux_socket.expect_response(n.to_bytes(12, "big"), protocol)
    for port in range(1000, 1000 + MAX_ADDRESSES_PER_CONNECTION + 3):
        mux_socket.claim(("192.0.2.1", port), protocol)
    ufrags, addresses, transactions = mux_socket.table_sizes()
    assert (ufrags, addresses, transactions) == (1, MAX_ADDRESSES_PER_CONNECTION, MAX_TRANSACTIONS)
    assert ("192.0.2.1", 1000) not in protocol.addresses, "the oldest address went first"
    with pytest.raises(ValueError):
        mux_socket.register(connection, 1)  # one ufrag, one connection
    protocol.transport.close()
    assert mux_socket.table_sizes() == (0, 0, 0)


def test_ice_addresses_accept_ipv6_and_refuse_names() -> None:
    settings = Settings(ice_addresses=["127.0.0.1", "0:0:0:0:0:0:0:1"])
    assert settings.ice_addresses == ["127.0.0.1", "::1"]
    assert settings.single_udp_port, "one UDP port unless a range is set"
    assert not Settings(udp_port_min=40000, udp_port_max=40100).single_udp_port
    with pytest.raises(ValueError):
        Settings(ice_addresses=["media.example.com"])


async def test_a_taken_port_is_a_clear_error(ports):
    with pytest.raises(OSError, match=f"cannot bind UDP port {ports.udp.port} on 127.0.0.1"):  # type: ignore[union-attr]
        await UdpMux(["127.0.0.1"], ports.udp.port).start()  # type: ignore[union-attr]


async def test_the_announced_address_replaces_host_candidates_of_its_family_only():
    try:
        ports = await shared_ports(["127.0.0.1", "::1"])
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    transport = Transport(
        "subscribe",
        RTCCertificate.generateCertificate(),
        on_rtp=lambda data: None,
        on_rtcp=lambda data: None,
        on_connected=lambda t: None,
        on_failed=lambda t: None,
        announced_ip="203.0.113.7",
        ports=ports,
    )
    try:
        await transport.gather()
        port = ports.udp.port  # type: ignore[union-attr]
        hosts = {c.split()[4] for c in transport.local_parameters().candidates}
        assert hosts == {"203.0.113.7", "::1"}
        assert all(c.split()[5] == str(port) for c in transport.local_parameters().candidates)
    finally:
        await transport.close()
        ports.close()
