"""The browser client module (``/sdk/pysfu.js``) on its own: a plain page that imports
it (not the demo page) in headless Chromium, and Node's view of the npm package."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import ConsoleErrors, chromium_available, chromium_context, wait_until

from sfu.protocol import ErrorCode

SDK_DIR = Path(__file__).resolve().parent.parent / "signaling" / "static" / "sdk"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "sdk-js.md"
NODE = shutil.which("node") or "/usr/bin/node"

# The whole page: it imports the module and records every event the room dispatches.
PAGE_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>pysfu module test</title></head><body>
<script type="module">
import * as pysfu from "/sdk/pysfu.js";

window.pysfu = pysfu;
window.events = [];
window.start = async ({ signaling, room: roomName, identity, name }) => {
  const room = new pysfu.Room({ name });
  window.room = room;
  for (const type of Object.values(pysfu.RoomEvent)) {
    room.addEventListener(type, (event) => {
      const entry = { type };
      if (event.participant) entry.participant = event.participant.participant_id;
      if (event.track) entry.track = { id: event.track.trackId, kind: event.track.kind };
      if (event.message) entry.message = { ...event.message, payload: event.message.payload
        ? Array.from(event.message.payload) : undefined };
      if (event.mode) entry.mode = event.mode;
      if (type === "reconnected") entry.resumed = event.resumed;
      if (type === "disconnected") entry.reason = event.reason;
      if (event.error) {
        entry.error = { code: event.error.code, id: event.error.id ?? null,
          typed: event.error instanceof pysfu.SfuError,
          eventTyped: event instanceof pysfu.SfuErrorEvent };
      }
      window.events.push(entry);
    });
  }
  const token = () => pysfu.fetchDevToken(location.origin, roomName, identity, name);
  await room.connect(signaling, token);
  await room.publishCamera({ simulcast: true });
  return room.participantId;
};
// What getStats() says about the video received from participantId, found through the
// RemoteTrack the module gives for it.
window.videoFrom = async (participantId) => {
  const remote = window.room.remoteTrackOf(participantId, "video");
  if (!remote) return null;
  for (const s of (await window.room.subscribePc.getStats()).values()) {
    if (s.type === "inbound-rtp" && s.trackIdentifier === remote.mediaStreamTrack.id) {
      return { framesDecoded: s.framesDecoded ?? 0, frameWidth: s.frameWidth ?? 0,
        trackId: remote.trackId };
    }
  }
  return null;
};
window.ready = true;
</script></body></html>
"""

pytestmark = pytest.mark.browser


