// The chat panel: messages on the "chat" topic of the reliable data channel.

const $ = (id) => document.getElementById(id);
const MAX_LINES = 200;

export const CHAT_TOPIC = "chat";

export class ChatPanel {
  /** `send(text)` returns false when the message could not be sent. */
  constructor(send) {
    this.panel = $("chat");
    this.log = $("chat-log");
    this.form = $("chat-form");
    this.input = $("chat-input");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = this.input.value.trim();
      if (!text) return;
      if (send(text)) {
        this.add("You", text, "own");
        this.input.value = "";
      } else {
        this.add("", "chat is not connected yet", "system");
      }
    });
  }

  add(name, text, kind = "remote") {
    const line = document.createElement("li");
    line.className = `chat-line ${kind}`;
    if (name) {
      const who = document.createElement("span");
      who.className = "chat-name";
      who.textContent = name;
      line.append(who, " ");
    }
    const body = document.createElement("span");
    body.className = "chat-text";
    body.textContent = text;
    line.append(body);
    this.log.append(line);
    while (this.log.children.length > MAX_LINES) this.log.firstElementChild.remove();
    this.log.scrollTop = this.log.scrollHeight;
  }

  clear() {
    this.log.replaceChildren();
    this.input.value = "";
  }
}
