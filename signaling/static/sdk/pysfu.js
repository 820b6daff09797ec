/**
 * The browser client of pysfu, as one ES module with no dependencies and no build step.
 *
 * A {@link Room} is one participant in one room: the signaling WebSocket, a publish
 * peer connection (your camera, microphone and the data channels; you offer) and a
 * subscribe peer connection (everyone else's tracks; the server offers). It reports
 * what happens as DOM events (it is an `EventTarget`); {@link RoomEvent} names them.
 * The verbs are the Python SDK's (`sfu.client`): connect, publish, subscribe events,
 * track settings, data, mute, reconnect, leave.
 *
 * ```js
 * import { Room, fetchDevToken } from "/sdk/pysfu.js";
 *
 * const url = location.origin;
 * const room = new Room({ name: "Ada" });
 * room.addEventListener("trackSubscribed", ({ track, participant }) => {
 *   document.querySelector("video").srcObject = participant.stream;
 * });
 * await room.connect(url, await fetchDevToken(url, "demo", "ada"));
 * await room.publishCamera({ simulcast: true });
 * room.data.send({ text: "hello" }, { topic: "chat" });
 * ```
 *
 * Objects that come from the server keep the protocol's field names (`participant_id`,
 * `track_id`, …: see the README's "Signaling protocol"); options and the objects this
 * module makes are camelCase.
 *
 * @module pysfu
 */

/** This module's version (the npm package's). */
export const VERSION = "0.1.0";
/** The signaling protocol version this module speaks. */
export const PROTOCOL_VERSION = 1;

/**
 * Error codes: the server's (`error` messages, stable) and this module's own
 * (`local: true` on the {@link SfuError}).
 * @readonly
 * @enum {string}
 */
export const ErrorCode = Object.freeze({
  BAD_JSON: "bad_json",
  BAD_MESSAGE: "bad_message",
  UNKNOWN_TYPE: "unknown_type",
  UNSUPPORTED_VERSION: "unsupported_version",
  TOO_LARGE: "too_large",
  BAD_TOKEN: "bad_token",
  TOKEN_EXPIRED: "token_expired",
  NOT_JOINED: "not_joined",
  ALREADY_JOINED: "already_joined",
  NOT_ALLOWED: "not_allowed",
  BAD_SDP: "bad_sdp",
  BAD_CANDIDATE: "bad_candidate",
  UNKNOWN_TRACK: "unknown_track",
  OUT_OF_ORDER: "out_of_order",
  TRANSPORT_FAILED: "transport_failed",
  WORKER_UNAVAILABLE: "worker_unavailable",
  WORKER_LOST: "worker_lost",
  REMOVED: "removed",
  RESUME_FAILED: "resume_failed",
  RATE_LIMITED: "rate_limited",
  ROOM_FULL: "room_full",
  TOO_MANY_TRACKS: "too_many_tracks",
  RENEGOTIATION_TIMEOUT: "renegotiation_timeout",
  JOIN_TIMEOUT: "join_timeout",
  DUPLICATE_IDENTITY: "duplicate_identity",
  CODEC_UNSUPPORTED: "codec_unsupported",
  // WHIP/WHEP sessions and recordings (the HTTP APIs' problem bodies carry them).
  UNKNOWN_SESSION: "unknown_session",
  PRECONDITION_FAILED: "precondition_failed",
  UNSUPPORTED: "unsupported",
  UNKNOWN_RECORDING: "unknown_recording",
  ALREADY_RECORDING: "already_recording",
  RECORDING_LIMIT: "recording_limit",
  STORAGE_UNAVAILABLE: "storage_unavailable",
  INTERNAL: "internal",
  // This module's codes.
  /** The socket closed (or never opened) before the request was answered. */
  CONNECTION_CLOSED: "connection_closed",
  /** The server did not answer a request within {@link REQUEST_TIMEOUT_MS}. */
  REQUEST_TIMEOUT: "request_timeout",
  /** An HTTP request ({@link fetchDevToken}) failed. */
  HTTP_ERROR: "http_error",
  /** The browser refused an SDP, an ICE candidate or new encoding parameters. */
  NEGOTIATION_FAILED: "negotiation_failed",
  /** A peer connection's ICE/DTLS connection failed. */
  PEER_CONNECTION_FAILED: "peer_connection_failed",
  /** Camera or microphone unavailable (no secure context, permission refused, …). */
  MEDIA_UNAVAILABLE: "media_unavailable",
  /** This browser cannot send the codec asked for. */
  CODEC_UNAVAILABLE: "codec_unavailable",
  /** No data channels: the token may not publish, or `data: false`. */
  DATA_NOT_ENABLED: "data_not_enabled",
});

/**
 * The events a {@link Room} dispatches. Every event is an {@link SfuEvent} (the fields
 * named here are properties of the event) except `error`, an {@link SfuErrorEvent}.
 * @readonly
 * @enum {string}
 */
export const RoomEvent = Object.freeze({
  /** `participant`: someone is in the room (fired too for those already there when you join). */
  PARTICIPANT_JOINED: "participantJoined",
  /** `participant`: its name or its list of tracks was refreshed. */
  PARTICIPANT_UPDATED: "participantUpdated",
  /** `participant`: it left; its tracks were unsubscribed first. */
  PARTICIPANT_LEFT: "participantLeft",
  /** `participant`, `publication`: a track was published. */
  TRACK_PUBLISHED: "trackPublished",
  /** `participant`, `publication`: a track was unpublished. */
  TRACK_UNPUBLISHED: "trackUnpublished",
  /** `participant`, `publication`, `muted`: its publisher (un)muted a track. */
  TRACK_MUTED: "trackMuted",
  /** `participant`, `track` ({@link RemoteTrack}): its media arrives, in `participant.stream`. */
  TRACK_SUBSCRIBED: "trackSubscribed",
  /** `participant`, `track`: no longer received (unpublished, its publisher left, a rejoin). */
  TRACK_UNSUBSCRIBED: "trackUnsubscribed",
  /** `participant`, `trackId`, `codec`: this browser cannot decode it: not sent to you. */
  TRACK_UNDECODABLE: "trackUndecodable",
  /** `participantIds`: who speaks now, loudest first (may include you). */
  ACTIVE_SPEAKERS: "activeSpeakers",
  /** `qualities`: participant id → "excellent" | "good" | "poor" (you too), on a change. */
  CONNECTION_QUALITY: "connectionQuality",
  /** `stream`: {@link Room#publishCamera} got the camera and microphone. */
  LOCAL_STREAM: "localStream",
  /** The server delivers the room's data messages to you from now on. */
  DATA_READY: "dataReady",
  /** `message` ({@link DataMessage}). */
  DATA: "data",
  /** `error` ({@link SfuError}): the server refused one of your data messages. */
  DATA_ERROR: "dataError",
  /** `mode` ("resume" | "rejoin"), `reason`: the socket dropped or the media worker was lost. */
  RECONNECTING: "reconnecting",
  /** `resumed` (same session) or not (joined again, new participant id, tracks republished). */
  RECONNECTED: "reconnected",
  /** `reason` ("left" | "closed" | "error"), `error` ({@link SfuError} or null): it is over. */
  DISCONNECTED: "disconnected",
  /** {@link SfuErrorEvent}: an error the server sent, or a local failure. */
  ERROR: "error",
});

/** Socket close code after `worker_lost`: join again (the room moved to another worker). */
export const CLOSE_WORKER_LOST = 4001;
/** Socket close code after `removed`. */
export const CLOSE_REMOVED = 4002;
/** Socket close code after `duplicate_identity`: a newer session of yours took over. */
export const CLOSE_DUPLICATE_IDENTITY = 4003;
/** Socket close code after a fatal session error (`transport_failed`, …). */
export const CLOSE_SESSION_FAILED = 4004;
/** Close codes after which a room does not reconnect. */
const NO_RECONNECT_CODES = new Set([
  1000,
  CLOSE_REMOVED,
  CLOSE_DUPLICATE_IDENTITY,
  CLOSE_SESSION_FAILED,
]);

