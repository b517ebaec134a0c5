// Jobs: every job with its status; the chosen one stage by stage, its loss and learning-rate curves
// growing live (GET .../progress, the train stage's metrics.jsonl), time left, Cancel, and once it
// succeeded, its report and its adapter in Chat.
"use strict";

const ENDED = ["succeeded", "failed", "cancelled"];
let poller = null;

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`
    : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

// A line chart on a <canvas>: `ys` against `xs`, its range written on the axes.
function draw(canvas, xs, ys, colour, label, lastStep) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300, height = canvas.clientHeight || 160;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.dataset.points = String(ys.length);
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#555";
  g.fillText(label, 6, 12);
  const pad = {l: 48, r: 8, t: 18, b: 20};
  const good = ys.map((y, i) => [xs[i], y]).filter(([, y]) => y !== null && Number.isFinite(y));
  if (!good.length) { g.fillText("no points yet", pad.l, height / 2); return; }
  // the x axis spans the whole run (its total steps, once the trainer's bar has said it): the curve grows into it
  const [x0, x1] = [Math.min(...good.map((p) => p[0])), Math.max(lastStep || 0, ...good.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...good.map((p) => p[1])), Math.max(...good.map((p) => p[1]))];
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const px = (x) => pad.l + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const py = (y) => pad.t + (1 - (y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  g.strokeStyle = "#ccc";
  g.strokeRect(pad.l, pad.t, width - pad.l - pad.r, height - pad.t - pad.b);
  g.fillText(y1.toPrecision(3), 2, pad.t + 8);
  g.fillText(y0.toPrecision(3), 2, height - pad.b);
  g.fillText(`step ${x0}`, pad.l, height - 5);
  g.fillText(`${x1}`, width - pad.r - 24, height - 5);
  g.strokeStyle = colour;
  g.lineWidth = 1.5;
  g.beginPath();
  good.forEach(([x, y], i) => (i ? g.lineTo(px(x), py(y)) : g.moveTo(px(x), py(y))));
  g.stroke();
}

function detail(p) {
  const box = $("#job-detail");
  const stages = el("ol", {class: "stages"}, p.stages.map((s) => el("li", {class: "badge " + s.status,
    "data-stage": s.stage}, `${s.stage}: ${s.status}`)));
  const pct = p.total_steps ? ` (${Math.round(100 * p.step / p.total_steps)}%)` : "";
  const facts = el("p", {class: "facts"},
    el("span", {class: "badge " + p.status, "data-testid": "job-status"}, p.status), " ",
    p.step !== null ? `step ${p.step} of ${p.total_steps}${pct} · ` : "",
    `time left ${ENDED.includes(p.status) ? "–" : clock(p.time_left_s)} · ${p.points.length} points`);
  const links = el("div", {class: "row"},
    ENDED.includes(p.status) ? null : el("button", {class: "danger", onclick: () => cancel(p.id)}, "Cancel"),
    p.report ? el("button", {class: "quiet", onclick: () => R.openReport(p.report)}, "Report") : null,
    p.fine_tuned_model ? el("button", {onclick: () => R.chatWith(p.fine_tuned_model)},
      `Chat with ${p.fine_tuned_model}`) : null);
  const error = p.error ? el("p", {class: "bad"}, p.error.message) : null;
  let loss = $("#loss-chart"), lr = $("#lr-chart");
  if (!loss || box.dataset.job !== p.id) {
    loss = el("canvas", {id: "loss-chart", class: "chart"});
    lr = el("canvas", {id: "lr-chart", class: "chart"});
    box.replaceChildren(el("h2", {}, p.id), el("div", {id: "job-head"}), el("div", {class: "charts"}, loss, lr));
    box.dataset.job = p.id;
  }
  $("#job-head").replaceChildren(...[facts, stages, error, links].filter(Boolean));
  const steps = p.points.map((q) => q.step);
  draw(loss, steps, p.points.map((q) => q.loss), "#c0392b", "training loss", p.total_steps);
  draw(lr, steps, p.points.map((q) => q.learning_rate), "#2471a3", "learning rate", p.total_steps);
}

async function cancel(id) {
  await R.call(`/v1/fine_tuning/jobs/${id}/cancel`, {}).catch((e) => R.notice(e.message));
  await refresh();
}

async function refresh() {
  const jobs = (await R.call("/v1/fine_tuning/jobs?limit=1000")).data;  // the page lists them all
  if (!R.selectedJob && jobs.length) R.selectedJob = jobs[0].id;
  $("#job-list").replaceChildren(...(jobs.length ? jobs.map((j) => el("li", {
    class: j.id === R.selectedJob ? "chosen" : "", "data-job": j.id,
    onclick: () => { R.selectedJob = j.id; refresh(); }},
  el("span", {class: "badge " + j.status}, j.status), " ", el("code", {}, j.id.slice(6, 14)), " ",
  el("span", {class: "hint"}, R.when(j.created_at)))) : [el("li", {class: "hint"}, "No job yet: launch one in Train.")]));
  if (R.selectedJob) detail(await R.call(`/v1/fine_tuning/jobs/${R.selectedJob}/progress`));
  return jobs;
}

R.views.jobs = async () => {
  clearInterval(poller);
  await refresh();
  // While the Jobs view is open, a second apart: the curve grows as the train stage logs.
  poller = setInterval(() => {
    if (R.current !== "jobs") { clearInterval(poller); return; }
    refresh().catch((e) => R.notice(e.message));
  }, 1000);
};
