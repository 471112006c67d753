// The demo page: one WebRTC call to the gateway over /call/webrtc, driven by the JSON API.
// Plain browser JavaScript, no build step. `window.demo` exposes the page's state (events, stats)
// for anyone who wants to look from the console.
"use strict";

const $ = (id) => document.getElementById(id);
const demo = (window.demo = { events: [], stats: {}, state: "idle", dtmfSent: "" });

let ws = null;
let pc = null;
let mic = null;
let muted = false;
let statsTimer = null;
let interim = null;

$("session").value = "demo-" + Math.random().toString(36).slice(2, 8);
// A gateway with api_tokens: open the page as /?token=<token>; the page sends it with its calls.
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + kind;
  demo.state = kind;
}

function setInCall(on) {
  $("call").disabled = on;
  $("hangup").disabled = !on;
  for (const id of ["tts", "interrupt", "mute"]) $(id).disabled = !on;
  for (const b of $("keypad").querySelectorAll("button")) b.disabled = !on;
  for (const id of ["session", "codec", "vad", "asr", "record"]) $(id).disabled = on;
}

function log(direction, name, detail) {
  const li = document.createElement("li");
  li.className = direction;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString();
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = (direction === "out" ? "→ " : "← ") + name;
  li.append(time, label, document.createTextNode(detail));
  const list = $("log");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

// JSON with a space after each separator, so a long event wraps between its fields in every browser
// (literal newlines only come from the indentation: JSON escapes those inside strings).
const shown = (value) => JSON.stringify(value, null, 1).replace(/\n */g, " ");

function send(command) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify(command));
  if (command.command !== "addIceCandidate") {
    const { command: name, ...rest } = command;
    const detail = name === "invite" ? { ...rest, option: { ...rest.option, offer: "(sdp)" } } : rest;
    log("out", name, Object.keys(detail).length ? shown(detail) : "");
  }
}

function summary(event) {
  const { event: _name, trackId: _t, timestamp: _ts, sdp, ...rest } = event;
  const text = Object.keys(rest).length ? shown(rest) : "";
  return (sdp !== undefined ? "(sdp) " : "") + text;
}

function showTranscript(event) {
  const box = $("transcript");
  const placeholder = box.querySelector(".placeholder");
  if (placeholder) placeholder.remove();
  if (!interim) {
    interim = document.createElement("span");
    interim.className = "delta";
    box.append(interim);
  }
  if (event.event === "asrDelta") {
    interim.textContent = event.text;
  } else {
    interim.className = "final";
    interim.textContent = event.text;
    interim = null;
  }
}

async function onEvent(event) {
  demo.events.push(event);
  log(event.event === "error" ? "error" : "in", event.event, summary(event));
  switch (event.event) {
    case "answer":
      await pc.setRemoteDescription({ type: "answer", sdp: event.sdp });
      setStatus("Connecting media…", "busy");
      break;
    case "asrDelta":
    case "asrFinal":
      showTranscript(event);
      break;
    case "hangup":
      setStatus("Call ended: " + event.reason, "idle");
      break;
  }
}

function invitation(offer) {
  const option = { offer };
  const codec = $("codec").value;
  if (codec) option.codec = codec;
  const vad = $("vad").value;
  if (vad) option.vad = { type: vad };
  if ($("asr").checked) option.asr = { provider: "pocketsphinx" };
  if ($("record").checked) option.recorder = { recorderFile: "{id}.wav" };
  return { command: "invite", option };
}

