// DOM side of the demo: the join form, the tile grid, the controls, the status bar.

import { Gallery } from "./gallery.js";

const $ = (id) => document.getElementById(id);
/** How a tile names a codec MIME type (others are shown as they come). */
const CODEC_NAMES = { "video/h264": "H.264", "video/vp8": "VP8", "video/vp9": "VP9" };

function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const letters = parts.slice(0, 2).map((p) => p[0].toUpperCase());
  return letters.join("") || "?";
}

function playVideo(video, tile) {
  const attempt = video.play();
  if (!attempt) return;
  attempt.catch(() => {
    // Autoplay with sound was refused: play muted and let a click unmute.
    if (video.muted) return;
    video.muted = true;
    tile.classList.add("needs-unmute");
    video.play().catch(() => {});
  });
}

export class Ui {
  constructor() {
    this.joinView = $("join-view");
    this.roomView = $("room-view");
    this.form = $("join-form");
    this.roomInput = $("room-input");
    this.nameInput = $("name-input");
    this.simulcastInput = $("simulcast-input");
    this.joinButton = $("join-button");
    this.roomLabel = $("room-label");
    this.grid = $("grid");
    this.gallery = new Gallery({
      stage: $("stage"),
      grid: this.grid,
      pager: $("pager"),
      label: $("page-label"),
      prev: $("page-prev"),
      next: $("page-next"),
    });
    this.localTile = $("local-tile");
    this.localVideo = $("local-video");
    this.localName = $("local-name");
    this.muteMicButton = $("mute-mic");
    this.muteCameraButton = $("mute-camera");
    this.leaveButton = $("leave");
    this.statusBar = $("status");
    this.template = $("tile-template");
    /** participant_id → tile element */
    this.tiles = new Map();
  }

  showJoin({ room = "", name = "", simulcast = false } = {}) {
    this.clearRemoteTiles();
    this.gallery.showPage(0);
    this.localVideo.srcObject = null;
    this.localTile.classList.remove("has-video", "is-mic-muted", "is-cam-muted", "speaking");
    this.setControl("audio", false);
    this.setControl("video", false);
    if (room) this.roomInput.value = room;
    if (name) this.nameInput.value = name;
    this.simulcastInput.checked = simulcast;
    this.setJoining(false);
    this.roomLabel.hidden = true;
    this.roomView.hidden = true;
    this.joinView.hidden = false;
    document.body.dataset.state = "idle";
  }

  showRoom(room, name) {
    this.roomLabel.textContent = `Room: ${room}`;
    this.roomLabel.hidden = false;
    this.localName.textContent = `${name} (you)`;
    this.localTile.querySelector(".avatar").textContent = initials(name);
    this.joinView.hidden = true;
    this.roomView.hidden = false;
    document.body.dataset.state = "joined";
  }

  setJoining(joining) {
    this.joinButton.disabled = joining;
    this.joinButton.textContent = joining ? "Joining…" : "Join";
    if (joining) document.body.dataset.state = "joining";
  }

  setStatus(text, level = "info") {
    this.statusBar.textContent = text;
    this.statusBar.dataset.level = level;
    this.statusBar.classList.toggle("error", level === "error");
    this.statusBar.classList.add("visible");
  }

  setLocalStream(stream) {
    this.localVideo.srcObject = stream;
    this.localTile.classList.toggle("has-video", stream.getVideoTracks().length > 0);
    this.localVideo.play().catch(() => {});
  }

  setControl(kind, muted) {
    const button = kind === "audio" ? this.muteMicButton : this.muteCameraButton;
    button.setAttribute("aria-pressed", String(muted));
    button.classList.toggle("active", muted);
    if (kind === "audio") {
      button.textContent = muted ? "Unmute mic" : "Mute mic";
      this.localTile.classList.toggle("is-mic-muted", muted);
    } else {
      button.textContent = muted ? "Start camera" : "Stop camera";
      this.localTile.classList.toggle("is-cam-muted", muted);
    }
  }

  _tileFor(participant) {
    let tile = this.tiles.get(participant.participant_id);
    if (tile) return tile;
    tile = this.template.content.firstElementChild.cloneNode(true);
    tile.dataset.participantId = participant.participant_id;
    const video = tile.querySelector("video");
    tile.addEventListener("click", () => {
      if (!tile.classList.contains("needs-unmute")) return;
      video.muted = false;
      tile.classList.remove("needs-unmute");
      video.play().catch(() => {});
    });
    this.grid.appendChild(tile);
    this.tiles.set(participant.participant_id, tile);
    this.gallery.update();
    return tile;
  }

  upsertParticipant(participant) {
    const tile = this._tileFor(participant);
    tile.querySelector(".name").textContent = participant.name;
    tile.querySelector(".avatar").textContent = initials(participant.name);
    const tracks = [...participant.tracks.values()];
    const micMuted = tracks.some((t) => t.kind === "audio" && t.muted);
    const camMuted = tracks.some((t) => t.kind === "video" && t.muted);
    tile.classList.toggle("is-mic-muted", micMuted);
    tile.classList.toggle("is-cam-muted", camMuted);
  }

  updateMedia(participant) {
    const tile = this._tileFor(participant);
    const video = tile.querySelector("video");
    // Re-assigning srcObject makes the element pick up added/removed tracks.
    video.srcObject = null;
    const hasTracks = participant.stream.getTracks().length > 0;
    tile.classList.toggle("has-video", participant.stream.getVideoTracks().length > 0);
    if (hasTracks) {
      video.srcObject = participant.stream;
      playVideo(video, tile);
    }
  }

  /** Say on the tile which of the participant's codecs this browser cannot decode. */
  setUndecodable(participant, codecs) {
    const tile = this._tileFor(participant);
    let notice = tile.querySelector(".tile-notice");
    if (codecs.length === 0) {
      if (notice) notice.remove();
      return;
    }
    if (!notice) {
      notice = document.createElement("div");
      notice.className = "tile-notice";
      tile.appendChild(notice);
    }
    const names = [...new Set(codecs.map((c) => CODEC_NAMES[c.toLowerCase()] || c))];
    notice.textContent = `cannot decode ${names.join(", ")}`;
  }

  removeParticipant(participantId) {
    const tile = this.tiles.get(participantId);
    if (!tile) return;
    const video = tile.querySelector("video");
    video.srcObject = null;
    tile.remove();
    this.tiles.delete(participantId);
    this.gallery.update();
  }

  /** Highlight the tiles of the participants speaking now (ours too). */
  setActiveSpeakers(participantIds, ownId = null) {
    const speaking = new Set(participantIds);
    for (const [participantId, tile] of this.tiles) {
      tile.classList.toggle("speaking", speaking.has(participantId));
    }
    this.localTile.classList.toggle("speaking", ownId !== null && speaking.has(ownId));
  }

  /** Show each participant's connection quality (ours too) on its tile. */
  setConnectionQualities(qualities, ownId = null) {
    const show = (tile, quality) => {
      const badge = tile.querySelector(".connection-quality");
      badge.dataset.quality = quality || "";
      badge.textContent = quality || "";
      badge.title = quality ? `Connection: ${quality}` : "";
    };
    for (const [participantId, tile] of this.tiles) show(tile, qualities[participantId]);
    if (ownId !== null) show(this.localTile, qualities[ownId]);
  }

  clearRemoteTiles() {
    for (const id of [...this.tiles.keys()]) this.removeParticipant(id);
  }
}
