// The search page: plain DOM, no build step. Talks to the JSON API of the same server.
"use strict";

const $ = (id) => document.getElementById(id);
const blobUrls = [];
let playing = null;

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers(false) } :
    { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = data.error || {};
    throw new Error((e.field ? e.field + ": " : "") + (e.message || resp.statusText));
  }
  return data;
}

// Media go through fetch (not a bare src) so that an API key header can be sent with them.
async function mediaUrl(path) {
  const resp = await fetch(path, { headers: headers(false) });
  if (!resp.ok) return null;
  const url = URL.createObjectURL(await resp.blob());
  blobUrls.push(url);
  return url;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error("cannot read " + file.name));
    r.readAsDataURL(file);
  });
}

async function loadCollections() {
  try {
    const data = await api("/v1/collections");
    const sel = $("collection");
    sel.replaceChildren(...data.collections.map((name) => {
      const o = document.createElement("option");
      o.value = o.textContent = name;
      o.selected = name === data.default;
      return o;
    }));
    if (!data.collections.length) status("no collections on this server yet", true);
  } catch (err) {
    status("cannot list collections: " + err.message, true);
  }
}

function card(hit) {
  const div = document.createElement("div");
  div.className = "hit";
  div.dataset.id = hit.id;
  const meta = hit.metadata || {};
  const caption = meta.caption || meta.text || meta.label || "#" + hit.id;
  const thumb = document.createElement("div");
  thumb.className = "noimg";
  thumb.textContent = hit.media.audio ? "\u266A" : "no image";
  div.append(thumb);
  if (hit.media.image) {
    mediaUrl(hit.media.image).then((url) => {
      if (!url) return;
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = String(caption);
      img.src = url;
      thumb.replaceWith(img);
    });
  }
  const cap = document.createElement("div");
  cap.className = "caption";
  cap.textContent = String(caption);
  const line = document.createElement("div");
  line.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const id = document.createElement("span");
  id.textContent = "#" + hit.id;
  line.append(score, id);
  div.append(cap, line);
  if (hit.media.audio) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "play";
    btn.textContent = "\u25B6 play";
    btn.addEventListener("click", async () => {
      if (playing) playing.pause();
      const url = await mediaUrl(hit.media.audio);
      if (url) { playing = new Audio(url); playing.play(); }
    });
    div.append(btn);
  }
  return div;
}

async function search(event) {
  event.preventDefault();
  const body = { k: Number($("k").value) };
  const collection = $("collection").value;
  if (collection) body.collection = collection;
  const text = $("q").value.trim();
  if (text) body.text = text;
  const file = $("file").files[0];
  try {
    if (file) {
      const kind = file.type.split("/")[0];
      if (kind !== "image" && kind !== "audio") throw new Error("pick an image or an audio file");
      body[kind] = await readFile(file);
    }
    if (!text && !file) throw new Error("type a query or pick a file");
    status("searching\u2026");
    const t0 = performance.now();
    const data = await api("/v1/search", body);
    blobUrls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    $("results").replaceChildren(...data.hits.map(card));
    const ms = Math.round(performance.now() - t0);
    status(`${data.hits.length} results from ${data.collection} (${data.inputs.join(" + ")}) in ${ms} ms`);
  } catch (err) {
    status(err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", search);
  $("apikey").addEventListener("change", loadCollections);
  loadCollections();
});
