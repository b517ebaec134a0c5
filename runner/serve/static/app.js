// The page's core: the API key, calls to the API (the same routes every client uses), the views,
// and the Adapters view. Plain JavaScript, no library, nothing from a CDN.
"use strict";

const R = {views: {}, adapters: [], bases: [], models: []};
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

R.key = () => localStorage.getItem("runner-key") || "";

R.headers = (json) => {
  const h = json ? {"Content-Type": "application/json"} : {};
  if (R.key()) h.Authorization = "Bearer " + R.key();
  return h;
};

R.askForKey = (message) => {
  $("#key-message").textContent = message;
  $("#keybar").hidden = false;
  $("#key-input").focus();
};

// fetch with the key; a 401 opens the key form instead of leaving a broken screen. `signal` (an
// AbortController's) lets a newer request cancel an older one.
R.call = async (path, body, raw, signal) => {
  const options = body === undefined ? {headers: R.headers(false), signal}
    : {method: "POST", headers: R.headers(true), body: JSON.stringify(body), signal};
  const response = await fetch(path, options);
  if (response.status === 401) {
    R.askForKey(R.key() ? "The server refused this API key: enter the right one."
      : "This server needs an API key: enter it to go on.");
    throw new Error(R.AUTH);
  }
  if (raw) return response;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
};

R.AUTH = "the API key is missing or wrong";  // said by the key form already: no second notice for it

R.notice = (text) => {
  if (text === R.AUTH) return;
  const box = $("#notice");
  box.textContent = text || "";
  box.hidden = !text;
};

R.percent = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
R.interval = (ci) => (ci ? ` [${(100 * ci[0]).toFixed(1)}, ${(100 * ci[1]).toFixed(1)}]` : "");
R.when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–");

// A report holds the key's protection too: fetched with the key and shown in a sandboxed frame (an
// opaque origin, no script: the report's HTML can neither read this page's key nor act as the page).
R.openReport = async (path) => {
  const response = await R.call(path, undefined, true);
  if (!response.ok) return R.notice("the report could not be read: " + response.statusText);
  const frame = el("iframe", {id: "report-frame", sandbox: "", title: "eval report", srcdoc: await response.text()});
  $("#report-title").textContent = path;
  $("#report-frame").replaceWith(frame);
  $("#report-box").showModal();
};
$("#report-close").addEventListener("click", () => {
  $("#report-box").close();
  $("#report-frame").replaceWith(el("iframe", {id: "report-frame", sandbox: "", title: "eval report"}));
});

R.show = (name) => {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.view === name);
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + name;
  location.hash = name;
  R.current = name;
  if (R.views[name]) R.views[name]().catch((e) => R.notice(e.message));
};

R.loadModels = async () => {
  const [models, adapters] = await Promise.all([R.call("/v1/models"), R.call("/v1/adapters")]);
  R.models = models.data;
  R.adapters = adapters.data;
  R.bases = adapters.bases;
};

R.card = (id) => R.adapters.find((a) => a.id === id) || R.bases.find((b) => b.id === id);

const fixed = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const table = (heads, rows) => el("table", {class: "figures"},
  el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), el("tbody", {}, rows));

