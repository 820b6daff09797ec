// One session in a room: the signaling WebSocket and the two peer connections
// (publish: we offer; subscribe: the server offers). The DOM lives in ui.js; a
// Session reports what changes through the `hooks` object given to it.

import { DataChannels } from "./data.js";

const PROTOCOL_VERSION = 1;
/** Close code after a `worker_lost` error: the room moved to another media worker. */
const CLOSE_WORKER_LOST = 4001;
/** Close code after a `removed` error: an operator removed the participant. */
const CLOSE_REMOVED = 4002;
/** Close codes after which a dropped session is not resumed (left, removed, moved). */
const NO_RESUME_CODES = new Set([1000, CLOSE_WORKER_LOST, CLOSE_REMOVED]);
/** How long a dropped socket tries to take its session over through another node. */
const RESUME_WINDOW_MS = 10_000;
const RESUME_RETRY_MS = 250;
const PING_INTERVAL_MS = 20000;

const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", maxBitrate: 1_500_000 },
];

/** Ask the server for a development access token (only served in dev mode). */
export async function fetchDevToken(room, identity, name) {
  const query = new URLSearchParams({ room, identity, name });
  const response = await fetch(`/api/dev-token?${query}`);
  if (!response.ok) {
    throw new Error(`dev token request failed: HTTP ${response.status}`);
  }
  const body = await response.json();
  if (typeof body.token !== "string") throw new Error("dev token response has no token");
  return body.token;
}

export function signalingUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/**
 * hooks (all optional):
 *   status(text, level)           level: "info" | "error"
 *   joined(session)
 *   localStream(stream)
 *   participantAdded(participant) participantUpdated(participant)
 *   participantRemoved(participantId)
 *   participantMedia(participant)  the participant's MediaStream changed
 *   localMute(kind, muted)
 *   activeSpeakers(participantIds) the room's speakers now, loudest first
 *   closed(reason)                 the session ended (leave, socket closed, fatal error)
 *   dataReady() dataMessage(message) dataError(error)   see data.js
 */
export class Session {
  constructor(
    { iceTransportPolicy = "all", name, simulcast = true, publish = true },
    hooks = {},
  ) {
    this.name = name;
    /** false: join without publishing camera and microphone (watch only) */
    this.publish = publish;
    /** "relay": ICE through the TURN server only (the demo page's ?relay=1) */
    this.iceTransportPolicy = iceTransportPolicy;
    this.simulcast = simulcast;
    this.hooks = hooks;
    this.ws = null;
    this.publishPc = null;
    this.subscribePc = null;
    /** DataChannels (data.js) once publishing started */
    this.data = null;
    this.participantId = null;
    this.room = null;
    this.canPublish = false;
    this.iceServers = [];
    /** participant_id → {participant_id, identity, name, tracks: Map, stream} */
    this.participants = new Map();
    this.localStream = null;
    /** publish mid → server track id (from publish_answer) */
    this.publishedTracks = {};
    /** subscribe mid → {track_id, participant_id, kind} (from the latest offer) */
    this.subscribeTracks = {};
    this.subscribeRevision = null;
    /** own track id → {rid: active} from the latest publisher_layers (dynacast) */
    this.publisherLayers = {};
    /** track id → the last track_settings sent for it */
    this.trackSettings = {};
    /** participant ids speaking now, loudest first (from active_speakers) */
    this.activeSpeakers = [];
    this.lastError = null;
    this.closed = false;
    this._offerChain = Promise.resolve();
    this._remoteCandidates = { publish: [], subscribe: [] };
    this._localPublishCandidates = [];
    this._publishOfferSent = false;
    this._departed = new Set();
    this._pingTimer = null;
    this._fatalError = null;
    this._layersChain = Promise.resolve();
  }

  _hook(name, ...args) {
    const fn = this.hooks[name];
    if (typeof fn === "function") {
      try {
        fn(...args);
      } catch (err) {
        console.error(`hook ${name} failed`, err);
      }
    }
  }

  _status(text, level = "info") {
    if (level === "error") this.lastError = text;
    this._hook("status", text, level);
  }