async function call() {
  setInCall(true);
  setStatus("Starting…", "busy");
  $("transcript").innerHTML = "";
  interim = null;
  try {
    const servers = await (await fetch(withToken("iceservers"))).json();
    mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    pc = new RTCPeerConnection({
      iceServers: servers.map((s) => ({
        urls: s.urls,
        ...(s.username ? { username: s.username } : {}),
        ...(s.credential ? { credential: s.credential } : {}),
      })),
    });
    for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
    pc.onconnectionstatechange = () => {
      const state = pc ? pc.connectionState : "closed";
      if (state === "connected") setStatus("In call", "live");
      if (state === "failed") setStatus("Media connection failed", "failed");
    };

    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const base = location.pathname.replace(/[^/]*$/, "");
    ws = new WebSocket(withToken(`${scheme}//${location.host}${base}call/webrtc?id=${encodeURIComponent($("session").value)}`));
    ws.onmessage = (m) => onEvent(JSON.parse(m.data)).catch((err) => log("error", "page", String(err)));
    ws.onclose = () => end();
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("the gateway's WebSocket did not open"));
    });

    // Trickle ICE: candidates follow the offer as addIceCandidate commands; null ends them.
    pc.onicecandidate = (e) => {
      const c = e.candidate;
      send({
        command: "addIceCandidate",
        candidate: c ? c.candidate : "",
        sdpMid: c ? c.sdpMid : pc.getTransceivers()[0].mid,
        sdpMLineIndex: c ? c.sdpMLineIndex : 0,
      });
    };
    await pc.setLocalDescription(await pc.createOffer());
    send(invitation(pc.localDescription.sdp));
    statsTimer = setInterval(updateStats, 500);
  } catch (err) {
    log("error", "page", String(err));
    setStatus("Could not start: " + err.message, "failed");
    end();
  }
}

function end() {
  if (statsTimer) clearInterval(statsTimer);
  statsTimer = null;
  if (ws && ws.readyState === WebSocket.OPEN) ws.close();
  ws = null;
  if (pc) pc.close();
  pc = null;
  $("stat-level").value = 0;
  if (mic) mic.getTracks().forEach((t) => t.stop());
  mic = null;
  muted = false;
  $("mute").textContent = "Mute";
  $("mute").setAttribute("aria-pressed", "false");
  if (demo.state === "busy" || demo.state === "live") setStatus("Call ended", "idle");
  setInCall(false);
}

async function updateStats() {
  if (!pc) return;
  const report = await pc.getStats();
  const codecs = {};
  report.forEach((s) => { if (s.type === "codec") codecs[s.id] = s.mimeType; });
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      demo.stats.packetsReceived = s.packetsReceived;
      demo.stats.audioLevel = s.audioLevel || 0;
      demo.stats.totalAudioEnergy = s.totalAudioEnergy || 0;
      demo.stats.maxAudioLevel = Math.max(demo.stats.maxAudioLevel || 0, s.audioLevel || 0);
      if (s.codecId && codecs[s.codecId]) demo.stats.codec = codecs[s.codecId];
    } else if (s.type === "outbound-rtp" && s.kind === "audio") {
      demo.stats.packetsSent = s.packetsSent;
    }
  });
  $("stat-codec").textContent = demo.stats.codec || "–";
  $("stat-received").textContent = demo.stats.packetsReceived || 0;
  $("stat-sent").textContent = demo.stats.packetsSent || 0;
  $("stat-level").value = demo.stats.audioLevel || 0;
}

$("call").onclick = call;
$("hangup").onclick = () => send({ command: "hangup" });
$("interrupt").onclick = () => send({ command: "interrupt" });
$("mute").onclick = () => {
  muted = !muted;
  send({ command: muted ? "mute" : "unmute" });
  $("mute").textContent = muted ? "Unmute" : "Mute";
  $("mute").setAttribute("aria-pressed", String(muted));
};
$("tts-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("tts-text").value.trim();
  if (text) send({ command: "tts", text });
};
$("keypad").onclick = (e) => {
  const digit = e.target.closest("button")?.textContent;
  const sender = pc && pc.getSenders().find((s) => s.track && s.track.kind === "audio");
  if (!digit || !sender || !sender.dtmf) return;
  sender.dtmf.insertDTMF(digit, 120, 80);
  demo.dtmfSent += digit;
  log("out", "dtmf", digit + " (RFC 4733)");
};
$("clear").onclick = () => { $("log").innerHTML = ""; };
setInCall(false);
