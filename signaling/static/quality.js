// Per remote video tile: what the tile receives (resolution and bitrate, from
// getStats every second), a "max quality" selector, and the subscriber preferences
// given to the Room (sdk/pysfu.js setTrackSettings, sent to the server as
// track_settings): the layer cap from the selector, the size the element is rendered
// at, and paused while the element or the page is hidden (or the element is rendered
// tiny).

const REFRESH_MS = 1000;
const RESIZE_DEBOUNCE_MS = 500;
/** Below this many CSS pixels either way, the element counts as hidden. */
const TINY_PX = 8;

/** Selector values → max_spatial_layer (null: let the server choose). */
const LAYER_BY_CHOICE = { auto: null, low: 0, medium: 1, high: 2 };

function formatBitrate(bitsPerSecond) {
  if (bitsPerSecond >= 1_000_000) return `${(bitsPerSecond / 1_000_000).toFixed(2)} Mbps`;
  return `${Math.round(bitsPerSecond / 1000)} kbps`;
}

export class VideoQuality {
  /** `tiles` is the Ui's participant_id → tile element map. */
  constructor(tiles) {
    this.tiles = tiles;
    /** the Room of sdk/pysfu.js whose remote videos the tiles show */
    this.room = null;
    /** participant_id → {tile, video, choice, visible, width, height, observers} */
    this.views = new Map();
    /** participant_id → {trackId, frameWidth, frameHeight, bitrate, framesDecoded} */
    this.received = new Map();
    this._previous = new Map(); // participant_id → {bytes, time}
    this._timer = null;
    this._intersection =
      typeof IntersectionObserver === "function"
        ? new IntersectionObserver((entries) => this._onIntersection(entries))
        : null;
    this._resize =
      typeof ResizeObserver === "function"
        ? new ResizeObserver((entries) => this._onResize(entries))
        : null;
    this._resizeTimers = new Map();
    document.addEventListener("visibilitychange", () => this.sync());
  }

  start(room) {
    this.stop();
    this.room = room;
    this._timer = setInterval(() => {
      this.refresh().catch(() => {});
    }, REFRESH_MS);
  }

  stop() {
    clearInterval(this._timer);
    this._timer = null;
    this.room = null;
    for (const participantId of [...this.views.keys()]) this.detach(participantId);
    this.received.clear();
    this._previous.clear();
  }

  /** The tile of `participantId` exists: wire its selector and observers. */
  attach(participantId) {
    const tile = this.tiles.get(participantId);
    const current = this.views.get(participantId);
    if (!tile || (current && current.tile === tile)) return;
    if (current) this.detach(participantId);
    const video = tile.querySelector("video");
    const select = tile.querySelector(".max-quality");
    const view = {
      tile,
      video,
      select,
      choice: "auto",
      maxTemporalLayer: null,
      visible: true,
      tiny: false,
      width: null,
      height: null,
    };
    if (select) {
      select.value = view.choice;
      select.addEventListener("change", () => {
        view.choice = select.value in LAYER_BY_CHOICE ? select.value : "auto";
        this.sync();
      });
    }
    this.views.set(participantId, view);
    if (this._intersection) this._intersection.observe(video);
    if (this._resize) this._resize.observe(video);
    this.sync();
  }

  detach(participantId) {
    const view = this.views.get(participantId);
    if (!view) return;
    if (this._intersection) this._intersection.unobserve(view.video);
    if (this._resize) this._resize.unobserve(view.video);
    clearTimeout(this._resizeTimers.get(view.video));
    this._resizeTimers.delete(view.video);
    this.views.delete(participantId);
    this.received.delete(participantId);
    this._previous.delete(participantId);
  }

  /** Cap what we receive from `participantId`: "auto" | "low" | "medium" | "high". */
  setMaxQuality(participantId, choice) {
    const view = this.views.get(participantId);
    if (!view || !(choice in LAYER_BY_CHOICE)) return false;
    view.choice = choice;
    if (view.select) view.select.value = choice;
    this.sync();
    return true;
  }

  /** Cap the temporal layer received from `participantId` (an SVC stream such as AV1:
   * fewer frames per second); null lifts the cap. */
  setMaxTemporalLayer(participantId, layer) {
    const view = this.views.get(participantId);
    if (!view) return false;
    view.maxTemporalLayer = layer;
    this.sync();
    return true;
  }