  /** Open the socket and send `join`. Resolves when the socket is open. */
  connect(token, url = signalingUrl()) {
    this._token = token;
    this._url = url;
    return this._open({ type: "join", token, name: this.name });
  }

  _open(join) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this._url);
      this.ws = ws;
      let opened = false;
      ws.addEventListener("open", () => {
        opened = true;
        this.send(join);
        resolve();
      });
      ws.addEventListener("message", (event) => this._onMessage(event.data));
      ws.addEventListener("close", (event) => {
        if (!opened) reject(new Error("could not connect to the signaling server"));
        if (this.closed || ws !== this.ws) return;
        if (this._resuming && this._fatalError) {
          // The session could not be taken over (it expired): join afresh.
          this._resuming = false;
          this._teardown();
          this._hook("closed", "worker_lost");
          return;
        }
        if (this.resumeToken && !this._fatalError && !NO_RESUME_CODES.has(event.code)) {
          this._resume(Date.now() + RESUME_WINDOW_MS);
          return;
        }
        const why = event.reason ? `: ${event.reason}` : "";
        const closedText = `connection closed (${event.code}${why})`;
        // Keep a fatal error in view: it says why the server closed the socket.
        const text = this._fatalError ? `${this._fatalError} — ${closedText}` : closedText;
        this._status(text, "error");
        this._teardown();
        // The close code may not survive a proxy; the fatal error said it as well.
        const lost = event.code === CLOSE_WORKER_LOST || this._fatalCode === "worker_lost";
        this._hook("closed", lost ? "worker_lost" : "socket closed");
      });
    });
  }

  /**
   * The socket dropped (a signaling node died): take the session over through any node
   * with the resume token. The peer connections and the media stay as they are; when
   * the window passes, the session ends like any closed one.
   */
  _resume(deadline) {
    this._status("connection lost, resuming…", "info");
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._resuming = true;
    const join = { type: "join", token: this._token, name: this.name, resume: this.resumeToken };
    const retry = () => {
      if (this.closed || !this._resuming) return;
      if (Date.now() > deadline) {
        this._resuming = false;
        this._status("could not resume the session", "error");
        this._teardown();
        this._hook("closed", "worker_lost");
        return;
      }
      this._open(join).catch(() => setTimeout(retry, RESUME_RETRY_MS));
    };
    retry();
  }

  send(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify({ v: PROTOCOL_VERSION, ...message }));
    return true;
  }

  leave() {
    if (this.closed) return;
    this.send({ type: "leave" });
    this._teardown();
    this._hook("closed", "left");
  }

  _teardown() {
    this.closed = true;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    for (const pc of [this.publishPc, this.subscribePc]) {
      if (pc) pc.close();
    }
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) track.stop();
    }
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "leave");
  }

  // --- incoming messages --------------------------------------------------------

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._status("server sent a message that is not JSON", "error");
      return;
    }
    try {
      this._dispatch(msg);
    } catch (err) {
      this._status(`could not handle ${msg.type}: ${err.message}`, "error");
    }
  }

  _dispatch(msg) {
    switch (msg.type) {
      case "joined":
        this._onJoined(msg);
        break;
      case "publish_answer":
        this._onPublishAnswer(msg).catch((err) =>
          this._status(`publish answer failed: ${err.message}`, "error"),
        );
        break;
      case "subscribe_offer":
        // Strictly one offer at a time, in arrival order.
        this._offerChain = this._offerChain
          .then(() => this._onSubscribeOffer(msg))
          .catch((err) =>
            this._status(`subscribe offer ${msg.revision} failed: ${err.message}`, "error"),
          );
        break;
      case "candidate":
        this._addRemoteCandidate(msg.target, msg.candidate);
        break;
      case "participant_joined":
        this._upsertParticipant(msg.participant);
        break;
      case "participant_left":
        this._removeParticipant(msg.participant_id);
        break;
      case "track_published":
        this._onTrackPublished(msg.track);
        break;
      case "track_unpublished":
        this._onTrackUnpublished(msg.participant_id, msg.track_id);
        break;
      case "track_muted":
        this._onTrackMuted(msg.participant_id, msg.track_id, msg.muted);
        break;
      case "publisher_layers":
        this._onPublisherLayers(msg.track_id, msg.active || {});
        break;
      case "active_speakers":
        this.activeSpeakers = [...(msg.participant_ids || [])];
        this._hook("activeSpeakers", this.activeSpeakers);
        break;
      case "pong":
        this.lastPong = Date.now();
        break;
      case "error": {
        const text = `error ${msg.code}: ${msg.message}`;
        if (msg.fatal) {
          this._fatalError = text;
          this._fatalCode = msg.code;
        }
        this._status(text, "error");
        if (this.participantId === null && msg.request_type === "join") {
          // The join was refused (bad token, ...): this session is over. A worker that
          // is unavailable may be replaced in a moment; the app decides to retry.
          this._teardown();
          this._hook("closed", msg.code === "worker_unavailable" ? msg.code : "join refused");
        }
        break;
      }
      default:
        break; // unknown types are ignored (forward compatibility)
    }
  }

  _onJoined(msg) {
    this.resumeToken = msg.resume_token || null;
    if (msg.resumed) {
      // Same session, new socket: the peer connections never stopped.
      this._resuming = false;
      this._pingTimer = setInterval(() => this.send({ type: "ping" }), PING_INTERVAL_MS);
      this._status(`resumed in room ${msg.room}`);
      return;
    }
    this.participantId = msg.participant_id;
    this.room = msg.room;
    this.canPublish = msg.can_publish;
    this.iceServers = msg.ice_servers || [];
    for (const participant of msg.participants || []) this._upsertParticipant(participant);
    this._pingTimer = setInterval(() => this.send({ type: "ping" }), PING_INTERVAL_MS);
    this._status(`joined room ${msg.room}`);
    this._hook("joined", this);
    if (msg.can_publish && this.publish) {
      this._startPublishing().catch((err) =>
        this._status(`publishing failed: ${err.message}`, "error"),
      );
    }
  }

  // --- participants ---------------------------------------------------------------

  _upsertParticipant(info) {
    if (info.participant_id === this.participantId) return null;
    this._departed.delete(info.participant_id);
    let participant = this.participants.get(info.participant_id);
    const isNew = !participant;
    if (isNew) {
      participant = {
        participant_id: info.participant_id,
        identity: info.identity || "",
        name: info.name || info.identity || "guest",
        tracks: new Map(),
        stream: new MediaStream(),
      };
      this.participants.set(info.participant_id, participant);
    } else {
      if (info.name) participant.name = info.name;
      if (info.identity) participant.identity = info.identity;
    }
    for (const track of info.tracks || []) participant.tracks.set(track.track_id, { ...track });
    this._hook(isNew ? "participantAdded" : "participantUpdated", participant);
    if (!isNew) this._reconcileRemoteTracks();
    return participant;
  }

  _removeParticipant(participantId) {
    const participant = this.participants.get(participantId);
    this._departed.add(participantId);
    if (!participant) return;
    this.participants.delete(participantId);
    // Receiver tracks belong to their transceivers (an m-line may be reused for
    // someone else), so they are only detached here, never stopped.
    for (const track of participant.stream.getTracks()) participant.stream.removeTrack(track);
    this._hook("participantRemoved", participantId);
  }

  _onTrackPublished(track) {
    if (track.participant_id === this.participantId) return;
    let participant = this.participants.get(track.participant_id);
    if (!participant) {
      participant = this._upsertParticipant({ participant_id: track.participant_id, tracks: [] });
    }
    if (!participant) return;
    participant.tracks.set(track.track_id, { ...track });
    this._hook("participantUpdated", participant);
  }

  _onTrackUnpublished(participantId, trackId) {
    const participant = this.participants.get(participantId);
    if (!participant) return;
    participant.tracks.delete(trackId);
    this._hook("participantUpdated", participant);
  }

  _onTrackMuted(participantId, trackId, muted) {
    const participant = this.participants.get(participantId);
    if (!participant) return;
    const track = participant.tracks.get(trackId);
    if (track) {
      track.muted = muted;
    } else {
      // Not announced (yet): take its kind from the subscribe mapping if it is there.
      const mapped = Object.values(this.subscribeTracks).find((t) => t.track_id === trackId);
      participant.tracks.set(trackId, {
        track_id: trackId,
        participant_id: participantId,
        kind: mapped ? mapped.kind : undefined,
        muted,
      });
    }
    this._hook("participantUpdated", participant);
  }

  // --- publishing -----------------------------------------------------------------

  async _startPublishing() {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error("camera and microphone need a secure context (https or localhost)");
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 640, height: 480 },
    });
    if (this.closed) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    this.localStream = stream;
    this._hook("localStream", stream);

    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
      bundlePolicy: "max-bundle",
    });
    this.publishPc = pc;
    // Data channels ride on the publish transport; created before the offer.
    this.data = new DataChannels(pc, {
      ready: () => this._hook("dataReady"),
      message: (message) => this._hook("dataMessage", message),
      error: (error) => this._hook("dataError", error),
    });
    pc.addEventListener("icecandidate", (event) => {
      const message = {
        type: "candidate",
        target: "publish",
        candidate: event.candidate ? event.candidate.toJSON() : null,
      };
      if (this._publishOfferSent) this.send(message);
      else this._localPublishCandidates.push(message);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") this._status("publish connection failed", "error");
    });

    const sources = [];
    for (const track of stream.getAudioTracks()) {
      const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      sources.push([transceiver, "microphone"]);
    }
    for (const track of stream.getVideoTracks()) {
      const init = { direction: "sendonly", streams: [stream] };
      if (this.simulcast) init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
      const transceiver = pc.addTransceiver(track, init);
      sources.push([transceiver, "camera"]);
    }

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (this.closed) return;
    const tracks = {};
    for (const [transceiver, source] of sources) {
      if (transceiver.mid !== null) tracks[transceiver.mid] = { source };
    }
    this.send({ type: "publish_offer", sdp: pc.localDescription.sdp, tracks });
    this._publishOfferSent = true;
    for (const message of this._localPublishCandidates.splice(0)) this.send(message);
  }

  async _onPublishAnswer(msg) {
    const pc = this.publishPc;
    if (!pc || this.closed) return;
    await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    this.publishedTracks = { ...(msg.tracks || {}) };
    this._flushRemoteCandidates("publish");
    // Layers the server paused before the answer arrived.
    for (const [trackId, active] of Object.entries(this.publisherLayers)) {
      this._onPublisherLayers(trackId, active);
    }
    // A mute pressed before the answer arrived could not name a track id yet.
    for (const transceiver of pc.getTransceivers()) {
      const track = transceiver.sender.track;
      const trackId = this.publishedTracks[transceiver.mid];
      if (track && trackId && !track.enabled) {
        this.send({ type: "mute", track_id: trackId, muted: true });
      }
    }
  }

  /** Mute or unmute our own microphone ("audio") or camera ("video"). */
  setMuted(kind, muted) {
    let found = false;
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) {
        if (track.kind === kind) {
          track.enabled = !muted;
          found = true;
        }
      }
    }
    const pc = this.publishPc;
    if (pc) {
      for (const transceiver of pc.getTransceivers()) {
        const trackId = this.publishedTracks[transceiver.mid];
        if (transceiver.sender.track?.kind === kind && trackId) {
          this.send({ type: "mute", track_id: trackId, muted });
        }
      }
    }
    if (found) this._hook("localMute", kind, muted);
    return found;
  }

  isMuted(kind) {
    const tracks = this.localStream ? this.localStream.getTracks() : [];
    const ofKind = tracks.filter((t) => t.kind === kind);
    return ofKind.length > 0 && ofKind.every((t) => !t.enabled);
  }

  // --- simulcast: dynacast (own layers) and preferences (remote tracks) -------------

  /** Pause/resume our own simulcast layers as the server asks (publisher_layers). */
  _onPublisherLayers(trackId, active) {
    this.publisherLayers[trackId] = { ...active };
    const pc = this.publishPc;
    if (!pc) return;
    const transceiver = pc
      .getTransceivers()
      .find((t) => t.mid !== null && this.publishedTracks[t.mid] === trackId);
    if (!transceiver) return; // applied once publish_answer names the track
    // One setParameters at a time: a second call with stale parameters would fail.
    this._layersChain = this._layersChain
      .then(async () => {
        if (this.closed || pc.signalingState === "closed") return;
        const wanted = this.publisherLayers[trackId];
        const params = transceiver.sender.getParameters();
        let changed = false;
        for (const encoding of params.encodings || []) {
          if (!encoding.rid || !(encoding.rid in wanted)) continue;
          const value = Boolean(wanted[encoding.rid]);
          if (encoding.active !== value) {
            encoding.active = value;
            changed = true;
          }
        }
        if (changed) await transceiver.sender.setParameters(params);
      })
      .catch((err) => this._status(`could not apply publisher layers: ${err.message}`, "error"));
  }

  /** The track id of the video we receive from `participantId` (null if none). */
  videoTrackIdOf(participantId) {
    for (const info of Object.values(this.subscribeTracks)) {
      if (info.participant_id === participantId && info.kind === "video") return info.track_id;
    }
    return null;
  }

  /**
   * Our preferences for one remote video track (sent as track_settings when they
   * change): {paused, max_spatial_layer (0..2 or null), max_width, max_height}.
   */
  setTrackSettings(trackId, settings) {
    const message = {
      type: "track_settings",
      track_id: trackId,
      paused: Boolean(settings.paused),
      max_spatial_layer: settings.max_spatial_layer ?? null,
      max_width: settings.max_width ?? null,
      max_height: settings.max_height ?? null,
    };
    const previous = this.trackSettings[trackId];
    if (previous && JSON.stringify(previous) === JSON.stringify(message)) return false;
    if (!this.send(message)) return false;
    this.trackSettings[trackId] = message;
    return true;
  }

  // --- subscribing ----------------------------------------------------------------

  _createSubscribePc() {
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
      bundlePolicy: "max-bundle",
    });
    pc.addEventListener("icecandidate", (event) => {
      this.send({
        type: "candidate",
        target: "subscribe",
        candidate: event.candidate ? event.candidate.toJSON() : null,
      });
    });
    pc.addEventListener("track", () => this._reconcileRemoteTracks());
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") this._status("subscribe connection failed", "error");
    });
    return pc;
  }

  async _onSubscribeOffer(msg) {
    if (this.closed) return;
    if (!this.subscribePc) this.subscribePc = this._createSubscribePc();
    const pc = this.subscribePc;
    // The mapping is re-read on every offer: an m-line that went inactive may come
    // back carrying another track (same mid, new track id).
    this.subscribeTracks = { ...(msg.tracks || {}) };
    this.subscribeRevision = msg.revision;
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    this._flushRemoteCandidates("subscribe");
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (this.closed) return;
    this.send({ type: "subscribe_answer", sdp: pc.localDescription.sdp, revision: msg.revision });
    this._reconcileRemoteTracks();
  }

  /** Put every receiving track into the MediaStream of the participant it carries. */
  _reconcileRemoteTracks() {
    const pc = this.subscribePc;
    if (!pc || this.closed) return;
    const wanted = new Map(); // participant_id → Set<MediaStreamTrack>
    for (const transceiver of pc.getTransceivers()) {
      const info = transceiver.mid !== null ? this.subscribeTracks[transceiver.mid] : undefined;
      const direction = transceiver.currentDirection;
      if (!info || direction === "inactive" || direction === "stopped") continue;
      if (!wanted.has(info.participant_id)) wanted.set(info.participant_id, new Set());
      wanted.get(info.participant_id).add(transceiver.receiver.track);
    }
    for (const participantId of wanted.keys()) {
      if (!this.participants.has(participantId) && !this._departed.has(participantId)) {
        this._upsertParticipant({ participant_id: participantId, tracks: [] });
      }
    }
    for (const participant of this.participants.values()) {
      const want = wanted.get(participant.participant_id) || new Set();
      let changed = false;
      for (const track of participant.stream.getTracks()) {
        if (!want.has(track)) {
          participant.stream.removeTrack(track);
          changed = true;
        }
      }
      const have = new Set(participant.stream.getTracks());
      for (const track of want) {
        if (!have.has(track)) {
          participant.stream.addTrack(track);
          changed = true;
        }
      }
      if (changed) this._hook("participantMedia", participant);
    }
  }

  // --- ICE --------------------------------------------------------------------------

  _pcFor(target) {
    if (target === "publish") return this.publishPc;
    if (target === "subscribe") return this.subscribePc;
    return null;
  }

  _addRemoteCandidate(target, candidate) {
    const queue = this._remoteCandidates[target];
    if (!queue) return;
    const pc = this._pcFor(target);
    if (!pc || !pc.remoteDescription) {
      queue.push(candidate);
      return;
    }
    this._applyCandidate(pc, target, candidate);
  }

  _flushRemoteCandidates(target) {
    const pc = this._pcFor(target);
    for (const candidate of this._remoteCandidates[target].splice(0)) {
      this._applyCandidate(pc, target, candidate);
    }
  }

  _applyCandidate(pc, target, candidate) {
    // null means end of candidates.
    const result = candidate ? pc.addIceCandidate(candidate) : pc.addIceCandidate();
    result.catch((err) => {
      if (candidate) this._status(`bad ${target} ICE candidate: ${err.message}`, "error");
    });
  }

  // --- stats ------------------------------------------------------------------------

  _midForTrackId(pc, trackIdentifier) {
    for (const transceiver of pc.getTransceivers()) {
      if (transceiver.receiver.track?.id === trackIdentifier) return transceiver.mid;
    }
    return null;
  }

  /** A summary of getStats() from both peer connections, for tests and debugging. */
  async stats() {
    const summary = { inbound: [], outbound: [] };
    const sub = this.subscribePc;
    if (sub && sub.signalingState !== "closed") {
      const report = await sub.getStats();
      for (const s of report.values()) {
        if (s.type !== "inbound-rtp") continue;
        const mid = s.mid ?? this._midForTrackId(sub, s.trackIdentifier);
        const info = mid != null ? this.subscribeTracks[mid] : undefined;
        summary.inbound.push({
          kind: s.kind ?? s.mediaType,
          trackIdentifier: s.trackIdentifier,
          mid,
          framesDecoded: s.framesDecoded ?? 0,
          packetsReceived: s.packetsReceived ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          framesPerSecond: s.framesPerSecond ?? 0,
          // How losses were repaired, and what the viewer saw of them.
          packetsLost: s.packetsLost ?? 0,
          nackCount: s.nackCount ?? 0,
          pliCount: s.pliCount ?? 0,
          keyFramesDecoded: s.keyFramesDecoded ?? 0,
          framesDropped: s.framesDropped ?? 0,
          freezeCount: s.freezeCount ?? 0,
          participantId: info ? info.participant_id : null,
          trackId: info ? info.track_id : null,
        });
      }
    }
    const pub = this.publishPc;
    if (pub && pub.signalingState !== "closed") {
      const report = await pub.getStats();
      for (const s of report.values()) {
        if (s.type !== "outbound-rtp") continue;
        summary.outbound.push({
          kind: s.kind ?? s.mediaType,
          rid: s.rid ?? null,
          mid: s.mid ?? null,
          framesEncoded: s.framesEncoded ?? 0,
          packetsSent: s.packetsSent ?? 0,
          bytesSent: s.bytesSent ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          framesPerSecond: s.framesPerSecond ?? 0,
          targetBitrate: s.targetBitrate ?? 0,
          qualityLimitationReason: s.qualityLimitationReason ?? null,
          active: s.active ?? null,
          trackId: s.mid != null ? (this.publishedTracks[s.mid] ?? null) : null,
        });
      }
    }
    return summary;
  }
}
