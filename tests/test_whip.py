"""WHIP ingest (RFC 9725) against ``sfu serve``: real clients publishing into a room
that a Chromium tab (the demo page) watches, and every bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import chromium_available, chromium_context, decoding_video, page_stats, wait_until
from whip_pages import OUTBOUND_VIDEO_JS, WHIP_PUBLISH_JS, token

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
CHROME_OFFER = (FIXTURES / "chrome-simulcast-offer.sdp").read_text()
UI_TIMEOUT_MS = 20_000


def unique_room() -> str:
    return f"whip-{uuid.uuid4().hex[:10]}"


def participants(url: str, room: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{url}/api/rooms/{room}/participants",
        auth=("devkey", "devsecret-change-me-in-production-0123456789"),
    )
    return response.json() if response.status_code == 200 else []


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    body = json.loads(response.text)
    assert body["status"] == response.status_code
    return body


# --- bad input ------------------------------------------------------------------------


def post_offer(url: str, path: str, body: str | bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=10)


def test_no_token_bad_token_other_room(sfu_server: str) -> None:
    room = unique_room()
    for path in (f"/whip/{room}", f"/whep/{room}"):
        response = post_offer(sfu_server, path, CHROME_OFFER, **{"Content-Type": "application/sdp"})
        assert response.status_code == 401
        assert problem(response)["code"] == "bad_token"
        assert response.headers["www-authenticate"].startswith("Bearer")
        forged = token(room, "mallory")[:-4] + "AAAA"
        response = post_offer(
            sfu_server,
            path,
            CHROME_OFFER,
            **{"Content-Type": "application/sdp", "Authorization": f"Bearer {forged}"},
        )
        assert response.status_code == 401
        assert "signature" in problem(response)["detail"]
        other = token("another-room", "mallory")
        response = post_offer(
            sfu_server,
            path,
            CHROME_OFFER,
            **{"Content-Type": "application/sdp", "Authorization": f"Bearer {other}"},
        )
        assert response.status_code == 403
    viewer_only = token(room, "viewer", can_publish=False)
    response = post_offer(
        sfu_server,
        f"/whip/{room}",
        CHROME_OFFER,
        **{"Content-Type": "application/sdp", "Authorization": f"Bearer {viewer_only}"},
    )
    assert response.status_code == 403
    assert problem(response)["code"] == "not_allowed"


def test_wrong_content_type_bad_offer_oversized(sfu_server: str) -> None:
    room = unique_room()
    auth = f"Bearer {token(room, 'obs')}"
    for path in (f"/whip/{room}", f"/whep/{room}"):
        response = post_offer(
            sfu_server, path, CHROME_OFFER, **{"Content-Type": "text/plain", "Authorization": auth}
        )
        assert response.status_code == 415
        assert problem(response)["code"] == "unsupported_media_type"
        response = post_offer(
            sfu_server,
            path,
            "v=0\r\nthis is no SDP\r\n",
            **{"Content-Type": "application/sdp", "Authorization": auth},
        )
        assert response.status_code == 400
        assert problem(response)["code"] == "bad_sdp"
        response = post_offer(
            sfu_server,
            path,
            b"v=0\r\n" + b"a=x\r\n" * 20_000,
            **{"Content-Type": "application/sdp", "Authorization": auth},
        )
        assert response.status_code == 413
        assert problem(response)["code"] == "too_large"
    # A WHEP offer that only sends (a publisher's offer) has nothing to receive.
    response = post_offer(
        sfu_server,
        f"/whep/{room}",
        CHROME_OFFER,
        **{"Content-Type": "application/sdp", "Authorization": auth},
    )
    assert response.status_code == 400
    assert "receivable" in problem(response)["detail"]
    for query in ("?participant=" + "x" * 200, "?participant=%07"):
        response = post_offer(
            sfu_server,
            f"/whep/{room}{query}",
            CHROME_OFFER,
            **{"Content-Type": "application/sdp", "Authorization": auth},
        )
        assert response.status_code == 400
        assert problem(response)["code"] == "bad_message"
    # Nobody was left behind by any of these.
    assert participants(sfu_server, room) == []


def test_unknown_session_and_cors(sfu_server: str) -> None:
    room = unique_room()
    fragment = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    for kind in ("whip", "whep"):
        response = httpx.patch(
            f"{sfu_server}/{kind}/{room}/no-such-session",
            content=fragment,
            headers={"Content-Type": "application/trickle-ice-sdpfrag"},
        )
        assert response.status_code == 404
        assert problem(response)["code"] == "unknown_session"
        response = httpx.delete(f"{sfu_server}/{kind}/{room}/no-such-session")
        assert response.status_code == 404
        preflight = httpx.options(
            f"{sfu_server}/{kind}/{room}",
            headers={
                "Origin": "https://studio.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        for exposed in ("Location", "ETag", "Link"):
            assert exposed in preflight.headers["access-control-expose-headers"]


def test_unicode_room_name_in_location(sfu_server: str) -> None:
    """A room name is printable Unicode: Location carries it URL-encoded, and works."""
    room = f"Café {uuid.uuid4().hex[:6]}"
    quoted = httpx.URL(f"{sfu_server}/whip/").copy_with(path=f"/whip/{room}")
    response = httpx.post(
        quoted,
        content=CHROME_OFFER,
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token(room, 'x')}"},
    )
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.isascii() and "Caf%C3%A9%20" in location
    assert httpx.delete(f"{sfu_server}{location}").status_code == 200


def test_session_lifecycle_over_http(sfu_server: str) -> None:
    """POST a real Chrome offer (nobody connects): 201 with answer, Location, ETag;
    PATCH checks content type, ETag and candidates; ICE restart is refused; DELETE
    removes the participant and the session."""
    room = unique_room()
    auth = f"Bearer {token(room, 'encoder')}"
    response = post_offer(
        sfu_server,
        f"/whip/{room}",
        CHROME_OFFER,
        **{"Content-Type": "application/sdp", "Authorization": auth},
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/sdp"
    assert "a=simulcast:recv" in response.text
    location, etag = response.headers["location"], response.headers["etag"]
    assert location.startswith(f"/whip/{room}/")
    assert response.headers["access-control-allow-origin"] == "*"
    [publisher] = participants(sfu_server, room)
    assert publisher["identity"] == "encoder"
    assert {t["kind"] for t in publisher["tracks"]} == {"audio", "video"}
    session = f"{sfu_server}{location}"
    ufrag = next(
        line.split(":", 1)[1]
        for line in CHROME_OFFER.splitlines()
        if line.startswith("a=ice-ufrag")
    )
    sdpfrag = {"Content-Type": "application/trickle-ice-sdpfrag"}
    candidate = "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
    trickle = f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{'x' * 24}\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
    assert httpx.patch(session, content=trickle + candidate, headers=sdpfrag).status_code == 204
    ok = httpx.patch(session, content=trickle, headers={**sdpfrag, "If-Match": etag})
    assert ok.status_code == 204
    stale = httpx.patch(session, content=trickle, headers={**sdpfrag, "If-Match": '"stale"'})
    assert stale.status_code == 412
    assert problem(stale)["code"] == "precondition_failed"
    restart = "a=ice-ufrag:newf\r\na=ice-pwd:" + "y" * 24 + "\r\n"
    refused = httpx.patch(session, content=restart, headers={**sdpfrag, "If-Match": "*"})
    assert refused.status_code == 422
    wrong_type = httpx.patch(session, content=trickle, headers={"Content-Type": "application/sdp"})
    assert wrong_type.status_code == 415
    bad = httpx.patch(
        session,
        content=trickle + "a=candidate:1 1 udp 1 999.0.0.1 1 typ host\r\n",
        headers=sdpfrag,
    )
    assert bad.status_code == 400
    assert problem(bad)["code"] == "bad_candidate"
    big = httpx.patch(session, content="a=x\r\n" * 5000, headers=sdpfrag)
    assert big.status_code == 413
    assert httpx.delete(session).status_code == 200
    assert participants(sfu_server, room) == []
    assert httpx.delete(session).status_code == 404


# --- real clients ---------------------------------------------------------------------

browser = pytest.mark.skipif(
    not chromium_available(), reason="needs Chromium at /usr/bin/chromium (Debian 'chromium')"
)


@pytest.fixture(scope="module")
def context() -> Iterator[Any]:
    with chromium_context() as browser_context:
        yield browser_context


def open_room_tab(context: Any, url: str, room: str) -> Any:
    page = context.new_page()
    page.goto(f"{url}/?room={room}&name=watcher")
    page.wait_for_function("() => window.sfu.participantId !== null", timeout=UI_TIMEOUT_MS)
    return page


def whip_publisher(url: str, room: str, identity: str) -> str:
    found = [p for p in participants(url, room) if p["identity"] == identity]
    return found[0]["participant_id"] if found else ""


@browser
def test_chromium_whip_simulcast_trickle_and_delete(context: Any, sfu_server: str) -> None:
    """A page publishes over WHIP with simulcast, its candidates only trickled over
    PATCH; a room tab decodes it; DELETE makes it leave the room."""
    room = unique_room()
    watcher = open_room_tab(context, sfu_server, room)
    page = context.new_page()
    page.goto(f"{sfu_server}/healthz")
    result = page.evaluate(
        WHIP_PUBLISH_JS,
        {
            "url": sfu_server,
            "room": room,
            "token": token(room, "whip-page"),
            "simulcast": True,
            "stripCandidates": True,
            "codec": None,
        },
    )
    assert result["status"] == 201, result
    publisher = wait_until(
        lambda: whip_publisher(sfu_server, room, "whip-page"), "the WHIP participant"
    )
    wait_until(
        lambda: decoding_video(page_stats(watcher)).get(publisher, 0) > 20,
        "the room tab decoding the WHIP publisher",
        timeout=30,
        detail=lambda: page_stats(watcher),
    )
    patches = page.evaluate("() => window.whip.patches")
    assert patches and set(patches) == {204}, page.evaluate("() => window.whip.patchErrors")
    wait_until(
        lambda: len([s for s in page.evaluate(OUTBOUND_VIDEO_JS) if s["framesEncoded"] > 0]) == 3,
        "all three simulcast layers encoded",
        timeout=20,
        detail=lambda: page.evaluate(OUTBOUND_VIDEO_JS),
    )
    [track] = [
        t
        for p in participants(sfu_server, room)
        if p["participant_id"] == publisher
        for t in p["tracks"]
        if t["kind"] == "video"
    ]
    assert track["simulcast"]
    deleted = page.evaluate(
        "async (url) => (await fetch(url + window.whip.location, {method: 'DELETE'})).status",
        sfu_server,
    )
    assert deleted == 200
    wait_until(
        lambda: publisher not in {p["participant_id"] for p in participants(sfu_server, room)},
        "the WHIP participant gone after DELETE",
    )
    wait_until(
        lambda: watcher.evaluate(f"() => !window.sfu.participants.has({publisher!r})"),
        "the room tab told the publisher left",
    )
    page.close()
    watcher.close()


WHIP_CLIENT = shutil.which("whip-client")
IGD_STUB = """
/* A no-op UPnP IGD for libnice: Debian's libnice links libgupnp-igd, whose libgupnp
   brings libsoup3 into whip-client, which uses libsoup2; GLib aborts such a process
   ("Using libsoup2 and libsoup3 in the same process is not supported"). libnice
   skips UPnP when gupnp_simple_igd_thread_new() returns NULL. */
