"""Remote ICE candidates: the grammar, end-of-candidates as browsers send it, and bad
candidates over the WebSocket of a live server that leave the session working."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioice.ice
import av
import pytest
from aiortc.rtcdtlstransport import RTCCertificate
from websockets.asyncio.client import connect as ws_connect

from sfu.client import RoomClient, SyntheticVideoTrack, ToneAudioTrack, connect, dev_token
from sfu.client.errors import SfuError
from sfu.client.signaling import websocket_url
from sfu.protocol import CandidateMessage, ErrorCode, IceCandidate
from sfu.sdp import TransportInfo
from sfu.transport import MAX_REMOTE_CANDIDATES, Transport, parse_candidate

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
MDNS_HOST = "4b8a2c0e-0d6f-4c55-9a3b-5f1e0c2d7a19.local"

# (candidate, (component, transport, host, port, type, raddr, rport, tcptype, generation))
GOOD = [
    pytest.param(
        "candidate:0 1 UDP 2122187007 192.0.2.2 59238 typ host",
        (1, "UDP", "192.0.2.2", 59238, "host", None, None, None, None),
        id="firefox-udp",
    ),
    pytest.param(
        "candidate:2 1 TCP 2105458943 192.0.2.2 9 typ host tcptype active",
        (1, "TCP", "192.0.2.2", 9, "host", None, None, "active", None),
        id="firefox-tcp-active",
    ),
    pytest.param(
        "candidate:1 2 UDP 2122252542 fd00::2 35640 typ host",
        (2, "UDP", "fd00::2", 35640, "host", None, None, None, None),
        id="firefox-rtcp-ipv6",
    ),
    pytest.param(
        "candidate:1913571446 1 udp 2122194687 127.0.0.1 36229 typ host"
        " generation 0 ufrag x network-id 1 network-cost 10",
        (1, "udp", "127.0.0.1", 36229, "host", None, None, None, 0),
        id="chrome-extensions",
    ),
    pytest.param(
        f"candidate:3 1 udp 2113937151 {MDNS_HOST} 54321 typ host generation 0",
        (1, "udp", MDNS_HOST, 54321, "host", None, None, None, 0),
        id="chrome-mdns",
    ),
    pytest.param(
        "candidate:842163049 1 udp 1677729535 203.0.113.5 61665 typ srflx"
        " raddr 0.0.0.0 rport 0 generation 0 ufrag x network-cost 999",
        (1, "udp", "203.0.113.5", 61665, "srflx", "0.0.0.0", 0, None, 0),
        id="srflx-hidden-base",
    ),
    pytest.param(
        "a=candidate:7 1 udp 41885439 198.51.100.9 3478 typ relay raddr 203.0.113.5 rport 61665",
        (1, "udp", "198.51.100.9", 3478, "relay", "203.0.113.5", 61665, None, None),
        id="relay-with-a-prefix",
    ),
    pytest.param(
        "9 1 tcp 1518280447 2001:DB8::1 443 typ prflx tcptype passive",
        (1, "tcp", "2001:db8::1", 443, "prflx", None, None, "passive", None),
        id="no-prefix-ipv6-normalised",
    ),
]

VALID = "1 1 udp 2122260223 127.0.0.1 50000 typ host"

BAD = [
    pytest.param("candidate:1 1 udp 2122260223 127.0.0.1 50000 typ", "malformed", id="short"),
    pytest.param(VALID + " generation", "malformed", id="odd-extension"),
    pytest.param("candidate:", "malformed", id="empty-after-prefix"),
    pytest.param(VALID.replace("1 1", "f!o 1", 1), "foundation", id="foundation"),
    pytest.param(VALID.replace(" 1 udp", " 0 udp", 1), "component", id="component-zero"),
    pytest.param(VALID.replace(" 1 udp", " 257 udp", 1), "component", id="component-257"),
    pytest.param(VALID.replace(" 1 udp", " one udp", 1), "component", id="component-text"),
    pytest.param(VALID.replace("udp", "sctp"), "transport", id="transport"),
    pytest.param(VALID.replace("2122260223", "0"), "priority", id="priority-zero"),
    pytest.param(VALID.replace("2122260223", str(2**31)), "priority", id="priority-2-31"),
    pytest.param(VALID.replace("2122260223", "9" * 5000), "priority", id="priority-huge"),
    pytest.param(VALID.replace("2122260223", "-5"), "priority", id="priority-negative"),
    pytest.param(VALID.replace("127.0.0.1", "example.com"), "neither", id="host-fqdn"),
    pytest.param(VALID.replace("127.0.0.1", "300.1.1.1"), "neither", id="host-bad-ipv4"),
    pytest.param(VALID.replace("127.0.0.1", "evil.local.example"), "neither", id="host-not-mdns"),
    pytest.param(VALID.replace("50000", "0"), "port", id="port-zero"),
    pytest.param(VALID.replace("50000", "70000"), "port", id="port-range"),
    pytest.param(VALID.replace("50000", "x"), "port", id="port-text"),
    pytest.param(VALID.replace("typ host", "typ nonsense"), "type", id="typ-nonsense"),
    pytest.param(VALID.replace("typ host", "type host"), "type", id="typ-keyword"),
    pytest.param(VALID + " raddr nowhere rport 1", "raddr", id="raddr"),
    pytest.param(VALID + " raddr 0.0.0.0 rport 65536", "rport", id="rport"),
    pytest.param(VALID + " tcptype sideways", "tcptype", id="tcptype"),
    pytest.param(VALID + " generation -1", "generation", id="generation"),
]


@pytest.mark.parametrize(("value", "expected"), GOOD)
def test_parse_candidate(value: str, expected: tuple[object, ...]):
    c = parse_candidate(value)
    got = (c.component, c.transport, c.host, c.port, c.type)
    got += (c.related_address, c.related_port, c.tcptype, c.generation)
    assert got == expected


@pytest.mark.parametrize(("value", "reason"), BAD)
def test_parse_candidate_rejects(value: str, reason: str):
    with pytest.raises(ValueError, match=reason) as info:
        parse_candidate(value)
    assert len(str(info.value)) < 300  # a hostile candidate is quoted, cut short


# The Transport's bookkeeping, with aioice behind it (real sockets on loopback)


def candidate(port: int, extra: str = "") -> str:
    return f"candidate:{port} 1 udp 2122260223 127.0.0.1 {port} typ host{extra}"


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    t = Transport(
        "publish",
        RTCCertificate.generateCertificate(),
        on_rtp=lambda data: None,
        on_rtcp=lambda data: None,
        on_connected=lambda t: None,
        on_failed=lambda t: None,
    )
    await t.gather()
    yield t
    await t.close()


def remote_info(candidates: list[str], end: bool) -> TransportInfo:
    return TransportInfo(
        ice_ufrag="ufrag",
        ice_pwd="remotepasswordremotepassword",
        ice_options="trickle",
        ice_lite=False,
        fingerprints=[("sha-256", "AB:CD")],
        setup="actpass",
        candidates=candidates,
        end_of_candidates=end,
    )


def remote_ports(t: Transport) -> list[int]:
    connection = t.session._connection
    return [c.port for c in connection.remote_candidates]


def remote_ended(t: Transport) -> bool:
    return t.session._connection._remote_candidates_end


async def started(t: Transport, info: TransportInfo) -> None:
    t.start(info)
    await asyncio.sleep(0.05)  # the connect task hands aioice what it has


async def test_firefox_end_of_candidates(transport: Transport):
    """What Firefox 153 sends on the demo page's publish connection (captured): its
    candidates, then an empty candidate for the m-line, then null. Every later
    end-of-candidates is a no-op; the same candidate again is fine."""
    await started(transport, remote_info([], end=False))
    firefox = [
        candidate(50000),
        "candidate:1 1 UDP 2122252543 fd00::2 59070 typ host",
        "candidate:2 1 TCP 2105458943 192.0.2.2 9 typ host tcptype active",
        "candidate:0 2 UDP 2122187006 127.0.0.1 46761 typ host",
    ]
    for value in firefox:
        await transport.add_remote_candidate(value)
    assert remote_ports(transport) == [50000, 59070]  # UDP, component 1
    assert not remote_ended(transport)
    await transport.add_remote_candidate("")
    assert remote_ended(transport)
    await transport.add_remote_candidate(None)
    await transport.add_remote_candidate("")
    await transport.add_remote_candidate(candidate(50000, " generation 0 ufrag x"))
    await transport.add_remote_candidate(f"9 1 udp 2113937151 {MDNS_HOST} 5000 typ host")
    assert remote_ports(transport) == [50000, 59070]


async def test_new_candidate_after_end_is_refused(transport: Transport):
    await started(transport, remote_info([candidate(50000)], end=True))
    assert remote_ports(transport) == [50000] and remote_ended(transport)
    with pytest.raises(ValueError, match="after end-of-candidates"):
        await transport.add_remote_candidate(candidate(50001))
    # The session goes on: a duplicate and another end are still fine.
    await transport.add_remote_candidate(candidate(50000, " network-id 1 network-cost 10"))
    await transport.add_remote_candidate(None)
    assert remote_ports(transport) == [50000]


async def test_candidates_before_start_are_kept(transport: Transport):
    await transport.add_remote_candidate(candidate(50001, " generation 0"))
    await transport.add_remote_candidate(None)
    # The description's own candidates count even after a trickled end-of-candidates.
    await started(transport, remote_info([candidate(50000), candidate(50001)], end=True))
    assert sorted(remote_ports(transport)) == [50000, 50001] and remote_ended(transport)


async def test_mdns_candidates_are_ignored(transport: Transport):
    await started(transport, remote_info([], end=False))
    await transport.add_remote_candidate(f"1 1 udp 2113937151 {MDNS_HOST} 5000 typ host")
    await transport.add_remote_candidate(None)
    assert remote_ports(transport) == [] and remote_ended(transport)


async def test_remote_candidates_are_bounded(transport: Transport):
    too_many = [candidate(port) for port in range(1, MAX_REMOTE_CANDIDATES + 2)]
    with pytest.raises(ValueError, match=f"more than {MAX_REMOTE_CANDIDATES}"):
        transport.start(remote_info(too_many, end=False))
    assert not transport.started
    for port in range(MAX_REMOTE_CANDIDATES):
        await transport.add_remote_candidate(candidate(40000 + port))
    with pytest.raises(ValueError, match=f"more than {MAX_REMOTE_CANDIDATES}"):
        await transport.add_remote_candidate(candidate(50000))
    await transport.add_remote_candidate(candidate(40000))  # known: fine
    await started(transport, remote_info([], end=True))
    assert len(remote_ports(transport)) == MAX_REMOTE_CANDIDATES


# Over the WebSocket of a live server


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


NEW = "candidate:5 1 udp 2122260223 127.0.0.1 61000 typ host"

BAD_LIVE: list[tuple[dict[str, object], str]] = [
    ({"candidate": "candidate:1 1 udp 2122260223", "sdpMid": "0"}, "malformed"),
    ({"candidate": NEW.replace("127.0.0.1", "example.com"), "sdpMid": "0"}, "neither"),
    ({"candidate": NEW.replace("typ host", "typ nonsense"), "sdpMid": "0"}, "type"),
    ({"candidate": NEW.replace(" 1 udp", " 9999 udp"), "sdpMid": "0"}, "component"),
    ({"candidate": NEW.replace("61000", "99999"), "sdpMid": "0"}, "port"),
    ({"candidate": NEW.replace("2122260223", "0"), "sdpMid": "0"}, "priority"),
    ({"candidate": NEW, "sdpMid": "7"}, "no m-line with sdpMid '7'"),
    ({"candidate": "", "sdpMid": "x" * 400}, "no m-line with sdpMid"),
    ({"candidate": NEW, "sdpMLineIndex": 5}, "out of range"),
    ({"candidate": NEW, "sdpMLineIndex": -1}, "out of range"),
    ({"candidate": NEW, "sdpMid": "0"}, "after end-of-candidates"),
]


@pytest.fixture
async def room(sfu_server: str) -> AsyncIterator[tuple[RoomClient, RoomClient]]:
    name = f"cand-{uuid.uuid4().hex[:8]}"
    clients = []
    for identity in ("sender", "watcher"):
        token = await dev_token(sfu_server, name, identity)
        clients.append(await connect(sfu_server, token, name=identity))
    yield clients[0], clients[1]
    await asyncio.gather(*(client.leave() for client in clients))


async def send_candidate(client: RoomClient, target: str, value: dict[str, object] | None) -> None:
    message = CandidateMessage(
        target=target,  # type: ignore[arg-type]
        candidate=None if value is None else IceCandidate.model_validate(value),
    )
    await client._signaling.command(message)  # raises the error the server answers


async def test_bad_candidates_leave_the_session_working(room: tuple[RoomClient, RoomClient]):
    sender, watcher = room
    # The client has its data channel up: its publish transport runs, and its offer
    # carried its candidates and a=end-of-candidates.
    for value, reason in BAD_LIVE:
        with pytest.raises(SfuError) as info:
            await send_candidate(sender, "publish", value)
        assert info.value.code == ErrorCode.BAD_CANDIDATE, value
        assert re.search(re.escape(reason), str(info.value)), (reason, str(info.value))
    with pytest.raises(SfuError, match="no m-line with sdpMid") as info:
        await send_candidate(watcher, "subscribe", {"candidate": NEW, "sdpMid": "9"})
    assert info.value.code == ErrorCode.BAD_CANDIDATE

    # What browsers legitimately send after their description: the same candidates
    # with extension attributes, end-of-candidates per m-line and once more, mDNS
    # names. (The client library cannot send a null candidate: it drops None fields;
    # tests above and the Firefox check cover null.)
    sdp = sender._publisher._pc.localDescription.sdp  # type: ignore[union-attr]
    own = next(line[2:] for line in sdp.splitlines() if line.startswith("a=candidate:"))
    for value in (
        {"candidate": own + " generation 0 ufrag x network-id 1 network-cost 10", "sdpMid": "0"},
        {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},
        {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},
        {"candidate": ""},
        {"candidate": f"candidate:9 1 udp 2113937151 {MDNS_HOST} 5000 typ host"},
    ):
        await send_candidate(sender, "publish", value)

    # The session still works: ping, then a real publish that the watcher receives.
    async with asyncio.timeout(2):
        await sender.ping()
    video_id, _ = await sender.publish_tracks(
        [(SyntheticVideoTrack(320, 240), "camera"), (ToneAudioTrack(), "microphone")]
    )
    remote = await watcher.wait_for_track(
        participant_id=sender.participant_id, kind="video", timeout=10
    )
    assert remote.track_id == video_id
    async with asyncio.timeout(5):
        frames = [await remote.track.recv() for _ in range(5)]
    assert all(isinstance(f, av.VideoFrame) and f.width == 320 for f in frames)


async def test_firefox_candidate_sequence_over_the_wire(sfu_server: str):
    """Firefox's publish-side sequence, as raw JSON (null included): its max-bundle
    offer, trickled candidates, an empty candidate for mid 0, null. No error, then a
    pong; a new candidate after that is bad_candidate and the session answers on."""
    offer = (FIXTURES / "firefox-max-bundle-offer.sdp").read_text()
    token = await dev_token(sfu_server, f"cand-{uuid.uuid4().hex[:8]}", "fox")
    line = {"usernameFragment": "af93f42f", "sdpMid": "0", "sdpMLineIndex": 0}
    async with ws_connect(websocket_url(sfu_server)) as ws:

        async def send(message: dict[str, object]) -> None:
            await ws.send(json.dumps(message))

        async def send_candidate(value: str | None) -> None:
            candidate = None if value is None else {"candidate": value, **line}
            await send({"type": "candidate", "target": "publish", "candidate": candidate})

        async def until(reply_type: str) -> list[dict[str, Any]]:
            seen = []
            while (message := json.loads(await ws.recv()))["type"] != reply_type:
                seen.append(message)
            return [*seen, message]

        await send({"type": "join", "token": token})
        await until("joined")
        await send({"type": "publish_offer", "sdp": offer})
        assert [m["type"] for m in await until("publish_answer")] == ["publish_answer"]
        for value in (
            "candidate:0 1 UDP 2122187007 192.0.2.2 33162 typ host",
            "candidate:2 1 TCP 2105458943 192.0.2.2 9 typ host tcptype active",
            "candidate:0 2 UDP 2122187006 192.0.2.2 41930 typ host",
            "",
            None,
            None,
        ):
            await send_candidate(value)
        await send({"type": "ping"})
        assert [m["type"] for m in await until("pong")] == ["pong"]

        await send_candidate("candidate:5 1 UDP 2122187007 192.0.2.3 40000 typ host")
        await send({"type": "ping"})
        error, pong = await until("pong")
        assert (error["code"], error["request_type"]) == ("bad_candidate", "candidate")
        assert "after end-of-candidates" in error["message"] and not error["fatal"]
        assert pong["type"] == "pong"
