// Data messages: two data channels on the publish peer connection, relayed by the
// server, which stamps the sender (see the README's "Data messages"): "reliable"
// (ordered, retransmitted: chat, control) and "lossy" (unordered, no retransmission:
// state updates where only the latest value matters).

const SEPARATOR = 0; // a binary message is: JSON envelope, NUL byte, payload

export class DataChannels {
  /**
   * Create the channels on `pc` before its offer. hooks (all optional):
   *   ready()            the server delivers the room's messages to us from now on
   *   message(message)   {from: {participant_id, identity, name}, data | payload, topic, reliable, id}
   *   error(error)       {code, message, id}: the server refused one of our messages
   */
  constructor(pc, hooks = {}) {
    this.hooks = hooks;
    this.isReady = false;
    this.reliable = pc.createDataChannel("reliable");
    this.lossy = pc.createDataChannel("lossy", { ordered: false, maxRetransmits: 0 });
    for (const channel of [this.reliable, this.lossy]) {
      channel.binaryType = "arraybuffer";
      channel.addEventListener("message", (event) => this._onMessage(event.data));
    }
  }

  /**
   * Send `data` (any JSON value, or an ArrayBuffer/Uint8Array for binary) to the room.
   * Returns false when the channel is not open yet. Throws for a message larger than
   * the SCTP limit; the server answers smaller ones it refuses with an error.
   */
  send(data, { reliable = true, topic, destinationIdentities, id } = {}) {
    const channel = reliable ? this.reliable : this.lossy;
    if (channel.readyState !== "open") return false;
    const envelope = { type: "data" };
    if (topic !== undefined) envelope.topic = topic;
    if (destinationIdentities !== undefined) {
      envelope.destination_identities = [...destinationIdentities];
    }
    if (id !== undefined) envelope.id = id;
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      const header = new TextEncoder().encode(JSON.stringify(envelope));
      const payload = new Uint8Array(data instanceof ArrayBuffer ? data : data.buffer);
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

  _hook(name, ...args) {
    const fn = this.hooks[name];
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      console.error(`data hook ${name} failed`, err);
    }
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
      console.warn("ignoring an unreadable data message");
      return;
    }
    if (envelope.type === "ready") {
      this.isReady = true;
      this._hook("ready");
    } else if (envelope.type === "error") {
      this._hook("error", envelope);
    } else if (envelope.type === "data") {
      if (payload !== undefined) envelope.payload = payload;
      this._hook("message", envelope);
    }
  }
}