/** How long a dropped socket tries to resume its session (the server keeps it 10 s). */
export const RESUME_WINDOW_MS = 10_000;
/** How long a room that must join again (lost worker, no resume) keeps trying. */
export const REJOIN_WINDOW_MS = 20_000;
const RETRY_MS = 250;
/** How long {@link Room#publish} and {@link Room#ping} wait for the server's answer. */
export const REQUEST_TIMEOUT_MS = 20_000;
const PING_INTERVAL_MS = 20_000;
const DATA_OPEN_TIMEOUT_MS = 10_000;

/** The demo page's simulcast layers, lowest first (the server orders them q, h, f). */
export const SIMULCAST_ENCODINGS = Object.freeze([
  Object.freeze({ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 }),
  Object.freeze({ rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 }),
  Object.freeze({ rid: "f", maxBitrate: 1_500_000 }),
]);

const SEPARATOR = 0; // a binary data message is: JSON envelope, NUL byte, payload

// --- errors and events -------------------------------------------------------------------

/** A failed request or a failure the room reports; `code` is one of {@link ErrorCode}. */
export class SfuError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{fatal?: boolean, requestType?: string|null, trackId?: string|null,
   *   codec?: string|null, local?: boolean}} [details]
   */
  constructor(code, message, details = {}) {
    super(`${code}: ${message}`);
    this.name = "SfuError";
    /** @type {string} */
    this.code = code;
    /** The server's (or this module's) explanation, without the code. */
    this.detail = message;
    /** The server ends the session after a fatal error. */
    this.fatal = Boolean(details.fatal);
    /** The type of the message the error answers (`join`, `publish_offer`, …), if any. */
    this.requestType = details.requestType ?? null;
    this.trackId = details.trackId ?? null;
    this.codec = details.codec ?? null;
    /** Raised by this module, not sent by the server. */
    this.local = Boolean(details.local);
  }

  /** @param {{code: string, message: string, fatal?: boolean, request_type?: string,
   *   track_id?: string, codec?: string}} msg the server's `error` message */
  static fromMessage(msg) {
    return new SfuError(String(msg.code), String(msg.message ?? ""), {
      fatal: msg.fatal,
      requestType: msg.request_type,
      trackId: msg.track_id,
      codec: msg.codec,
    });
  }
}

/** Every event of a {@link Room} but `error`; its fields are set on the event itself. */
export class SfuEvent extends Event {
  /** @param {string} type @param {object} [fields] */
  constructor(type, fields = {}) {
    super(type);
    Object.assign(this, fields);
  }
}

/** The `error` event: `error` is the {@link SfuError}; `code`, `fatal`, `local` repeat it. */
export class SfuErrorEvent extends Event {
  /** @param {SfuError} error */
  constructor(error) {
    super("error");
    this.error = error;
    this.code = error.code;
    this.message = error.message;
    this.fatal = error.fatal;
    this.local = error.local;
  }
}

// --- URLs and tokens -----------------------------------------------------------------------

/**
 * The signaling WebSocket URL for a server's http(s) base URL or ws(s) URL:
 * `http://host:8080` and `ws://host:8080` both give `ws://host:8080/ws`; a ws(s) URL
 * with a path other than `/` is used as it is.
 * @param {string} url
 * @returns {string}
 */
export function signalingUrl(url) {
  const parsed = new URL(url);
  const scheme = { "http:": "ws:", "https:": "wss:" }[parsed.protocol] ?? parsed.protocol;
  if (scheme !== "ws:" && scheme !== "wss:") {
    throw new TypeError(`not an http(s) or ws(s) URL: ${url}`);
  }
  const isHttp = parsed.protocol.startsWith("http");
  parsed.protocol = scheme;
  if (isHttp || parsed.pathname === "/" || parsed.pathname === "") {
    parsed.pathname = `${parsed.pathname.replace(/\/+$/, "")}/ws`;
  }
  parsed.hash = "";
  return parsed.toString();
}

/**
 * The http(s) base URL of a server given its http(s) or ws(s) URL.
 * @param {string} url
 * @returns {string}
 */
export function httpUrl(url) {
  const parsed = new URL(url);
  const scheme = { "ws:": "http:", "wss:": "https:" }[parsed.protocol] ?? parsed.protocol;
  if (scheme !== "http:" && scheme !== "https:") {
    throw new TypeError(`not an http(s) or ws(s) URL: ${url}`);
  }
  let path = parsed.pathname;
  if (parsed.protocol.startsWith("ws")) path = path.replace(/\/ws$/, "");
  return `${scheme}//${parsed.host}${path.replace(/\/+$/, "")}`;
}

/**
 * A token from the server's development endpoint `/api/dev-token` (`sfu serve --dev`);
 * in production mint tokens in your backend.
 * @param {string} url the server's base URL
 * @param {string} room
 * @param {string} identity
 * @param {string} [name]
 * @returns {Promise<string>}
 * @throws {SfuError} `http_error`
 */
export async function fetchDevToken(url, room, identity, name) {
  const query = new URLSearchParams({ room, identity });
  if (name) query.set("name", name);
  const requestUrl = `${httpUrl(url)}/api/dev-token?${query}`;
  let response;
  try {
    response = await fetch(requestUrl);
  } catch (err) {
    throw new SfuError(ErrorCode.HTTP_ERROR, `${requestUrl}: ${err.message}`, { local: true });
  }
  if (!response.ok) {
    const body = (await response.text()).slice(0, 500);
    throw new SfuError(ErrorCode.HTTP_ERROR, `${requestUrl}: ${response.status} ${body}`, {
      local: true,
    });
  }
  const body = await response.json();
  if (typeof body.token !== "string") {
    throw new SfuError(ErrorCode.HTTP_ERROR, `${requestUrl}: no token in the answer`, {
      local: true,
    });
  }
  return body.token;
}

/**
 * Join the room named in `token`; resolves with the connected {@link Room}. Everyone
 * already in the room is in `room.participants` by then (add listeners before
 * {@link Room#connect} to get events for them too).
 * @param {string} url the server's http(s) base URL or its ws(s) URL
 * @param {string | (() => Promise<string>)} token an access token, or a function
 *   that fetches one (called again for every rejoin)
 * @param {RoomOptions} [options]
 * @returns {Promise<Room>}
 * @throws {SfuError} `bad_token`, `token_expired`, `room_full`, `connection_closed`, …
 */
export async function connect(url, token, options = {}) {
  const room = new Room(options);
  await room.connect(url, token);
  return room;
}

// --- types ---------------------------------------------------------------------------------

/**
 * @typedef {object} RoomOptions
 * @property {string} [name] display name (the token's if not given)
 * @property {RTCIceTransportPolicy} [iceTransportPolicy] "relay": through TURN only
 * @property {boolean} [reconnect=true] resume or rejoin after a dropped socket or a lost worker
 * @property {boolean} [data=true] open the data channels with the first publish (or
 *   {@link DataLink#open})
 */

/**
 * A track as the server announces it (`track_published`, `joined`).
 * @typedef {object} Publication
 * @property {string} track_id
 * @property {string} participant_id
 * @property {"audio"|"video"} kind
 * @property {string} source "camera" | "microphone" | "screen" | "screen_audio" | "unknown"
 * @property {boolean} muted
 * @property {boolean} simulcast
 */

/**
 * Another participant of the room.
 * @typedef {object} Participant
 * @property {string} participant_id
 * @property {string} identity from its token
 * @property {string} name
 * @property {Map<string, Publication>} tracks what it publishes, by track id
 * @property {MediaStream} stream its tracks you receive (one stream per participant)
 * @property {Map<string, string>} undecodable track id → codec MIME type this browser cannot decode
 */

