// rvm-live web page: preview, background controls, pause/resume/reset and live stats.
// Plain script, no build step. The control token (if the daemon has one) comes from the address
// (#token=... or ?token=...) or the form, is kept for this tab only, and goes out as a bearer header;
// the preview <img> cannot send headers, so /stream.mjpg gets it as ?token=. With several streams a picker
// chooses the one the preview, the stats and every control act on.
"use strict";

const TOKEN_KEY = "rvm-live-token";
const HISTORY_S = 60;
const $ = (id) => document.getElementById(id);
const samples = [];  // {fps, p95} once a second, the last minute
const FPS_WINDOW = 5;  // seconds
const recent = [];    // the last few stats samples, for fps from deltas
let token = takeToken();
let stream = null;  // the picked stream's id; null while the daemon runs one stream
let uploadedName = null;  // what this tab last uploaded, to name it in Settings

function takeToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  const fromQuery = new URLSearchParams(location.search).get("token");
  const found = fromHash || fromQuery;
  if (found) {
    sessionStorage.setItem(TOKEN_KEY, found);
    window.history.replaceState(null, "", location.pathname);  // keep the secret out of the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function say(text, isError = true) {
  const el = $("message");
  el.textContent = text;
  el.style.color = isError ? "" : "var(--dim)";
}

// the routes of the picked stream: /streams/<id>/... when there are several, the plain ones otherwise
const streamPath = (path) => (stream === null ? path : "/streams/" + encodeURIComponent(stream) + path);
const streamQuery = () => (stream === null ? "" : "stream=" + encodeURIComponent(stream));

async function api(method, path, body, contentType = "application/json") {
  const headers = {};
  if (method === "POST" && body === undefined) body = "{}";  // the API takes JSON only on what changes state
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = contentType;
  const res = await fetch(path, { method, headers, body, cache: "no-store" });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) $("token-form").hidden = false;
  if (!res.ok) throw new Error(data.error || res.status + " " + res.statusText);
  return data;
}

async function act(label, method, path, body, contentType) {
  try {
    await api(method, path, body, contentType);
    say(label, false);  // the next poll (within a second) shows the new state
  } catch (err) {
    say(label + " failed: " + err.message);
  }
}

const setBackground = (bg) => act("background: " + bg, "POST", streamPath("/background"), JSON.stringify({ bg }));

function startPreview() {
  const img = $("preview");
  const params = [streamQuery(), token ? "token=" + encodeURIComponent(token) : ""].filter(Boolean);
  const shown = [streamQuery(), token ? "token=…" : ""].filter(Boolean);
  $("stream-url").textContent = location.origin + "/stream.mjpg" + (shown.length ? "?" + shown.join("&") : "");
  img.onerror = () => setTimeout(startPreview, 2000);  // the daemon restarted or the token changed
  img.src = "/stream.mjpg?" + [...params, "t=" + Date.now()].join("&");
}

function upload(file) {
  const limit = Number(document.body.dataset.maxUpload);
  const types = ["image/png", "image/jpeg", "image/webp"];
  if (!types.includes(file.type)) return say("upload: " + (file.type || "this file") + " is not PNG, JPEG or WebP");
  if (limit && file.size > limit) return say(`upload: ${file.size} bytes is over the ${limit}-byte limit`);
  uploadedName = file.name;
  const query = streamQuery();
  act("background: " + file.name, "POST", "/background/image" + (query ? "?" + query : ""), file, file.type);
}

function fmt(value, digits = 1) {
  return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "–";
}

async function poll() {
  let stats;
  try {
    stats = await api("GET", streamPath("/stats"));
  } catch (err) {
    $("state").textContent = "offline";
    $("state").className = "badge down";
    return say(err.message);
  }
  // fps over the last few seconds: one-second counts of a slow pipeline jump between 0 and 2
  recent.push({ t: performance.now() / 1000, frames_in: stats.frames_in, frames_out: stats.frames_out });
  if (recent.length > FPS_WINDOW + 1) recent.shift();
  const first = recent[0], now = recent[recent.length - 1];
  let fpsIn = null, fpsOut = null;
  if (now.t > first.t && now.frames_out >= first.frames_out) {  // (a restarted daemon counts from 0)
    fpsIn = (now.frames_in - first.frames_in) / (now.t - first.t);
    fpsOut = (now.frames_out - first.frames_out) / (now.t - first.t);
  } else if (now.frames_out < first.frames_out) {
    recent.splice(0, recent.length - 1);
  }
  const lat = stats.latency_ms || {};
  $("fps-in").textContent = fmt(fpsIn);
  $("fps-out").textContent = fmt(fpsOut ?? stats.fps_out);
  $("lat-p50").textContent = fmt(lat.p50, 0);
  $("lat-p95").textContent = fmt(lat.p95, 0);
  $("drops").textContent = stats.frames_dropped ?? "–";
  const state = stats.paused ? "paused" : stats.source_up === false ? "down" : "ok";
  $("state").textContent = { ok: "running", paused: "paused", down: "source lost" }[state];
  $("state").className = "badge " + state;
  if (fpsOut !== null) {
    samples.push({ fps: fpsOut, p95: lat.p95 });
    if (samples.length > HISTORY_S) samples.shift();
  }
  drawChart();
  showSettings(stats);
}