  _viewOfVideo(video) {
    for (const view of this.views.values()) if (view.video === video) return view;
    return null;
  }

  _onIntersection(entries) {
    for (const entry of entries) {
      const view = this._viewOfVideo(entry.target);
      if (view) view.visible = entry.isIntersecting;
    }
    this.sync();
  }

  _onResize(entries) {
    for (const entry of entries) {
      const video = entry.target;
      clearTimeout(this._resizeTimers.get(video));
      this._resizeTimers.set(
        video,
        setTimeout(() => {
          this._resizeTimers.delete(video);
          const view = this._viewOfVideo(video);
          if (!view) return;
          const scale = window.devicePixelRatio || 1;
          view.tiny = video.clientWidth < TINY_PX || video.clientHeight < TINY_PX;
          view.width = Math.round(video.clientWidth * scale) || null;
          view.height = Math.round(video.clientHeight * scale) || null;
          this.sync();
        }, RESIZE_DEBOUNCE_MS),
      );
    }
  }

  /** Give the room every tile's preferences (it sends those that changed). */
  sync() {
    const room = this.room;
    if (!room || room.state === "disconnected") return;
    const pageHidden = document.visibilityState === "hidden";
    for (const [participantId, view] of this.views) {
      const remote = room.remoteTrackOf(participantId, "video");
      if (!remote) continue;
      room.setTrackSettings(remote.trackId, {
        paused: pageHidden || !view.visible || view.tiny,
        maxSpatialLayer: LAYER_BY_CHOICE[view.choice],
        maxTemporalLayer: view.maxTemporalLayer,
        maxWidth: view.width,
        maxHeight: view.height,
      });
    }
  }

  /** Read the inbound video stats and show them on the tiles. */
  async refresh() {
    const room = this.room;
    if (!room || room.state === "disconnected") return;
    for (const participantId of this.tiles.keys()) this.attach(participantId);
    this.sync(); // the track id of a tile may have changed with a new subscribe offer
    const stats = await room.stats();
    if (room !== this.room) return;
    const now = performance.now();
    const seen = new Set();
    for (const s of stats.inbound) {
      if (s.kind !== "video" || !s.participantId || !this.views.has(s.participantId)) continue;
      seen.add(s.participantId);
      const previous = this._previous.get(s.participantId);
      let bitrate = 0;
      if (previous && previous.trackId === s.trackId && s.bytesReceived >= previous.bytes) {
        const seconds = (now - previous.time) / 1000;
        if (seconds > 0) bitrate = ((s.bytesReceived - previous.bytes) * 8) / seconds;
      }
      this._previous.set(s.participantId, { bytes: s.bytesReceived, time: now, trackId: s.trackId });
      const info = {
        trackId: s.trackId,
        frameWidth: s.frameWidth,
        frameHeight: s.frameHeight,
        framesDecoded: s.framesDecoded,
        bitrate: Math.round(bitrate),
      };
      this.received.set(s.participantId, info);
      this._show(s.participantId, info);
    }
    for (const participantId of this.views.keys()) {
      if (!seen.has(participantId)) {
        this.received.delete(participantId);
        this._show(participantId, null);
      }
    }
  }

  _show(participantId, info) {
    const view = this.views.get(participantId);
    const label = view && view.tile.querySelector(".layer-info");
    if (!label) return;
    const settings = this.room?.trackSettings[info?.trackId];
    if (settings?.paused) label.textContent = "paused";
    else if (!info || !info.frameWidth) label.textContent = "no video";
    else {
      const size = `${info.frameWidth}×${info.frameHeight}`;
      label.textContent = `${size} · ${formatBitrate(info.bitrate)}`;
    }
  }

  /** For tests and debugging: participant_id → what its tile receives and wants. */
  snapshot() {
    const result = {};
    for (const [participantId, view] of this.views) {
      result[participantId] = {
        choice: view.choice,
        maxTemporalLayer: view.maxTemporalLayer,
        visible: view.visible && !view.tiny,
        width: view.width,
        height: view.height,
        ...(this.received.get(participantId) || {}),
      };
    }
    return result;
  }
}