/**
 * A data message another participant sent, as the server relayed it.
 * @typedef {object} DataMessage
 * @property {{participant_id: string, identity: string, name: string}} from set by the server
 * @property {any} [data] the JSON value sent (text messages)
 * @property {Uint8Array} [payload] the bytes sent (binary messages)
 * @property {string} [topic]
 * @property {boolean} reliable which channel it came on
 * @property {string} [id]
 */

/**
 * Preferences for one remote track.
 * @typedef {object} TrackSettings
 * @property {boolean} [paused] stop forwarding it (subscribe to selected tracks only)
 * @property {number|null} [maxSpatialLayer] cap the simulcast layer: 0 = lowest
 * @property {number|null} [maxTemporalLayer] cap the temporal layer of an SVC stream (AV1): fewer frames per second
 * @property {number|null} [maxWidth] the size you render it at, in device pixels
 * @property {number|null} [maxHeight]
 */

/**
 * What to publish with {@link Room#publish}.
 * @typedef {object} PublishOptions
 * @property {string} [source] "camera", "microphone", "screen", "screen_audio" (default: by kind)
 * @property {boolean} [simulcast=false] video in three layers ({@link SIMULCAST_ENCODINGS})
 * @property {RTCRtpEncodingParameters[]} [encodings] your own layers (with `rid`s) instead
 * @property {string|null} [codec] a video codec name ("VP8", "H264"): offer only that one
 * @property {boolean} [dtx=false] audio: Opus DTX, almost nothing sent during silence
 */

/** A track of another participant that this room receives. */
export class RemoteTrack {
  /** @param {string} trackId @param {string} participantId @param {"audio"|"video"} kind
   *  @param {string} mid @param {MediaStreamTrack} mediaStreamTrack */
  constructor(trackId, participantId, kind, mid, mediaStreamTrack) {
    this.trackId = trackId;
    this.participantId = participantId;
    this.kind = kind;
    /** The m-line of the subscribe transport carrying it. */
    this.mid = mid;
    /** The browser's track: put it (or `participant.stream`) in a media element. */
    this.mediaStreamTrack = mediaStreamTrack;
  }
}

// --- data channels -------------------------------------------------------------------------

/**
 * Data messages: `room.data`. Two channels on the publish peer connection, relayed by
 * the server, which stamps the sender: "reliable" (ordered, retransmitted) and "lossy"
 * (unordered, no retransmission: state where only the latest value matters).
 * Received messages arrive as the room's `data` events, refusals as `dataError`.
 */
export class DataLink {
  /** @param {Room} room */
  constructor(room) {
    this._room = room;
    /** @type {RTCDataChannel|null} the ordered, reliable channel */
    this.reliable = null;
    /** @type {RTCDataChannel|null} the unordered channel without retransmissions */
    this.lossy = null;
    /** The server delivers the room's messages to you. */
    this.isReady = false;
    this._waiters = [];
  }

  /** Whether this room has data channels (now, or with its next publish). */
  get enabled() {
    return this._room.dataEnabled && this._room.canPublish;
  }

  /**
   * Send `data` (any JSON value, or an ArrayBuffer / typed array for binary) to the
   * room, or to `destinationIdentities` only. Returns false when the channel is not
   * open. Throws for a message larger than the channel's limit; the server refuses
   * smaller ones it will not relay with a `dataError` (carrying `id`).
   * @param {any} data
   * @param {{reliable?: boolean, topic?: string, destinationIdentities?: string[],
   *   id?: string}} [options]
   * @returns {boolean}
   */
  send(data, { reliable = true, topic, destinationIdentities, id } = {}) {
    const channel = reliable ? this.reliable : this.lossy;
    if (!channel || channel.readyState !== "open") return false;
    const envelope = { type: "data" };
    if (topic !== undefined) envelope.topic = topic;
    if (destinationIdentities !== undefined) {
      envelope.destination_identities = [...destinationIdentities];
    }
    if (id !== undefined) envelope.id = id;
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      const header = new TextEncoder().encode(JSON.stringify(envelope));
      const payload =
        data instanceof ArrayBuffer
          ? new Uint8Array(data)
          : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      const message = new Uint8Array(header.length + 1 + payload.length);
      message.set(header);
      message[header.length] = SEPARATOR;
      message.set(payload, header.length + 1);
      channel.send(message);
    } else {
      envelope.data = data;
      channel.send(JSON.stringify(envelope));
    }
    return true;
  }

  /**
   * Open the data channels without publishing media (a watch-only participant that
   * chats); with media they open with the first publish. Resolves once the server
   * delivers to you.
   * @returns {Promise<void>}
   * @throws {SfuError} `data_not_enabled`, `request_timeout`, `connection_closed`
   */
  async open() {
    const room = this._room;
    if (!this.enabled) {
      throw new SfuError(ErrorCode.DATA_NOT_ENABLED, "this room has no data channels", {
        local: true,
      });
    }
    if (this.isReady) return;
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._waiters = this._waiters.filter((w) => w.resolve !== resolve);
        const error = "the data channels did not open";
        reject(new SfuError(ErrorCode.REQUEST_TIMEOUT, error, { local: true }));
      }, DATA_OPEN_TIMEOUT_MS);
      this._waiters.push({
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
    });
    if (!room.publishPc) await room._negotiatePublish([]);
    return ready;
  }

  /** Create the channels on `pc` (before its first offer). */
  _attach(pc) {
    this.isReady = false;
    this.reliable = pc.createDataChannel("reliable");
    this.lossy = pc.createDataChannel("lossy", { ordered: false, maxRetransmits: 0 });
    for (const channel of [this.reliable, this.lossy]) {
      channel.binaryType = "arraybuffer";
      channel.addEventListener("message", (event) => {
        if (channel === this.reliable || channel === this.lossy) this._onMessage(event.data);
      });
    }
  }

  /** The channels are gone (the peer connection closed); `error` fails waiters. */
  _detach(error = null) {
    this.reliable = this.lossy = null;
    this.isReady = false;
    if (error) for (const waiter of this._waiters.splice(0)) waiter.reject(error);
  }

  _onMessage(raw) {
    let envelope;
    let payload;
    try {
      if (typeof raw === "string") {
        envelope = JSON.parse(raw);
      } else {
        const bytes = new Uint8Array(raw);
        const end = bytes.indexOf(SEPARATOR);
        if (end < 0) throw new Error("no envelope");
        envelope = JSON.parse(new TextDecoder().decode(bytes.subarray(0, end)));
        payload = bytes.slice(end + 1);
      }
    } catch {
      console.warn("pysfu: ignoring an unreadable data message");
      return;
    }
    if (envelope === null || typeof envelope !== "object") return;
    if (envelope.type === "ready") {
      this.isReady = true;
      for (const waiter of this._waiters.splice(0)) waiter.resolve();
      this._room._emit(RoomEvent.DATA_READY);
    } else if (envelope.type === "error") {
      const error = new SfuError(String(envelope.code), String(envelope.message ?? ""));
      error.id = envelope.id ?? null;
      this._room._emit(RoomEvent.DATA_ERROR, { error });
    } else if (envelope.type === "data") {
      if (payload !== undefined) envelope.payload = payload;
      delete envelope.type;
      this._room._emit(RoomEvent.DATA, { message: envelope });
    }
  }
}

// --- the room ------------------------------------------------------------------------------

/**
 * Make `transceiver` offer only `codec` and its retransmission codec.
 * @returns {boolean} false when this browser cannot send it
 */
function preferVideoCodec(transceiver, codec) {
  const codecs = videoCodecsFor(codec);
  if (codecs === null) return false;
  transceiver.setCodecPreferences(codecs);
  return true;
}

/**
 * `sdp` with `usedtx=1` on the Opus fmtp of the m-sections whose mid is in `mids`
 * (RFC 7587): the server's answer echoes it, and the browser then sends about one
 * packet per 400 ms during silence instead of 50 per second.
 */
