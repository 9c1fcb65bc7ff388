// Caption overlay: subscribes to one room's caption frames through the NATS WebSocket
// listener and draws them. Options come from the page URL:
//   room      room id (required)
//   user/pass read-only NATS credentials (POST /v1/rooms/{room}/overlay-token gives them)
//   nats      ws:// or wss:// URL of the NATS WebSocket listener (default: the server's)
//   font      font size in px (36)          lines     lines on screen (3)
//   position  "bottom" or "top"             bg        "transparent" (OBS) or a CSS color
//   color     text color (white)            fade      seconds a final stays (8)
import { wsconnect } from "@nats-io/nats-core";
import { CaptionBoard } from "./board.js";
import { roomCaptions } from "./subjects.js";

function number(params, key, fallback, min, max) {
  const value = Number(params.get(key));
  return params.has(key) && Number.isFinite(value) ? Math.min(Math.max(value, min), max) : fallback;
}

function setState(state, detail = "") {
  document.body.dataset.state = state;
  const status = document.getElementById("status");
  status.textContent = detail;
  status.hidden = !detail;
}

function applyStyle(params) {
  const style = document.documentElement.style;
  style.setProperty("--font-size", `${number(params, "font", 36, 8, 200)}px`);
  style.setProperty("--text-color", params.get("color") || "white");
  const bg = params.get("bg") || "transparent";
  style.setProperty("--page-bg", bg === "transparent" ? "transparent" : bg);
  document.body.classList.toggle("top", params.get("position") === "top");
}

async function main() {
  const config = JSON.parse(document.getElementById("roomscribe-config").textContent);
  const params = new URLSearchParams(location.search);
  applyStyle(params);
  const room = params.get("room");
  const server = params.get("nats") || config.natsUrl;
  if (!room) return setState("error", "add ?room=<room id> to the address");
  if (!server) return setState("error", "no NATS WebSocket address: add ?nats=ws://host:port");
  const board = new CaptionBoard(document.getElementById("captions"), {
    lines: number(params, "lines", 3, 1, 20),
    fadeSeconds: number(params, "fade", 8, 1, 3600),
  });
  setState("connecting");
  const nc = await wsconnect({
    servers: server,
    name: "roomscribe-overlay",
    waitOnFirstConnect: true,
    maxReconnectAttempts: -1,
    ...(params.get("user") ? { user: params.get("user"), pass: params.get("pass") || "" } : {}),
  });
  (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") setState("reconnecting", "reconnecting to NATS...");
      if (status.type === "reconnect") setState("connected");
    }
  })();
  const sub = nc.subscribe(roomCaptions(config.prefix, room));
  await nc.flush();
  setState("connected");
  for await (const msg of sub) {
    let frame;
    try {
      frame = msg.json();
    } catch {
      continue;
    }
    if (frame.type === "error") console.warn(frame.code, frame.message);
    else board.handle(frame);
  }
}

main().catch((err) => setState("error", `captions stopped: ${err.message || err}`));
