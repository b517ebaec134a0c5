// Chat: the chosen model and its base answer the same question side by side, streamed token by
// token through /v1/chat/completions (stream: true, server-sent events), safety flags beneath each.
"use strict";

function params() {
  const number = (id) => Number($(id).value);
  return {max_tokens: number("#p-max"), temperature: number("#p-temp"), top_p: number("#p-top"),
          seed: number("#p-seed")};
}

function fillQueries(card) {
  const box = $("#chat-queries");
  const queries = card ? card.queries : [];
  box.replaceChildren(...(queries.length ? [el("span", {class: "hint"}, "The spec's queries:")] : []),
    ...queries.map((q) => el("button", {class: "chip", onclick: () => { $("#chat-input").value = q; ask(); }}, q)));
}

function chosen() {
  const id = $("#chat-model").value;
  const model = R.models.find((m) => m.id === id);
  const base = model && model.parent ? model.parent : null;
  return {id, base};
}

function describe() {
  const {id, base} = chosen();
  $("#chat-versus").textContent = base ? `compared with its base ${base}` : "a base model: the right pane is empty";
  $("#pane-base .model-id").textContent = base || id;
  $("#pane-adapter .model-id").textContent = base ? id : "–";
  const card = R.card(id);
  fillQueries(card);
  // the eval figures of the chosen adapter beside its answers: what the benchmarks said, base -> tuned
  $("#chat-figures").replaceChildren(...(card && base ? [el("h2", {}, `eval of ${id}`), R.figures(card)] : []));
  if (card) {  // the spec's own generation settings: the eval's answers are these, greedy by default
    $("#p-max").value = card.generation.max_tokens;
    $("#p-temp").value = card.generation.temperature;
    $("#p-top").value = card.generation.top_p;
    $("#p-seed").value = card.generation.seed;
  }
}

let loads = 0;

R.views.chat = async () => {
  const keep = R.wanted || $("#chat-model").value;  // "Chat with" names the model it wants
  const ticket = ++loads;
  await R.loadModels();
  if (ticket !== loads) return;  // a newer load (a click meanwhile) chooses the model
  R.wanted = null;
  const select = $("#chat-model");
  select.replaceChildren(...R.models.map((m) => el("option", {value: m.id},
    m.parent ? `${m.id} (adapter on ${m.parent})` : `${m.id} (base)`)));
  const first = R.models.find((m) => m.parent) || R.models[0];
  if (keep && R.models.some((m) => m.id === keep)) select.value = keep;
  else if (first) select.value = first.id;
  describe();
};

// One load of the view, with `id` chosen in it (two overlapping loads could each pick a model).
R.chatWith = (id) => {
  R.wanted = id;
  R.show("chat");
};

// One streamed answer into `pane`: the deltas appended as they come, then the flags.
async function stream(pane, model, question, settings) {
  const answer = $(".answer", pane), meta = $(".meta", pane), flagBox = $(".flags", pane);
  answer.textContent = "";
  flagBox.replaceChildren();
  pane.dataset.state = "streaming";
  meta.textContent = "…";
  const started = performance.now();
  let tokens = 0, finish = null;
  const response = await R.call("/v1/chat/completions", {model, stream: true, ...settings,
    messages: [{role: "user", content: question}]}, true);
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    pane.dataset.state = "failed";
    throw new Error((data.error && data.error.message) || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) { answer.textContent += choice.delta.content; tokens += 1; }
      if (choice && choice.finish_reason) finish = choice.finish_reason;
    }
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  meta.textContent = `${tokens} chunks in ${seconds} s, finish: ${finish || "?"} · ` +
    `max_tokens ${settings.max_tokens}, temperature ${settings.temperature}, top-p ${settings.top_p}, seed ${settings.seed}`;
  await showFlags(flagBox, model, answer.textContent);
  pane.dataset.state = "done";
}

// As the eval report shows them: rule and the words that raised it, or that none did.
async function showFlags(box, model, text) {
  const found = (await R.call("/v1/safety/flags", {model, text})).data;
  box.replaceChildren(found.length
    ? el("table", {class: "flag-table"}, el("tr", {}, el("th", {}, "rule"), el("th", {}, "matched")),
        found.map((f) => el("tr", {}, el("td", {}, f.rule), el("td", {}, el("code", {}, f.match)))))
    : el("p", {class: "hint"}, "No safety flag."));
}

async function ask() {
  const question = $("#chat-input").value.trim();
  if (!question) return;
  const {id, base} = chosen();
  const settings = params();
  const runs = [stream($("#pane-base"), base || id, question, settings)];
  if (base) runs.push(stream($("#pane-adapter"), id, question, settings));
  else { $("#pane-adapter .answer").textContent = ""; }
  $("#chat-send").disabled = true;
  try {
    const results = await Promise.allSettled(runs);
    const failed = results.find((r) => r.status === "rejected");
    R.notice(failed ? failed.reason.message : "");
  } finally {
    $("#chat-send").disabled = false;
  }
}

$("#chat-model").addEventListener("change", describe);
$("#chat-form").addEventListener("submit", (event) => { event.preventDefault(); ask(); });
$("#chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); ask(); }
});