#include <stddef.h>
void *gupnp_simple_igd_thread_new(void) { return NULL; }
unsigned long gupnp_simple_igd_get_type(void) { return 0; }
void gupnp_simple_igd_add_port(void) {}
void gupnp_simple_igd_remove_port_local(void) {}
"""


def lan_address() -> str | None:
    """This machine's first global IPv4 address outside the tests' namespaces: libnice
    (GStreamer) gathers no loopback candidates, so its server must not be on loopback."""
    lines = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    ).stdout.splitlines()
    for line in lines:
        fields = line.split()
        if not fields[1].startswith(("sfu", "veth")):
            return fields[3].split("/")[0]
    return None


@pytest.fixture(scope="module")
def lan_server() -> Iterator[str]:
    from server import serve_module

    address = lan_address()
    if address is None:
        pytest.skip("no global IPv4 address for a server GStreamer can reach")
    yield from serve_module(ice_addresses=[address])


@pytest.fixture(scope="module")
def igd_stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the no-op libgupnp-igd-1.0.so.4 (for LD_LIBRARY_PATH)."""
    directory = tmp_path_factory.mktemp("igd-stub")
    source = directory / "stub.c"
    source.write_text(IGD_STUB)
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libgupnp-igd-1.0.so.4",
            "-o",
            str(directory / "libgupnp-igd-1.0.so.4"),
            str(source),
        ],
        check=True,
    )
    return directory