function withOpusDtx(sdp, mids) {
  if (mids.size === 0) return sdp;
  return sdp
    .split(/(?=\r\nm=)/)
    .map((section) => {
      const mid = /\r\na=mid:(\S+)/.exec(section);
      const opus = /\r\na=rtpmap:(\d+) opus\/48000/i.exec(section);
      if (!mid || !opus || !mids.has(mid[1])) return section;
      const fmtp = new RegExp(`(\\r\\na=fmtp:${opus[1]} )([^\\r]*)`);
      return section.replace(fmtp, (line, head, params) =>
        /usedtx=/.test(params) ? line : `${head}${params};usedtx=1`,
      );
    })
    .join("");
}

function videoCodecsFor(codec) {
  const wanted = `video/${codec}`.toLowerCase();
  const codecs = (globalThis.RTCRtpSender?.getCapabilities("video")?.codecs || []).filter((c) =>
    [wanted, "video/rtx"].includes(c.mimeType.toLowerCase()),
  );
  return codecs.some((c) => c.mimeType.toLowerCase() === wanted) ? codecs : null;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function closedError(what = "the room is closed") {
  return new SfuError(ErrorCode.CONNECTION_CLOSED, what, { local: true });
}

/**
 * One participant in one room. Create it, add listeners (the {@link RoomEvent}s), then
 * {@link Room#connect}.
 */
export class Room extends EventTarget {
  /** @param {RoomOptions} [options] */
  constructor({ name = null, iceTransportPolicy = "all", reconnect = true, data = true } = {}) {
    super();
    this.name = name;
    this.iceTransportPolicy = iceTransportPolicy;
    /** Resume or rejoin after a dropped socket or a lost worker. */
    this.reconnect = reconnect;
    this.dataEnabled = data;
    /** @type {"new"|"connecting"|"connected"|"reconnecting"|"disconnected"} */
    this.state = "new";
    /** @type {string|null} your participant id (a new one after a rejoin) */
    this.participantId = null;
    /** @type {string|null} */
    this.identity = null;
    /** @type {string|null} the room's name */
    this.roomName = null;
    this.canPublish = false;
    this.canSubscribe = false;
    /** @type {RTCIceServer[]} from `joined` (TURN credentials for you) */
    this.iceServers = [];
    /** @type {Map<string, Participant>} the others, by participant id */
    this.participants = new Map();
    /** @type {Map<string, RemoteTrack>} the tracks you receive now, by track id */
    this.remoteTracks = new Map();
    /** @type {MediaStream|null} the camera and microphone of {@link Room#publishCamera} */
    this.localStream = null;
    /** @type {Object<string, string>} publish mid → the server's track id */
    this.publishedTracks = {};
    /** @type {Object<string, {track_id: string, participant_id: string, kind: string}>}
     *  subscribe mid → what it carries (the latest offer's map) */
    this.subscribeTracks = {};
    /** @type {string[]} participant ids speaking now, loudest first */
    this.activeSpeakers = [];
    /** @type {Object<string, string>} participant id → its connection quality */
    this.connectionQualities = {};
    /** Sessions resumed or rejoined. */
    this.reconnects = 0;
    /** @type {RTCPeerConnection|null} */
    this.publishPc = null;
    /** @type {RTCPeerConnection|null} */
    this.subscribePc = null;
    /** Data messages. */
    this.data = new DataLink(this);
    /** @type {string|null} */
    this.resumeToken = null;

    this._url = null;
    this._token = null;
    /** @type {WebSocket|null} */
    this._ws = null;
    /** Bumped whenever the peer connections are replaced: stale callbacks check it. */
    this._epoch = 0;
    this._pendingJoin = null;
    /** request type → {resolve, reject, timer} of the request waiting for its answer */
    this._pending = new Map();
    this._pongWaiters = [];
    this._fatal = null;
    this._pingTimer = null;
    /** What this room publishes: {track, stream, source, simulcast, encodings, codec,
     *  transceiver, captured (by publishCamera: stopped on leave)} */
    this._published = [];
    this._publishChain = Promise.resolve();
    this._subscribeChain = Promise.resolve();
    this._layersChain = Promise.resolve();
    this._publishOfferSent = false;
    this._localPublishCandidates = [];
    this._remoteCandidates = { publish: [], subscribe: [] };
    /** own track id → {rid: active}, from publisher_layers (dynacast) */
    this._publisherLayers = {};
    /** track id → the track_settings message wanted / last sent on this session */
    this._wantedSettings = new Map();
    this._sentSettings = {};
    this._departed = new Set();
    /** Data channels were opened without media ({@link DataLink#open}): again after a rejoin. */
    this._dataOpened = false;
  }

  /** The signaling WebSocket (for diagnostics; null when there is none). */
  get socket() {
    return this._ws;
  }

  /** track id → the `track_settings` message last sent for it, as on the wire. */
  get trackSettings() {
    return this._sentSettings;
  }

  _emit(type, fields = {}) {
    try {
      this.dispatchEvent(new SfuEvent(type, fields));
    } catch (err) {
      console.error(`pysfu: a ${type} listener failed`, err);
    }
  }

  _emitError(error) {
    this.dispatchEvent(new SfuErrorEvent(error));
  }

  _localError(code, message) {
    this._emitError(new SfuError(code, message, { local: true }));
  }

  // --- connecting ------------------------------------------------------------------------

  /**
   * Join the room named in `token`. Resolves once joined: `participantId`,
   * `participants` and the grants are set. Call it once per Room.
   * @param {string} [url] the server's http(s) or ws(s) URL (default: this page's origin)
   * @param {string | (() => Promise<string>)} token
   * @returns {Promise<Room>}
   * @throws {SfuError}
   */
  async connect(url, token) {
    if (this.state !== "new") throw new Error("connect() was called already");
    this._url = signalingUrl(url ?? globalThis.location.origin);
    this._token = token;
    this.state = "connecting";
    try {
      await this._join(null);
    } catch (err) {
      this._teardown(err);
      this.state = "disconnected";
      throw err;
    }
    if (this.state === "connecting") this.state = "connected";
    return this;
  }

  /** Open a socket and join (or resume); resolves with the `joined` message. */
  async _join(resumeToken) {
    const token = typeof this._token === "function" ? await this._token() : this._token;
    if (this.state === "disconnected") throw closedError();
    const message = { type: "join", token };
    if (this.name) message.name = this.name;
    if (resumeToken) message.resume = resumeToken;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this._pendingJoin !== pending) return;
        this._pendingJoin = null;
        const ws = this._ws;
        this._ws = null;
        if (ws) ws.close(1000, "join timed out");
        const error = "no answer to join";
        reject(new SfuError(ErrorCode.REQUEST_TIMEOUT, error, { local: true }));
      }, REQUEST_TIMEOUT_MS);
      const pending = {
        resolve: (joined) => {
          clearTimeout(timer);
          resolve(joined);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this._pendingJoin = pending;
      this._openSocket(message).catch((err) => {
        if (this._pendingJoin === pending) this._pendingJoin = null;
        pending.reject(err);
      });
    });
  }

  _openSocket(join) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this._url);
      this._ws = ws;
      let opened = false;
      ws.addEventListener("open", () => {
        opened = true;
        this._send(join);
        resolve();
      });
      ws.addEventListener("message", (event) => {
        if (ws === this._ws) this._onMessage(event.data);
      });
      ws.addEventListener("close", (event) => {
        if (!opened) reject(closedError("could not connect to the signaling server"));
        if (ws === this._ws) this._onSocketClosed(event);
      });
    });
  }

  _send(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify({ v: PROTOCOL_VERSION, ...message }));
    return true;
  }

  /** Send `message` and wait for the server's answer to it (or its error). */
  _request(message) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(message.type);
        const error = `no answer to ${message.type}`;
        reject(new SfuError(ErrorCode.REQUEST_TIMEOUT, error, { local: true }));
      }, REQUEST_TIMEOUT_MS);
      this._pending.set(message.type, { resolve, reject, timer });
      if (!this._send(message)) {
        this._settle(message.type, closedError("the socket is not open"));
      }
    });
  }

  _settle(requestType, result) {
    const pending = this._pending.get(requestType);
    if (!pending) return false;
    this._pending.delete(requestType);
    clearTimeout(pending.timer);
    if (result instanceof Error) pending.reject(result);
    else pending.resolve(result);
    return true;
  }

  /**
   * Round trip to the server.
   * @returns {Promise<number>} milliseconds
   */
  ping() {
    const start = performance.now();
    return new Promise((resolve, reject) => {
      if (!this._send({ type: "ping" })) {
        reject(closedError("the socket is not open"));
        return;
      }
      this._pongWaiters.push({ resolve: () => resolve(performance.now() - start), reject });
    });
  }

  /** Leave the room: the others see you go; both peer connections and the socket close. */
  leave() {
    if (this.state === "disconnected") return;
    this._send({ type: "leave" });
    this._disconnect("left", null);
  }

  _disconnect(reason, error) {
    if (this.state === "disconnected") return;
    this.state = "disconnected";
    this._teardown(error ?? closedError());
    this._emit(RoomEvent.DISCONNECTED, { reason, error });
  }

  _teardown(error) {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._closePeerConnections(error);
    for (const entry of this._published) {
      if (entry.captured) entry.track.stop();
    }
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "leave");
    if (this._pendingJoin) {
      this._pendingJoin.reject(error);
      this._pendingJoin = null;
    }
    for (const waiter of this._pongWaiters.splice(0)) waiter.reject(error);
  }

  /** Close both peer connections; the next ones start a new epoch. */
  _closePeerConnections(error) {
    this._epoch += 1;
    for (const pc of [this.publishPc, this.subscribePc]) if (pc) pc.close();
    this.publishPc = this.subscribePc = null;
    for (const type of [...this._pending.keys()]) this._settle(type, error);
    this.data._detach(error);
    this._publishOfferSent = false;
    this._localPublishCandidates = [];
    this._remoteCandidates = { publish: [], subscribe: [] };
    this.publishedTracks = {};
    this.subscribeTracks = {};
    for (const entry of this._published) entry.transceiver = null;
  }

  // --- reconnecting ----------------------------------------------------------------------

  _onSocketClosed(event) {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    const fatal = this._fatal;
    this._fatal = null;
    // An answer to a request sent on this socket will not come on another one.
    const lostAnswer = fatal ?? closedError(`connection closed (${event.code})`);
    for (const type of [...this._pending.keys()]) this._settle(type, lostAnswer);
    for (const waiter of this._pongWaiters.splice(0)) waiter.reject(lostAnswer);
    if (this._pendingJoin) {
      const pending = this._pendingJoin;
      this._pendingJoin = null;
      pending.reject(fatal ?? closedError(`connection closed (${event.code})`));
      return; // the connect or reconnect in progress decides what comes next
    }
    if (this.state !== "connected") return;
    const lost = event.code === CLOSE_WORKER_LOST || fatal?.code === ErrorCode.WORKER_LOST;
    if (this.reconnect && lost) {
      this._reconnectLoop("rejoin", ErrorCode.WORKER_LOST);
    } else if (this.reconnect && !fatal && !NO_RECONNECT_CODES.has(event.code)) {
      const mode = this.resumeToken ? "resume" : "rejoin";
      this._reconnectLoop(mode, `connection closed (${event.code})`);
    } else {
      const why = event.reason ? `: ${event.reason}` : "";
      const error = fatal ?? closedError(`connection closed (${event.code}${why})`);
      this._disconnect("closed", error);
    }
  }

  async _reconnectLoop(mode, reason) {
    this.state = "reconnecting";
    this._emit(RoomEvent.RECONNECTING, { mode, reason });
    let resumed = false;
    try {
      if (mode === "resume") resumed = await this._resume(Date.now() + RESUME_WINDOW_MS);
      if (!resumed) await this._rejoin(Date.now() + REJOIN_WINDOW_MS);
    } catch (err) {
      if (this.state !== "disconnected") this._disconnect("error", err);
      return;
    }
    if (this.state !== "reconnecting") return;
    this.state = "connected";
    this.reconnects += 1;
    this._emit(RoomEvent.RECONNECTED, { resumed });
  }

  /** Take the session over on a new socket; false when the server will not. */
  async _resume(deadline) {
    while (this.state === "reconnecting") {
      try {
        await this._join(this.resumeToken);
        return true;
      } catch (err) {
        if (this.state !== "reconnecting") throw err;
        if (err.code !== ErrorCode.CONNECTION_CLOSED || Date.now() > deadline) return false;
        await sleep(RETRY_MS);
      }
    }
    throw closedError();
  }

  /** Join again with new peer connections and publish the same tracks anew. */
  async _rejoin(deadline) {
    const stale = this._ws;
    this._ws = null;
    if (stale && stale.readyState <= WebSocket.OPEN) stale.close(1000, "rejoin");
    this._closePeerConnections(closedError("the room is joining again"));
    for (const remote of [...this.remoteTracks.values()]) this._unsubscribe(remote);
    this._sentSettings = {};
    this.resumeToken = null;
    for (;;) {
      try {
        await this._join(null);
        break;
      } catch (err) {
        if (this.state !== "reconnecting") throw err;
        // The room is still moving off a dead worker, or the server is restarting.
        const retry = [
          ErrorCode.WORKER_UNAVAILABLE,
          ErrorCode.CONNECTION_CLOSED,
          ErrorCode.REQUEST_TIMEOUT,
          ErrorCode.HTTP_ERROR,
        ].includes(err.code);
        if (!retry || Date.now() > deadline) throw err;
        await sleep(RETRY_MS * 2);
      }
    }
    const wasOpen = this.data.enabled && this._published.length === 0 && this._dataOpened;
    if (this._published.length > 0) await this._negotiatePublish(this._published);
    else if (wasOpen) await this.data.open();
  }

  // --- incoming messages -----------------------------------------------------------------

  _onMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      this._localError(ErrorCode.BAD_JSON, "the server sent a message that is not JSON");
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    try {
      this._dispatch(msg);
    } catch (err) {
      const what = `could not handle ${msg.type}: ${err.message}`;
      this._localError(ErrorCode.NEGOTIATION_FAILED, what);
    }
  }

  _dispatch(msg) {
    switch (msg.type) {
      case "joined":
        this._onJoined(msg);
        break;
      case "publish_answer":
        this._settle("publish_offer", msg);
        break;
      case "subscribe_offer": {
        // Strictly one offer at a time, in arrival order.
        const epoch = this._epoch;
        this._subscribeChain = this._subscribeChain
          .then(() => this._onSubscribeOffer(msg, epoch))
          .catch((err) => {
            if (epoch !== this._epoch) return;
            this._localError(
              ErrorCode.NEGOTIATION_FAILED,
              `subscribe offer ${msg.revision} failed: ${err.message}`,
            );
          });
        break;
      }
      case "candidate":
        this._addRemoteCandidate(msg.target, msg.candidate);
        break;
      case "participant_joined":
        if (msg.participant) this._upsertParticipant(msg.participant, false);
        break;
      case "participant_left":
        this._removeParticipant(msg.participant_id);
        break;
      case "track_published":
        if (msg.track) this._onTrackPublished(msg.track);
        break;
      case "track_unpublished":
        this._onTrackUnpublished(msg.participant_id, msg.track_id);
        break;
      case "track_muted":
        this._onTrackMuted(msg.participant_id, msg.track_id, Boolean(msg.muted));
        break;
      case "publisher_layers":
        this._onPublisherLayers(msg.track_id, msg.active || {});
        break;
      case "active_speakers":
        this.activeSpeakers = [...(msg.participant_ids || [])];
        this._emit(RoomEvent.ACTIVE_SPEAKERS, { participantIds: this.activeSpeakers });
        break;
      case "connection_quality":
        this.connectionQualities = { ...(msg.qualities || {}) };
        this._emit(RoomEvent.CONNECTION_QUALITY, { qualities: this.connectionQualities });
        break;
      case "pong":
        for (const waiter of this._pongWaiters.splice(0)) waiter.resolve();
        break;
      case "error":
        this._onError(SfuError.fromMessage(msg));
        break;
      default:
        break; // unknown types are ignored (forward compatibility)
    }
  }

  _onError(error) {
    if (error.code === ErrorCode.CODEC_UNSUPPORTED && error.trackId) {
      this._onCodecUnsupported(error.trackId, error.codec || "an unknown codec");
      return;
    }
    if (
      error.code === ErrorCode.UNKNOWN_TRACK &&
      error.requestType === "track_settings" &&
      error.trackId &&
      !this.remoteTracks.has(error.trackId)
    ) {
      return; // settings that crossed the track's unpublishing on the wire: nothing to do
    }
    if (error.fatal) this._fatal = error;
    if (error.requestType === "join" && this._pendingJoin) {
      const pending = this._pendingJoin;
      this._pendingJoin = null;
      pending.reject(error);
      return;
    }
    if (error.requestType && this._settle(error.requestType, error)) return;
    this._emitError(error);
  }

  _onJoined(msg) {
    const pending = this._pendingJoin;
    this._pendingJoin = null;
    this.resumeToken = msg.resume_token || null;
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => this._send({ type: "ping" }), PING_INTERVAL_MS);
    if (!msg.resumed) {
      this.participantId = msg.participant_id;
      this.identity = msg.identity;
      this.roomName = msg.room;
      this.canPublish = Boolean(msg.can_publish);
      this.canSubscribe = Boolean(msg.can_subscribe);
      this.iceServers = msg.ice_servers || [];
    }
    const present = new Set();
    for (const info of msg.participants || []) {
      if (info.participant_id === this.participantId) continue;
      present.add(info.participant_id);
      this._upsertParticipant(info, true);
    }
    // A resume or a rejoin: whoever left meanwhile is gone.
    for (const participantId of [...this.participants.keys()]) {
      if (!present.has(participantId)) this._removeParticipant(participantId);
    }
    if (pending) pending.resolve(msg);
  }

  // --- participants ----------------------------------------------------------------------

  _upsertParticipant(info, replaceTracks) {
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
        undecodable: new Map(),
      };
      this.participants.set(info.participant_id, participant);
    } else {
      if (info.name) participant.name = info.name;
      if (info.identity) participant.identity = info.identity;
      if (replaceTracks) participant.tracks.clear();
    }
    for (const track of info.tracks || []) participant.tracks.set(track.track_id, { ...track });
    const type = isNew ? RoomEvent.PARTICIPANT_JOINED : RoomEvent.PARTICIPANT_UPDATED;
    this._emit(type, { participant });
    if (!isNew) this._reconcileRemoteTracks();
    return participant;
  }

  _removeParticipant(participantId) {
    const participant = this.participants.get(participantId);
    this._departed.add(participantId);
    if (!participant) return;
    for (const remote of [...this.remoteTracks.values()]) {
      if (remote.participantId === participantId) this._unsubscribe(remote);
    }
    this.participants.delete(participantId);
    this._emit(RoomEvent.PARTICIPANT_LEFT, { participant });
  }

  _onTrackPublished(track) {
    if (track.participant_id === this.participantId) return;
    const participant =
      this.participants.get(track.participant_id) ??
      this._upsertParticipant({ participant_id: track.participant_id, tracks: [] }, false);
    if (!participant) return;
    const publication = { ...track };
    participant.tracks.set(track.track_id, publication);
    this._emit(RoomEvent.TRACK_PUBLISHED, { participant, publication });
  }

  _onTrackUnpublished(participantId, trackId) {
    const participant = this.participants.get(participantId);
    if (!participant) return;
    const publication = participant.tracks.get(trackId) ?? {
      track_id: trackId,
      participant_id: participantId,
    };
    participant.tracks.delete(trackId);
    participant.undecodable.delete(trackId);
    this._wantedSettings.delete(trackId);
    delete this._sentSettings[trackId];
    this._emit(RoomEvent.TRACK_UNPUBLISHED, { participant, publication });
  }

  /** The server will not send us `trackId`: this browser cannot decode `codec`. */
  _onCodecUnsupported(trackId, codec) {
    const participant = [...this.participants.values()].find((p) => p.tracks.has(trackId));
    if (!participant) return;
    participant.undecodable.set(trackId, codec);
    this._emit(RoomEvent.TRACK_UNDECODABLE, { participant, trackId, codec });
  }

  _onTrackMuted(participantId, trackId, muted) {
    const participant = this.participants.get(participantId);
    if (!participant) return;
    let publication = participant.tracks.get(trackId);
    if (publication) {
      publication.muted = muted;
    } else {
      // Not announced (yet): take its kind from the subscribe mapping if it is there.
      const mapped = Object.values(this.subscribeTracks).find((t) => t.track_id === trackId);
      publication = { track_id: trackId, participant_id: participantId, kind: mapped?.kind, muted };
      participant.tracks.set(trackId, publication);
    }
    this._emit(RoomEvent.TRACK_MUTED, { participant, publication, muted });
  }

  // --- publishing ------------------------------------------------------------------------

  /**
   * Capture the camera and microphone and publish them (what the demo page does).
   * Resolves with the local stream once the server answered; `localStream` event first.
   * The room stops these tracks when it leaves.
   * @param {{audio?: boolean|MediaTrackConstraints, video?: boolean|MediaTrackConstraints,
   *   simulcast?: boolean, codec?: string|null, scalabilityMode?: string|null,
   *   dtx?: boolean}} [options] video defaults to 640x480; `scalabilityMode` with spatial
   *   layers ("L3T3_KEY" with VP9) sends one SVC encoding instead of simulcast, an L1 mode
   *   ("L1T3") applies to each simulcast encoding; `dtx`: Opus DTX for the microphone
   * @returns {Promise<MediaStream>}
   * @throws {SfuError} `media_unavailable`, `codec_unavailable`, `not_allowed`, …
   */
  async publishCamera({
    audio = true,
    video = { width: 640, height: 480 },
    simulcast = true,
    codec = null,
    scalabilityMode = null,
    dtx = false,
  } = {}) {
    this._requireJoined();
    if (codec && video && videoCodecsFor(codec) === null) {
      throw new SfuError(ErrorCode.CODEC_UNAVAILABLE, `this browser cannot send ${codec}`, {
        local: true,
      });
    }
    if (!globalThis.navigator?.mediaDevices?.getUserMedia) {
      throw new SfuError(
        ErrorCode.MEDIA_UNAVAILABLE,
        "camera and microphone need a secure context (https or localhost)",
        { local: true },
      );
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio, video });
    } catch (err) {
      throw new SfuError(ErrorCode.MEDIA_UNAVAILABLE, `${err.name}: ${err.message}`, {
        local: true,
      });
    }
    if (this.state === "disconnected") {
      for (const track of stream.getTracks()) track.stop();
      throw closedError();
    }
    this.localStream = stream;
    this._emit(RoomEvent.LOCAL_STREAM, { stream });
    // Spatial layers in the mode (L2…, L3…): one SVC encoding; L1… with simulcast:
    // every simulcast encoding in that mode (VP9 simulcast wants L1T3 on each).
    let encodings;
    if (scalabilityMode && (!simulcast || !scalabilityMode.startsWith("L1"))) {
      encodings = [{ scalabilityMode }];
    } else if (scalabilityMode) {
      encodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e, scalabilityMode }));
    }
    const entries = stream.getTracks().map((track) =>
      track.kind === "video" && encodings
        ? this._entry(track, stream, { encodings, codec })
        : this._entry(track, stream, {
            simulcast: track.kind === "video" && simulcast,
            codec,
            dtx,
          }),
    );
    for (const entry of entries) entry.captured = true;
    this._published.push(...entries);
    await this._negotiatePublish(entries);
    return stream;
  }

  /**
   * Publish tracks (a MediaStream, a MediaStreamTrack or an array of tracks) in one
   * negotiation; resolves with their track ids, in order. Publishing again adds tracks.
   * @param {MediaStream | MediaStreamTrack | MediaStreamTrack[]} tracks
   * @param {PublishOptions} [options]
   * @returns {Promise<string[]>}
   * @throws {SfuError} `not_allowed` (no publish grant), `too_many_tracks`, `codec_unavailable`, …
   */
  async publish(tracks, options = {}) {
    this._requireJoined();
    let stream = null;
    let list;
    if (globalThis.MediaStream && tracks instanceof MediaStream) {
      stream = tracks;
      list = tracks.getTracks();
    } else {
      list = Array.isArray(tracks) ? tracks : [tracks];
    }
    const video = list.some((t) => t.kind === "video");
    if (options.codec && video && videoCodecsFor(options.codec) === null) {
      throw new SfuError(ErrorCode.CODEC_UNAVAILABLE, `this browser cannot send ${options.codec}`, {
        local: true,
      });
    }
    const entries = list.map((track) =>
      this._entry(track, stream ?? new MediaStream([track]), options),
    );
    this._published.push(...entries);
    return this._negotiatePublish(entries);
  }

  _entry(track, stream, { source, simulcast = false, encodings, codec = null, dtx = false }) {
    return {
      track,
      stream,
      source: source ?? (track.kind === "audio" ? "microphone" : "camera"),
      simulcast: track.kind === "video" && Boolean(simulcast || encodings),
      encodings: encodings ?? null,
      codec: track.kind === "video" ? codec : null,
      dtx: track.kind === "audio" && Boolean(dtx),
      transceiver: null,
      captured: false,
    };
  }

  _requireJoined() {
    if (this.state === "disconnected" || this.participantId === null) {
      throw closedError("the room is not connected");
    }
  }

  _ensurePublishPc() {
    if (this.publishPc) return this.publishPc;
    const epoch = this._epoch;
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
      bundlePolicy: "max-bundle",
    });
    this.publishPc = pc;
    // The data channels ride on the publish transport; created before the first offer.
    if (this.data.enabled) this.data._attach(pc);
    pc.addEventListener("icecandidate", (event) => {
      if (epoch !== this._epoch) return;
      const message = {
        type: "candidate",
        target: "publish",
        candidate: event.candidate ? event.candidate.toJSON() : null,
      };
      if (this._publishOfferSent) this._send(message);
      else this._localPublishCandidates.push(message);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (epoch === this._epoch && pc.connectionState === "failed") {
        this._localError(ErrorCode.PEER_CONNECTION_FAILED, "publish connection failed");
      }
    });
    return pc;
  }

  /** Add `entries` to the publish peer connection and negotiate; their track ids. */
  _negotiatePublish(entries) {
    const run = async () => {
      const epoch = this._epoch;
      if (this.state === "disconnected") throw closedError();
      const pc = this._ensurePublishPc();
      for (const entry of entries) {
        if (entry.transceiver) continue;
        const init = { direction: "sendonly", streams: [entry.stream] };
        if (entry.simulcast) {
          init.sendEncodings = (entry.encodings ?? SIMULCAST_ENCODINGS).map((e) => ({ ...e }));
        }
        entry.transceiver = pc.addTransceiver(entry.track, init);
        if (entry.codec) preferVideoCodec(entry.transceiver, entry.codec);
      }
      if (entries.length === 0) this._dataOpened = true;
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      if (epoch !== this._epoch) throw closedError("the room joined again");
      const tracks = {};
      for (const entry of this._published) {
        const mid = entry.transceiver?.mid;
        if (mid != null) tracks[mid] = { source: entry.source };
      }
      const dtxMids = new Set(
        this._published.filter((e) => e.dtx && e.transceiver?.mid != null).map((e) => e.transceiver.mid),
      );
      const sdp = withOpusDtx(pc.localDescription.sdp, dtxMids);
      const answer = this._request({ type: "publish_offer", sdp, tracks });
      this._publishOfferSent = true;
      for (const message of this._localPublishCandidates.splice(0)) this._send(message);
      const msg = await answer;
      if (epoch !== this._epoch) throw closedError("the room joined again");
      await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      this.publishedTracks = { ...(msg.tracks || {}) };
      this._flushRemoteCandidates("publish");
      // Layers the server paused before the answer arrived.
      for (const [trackId, active] of Object.entries(this._publisherLayers)) {
        this._onPublisherLayers(trackId, active);
      }
      // A mute before the answer could not name a track id yet.
      for (const entry of this._published) {
        const trackId = this.publishedTracks[entry.transceiver?.mid];
        if (trackId && !entry.track.enabled) {
          this._send({ type: "mute", track_id: trackId, muted: true });
        }
      }
      return entries.map((entry) => this.publishedTracks[entry.transceiver.mid] ?? null);
    };
    const result = this._publishChain.then(run, run);
    this._publishChain = result.catch(() => {});
    return result;
  }

  /**
   * Mute or unmute what you publish: `target` is a kind ("audio", "video": every
   * published track of it) or a track id. The track is disabled (silence, black
   * frames) and the others get `trackMuted`.
   * @param {string} target
   * @param {boolean} [muted=true]
   * @returns {boolean} false when nothing matched
   */
  mute(target, muted = true) {
    let found = false;
    for (const entry of this._published) {
      const trackId = entry.transceiver ? this.publishedTracks[entry.transceiver.mid] : undefined;
      if (entry.track.kind !== target && trackId !== target) continue;
      found = true;
      entry.track.enabled = !muted;
      if (trackId) this._send({ type: "mute", track_id: trackId, muted });
    }
    return found;
  }

  /** Whether every published track of `kind` is muted (false when there is none). */
  isMuted(kind) {
    const ofKind = this._published.filter((entry) => entry.track.kind === kind);
    return ofKind.length > 0 && ofKind.every((entry) => !entry.track.enabled);
  }

  /** Pause/resume our own simulcast layers as the server asks (dynacast). */
  _onPublisherLayers(trackId, active) {
    this._publisherLayers[trackId] = { ...active };
    const pc = this.publishPc;
    if (!pc) return;
    const transceiver = pc
      .getTransceivers()
      .find((t) => t.mid !== null && this.publishedTracks[t.mid] === trackId);
    if (!transceiver) return; // applied once publish_answer names the track
    const epoch = this._epoch;
    // One setParameters at a time: a second call with stale parameters would fail.
    this._layersChain = this._layersChain
      .then(async () => {
        if (epoch !== this._epoch || pc.signalingState === "closed") return;
        const wanted = this._publisherLayers[trackId];
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
      .catch((err) => {
        if (epoch === this._epoch) {
          const what = `could not apply publisher layers: ${err.message}`;
          this._localError(ErrorCode.NEGOTIATION_FAILED, what);
        }
      });
  }

  // --- subscribing -----------------------------------------------------------------------

  /**
   * The remote track of `participantId` of `kind` you receive now, or null.
   * @param {string} participantId
   * @param {"audio"|"video"} [kind="video"]
   * @returns {RemoteTrack|null}
   */
  remoteTrackOf(participantId, kind = "video") {
    for (const remote of this.remoteTracks.values()) {
      if (remote.participantId === participantId && remote.kind === kind) return remote;
    }
    return null;
  }

  /**
   * A remote track matching every criterion given, waiting for one to be subscribed.
   * @param {{trackId?: string, participantId?: string, kind?: "audio"|"video",
   *   timeout?: number}} [criteria] `timeout` in milliseconds (10 s; null: no limit)
   * @returns {Promise<RemoteTrack>}
   * @throws {SfuError} `request_timeout`, or `connection_closed` once the room is over
   */
  waitForTrack({ trackId, participantId, kind, timeout = 10_000 } = {}) {
    const matches = (remote) =>
      (trackId === undefined || remote.trackId === trackId) &&
      (participantId === undefined || remote.participantId === participantId) &&
      (kind === undefined || remote.kind === kind);
    const found = [...this.remoteTracks.values()].find(matches);
    if (found) return Promise.resolve(found);
    if (this.state === "disconnected") return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      let timer = null;
      const done = () => {
        clearTimeout(timer);
        this.removeEventListener(RoomEvent.TRACK_SUBSCRIBED, onTrack);
        this.removeEventListener(RoomEvent.DISCONNECTED, onEnd);
      };
      const onTrack = ({ track }) => {
        if (!matches(track)) return;
        done();
        resolve(track);
      };
      const onEnd = () => {
        done();
        reject(closedError());
      };
      this.addEventListener(RoomEvent.TRACK_SUBSCRIBED, onTrack);
      this.addEventListener(RoomEvent.DISCONNECTED, onEnd);
      if (timeout !== null) {
        timer = setTimeout(() => {
          done();
          const error = "no such track was subscribed";
          reject(new SfuError(ErrorCode.REQUEST_TIMEOUT, error, { local: true }));
        }, timeout);
      }
    });
  }

  /**
   * Your preferences for one remote track (sent as `track_settings` when they change;
   * kept for a track not received yet, and sent again after a rejoin).
   * @param {string} trackId
   * @param {TrackSettings} settings
   * @returns {boolean} whether a message went out now
   */
  setTrackSettings(
    trackId,
    {
      paused = false,
      maxSpatialLayer = null,
      maxTemporalLayer = null,
      maxWidth = null,
      maxHeight = null,
    } = {},
  ) {
    this._wantedSettings.set(trackId, {
      type: "track_settings",
      track_id: trackId,
      paused: Boolean(paused),
      max_spatial_layer: maxSpatialLayer ?? null,
      max_temporal_layer: maxTemporalLayer ?? null,
      max_width: maxWidth ?? null,
      max_height: maxHeight ?? null,
    });
    return this._flushSettings(trackId);
  }

  _flushSettings(trackId) {
    const wanted = this._wantedSettings.get(trackId);
    if (!wanted || !this.remoteTracks.has(trackId)) return false;
    const sent = this._sentSettings[trackId];
    if (sent && JSON.stringify(sent) === JSON.stringify(wanted)) return false;
    if (!this._send(wanted)) return false;
    this._sentSettings[trackId] = wanted;
    return true;
  }

  _createSubscribePc() {
    const epoch = this._epoch;
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
      bundlePolicy: "max-bundle",
    });
    pc.addEventListener("icecandidate", (event) => {
      if (epoch !== this._epoch) return;
      this._send({
        type: "candidate",
        target: "subscribe",
        candidate: event.candidate ? event.candidate.toJSON() : null,
      });
    });
    pc.addEventListener("track", () => {
      if (epoch === this._epoch) this._reconcileRemoteTracks();
    });
    pc.addEventListener("connectionstatechange", () => {
      if (epoch === this._epoch && pc.connectionState === "failed") {
        this._localError(ErrorCode.PEER_CONNECTION_FAILED, "subscribe connection failed");
      }
    });
    return pc;
  }

  async _onSubscribeOffer(msg, epoch) {
    if (epoch !== this._epoch || this.state === "disconnected") return;
    if (!this.subscribePc) this.subscribePc = this._createSubscribePc();
    const pc = this.subscribePc;
    // The mapping is re-read on every offer: an m-line that went inactive may come
    // back carrying another track (same mid, new track id).
    this.subscribeTracks = { ...(msg.tracks || {}) };
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    this._flushRemoteCandidates("subscribe");
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (epoch !== this._epoch) return;
    this._send({ type: "subscribe_answer", sdp: pc.localDescription.sdp, revision: msg.revision });
    this._reconcileRemoteTracks();
  }

  /** Bring `remoteTracks` and every participant's stream in line with the transceivers. */
  _reconcileRemoteTracks() {
    const pc = this.subscribePc;
    if (!pc || this.state === "disconnected") return;
    const current = new Map(); // track id → [info, mid, MediaStreamTrack]
    for (const transceiver of pc.getTransceivers()) {
      const info = transceiver.mid !== null ? this.subscribeTracks[transceiver.mid] : undefined;
      const direction = transceiver.currentDirection;
      if (!info || direction === "inactive" || direction === "stopped") continue;
      if (this._departed.has(info.participant_id)) continue;
      current.set(info.track_id, [info, transceiver.mid, transceiver.receiver.track]);
    }
    for (const remote of [...this.remoteTracks.values()]) {
      const now = current.get(remote.trackId);
      if (!now || now[2] !== remote.mediaStreamTrack) this._unsubscribe(remote);
    }
    for (const [trackId, [info, mid, track]] of current) {
      if (this.remoteTracks.has(trackId)) continue;
      const participant =
        this.participants.get(info.participant_id) ??
        this._upsertParticipant({ participant_id: info.participant_id, tracks: [] }, false);
      if (!participant) continue;
      const remote = new RemoteTrack(trackId, info.participant_id, info.kind, mid, track);
      this.remoteTracks.set(trackId, remote);
      if (!participant.stream.getTracks().includes(track)) participant.stream.addTrack(track);
      this._flushSettings(trackId);
      this._emit(RoomEvent.TRACK_SUBSCRIBED, { participant, track: remote });
    }
  }

  _unsubscribe(remote) {
    this.remoteTracks.delete(remote.trackId);
    delete this._sentSettings[remote.trackId];
    const participant = this.participants.get(remote.participantId);
    if (!participant) return;
    // Receiver tracks belong to their transceivers (an m-line may be reused for
    // someone else), so they are only taken out of the stream, never stopped.
    participant.stream.removeTrack(remote.mediaStreamTrack);
    this._emit(RoomEvent.TRACK_UNSUBSCRIBED, { participant, track: remote });
  }

  // --- ICE -------------------------------------------------------------------------------

  _addRemoteCandidate(target, candidate) {
    const queue = this._remoteCandidates[target];
    if (!queue) return;
    const pc = target === "publish" ? this.publishPc : this.subscribePc;
    if (!pc || !pc.remoteDescription) {
      queue.push(candidate);
      return;
    }
    this._applyCandidate(pc, target, candidate);
  }

  _flushRemoteCandidates(target) {
    const pc = target === "publish" ? this.publishPc : this.subscribePc;
    for (const candidate of this._remoteCandidates[target].splice(0)) {
      this._applyCandidate(pc, target, candidate);
    }
  }

  _applyCandidate(pc, target, candidate) {
    const epoch = this._epoch;
    // null means end of candidates.
    const result = candidate ? pc.addIceCandidate(candidate) : pc.addIceCandidate();
    result.catch((err) => {
      if (candidate && epoch === this._epoch) {
        const what = `bad ${target} ICE candidate: ${err.message}`;
        this._localError(ErrorCode.NEGOTIATION_FAILED, what);
      }
    });
  }

  // --- stats -----------------------------------------------------------------------------

  /**
   * A summary of both peer connections' getStats(): `inbound` (one entry per received
   * stream, with `participantId` and `trackId`) and `outbound` (one per sent layer).
   * @returns {Promise<{inbound: object[], outbound: object[]}>}
   */
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
          // Audio: what was played, and how much of it concealed losses.
          totalSamplesReceived: s.totalSamplesReceived ?? 0,
          concealedSamples: s.concealedSamples ?? 0,
          totalAudioEnergy: s.totalAudioEnergy ?? 0,
          mimeType: report.get(s.codecId)?.mimeType ?? null,
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

  _midForTrackId(pc, trackIdentifier) {
    for (const transceiver of pc.getTransceivers()) {
      if (transceiver.receiver.track?.id === trackIdentifier) return transceiver.mid;
    }
    return null;
  }
}
