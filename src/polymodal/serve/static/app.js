// The search page: plain DOM, no build step. Talks to the JSON API of the same server.
// A text search lives in the URL (?q=...&k=...&collection=...), so it can be shared and bookmarked.
"use strict";

const $ = (id) => document.getElementById(id);
const blobUrls = [];
let playing = null;
let defaultCollection = null;
let searches = 0;  // a start hint that arrives after a search began must not replace its results

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

// What to do next, shown in place of results: before a search, for an empty collection, for no hits.
function hint(text) {
  const p = document.createElement("p");
  p.className = "hint";
  p.textContent = text;
  $("results").replaceChildren(p);
}

async function showStartHint() {
  const name = $("collection").value;
  const before = searches;
  if (!name) {
    hint("This server has no collections yet: build one with `polymodal index build`, or create one with " +
         "POST /v1/collections/NAME and add items with POST /v1/collections/NAME/items.");
    return;
  }
  let count = null;
  try {
    count = (await api("/v1/collections/" + encodeURIComponent(name))).count;
  } catch (err) { /* the hint below still helps */ }
  if (searches !== before) return;
  if (count === 0) {
    hint(`The collection “${name}” is empty: add items with POST /v1/collections/${name}/items ` +
         "(or `polymodal index build`), then search here.");
  } else {
    const n = count === null ? "" : ` its ${count} items`;
    hint(`Describe what you are looking for (e.g. “a red circle”) to search${n}, or pick an image or ` +
         "audio file to find items like it. Each search gets its own URL to share.");
  }
}

async function loadCollections(wanted) {
  try {
    const data = await api("/v1/collections");
    defaultCollection = data.default;
    const pick = data.collections.includes(wanted) ? wanted : data.default;
    const sel = $("collection");
    sel.replaceChildren(...data.collections.map((name) => {
      const o = document.createElement("option");
      o.value = o.textContent = name;
      o.selected = name === pick;
      return o;
    }));
    if (!data.collections.length) status("no collections on this server yet", true);
  } catch (err) {
    status("cannot list collections: " + err.message, true);
  }
}

// ?q=TEXT&k=N&collection=NAME -> the form; the form -> the URL (only what differs from the defaults)
function formFromUrl() {
  const params = new URLSearchParams(location.search);
  $("q").value = params.get("q") || "";
  const k = params.get("k");
  $("k").value = k && [...$("k").options].some((o) => o.value === k) ? k : "10";
  return params;
}

function urlFromForm() {
  const params = new URLSearchParams();
  const text = $("q").value.trim();
  if (text) params.set("q", text);
  if ($("k").value !== "10") params.set("k", $("k").value);
  const collection = $("collection").value;
  if (collection && collection !== defaultCollection) params.set("collection", collection);
  const query = params.toString();
  return location.pathname + (query ? "?" + query : "");
}

// "why?" (image hits of a text search): the occlusion map of the image for the query (POST /v1/explain), shown
// in place of the thumbnail; a second click shows the image again.
function whyButton(hit, collection, text, div) {
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "why";
  btn.textContent = "why?";
  btn.title = "which part of the image matched the query";
  let overlay = null;
  btn.addEventListener("click", async () => {
    const img = div.querySelector("img.thumb");
    if (!img) return;
    if (img.dataset.plain) {
      img.src = img.dataset.plain;
      delete img.dataset.plain;
      btn.textContent = "why?";
      return;
    }
    btn.disabled = true;
    try {
      if (!overlay) {
        const body = { text, id: hit.id };
        if (collection) body.collection = collection;
        overlay = "data:image/png;base64," + (await api("/v1/explain", body)).overlay;
      }
      img.dataset.plain = img.src;
      img.src = overlay;
      btn.textContent = "hide why";
    } catch (err) {
      status("why? " + err.message, true);
    } finally {
      btn.disabled = false;
    }
  });
  return btn;
}

function card(hit, collection, text) {
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
  if (hit.media.image && text) div.append(whyButton(hit, collection, text, div));
  return div;
}

async function search(event) {
  if (event) event.preventDefault();
  searches += 1;
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
    const url = urlFromForm();
    if (event && url !== location.pathname + location.search) history.pushState(null, "", url);
    status("searching\u2026");
    const t0 = performance.now();
    const data = await api("/v1/search", body);
    blobUrls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    $("results").replaceChildren(...data.hits.map((hit) => card(hit, data.collection, text)));
    if (!data.hits.length) {
      hint(`No results in \u201C${data.collection}\u201D: try other words, another file, or another collection.`);
    }
    const ms = Math.round(performance.now() - t0);
    status(`${data.hits.length} results from ${data.collection} (${data.inputs.join(" + ")}) in ${ms} ms`);
  } catch (err) {
    status(err.message, true);
  }
}

// Fill the form from the URL and run its search, if it names one (page load, back/forward).
async function fromUrl() {
  const params = formFromUrl();
  status("");
  await loadCollections(params.get("collection"));
  if ($("q").value.trim()) {
    search(null);
  } else {
    blobUrls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    showStartHint();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", search);
  $("apikey").addEventListener("change", () => loadCollections($("collection").value).then(showStartHint));
  $("collection").addEventListener("change", () => { if (!$("results").querySelector(".hit")) showStartHint(); });
  window.addEventListener("popstate", fromUrl);
  fromUrl();
});
