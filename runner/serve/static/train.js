// Train: a spec editor validated as you type (the server says what `runner validate` says, line by
// line), the plan shown before launch (what runs, what is cached and why, the memory estimate), and
// Launch, which creates a job as POST /v1/fine_tuning/jobs does for any client.
"use strict";

// Each pause in typing is validated (fast); the plan (which reads the store) waits for a longer rest,
// and a newer edit aborts the plan request still on its way.
const VALIDATE_PAUSE = 350, PLAN_PAUSE = 1000;
let specs = [], timer = null, planTimer = null, planning = null, asked = 0, lastValid = false;

R.views.train = async () => {
  specs = (await R.call("/v1/specs")).data;
  const select = $("#spec-start");
  const keep = select.value;
  select.replaceChildren(...specs.map((s, i) => el("option", {value: String(i)},
    s.origin === "template" ? "template" : `${s.name} (run ${R.when(s.created)})`)));
  if (keep && Number(keep) < specs.length) select.value = keep;
  else if (specs.length > 1) select.value = "1";  // the newest spec in the store, else the template
  if (!$("#spec-editor").value) useSpec();
};

function useSpec() {
  const chosen = specs[Number($("#spec-start").value)];
  if (!chosen) return;
  $("#spec-editor").value = chosen.text;
  check(0);
}

// Select line `n` in the editor, so the problem's place is in view.
function goToLine(n) {
  const editor = $("#spec-editor");
  const lines = editor.value.split("\n");
  const start = lines.slice(0, n - 1).reduce((sum, l) => sum + l.length + 1, 0);
  editor.focus();
  editor.setSelectionRange(start, start + (lines[n - 1] || "").length);
  editor.scrollTop = Math.max(0, (n - 4) * 18);
}

function showProblems(result) {
  const status = $("#spec-status");
  status.textContent = result.valid ? result.text : `${result.problems.length} problem(s)`;
  status.className = "status " + (result.valid ? "ok" : "bad");
  const lines = $("#spec-editor").value.split("\n");
  $("#spec-problems").replaceChildren(...result.problems.map((p) => el("li", {class: "problem",
    "data-line": p.line === null ? "" : String(p.line), title: "show the line in the editor",
    onclick: () => p.line && goToLine(p.line)},
    p.line === null ? null : el("b", {}, `line ${p.line}:${p.column} `), el("span", {class: "message"}, p.message),
    p.line === null ? null : el("code", {}, lines[p.line - 1] || ""))));
}

function showPlan(result) {
  if (!result.valid) {
    $("#plan").replaceChildren(el("p", {class: "bad"}, result.text));
    return;
  }
  const rows = result.steps.map((s) => el("tr", {class: "step-" + s.status},
    el("td", {}, s.stage), el("td", {}, el("code", {}, s.key ? s.key.slice(0, 12) : "…")),
    el("td", {}, el("span", {class: "badge " + s.status}, s.status === "run" ? "will run" : s.status)),
    el("td", {}, s.reasons.join("; "))));
  $("#plan").replaceChildren(
    el("p", {}, "profile: " + result.profile),
    el("ul", {class: "hint"}, result.profile_reasons.map((r) => el("li", {}, r))),
    el("table", {class: "plan-table"}, el("tbody", {}, rows)),
    el("div", {class: "memory"}, result.memory.map((m) => el("div", {}, m))));
}

function stopPlanning() {
  clearTimeout(planTimer);
  if (planning) planning.abort();
  planning = null;
}

async function check(planAfter = PLAN_PAUSE) {
  const text = $("#spec-editor").value;
  const ticket = ++asked;  // answers can come back out of order: only the newest is shown
  stopPlanning();
  $("#launch").disabled = true;  // until this text's plan says it can run
  try {
    const result = await R.call("/v1/specs/validate", {spec: text});
    if (ticket !== asked) return;
    showProblems(result);
    lastValid = result.valid;
    if (!result.valid) {
      $("#plan").replaceChildren(el("p", {class: "hint"}, "The plan shows once the spec is valid."));
      return;
    }
    planTimer = setTimeout(() => plan(text, ticket), planAfter);
  } catch (e) { R.notice(e.message); }
}

async function plan(text, ticket) {
  const controller = new AbortController();
  planning = controller;
  try {
    const planned = await R.call("/v1/specs/plan", {spec: text}, false, controller.signal);
    if (ticket !== asked) return;
    showPlan(planned);
    $("#launch").disabled = !planned.valid;
  } catch (e) {
    if (e.name !== "AbortError") R.notice(e.message);
  } finally {
    if (planning === controller) planning = null;
  }
}

async function launch() {
  if (!lastValid) return;
  $("#launch").disabled = true;
  try {
    const job = await R.call("/v1/fine_tuning/jobs", {spec: $("#spec-editor").value});
    R.selectedJob = job.id;
    R.show("jobs");
  } catch (e) {
    R.notice(e.message);
    $("#launch").disabled = false;
  }
}

$("#spec-editor").addEventListener("input", () => {
  clearTimeout(timer);
  stopPlanning();
  asked += 1;  // an answer still on its way is about the text before this edit: not shown
  $("#launch").disabled = true;
  timer = setTimeout(check, VALIDATE_PAUSE);
});
$("#spec-use").addEventListener("click", useSpec);
$("#launch").addEventListener("click", launch);
