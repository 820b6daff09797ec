// The demo page: the join form and URL parameters, a Room of the browser client
// (sdk/pysfu.js: every bit of signaling and WebRTC) wired to the DOM (ui.js, the
// tiles' quality selectors in quality.js, the chat panel in chat.js), and
// `window.sfu` for tests and debugging.
//
// URL parameters: ?room=R&name=N joins directly; the camera is published with
// simulcast unless &simulcast=0; &publish=0 joins without publishing (watch only);
// &identity=I picks the identity put in the dev token (random by default);
// &codec=h264 publishes the camera in H.264 only (what Safari prefers); &codec=vp9&svc=L3T3_KEY
// publishes it as one VP9 SVC encoding with that scalabilityMode instead of simulcast, and
// &codec=vp9&svc=L1T3 as VP9 simulcast (each encoding in L1T3);
// &relay=1 sends media through the TURN server only (iceTransportPolicy "relay");
// &dtx=1 publishes the microphone with Opus DTX (almost nothing sent during silence).

import { CHAT_TOPIC, ChatPanel } from "./chat.js";
import { VideoQuality } from "./quality.js";
import { Room, RoomEvent, fetchDevToken } from "./sdk/pysfu.js";
import { Ui } from "./ui.js";

const params = new URLSearchParams(window.location.search);
const initial = {
  room: params.get("room") || "",
  name: params.get("name") || "",
  simulcast: params.get("simulcast") === null || flag(params.get("simulcast")),
  publish: params.get("publish") === null || flag(params.get("publish")),
  identity: params.get("identity"),
  codec: params.get("codec") ? params.get("codec").toUpperCase() : null,
  scalabilityMode: params.get("svc"),
  relay: flag(params.get("relay")),
  dtx: flag(params.get("dtx")),
};
const server = window.location.origin;
const ui = new Ui();
const quality = new VideoQuality(ui.tiles);
/** @type {Room|null} */
let room = null;
/** The status bar's text, and its last error (for tests and debugging). */
let statusText = "";
let lastError = null;
/** Data messages and errors this page received (for tests and debugging). */
const dataMessages = [];
const dataErrors = [];

function flag(value) {
  return value !== null && !["", "0", "false", "no", "off"].includes(value.toLowerCase());
}

function identityFor(name) {
  const base = name.toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "");
  return `${base || "guest"}-${Math.random().toString(36).slice(2, 8)}`;
}

function setStatus(text, level = "info") {
  statusText = text;
  if (level === "error") lastError = text;
  ui.setStatus(text, level);
}

function sendData(data, options = {}) {
  return room ? room.data.send(data, options) : false;
}

const chat = new ChatPanel((text) => sendData({ text }, { topic: CHAT_TOPIC }));

/** Show what `current` reports, for as long as it is this page's room. */
function wire(current, { room: roomName, name, simulcast }) {
  const on = (type, handler) =>
    current.addEventListener(type, (event) => {
      if (room === current) handler(event);
    });
  const showTile = ({ participant }) => ui.upsertParticipant(participant);
  on(RoomEvent.PARTICIPANT_JOINED, ({ participant }) => {
    ui.upsertParticipant(participant);
    quality.attach(participant.participant_id);
  });
  on(RoomEvent.PARTICIPANT_UPDATED, showTile);
  on(RoomEvent.TRACK_PUBLISHED, showTile);
  on(RoomEvent.TRACK_MUTED, showTile);
  on(RoomEvent.TRACK_UNPUBLISHED, ({ participant }) => {
    ui.upsertParticipant(participant);
    ui.setUndecodable(participant, [...participant.undecodable.values()]);
  });
  on(RoomEvent.PARTICIPANT_LEFT, ({ participant }) => {
    quality.detach(participant.participant_id);
    ui.removeParticipant(participant.participant_id);
  });
  on(RoomEvent.TRACK_SUBSCRIBED, ({ participant }) => {
    ui.updateMedia(participant);
    quality.sync(); // the tile's preferences for its new track
  });
  on(RoomEvent.TRACK_UNSUBSCRIBED, ({ participant }) => ui.updateMedia(participant));
  on(RoomEvent.TRACK_UNDECODABLE, ({ participant, codec }) => {
    setStatus(`cannot decode ${participant.name}'s ${codec}`);
    ui.setUndecodable(participant, [...participant.undecodable.values()]);
  });
  on(RoomEvent.ACTIVE_SPEAKERS, ({ participantIds }) =>
    ui.setActiveSpeakers(participantIds, current.participantId),
  );
  on(RoomEvent.CONNECTION_QUALITY, ({ qualities }) =>
    ui.setConnectionQualities(qualities, current.participantId),
  );
  on(RoomEvent.LOCAL_STREAM, ({ stream }) => ui.setLocalStream(stream));
  on(RoomEvent.DATA, ({ message }) => {
    dataMessages.push(message);
    if (message.topic === CHAT_TOPIC && typeof message.data?.text === "string") {
      chat.add(message.from.name || message.from.identity, message.data.text);
    }
  });
  on(RoomEvent.DATA_ERROR, ({ error }) => {
    dataErrors.push({ code: error.code, message: error.detail, id: error.id });
    chat.add("", `not delivered: ${error.detail}`, "system");
  });
  on(RoomEvent.ERROR, (event) => setStatus(`error ${event.code}: ${event.error.detail}`, "error"));
  on(RoomEvent.RECONNECTING, ({ mode }) =>
    setStatus(mode === "resume" ? "connection lost, resuming…" : `joining ${roomName} again…`),
  );
  on(RoomEvent.RECONNECTED, ({ resumed }) =>
    setStatus(resumed ? `resumed in room ${roomName}` : `joined room ${roomName} again`),
  );
  on(RoomEvent.DISCONNECTED, ({ reason, error }) => {
    room = null;
    quality.stop();
    ui.showJoin({ room: roomName, name, simulcast });
    if (reason === "left") setStatus(`left ${roomName}`);
    else setStatus(error ? error.message : "disconnected", "error");
  });
}