@browser
@pytest.mark.skipif(
    WHIP_CLIENT is None or shutil.which("gcc") is None,
    reason="needs Debian's simple-whip-client and gcc",
)
def test_simple_whip_client_gstreamer(context: Any, lan_server: str, igd_stub: Path) -> None:
    """Debian's simple-whip-client (GStreamer webrtcbin) publishes a VP8 test pattern
    and Opus, trickling its candidates; a Chromium tab in the room decodes it."""
    room = unique_room()
    watcher = open_room_tab(context, lan_server, room)
    assert WHIP_CLIENT is not None
    process = subprocess.Popen(
        [
            WHIP_CLIENT,
            "-u",
            f"{lan_server}/whip/{room}",
            "-t",
            token(room, "gstreamer"),
            "-V",
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,"
            "framerate=15/1 ! videoconvert ! queue ! vp8enc deadline=1 target-bitrate=300000"
            " ! rtpvp8pay pt=96 ssrc=2 ! queue ! application/x-rtp,media=video,"
            "encoding-name=VP8,payload=96",
            "-A",
            "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! queue !"
            " opusenc ! rtpopuspay pt=111 ssrc=1 ! queue ! application/x-rtp,media=audio,"
            "encoding-name=OPUS,payload=111",
            "-l",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LD_LIBRARY_PATH": str(igd_stub)},
    )
    try:
        publisher = wait_until(
            lambda: whip_publisher(lan_server, room, "gstreamer") or process.poll() is not None,
            "the GStreamer WHIP participant",
        )
        assert process.poll() is None, process.communicate()[0].decode(errors="replace")
        wait_until(
            lambda: decoding_video(page_stats(watcher)).get(publisher, 0) > 15,
            "the room tab decoding the GStreamer publisher",
            timeout=30,
            detail=lambda: page_stats(watcher),
        )
    finally:
        process.terminate()
        try:
            output = process.communicate(timeout=10)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode(errors="replace")
    # It sends DELETE when stopped (SIGTERM).
    wait_until(
        lambda: publisher not in {p["participant_id"] for p in participants(lan_server, room)},
        "the GStreamer participant gone after it stopped",
        timeout=40,
        detail=lambda: output[-3000:],
    )
    watcher.close()


def test_ice_server_links_carry_stun_and_turn_credentials() -> None:
    """RFC 9725 section 4.4: one Link per ICE server, TURN with the credentials the
    ``joined`` message would carry (signaling/turn.py)."""
    from sfu.config import Settings
    from signaling.turn import turn_credentials
    from signaling.whip import ice_server_links

    settings = Settings(
        dev=True,
        ice_servers=["stun:stun.example.net:3478"],
        turn_urls=["turn:turn.example.net:3478?transport=udp"],
        turn_secret="s" * 32,
    )
    link = ice_server_links(settings, "obs")
    stun, turn = link.split(", ")
    assert stun == '<stun:stun.example.net:3478>; rel="ice-server"'
    assert turn.startswith('<turn:turn.example.net:3478?transport=udp>; rel="ice-server";')
    username = turn.split('username="')[1].split('"')[0]
    password = turn.split('credential="')[1].split('"')[0]
    assert username.endswith(":obs")
    expiry = int(username.split(":")[0])
    assert turn_credentials("s" * 32, "obs", 0, expiry)[1] == password
    assert 'credential-type="password"' in turn
    unicode = ice_server_links(settings, 'Zoë "the encoder"')
    assert unicode.isascii()
    assert 'username="' in unicode and ':Zo%C3%AB%20%22the%20encoder%22"' in unicode


def mutations(seed: int, count: int) -> Iterator[str]:
    """Line-level mutations of real browser offers: lines dropped, duplicated,
    swapped, truncated or with a field replaced, as a confused encoder might write."""
    import random

    rng = random.Random(seed)
    offers = [
        (FIXTURES / name).read_text().splitlines()
        for name in ("chrome-simulcast-offer.sdp", "firefox-max-bundle-offer.sdp")
    ]
    junk = ["", "a=", "m=video 0", "a=mid:", "a=group:BUNDLE x", "a=rtpmap:96", "\x7f", "é"]
    for _ in range(count):
        lines = list(rng.choice(offers))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(lines))
            match rng.randrange(5):
                case 0:
                    del lines[i]
                case 1:
                    lines.insert(i, lines[rng.randrange(len(lines))])
                case 2:
                    j = rng.randrange(len(lines))
                    lines[i], lines[j] = lines[j], lines[i]
                case 3:
                    lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
                case _:
                    lines[i] = rng.choice(junk)
        yield "\r\n".join(lines) + "\r\n"