function showSettings(stats) {
  showSwatch(stats.background_color);
  const rows = {
    background: backgroundName(stats.background),
    engine: stats.engine,
    backbone: stats.backbone,
    device: stats.device,
    quality: stats.quality,
    "downsample ratio": stats.downsample_ratio,
    paused: stats.paused,
    outputs: stats.sinks ? Object.keys(stats.sinks).join(", ") : undefined,
    uptime: stats.uptime_s !== undefined ? fmt(stats.uptime_s, 0) + " s" : undefined,
  };
  const dl = $("settings");
  dl.replaceChildren();
  for (const [key, value] of Object.entries(rows)) {
    if (value === undefined || value === null) continue;
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = key;
    dd.textContent = String(value);
    dd.id = "setting-" + key.replace(" ", "-");
    dl.append(dt, dd);
  }
}

// an upload is a file in the daemon's private temporary folder: name it, not its path
function backgroundName(bg) {
  if (typeof bg !== "string" || !bg.includes("/rvm-live-upload-")) return bg;
  return "uploaded image" + (uploadedName ? " (" + uploadedName + ")" : "");
}

// the swatch shows the colour the daemon really uses (it names "green" the green of a green screen)
function showSwatch(hex) {
  const input = $("color");
  if (typeof hex === "string" && document.activeElement !== input && input.value !== hex) input.value = hex;
}

async function loadStreams() {
  let listed = [];
  try {
    listed = (await api("GET", "/streams")).streams || [];
  } catch (err) {
    return;  // the token form or the offline badge says why
  }
  const picker = $("stream");
  $("stream-picker").hidden = listed.length < 2;
  if (listed.length < 2) {
    stream = null;
    return;
  }
  picker.replaceChildren(...listed.map((s) => new Option(String(s.id), String(s.id))));
  if (!listed.some((s) => String(s.id) === stream)) stream = String(listed[0].id);
  picker.value = stream;
}

function pickStream(id) {
  stream = id;
  samples.length = 0;
  recent.length = 0;
  startPreview();
  poll();
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  ctx.clearRect(0, 0, w, h);
  const series = [["fps", "#4caf50", " fps"], ["p95", "#64b5f6", " ms"]];
  for (const [key, colour, unit] of series) {
    const values = samples.map((s) => s[key]).filter((v) => typeof v === "number");
    if (values.length < 2) continue;
    const max = Math.max(...values);
    const top = max * 1.1 || 1;
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    samples.forEach((s, i) => {
      const x = pad + (w - 2 * pad) * (i + HISTORY_S - samples.length) / (HISTORY_S - 1);
      const y = h - pad - (h - 2 * pad) * (s[key] || 0) / top;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = colour;
    ctx.textAlign = key === "fps" ? "left" : "right";
    ctx.fillText(max.toFixed(key === "fps" ? 1 : 0) + unit, key === "fps" ? pad : w - pad, 12);
  }
}

function wire() {
  $("color").addEventListener("change", (e) => setBackground(e.target.value));
  $("blur").addEventListener("input", (e) => ($("blur-value").textContent = e.target.value));
  $("blur").addEventListener("change", (e) => setBackground("blur:" + e.target.value));
  $("blur-apply").addEventListener("click", () => setBackground("blur:" + $("blur").value));
  $("transparent").addEventListener("click", () => setBackground("transparent"));
  $("upload").addEventListener("change", (e) => e.target.files[0] && upload(e.target.files[0]));
  for (const name of ["pause", "resume", "reset"]) {
    $(name).addEventListener("click", () => act(name, "POST", streamPath("/" + name)));
  }
  $("stream").addEventListener("change", (e) => pickStream(e.target.value));
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-form").hidden = true;
    say("", false);
    await loadStreams();
    startPreview();
    poll();
  });
}

async function main() {
  wire();
  await loadStreams();
  startPreview();
  poll();
  setInterval(poll, 1000);
}

main();