class TcpRelay:
    """Forwards TCP connections from a local port to ``target``; :meth:`drop` cuts every
    open connection without a close handshake (what a dead proxy or network does)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            # SO_LINGER 0: the close sends a RST, not a FIN after the data.
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.drop()


@pytest.fixture(scope="module")
def relay(sfu_server: str) -> Iterator[TcpRelay]:
    host, port = sfu_server.removeprefix("http://").split(":")
    relay = TcpRelay((host, int(port)))
    yield relay
    relay.close()


def open_page(context: Any, server: str) -> Any:
    """A page of ``context`` with the test page's document, at the server's origin.

    The document is written into a page the server served (its ``/healthz``): Chromium
    lets only a document that came from a loopback address open a socket to one
    (local network access checks), which a document fulfilled by ``page.route`` is not.
    """
    page = context.new_page()
    page.console_errors = ConsoleErrors(page)
    page.goto(f"{server}/healthz")
    page.set_content(PAGE_HTML)
    page.wait_for_function("() => window.ready === true")
    return page


def events(page: Any, type_: str) -> list[dict[str, Any]]:
    return page.evaluate("(type) => window.events.filter((e) => e.type === type)", type_)


def decoding(page: Any, participant_id: str, frames: int = 0, max_width: int = 1 << 16) -> Any:
    """The video from ``participant_id`` once it decoded more than ``frames`` frames at
    most ``max_width`` wide, else None."""
    video = page.evaluate("(id) => window.videoFrom(id)", participant_id)
    if video and video["framesDecoded"] > frames and 0 < video["frameWidth"] <= max_width:
        return video
    return None


@pytest.mark.skipif(not chromium_available(), reason="needs Chromium at /usr/bin/chromium")
def test_two_pages_on_the_module_publish_receive_settle_and_reconnect(sfu_server, relay):
    room = f"sdk-{uuid.uuid4().hex[:8]}"
    signaling = f"ws://127.0.0.1:{relay.port}/ws"
    with chromium_context() as context:
        alice, bob = open_page(context, sfu_server), open_page(context, sfu_server)
        start = "(options) => window.start(options)"
        alice_id = alice.evaluate(
            start, {"signaling": sfu_server, "room": room, "identity": "alice", "name": "Alice"}
        )
        bob_id = bob.evaluate(
            start, {"signaling": signaling, "room": room, "identity": "bob", "name": "Bob"}
        )

        # Each decodes the other's video (getStats of the RemoteTrack's receiver).
        for page, other in ((alice, bob_id), (bob, alice_id)):
            wait_until(lambda page=page, other=other: decoding(page, other, 5), "video decoded", 30)
            kinds = {
                e["track"]["kind"]
                for e in events(page, "trackSubscribed")
                if e["participant"] == other
            }
            assert kinds == {"audio", "video"}
        assert [e["participant"] for e in events(bob, "participantJoined")] == [alice_id]
        waited = bob.evaluate(
            "(id) => window.room.waitForTrack({participantId: id, kind: 'video'})"
            ".then((track) => track.trackId)",
            alice_id,
        )
        assert waited == decoding(bob, alice_id)["trackId"]

        # Data both ways, text and binary; a refused message comes back as dataError.
        bob.wait_for_function("() => window.room.data.isReady")
        alice.wait_for_function("() => window.room.data.isReady")
        assert alice.evaluate("() => window.room.data.send({text: 'hi'}, {topic: 'chat'})")
        assert alice.evaluate(
            "() => window.room.data.send(new Uint8Array([1, 2, 3]), {reliable: false})"
        )
        received = wait_until(
            lambda: len(events(bob, "data")) >= 2 and events(bob, "data"), "data at bob"
        )
        by_topic = {m["message"].get("topic"): m["message"] for m in received}
        assert by_topic["chat"]["data"] == {"text": "hi"}
        assert by_topic["chat"]["from"]["identity"] == "alice"
        assert (by_topic[None]["payload"], by_topic[None]["reliable"]) == ([1, 2, 3], False)
        bob.evaluate("() => window.room.data.send('x'.repeat(20000))")
        refused = wait_until(lambda: events(bob, "dataError"), "dataError at bob")
        assert refused[0]["error"]["code"] == "too_large"  # too large to read its id

        # A server error is a typed error event; the session goes on.
        bob.evaluate("() => window.room.socket.send('not json')")
        error = wait_until(lambda: events(bob, "error"), "error event")[0]["error"]
        assert (error["code"], error["typed"], error["eventTyped"]) == ("bad_json", True, True)

        # Track settings: the lowest layer, then paused, then the lowest layer again.
        video = decoding(bob, alice_id)
        track = video["trackId"]
        bob.evaluate("(id) => window.room.setTrackSettings(id, {maxSpatialLayer: 0})", track)
        wait_until(
            lambda: decoding(bob, alice_id, video["framesDecoded"], max_width=160), "layer 0", 15
        )
        bob.evaluate("(id) => window.room.setTrackSettings(id, {paused: true})", track)
        bob.wait_for_timeout(1000)  # frames in flight
        paused_at = decoding(bob, alice_id)["framesDecoded"]
        bob.wait_for_timeout(1500)
        assert decoding(bob, alice_id)["framesDecoded"] - paused_at <= 3, (
            "still decoding while paused"
        )
        bob.evaluate("(id) => window.room.setTrackSettings(id, {maxSpatialLayer: 0})", track)
        wait_until(lambda: decoding(bob, alice_id, paused_at + 5, max_width=160), "resumed", 15)
        assert bob.evaluate("() => window.room.trackSettings")[track]["max_spatial_layer"] == 0

        # Bob's signaling connection is cut: the embedded server ends his session, so the
        # module joins again (a new participant id), republishes, and re-applies his
        # track settings; both decode each other again.
        accepted = relay.accepted
        relay.drop()
        reconnected = wait_until(lambda: events(bob, "reconnected"), "bob reconnected", 20)
        assert reconnected[0]["resumed"] is False
        assert [e["mode"] for e in events(bob, "reconnecting")] == ["rejoin"]
        assert relay.accepted > accepted
        new_bob = bob.evaluate("() => window.room.participantId")
        assert new_bob != bob_id
        wait_until(lambda: decoding(alice, new_bob, 5), "alice decodes bob again", 30)
        wait_until(
            lambda: decoding(bob, alice_id, 5, max_width=160),
            "bob decodes alice again at layer 0",
            30,
        )
        assert bob_id in [e["participant"] for e in events(alice, "participantLeft")]
        bob.wait_for_function("() => window.room.data.isReady")
        assert bob.evaluate("() => window.room.data.send({text: 'back'}, {topic: 'chat'})")
        wait_until(
            lambda: any(
                m["message"]["from"]["participant_id"] == new_bob for m in events(alice, "data")
            ),
            "data from bob's new session",
        )

        bob.evaluate("() => window.room.leave()")
        assert [e["reason"] for e in events(bob, "disconnected")] == ["left"]
        wait_until(
            lambda: new_bob in [e["participant"] for e in events(alice, "participantLeft")],
            "alice sees bob leave",
        )
        for page in (alice, bob):
            assert [e for e in page.console_errors.errors if "pageerror" in e] == []


# --- the npm package, through Node -------------------------------------------------------

NODE_CHECK = """
import { existsSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const dir = process.argv[1];
const pkg = JSON.parse(readFileSync(`${dir}/package.json`, "utf8"));
const targets = Object.values(pkg.exports);
const missing = [...targets, ...pkg.files, pkg.main].filter((f) => !existsSync(`${dir}/${f}`));
const module = await import(pathToFileURL(`${dir}/${pkg.exports["."]}`).href);
console.log(JSON.stringify({
  pkg, missing, exports: Object.keys(module).sort(),
  errorCodes: Object.values(module.ErrorCode), version: module.VERSION,
}));
"""


@pytest.mark.skipif(not Path(NODE).exists(), reason="needs node (Debian package 'nodejs')")
def test_the_package_imports_in_node_and_its_exports_exist():
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", NODE_CHECK, str(SDK_DIR)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(done.stdout)
    pkg = result["pkg"]
    assert result["missing"] == []
    assert (pkg["name"], pkg["type"], pkg["exports"]["."]) == ("pysfu", "module", "./pysfu.js")
    assert pkg["license"] and "pysfu.js" in pkg["files"]
    assert result["version"] == pkg["version"]
    # Every error code the server can send has its name in the module.
    assert {code.value for code in ErrorCode} <= set(result["errorCodes"])
    assert {"Room", "connect", "fetchDevToken", "SfuError", "SfuErrorEvent", "RoomEvent"} <= set(
        result["exports"]
    )


def test_every_export_has_jsdoc_and_is_in_the_docs():
    source = (SDK_DIR / "pysfu.js").read_text()
    docs = DOCS.read_text()
    exports = list(re.finditer(r"^export (?:async )?(?:class|function|const) (\w+)", source, re.M))
    assert len(exports) > 10
    for export in exports:
        name = export.group(1)
        assert source[: export.start()].rstrip().endswith("*/"), f"{name} has no JSDoc comment"
        # Named in an inline code span of the reference.
        assert re.search(rf"`[^`\n]*\b{name}\b[^`\n]*`", docs), f"{name} is not in docs/sdk-js.md"