def test_mutated_offers_get_an_answer_or_a_problem(sfu_server: str) -> None:
    """60 seeded mutations of real offers to each endpoint: every reply is 201 or a
    400 problem, never a server error, and nothing stays behind after DELETE."""
    room = unique_room()
    auth = f"Bearer {token(room, 'fuzz')}"
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=sfu_server, timeout=10) as http:
        for i, offer in enumerate(mutations(18, 60)):
            kind = "whip" if i % 2 == 0 else "whep"
            response = http.post(
                f"/{kind}/{room}",
                content=offer,
                headers={"Content-Type": "application/sdp", "Authorization": auth},
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 201:
                assert http.delete(response.headers["location"]).status_code == 200
            else:
                assert response.status_code == 400, response.text
                assert problem(response)["code"] in ("bad_sdp", "bad_candidate", "too_many_tracks")
    assert statuses.get(400, 0) > 0, statuses
    assert participants(sfu_server, room) == []


@pytest.fixture(scope="module")
def short_idle_server() -> Iterator[str]:
    from server import serve_module

    yield from serve_module(env={"SFU_HTTP_SESSION_IDLE_TIMEOUT": "2"})


@browser
def test_sessions_that_never_connect_or_close_are_cleaned_up(
    context: Any, short_idle_server: str
) -> None:
    """A session nobody connects to ends after the idle timeout (2 s here); one whose
    page closes its peer connection without DELETE ends too (DTLS close or no more
    RTCP, whichever the server sees first), while a live one outlasts the timeout."""
    url = short_idle_server
    room = unique_room()
    response = post_offer(
        url,
        f"/whip/{room}",
        CHROME_OFFER,
        **{"Content-Type": "application/sdp", "Authorization": f"Bearer {token(room, 'gone')}"},
    )
    assert response.status_code == 201
    assert [p["identity"] for p in participants(url, room)] == ["gone"]
    wait_until(lambda: participants(url, room) == [], "the unconnected session ended", timeout=8)
    assert httpx.delete(f"{url}{response.headers['location']}").status_code == 404

    page = context.new_page()
    page.goto(f"{url}/healthz")
    result = page.evaluate(
        WHIP_PUBLISH_JS,
        {
            "url": url,
            "room": room,
            "token": token(room, "closer"),
            "simulcast": False,
            "stripCandidates": False,
            "codec": None,
        },
    )
    assert result["status"] == 201
    wait_until(
        lambda: page.evaluate("() => window.whip.pc.connectionState") == "connected",
        "the page connected",
    )
    page.wait_for_timeout(3000)  # longer than the idle timeout: RTCP keeps it alive
    assert [p["identity"] for p in participants(url, room)] == ["closer"]
    page.evaluate("() => window.whip.pc.close()")
    wait_until(lambda: participants(url, room) == [], "the closed session ended", timeout=8)
    page.close()
