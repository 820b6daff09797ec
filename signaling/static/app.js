// Entry point of the demo page: join form and URL parameters, wiring a Session
// (signaling.js) to the DOM (ui.js), and `window.sfu` for tests and debugging.
//
// URL parameters: ?room=R&name=N joins directly; the camera is published with
// simulcast unless &simulcast=0; &publish=0 joins without publishing (watch only);
// &identity=I picks the identity put in the dev token (random by default).

import { CHAT_TOPIC, ChatPanel } from "./chat.js";
import { VideoQuality } from "./quality.js";
import { Session, fetchDevToken } from "./signaling.js";
import { Ui } from "./ui.js";

// ?relay=1: ICE through the TURN server only (iceTransportPolicy "relay"), to test TURN.
const relayOnly = flag(new URLSearchParams(window.location.search).get("relay"));
const ui = new Ui();
const quality = new VideoQuality(ui.tiles);
let session = null;
/** Data messages and errors this page received (for tests and debugging). */
const dataMessages = [];
const dataErrors = [];

function sendData(data, options = {}) {
  return session && session.data ? session.data.send(data, options) : false;
}

const chat = new ChatPanel((text) => sendData({ text }, { topic: CHAT_TOPIC }));

function flag(value) {
  return value !== null && !["", "0", "false", "no", "off"].includes(value.toLowerCase());
}

function randomSuffix() {
  return Math.random().toString(36).slice(2, 8);
}

function identityFor(name) {
  const base = name.toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "");
  return `${base || "guest"}-${randomSuffix()}`;
}

const EMPTY_STATS = { inbound: [], outbound: [] };

window.sfu = {
  get session() {
    return session;
  },
  get ws() {
    return session ? session.ws : null;
  },
  get publishPc() {
    return session ? session.publishPc : null;
  },
  get subscribePc() {
    return session ? session.subscribePc : null;
  },
  get participantId() {
    return session ? session.participantId : null;
  },
  get participants() {
    return session ? session.participants : new Map();
  },
  get publishedTracks() {
    return session ? session.publishedTracks : {};
  },
  get subscribeTracks() {
    return session ? session.subscribeTracks : {};
  },
  get lastError() {
    return session ? session.lastError : null;
  },
  get dataReady() {
    return Boolean(session && session.data && session.data.isReady);
  },
  dataMessages,
  dataErrors,
  sendData,
  async stats() {
    return session ? session.stats() : structuredClone(EMPTY_STATS);
  },
  /** participant_id → {choice, visible, width, height, frameWidth, frameHeight, bitrate, …} */
  tiles() {
    return quality.snapshot();
  },
  /** Cap the video received from a participant: "auto" | "low" | "medium" | "high". */
  setMaxQuality(participantId, choice) {
    return quality.setMaxQuality(participantId, choice);
  },
  get trackSettings() {
    return session ? session.trackSettings : {};
  },
  get activeSpeakers() {
    return session ? session.activeSpeakers : [];
  },
  join,
  leave,
};

/** A join refused with worker_unavailable (a room moving off a dead worker) is retried. */
const REJOIN_RETRY_MS = 500;
const MAX_REJOIN_ATTEMPTS = 20;
let rejoinAttempts = 0;

async function join({ room, name, simulcast = true, publish = true, identity = null }) {
  if (session) leave();
  ui.setJoining(true);
  ui.setStatus(`joining ${room}…`);
  const current = new Session(
    { iceTransportPolicy: relayOnly ? "relay" : "all", name, simulcast, publish },
    {
      status: (text, level) => ui.setStatus(text, level),
      joined: () => {
        rejoinAttempts = 0;
        ui.showRoom(room, name);
      },
      localStream: (stream) => ui.setLocalStream(stream),
      participantAdded: (p) => {
        ui.upsertParticipant(p);
        quality.attach(p.participant_id);
      },
      participantUpdated: (p) => ui.upsertParticipant(p),
      participantRemoved: (id) => {
        quality.detach(id);
        ui.removeParticipant(id);
      },
      activeSpeakers: (ids) => ui.setActiveSpeakers(ids, current.participantId),
      participantMedia: (p) => ui.updateMedia(p),
      localMute: (kind, muted) => ui.setControl(kind, muted),
      dataMessage: (message) => {
        dataMessages.push(message);
        if (message.topic === CHAT_TOPIC && typeof message.data?.text === "string") {
          chat.add(message.from.name || message.from.identity, message.data.text);
        }
      },
      dataError: (error) => {
        dataErrors.push(error);
        chat.add("", `not delivered: ${error.message}`, "system");
      },
      closed: (reason) => {
        if (session !== current) return;
        session = null;
        if (reason === "worker_lost") {
          // The media worker died or drained: join again (a live worker takes the
          // room) and publish the camera and microphone anew.
          join({ room, name, simulcast, publish, identity });
          return;
        }
        if (reason === "worker_unavailable" && rejoinAttempts < MAX_REJOIN_ATTEMPTS) {
          // The room is still being moved off a dead worker: try again shortly.
          rejoinAttempts += 1;
          setTimeout(() => {
            if (session === null) join({ room, name, simulcast, publish, identity });
          }, REJOIN_RETRY_MS);
          return;
        }
        quality.stop();
        ui.showJoin({ room, name, simulcast });
        if (reason === "left") ui.setStatus(`left ${room}`);
      },
    },
  );
  session = current;
  quality.start(current);
  chat.clear();
  try {
    const token = await fetchDevToken(room, identity || identityFor(name), name);
    if (session !== current) return;
    await current.connect(token);
  } catch (err) {
    if (session !== current) return;
    session = null;
    quality.stop();
    ui.showJoin({ room, name, simulcast });
    ui.setStatus(`could not join: ${err.message}`, "error");
  }
}

function leave() {
  const current = session;
  if (!current) return;
  current.leave();
  const url = new URL(window.location.href);
  url.searchParams.delete("name");
  window.history.replaceState(null, "", url);
}

function toggleMute(kind) {
  if (!session) return;
  const muted = !session.isMuted(kind);
  if (!session.setMuted(kind, muted)) {
    ui.setStatus(kind === "audio" ? "no microphone to mute" : "no camera to stop", "error");
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = ui.roomInput.value.trim();
  const name = ui.nameInput.value.trim();
  if (!room || !name) return;
  const simulcast = ui.simulcastInput.checked;
  const url = new URL(window.location.href);
  url.searchParams.set("room", room);
  url.searchParams.set("name", name);
  if (simulcast) url.searchParams.delete("simulcast");
  else url.searchParams.set("simulcast", "0");
  window.history.replaceState(null, "", url);
  join({ room, name, simulcast, publish: initial.publish });
});
ui.muteMicButton.addEventListener("click", () => toggleMute("audio"));
ui.muteCameraButton.addEventListener("click", () => toggleMute("video"));
ui.leaveButton.addEventListener("click", () => leave());
window.addEventListener("pagehide", () => {
  if (session) session.leave();
});

const params = new URLSearchParams(window.location.search);
const initial = {
  room: params.get("room") || "",
  name: params.get("name") || "",
  simulcast: params.get("simulcast") === null || flag(params.get("simulcast")),
  publish: params.get("publish") === null || flag(params.get("publish")),
  identity: params.get("identity"),
};
ui.showJoin(initial);
if (initial.room && initial.name) join(initial);