async function join({
  room: roomName,
  name,
  simulcast = true,
  publish = true,
  identity = null,
  codec = initial.codec,
}) {
  if (room) leave();
  ui.setJoining(true);
  lastError = null;
  setStatus(`joining ${roomName}…`);
  const current = new Room({ name, iceTransportPolicy: initial.relay ? "relay" : "all" });
  room = current;
  wire(current, { room: roomName, name, simulcast });
  quality.start(current);
  chat.clear();
  const who = identity || identityFor(name);
  try {
    // A function, so that a rejoin (the room moved to another worker) gets a fresh token.
    await current.connect(server, () => fetchDevToken(server, roomName, who, name));
  } catch (err) {
    if (room !== current) return;
    room = null;
    quality.stop();
    ui.showJoin({ room: roomName, name, simulcast });
    setStatus(`could not join: ${err.message}`, "error");
    return;
  }
  if (room !== current) return;
  ui.showRoom(roomName, name);
  setStatus(`joined room ${roomName}`);
  if (publish && current.canPublish) {
    const options = { simulcast, codec, scalabilityMode: initial.scalabilityMode, dtx: initial.dtx };
    current.publishCamera(options).catch((err) => {
      if (room === current) setStatus(`publishing failed: ${err.message}`, "error");
    });
  }
}

function leave() {
  if (!room) return;
  room.leave();
  const url = new URL(window.location.href);
  url.searchParams.delete("name");
  window.history.replaceState(null, "", url);
}

function toggleMute(kind) {
  if (!room) return;
  const muted = !room.isMuted(kind);
  if (room.mute(kind, muted)) ui.setControl(kind, muted);
  else setStatus(kind === "audio" ? "no microphone to mute" : "no camera to stop", "error");
}

const EMPTY_STATS = { inbound: [], outbound: [] };

window.sfu = {
  /** The Room of sdk/pysfu.js (null when not in a room). */
  get session() {
    return room;
  },
  get ws() {
    return room ? room.socket : null;
  },
  get publishPc() {
    return room ? room.publishPc : null;
  },
  get subscribePc() {
    return room ? room.subscribePc : null;
  },
  get participantId() {
    return room ? room.participantId : null;
  },
  get participants() {
    return room ? room.participants : new Map();
  },
  get publishedTracks() {
    return room ? room.publishedTracks : {};
  },
  get subscribeTracks() {
    return room ? room.subscribeTracks : {};
  },
  get trackSettings() {
    return room ? room.trackSettings : {};
  },
  get activeSpeakers() {
    return room ? room.activeSpeakers : [];
  },
  get connectionQualities() {
    return room ? room.connectionQualities : {};
  },
  get status() {
    return statusText;
  },
  get lastError() {
    return lastError;
  },
  get dataReady() {
    return Boolean(room && room.data.isReady);
  },
  dataMessages,
  dataErrors,
  sendData,
  async stats() {
    return room ? room.stats() : structuredClone(EMPTY_STATS);
  },
  /** participant_id → {choice, visible, width, height, frameWidth, frameHeight, bitrate, …} */
  tiles() {
    return quality.snapshot();
  },
  /** Cap the video received from a participant: "auto" | "low" | "medium" | "high". */
  setMaxQuality(participantId, choice) {
    return quality.setMaxQuality(participantId, choice);
  },
  /** Cap the temporal layer received from a participant (SVC: fewer frames per second). */
  setMaxTemporalLayer(participantId, layer) {
    return quality.setMaxTemporalLayer(participantId, layer);
  },
  join,
  leave,
};

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const roomName = ui.roomInput.value.trim();
  const name = ui.nameInput.value.trim();
  if (!roomName || !name) return;
  const simulcast = ui.simulcastInput.checked;
  const url = new URL(window.location.href);
  url.searchParams.set("room", roomName);
  url.searchParams.set("name", name);
  if (simulcast) url.searchParams.delete("simulcast");
  else url.searchParams.set("simulcast", "0");
  window.history.replaceState(null, "", url);
  join({ room: roomName, name, simulcast, publish: initial.publish });
});
ui.muteMicButton.addEventListener("click", () => toggleMute("audio"));
ui.muteCameraButton.addEventListener("click", () => toggleMute("video"));
ui.leaveButton.addEventListener("click", () => leave());
window.addEventListener("pagehide", () => {
  if (room) room.leave();
});

ui.showJoin(initial);
if (initial.room && initial.name) join(initial);