// An adapter's eval figures, base -> tuned: accuracy with its interval and the change, the calibration
// error (ECE), free-text ROUGE-L and BLEU, and the held-out perplexity. Shown in Adapters and in Chat.
R.figures = (a) => {
  const parts = [];
  if (a.benchmarks.length) {
    parts.push(table(["benchmark", "n", "base", "tuned", "change", "ECE"], a.benchmarks.map((b) => el("tr", {},
      el("td", {}, b.name), el("td", {}, b.n),
      el("td", {}, R.percent(b.base), el("small", {}, R.interval(b.base_ci95))),
      el("td", {}, R.percent(b.tuned), el("small", {}, R.interval(b.tuned_ci95))),
      el("td", {}, b.delta === null ? "–" : `${b.delta >= 0 ? "+" : ""}${(100 * b.delta).toFixed(1)} pt`,
        el("small", {}, R.interval(b.delta_ci95))),
      el("td", {class: "ece"}, `${fixed(b.base_ece, 3)} → ${fixed(b.tuned_ece, 3)}`)))));
  }
  if (a.free_text && a.free_text.length) {
    parts.push(table(["free text", "n", "ROUGE-L base → tuned", "BLEU base → tuned"], a.free_text.map((t) => el("tr", {},
      el("td", {}, t.name), el("td", {}, t.n),
      el("td", {}, `${fixed(t.base_rougeL, 1)} → ${fixed(t.tuned_rougeL, 1)}`),
      el("td", {}, `${fixed(t.base_bleu, 1)} → ${fixed(t.tuned_bleu, 1)}`)))));
  }
  if (a.perplexity) {
    parts.push(el("p", {class: "perplexity"}, `held-out perplexity ${fixed(a.perplexity.base, 2)} → ` +
      `${fixed(a.perplexity.tuned, 2)} (base → tuned${a.perplexity.tokens ? `, ${a.perplexity.tokens} tokens` : ""})`));
  }
  return parts.length ? el("div", {class: "figure-box"}, parts) : el("p", {class: "hint"}, "no eval figures");
};

function adapterCard(a) {
  const actions = el("div", {class: "row"},
    el("button", {onclick: () => { R.chatWith(a.id); }}, "Chat"),
    a.report ? el("button", {class: "quiet", onclick: () => R.openReport(a.report)}, "Report") : null,
    a.loaded ? el("button", {class: "quiet", onclick: () => unload(a.id)}, "Unload") : null);
  return el("article", {class: "card", "data-adapter": a.id},
    el("h2", {}, a.id, el("span", {class: "hint"}, a.loaded ? " loaded at run time" : "")),
    el("dl", {},
      el("dt", {}, "spec"), el("dd", {}, a.name),
      el("dt", {}, "base"), el("dd", {}, a.base),
      el("dt", {}, "key"), el("dd", {}, el("code", {}, (a.export_key || "–").slice(0, 12))),
      el("dt", {}, "made"), el("dd", {}, R.when(a.created)),
      el("dt", {}, "flags"), el("dd", {}, a.flags === null || a.flags === undefined ? "–" : a.flags)),
    R.figures(a), actions);
}

async function unload(id) {
  await R.call("/v1/unload_lora_adapter", {lora_name: id}).catch((e) => R.notice(e.message));
  await R.views.adapters();
}

R.views.adapters = async () => {
  await R.loadModels();
  const list = $("#adapter-list");
  list.replaceChildren(...(R.adapters.length ? R.adapters.map(adapterCard)
    : [el("p", {class: "hint"}, "No adapter in the store yet: train one in Train.")]));
};

$("#load-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await R.call("/v1/load_lora_adapter", {lora_name: $("#load-name").value, lora_path: $("#load-path").value});
    R.notice("");
    await R.views.adapters();
  } catch (e) { R.notice(e.message); }
});

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("runner-key", $("#key-input").value.trim());
  $("#key-input").value = "";
  $("#keybar").hidden = true;
  R.notice("");
  R.show(R.current || "chat");
});
$("#key-forget").addEventListener("click", () => { localStorage.removeItem("runner-key"); });
$("#key-toggle").addEventListener("click", () => {
  const bar = $("#keybar");
  bar.hidden = !bar.hidden;
  if (!bar.hidden) $("#key-message").textContent = R.key() ? "A key is saved; enter another to replace it."
    : "No key saved (none is needed when the server has none).";
});
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => R.show(b.dataset.view));
const VIEWS = ["chat", "adapters", "train", "jobs"];
const fromHash = () => (VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "chat");
window.addEventListener("DOMContentLoaded", () => R.show(fromHash()));
window.addEventListener("hashchange", () => { if (fromHash() !== R.current) R.show(fromHash()); });
