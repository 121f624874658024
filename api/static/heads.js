// The head view: a head's versions, and for one version its leaderboard, baseline, plots
// and calibration, drawn from GET /heads/{name}; rollback per version. Every field beyond
// today's metrics is optional (docs: METADATA.md): absent data draws no panel at all.
"use strict";

import { $, api, busy, el, fmt, isNumber, showError } from "./common.js";
import { confusionMatrix, curveChart, dataTable, leaderboardChart, reliabilityDiagram, scoreBars } from "./charts.js";

const METRIC_NAMES = {
  accuracy: "accuracy", macro_f1: "macro F1", weighted_f1: "weighted F1", micro_f1: "micro F1",
  roc_auc: "ROC-AUC", pr_auc: "PR-AUC", log_loss: "log loss", brier: "Brier score", ece: "ECE",
};
const LOWER_IS_BETTER = new Set(["log_loss", "brier", "ece"]);
const KEY_METRICS = ["accuracy", "macro_f1", "roc_auc"];

// Scores, not counts or timings, when a metrics dict is shown as a whole.
const isScore = (key, value) => isNumber(value) && key !== "n_rows" && !/_(seconds|std)$/.test(key);
const metricName = (key) => METRIC_NAMES[key] || key.replaceAll("_", " ");
const object = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

const state = { name: null, head: null, selected: null, request: 0 };
let els = null;
let onHeadsChanged = () => {};

/** Wire the view; `headsChanged` runs after a rollback (to refresh other head lists). */
export function setUpHeadView(headsChanged) {
  onHeadsChanged = headsChanged;
  els = { select: $("view-head"), refresh: $("refresh-head"), status: $("heads-status"), view: $("head-view") };
  els.select.addEventListener("change", () => run("Loading the head…", () => showHead(els.select.value)));
  els.refresh.addEventListener("click", () => run("Loading the head…", () => showHead(els.select.value)));
}

function safely(fn) {
  try { fn(); } catch (e) { showError(e); }
}

function run(label, fn, extra = []) {
  return busy(label, fn, [els.refresh, ...extra], els.status);
}

/** Fill the head picker from GET /heads' answer and (unless `redraw` is off) show the picked head. */
export async function fillHeadPicker(data, preferred, redraw = true) {
  const heads = (data && data.heads) || [];
  const keep = els.select.value || preferred;
  els.select.replaceChildren();
  if (!heads.length) {
    els.select.append(el("option", { value: "" }, "No heads yet"));
    els.view.replaceChildren(el("p", { class: "meta" },
      "No head in the head store yet: train one with POST /heads/{name}/train or python classifier/train.py."));
    state.name = state.head = null;
    return;
  }
  for (const h of heads) {
    const live = h.live_version ? `v${h.live_version}` : "not serving";
    els.select.append(el("option", { value: h.name }, `${h.name} (${live})`));
  }
  const names = heads.map((h) => h.name);
  els.select.value = names.includes(keep) ? keep : names.includes(data.default_head) ? data.default_head : names[0];
  if (redraw || els.select.value !== state.name) await showHead(els.select.value);
}

/** Load GET /heads/{name} and draw it; a stale answer (another head picked since) is dropped. */
async function showHead(name, keepSelection = false) {
  if (!name) return;
  const request = ++state.request;
  const head = await api("GET", `/heads/${encodeURIComponent(name)}`);
  if (request !== state.request) return;
  const versions = [...(head.versions || [])].sort((a, b) => b.version - a.version);
  const numbers = versions.map((v) => v.version);
  let selected = keepSelection && state.name === name ? state.selected : null;
  if (!numbers.includes(selected)) selected = numbers.includes(head.live_version) ? head.live_version : numbers[0];
  Object.assign(state, { name, head: { ...head, versions }, selected });
  draw();
}

function draw() {
  const { head } = state;
  const summary = el("p", { class: "meta", id: "head-summary" },
    head.live_version ? `Live: v${head.live_version}` : "Not serving",
    head.task ? ` · ${head.task}` : "",
    head.labels ? ` · ${head.labels.length} labels` : "",
    ` · ${head.versions.length} version${head.versions.length === 1 ? "" : "s"}`);
  const problem = head.problem ? el("p", { class: "warning", role: "note" }, "Problem: " + head.problem) : null;
  els.view.replaceChildren(summary, problem || "", versionTable(head), versionDetail(head));
}

// -- the versions table -------------------------------------------------------------------

function keyMetrics(metrics) {
  if (!object(metrics)) return el("span", { class: "meta" }, "no held-out metrics");
  const parts = KEY_METRICS.filter((key) => isNumber(metrics[key]))
    .map((key) => el("span", { class: "kv", "data-metric": key }, el("abbr", { title: metricName(key) },
      { accuracy: "acc", macro_f1: "F1", roc_auc: "AUC" }[key]), " " + fmt(metrics[key])));
  return parts.length ? el("span", { class: "kvs" }, ...parts) : el("span", { class: "meta" }, "—");
}

function created(iso) {
  if (typeof iso !== "string") return "—";
  return el("time", { datetime: iso }, iso.replace("T", " ").replace(/\+00:00$|Z$/, " UTC"));
}

function labelList(labels) {
  if (!Array.isArray(labels)) return "—";
  const shown = labels.slice(0, 6).join(", ");
  return el("span", { title: labels.join(", ") }, labels.length > 6 ? `${shown}, +${labels.length - 6} more` : shown);
}

function versionTable(head) {
  const withChosen = head.versions.some((v) => object(v.chosen));
  const headers = ["Version", "Created", "Train rows", "Task", "Labels", "Key metrics",
    ...(withChosen ? ["Chosen candidate"] : []), "Actions"];
  const rows = head.versions.map((v) => {
    const live = v.version === head.live_version;
    const selected = v.version === state.selected;
    const show = el("button", { type: "button", class: "secondary small show", "aria-pressed": String(selected),
      "aria-controls": "version-detail", "aria-label": `Show version ${v.version}`,
      onclick: () => safely(() => { state.selected = v.version; draw(); $("version-detail").focus(); }) }, "Show");
    const rollback = el("button", { type: "button", class: "small rollback", disabled: live,
      "aria-label": live ? `Version ${v.version} is live` : `Roll back: make version ${v.version} live`,
      title: live ? "This version is live" : `POST /heads/${head.name}/rollback {"version": ${v.version}}`,
      onclick: (event) => run(`Making v${v.version} live…`, () => rollBack(head.name, v.version), [event.currentTarget]) },
    live ? "Live" : "Make live");
    const cells = [
      el("th", { scope: "row" }, `v${v.version}`, live ? el("span", { class: "badge live" }, "live") : ""),
      el("td", {}, v.error ? el("span", { class: "warning" }, v.error) : created(v.created)),
      el("td", { class: "num" }, isNumber(v.n_train) ? String(v.n_train) : "—"),
      el("td", {}, v.task || "—"),
      el("td", {}, labelList(v.labels)),
      el("td", {}, keyMetrics(v.metrics)),
      ...(withChosen ? [el("td", { class: "chosen-cell" }, object(v.chosen) ? chosenText(v.chosen) : "—")] : []),
      el("td", { class: "actions-cell" }, show, " ", rollback),
    ];
    return el("tr", { "data-version": v.version, class: (live ? "live" : "") + (selected ? " selected" : "") }, ...cells);
  });
  return el("div", { class: "table-wrap" }, el("table", { id: "versions", class: "versions" },
    el("caption", {}, `Versions of ${head.name}, newest first`),
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows)));
}

function chosenText(chosen) {
  return el("span", {}, el("strong", {}, chosen.candidate || "?"),
    isNumber(chosen.cv_score) ? el("span", { class: "meta" }, ` CV ${fmt(chosen.cv_score)}`) : "");
}

async function rollBack(name, version) {
  const answer = await api("POST", `/heads/${encodeURIComponent(name)}/rollback`, { version });
  await showHead(name, true);
  els.status.textContent = `v${answer.version} of ${name} is live (was v${answer.previous_version}).`;
  // The clicked button is gone with the redraw: keep the keyboard on the same row.
  const row = els.view.querySelector(`#versions tr[data-version="${version}"] button.show`);
  if (row) row.focus();
  await onHeadsChanged();
}

// -- one version ----------------------------------------------------------------------

function versionDetail(head) {
  const v = head.versions.find((item) => item.version === state.selected);
  const box = el("div", { id: "version-detail", tabindex: "-1" });
  if (!v) return box;
  const live = v.version === head.live_version;
  box.append(el("h3", {}, `${head.name} v${v.version}`, live ? el("span", { class: "badge live" }, "live") : ""));
  if (v.error) {
    box.append(el("p", { class: "warning" }, v.error));
    return box;
  }
  const metrics = object(v.metrics) ? v.metrics : {};
  const facts = [];
  if (isNumber(metrics.n_rows)) facts.push(`${metrics.n_rows} held-out rows`);
  if (typeof metrics.evaluated_on === "string") facts.push(metrics.evaluated_on);
  if (object(v.params) && v.params.head) facts.push(`head ${v.params.head}`);
  if (isNumber(v.fit_seconds)) facts.push(`fit ${fmt(v.fit_seconds, 2)} s`);
  if (facts.length) box.append(el("p", { class: "meta" }, facts.join(" · ")));
  const scores = Object.keys(METRIC_NAMES).filter((key) => isNumber(metrics[key]));
  if (scores.length) {
    box.append(el("dl", { class: "scores" }, ...scores.map((key) => el("div", {},
      el("dt", {}, metricName(key)), el("dd", { "data-metric": key }, fmt(metrics[key]))))));
  }
  const panels = [
    leaderboardPanel(v), baselinePanel(v, metrics), confusionPanel(metrics), f1Panel(metrics),
    curvePanel("roc", metrics), curvePanel("pr", metrics), calibrationPanel(v),
  ].filter(Boolean);
  if (panels.length) box.append(el("div", { class: "panels" }, ...panels));
  else box.append(el("p", { class: "meta" }, "This version saved no evaluation to draw (no held-out split)."));
  return box;
}

function panel(id, title, ...body) {
  const heading = `${id}-title`;
  return el("section", { class: "card panel", id, "aria-labelledby": heading },
    el("h4", { id: heading }, title), ...body);
}

function leaderboardPanel(v) {
  if (!Array.isArray(v.leaderboard) || !v.leaderboard.length) return null;
  const valid = (r) => object(r) && typeof r.candidate === "string";
  const scored = v.leaderboard.filter((r) => valid(r) && isNumber(r.cv_score) && (r.status ?? "ok") === "ok");
  const skipped = v.leaderboard.filter((r) => valid(r) && !scored.includes(r));
  const metric = metricName(v.selection_metric || "score");
  const chosen = object(v.chosen) ? v.chosen.candidate : null;
  const notes = [];
  if (chosen) notes.push(el("span", {}, "Chosen: ", el("strong", { class: "chosen-name" }, chosen)));
  if (object(v.search)) {
    const s = v.search;
    const parts = [];
    if (isNumber(s.seconds)) parts.push(`searched ${fmt(s.seconds, 1)} s` + (isNumber(s.budget_seconds) ? ` of a ${s.budget_seconds} s budget` : ""));
    if (isNumber(s.folds)) parts.push(`${s.folds}-fold CV`);
    if (parts.length) notes.push(el("span", { class: "meta" }, " · " + parts.join(", ")));
  }
  const body = [el("p", {}, ...notes)];
  if (scored.length) {
    body.push(el("div", { class: "chart-wrap" }, leaderboardChart(scored, chosen, metric)));
  }
  if (skipped.length) {
    body.push(el("p", { class: "meta" }, `Not scored (${skipped.length}):`),
      el("ul", { class: "skipped" }, ...skipped.map((r) => el("li", { "data-candidate": r.candidate },
        el("span", {}, r.candidate), " — ", el("span", { class: "status" }, r.status || "no score")))));
  }
  body.push(dataTable("Leaderboard", ["Candidate", "Family", "Features", `CV ${metric}`, "± std", "Fit s", "Status"],
    v.leaderboard.filter(valid).map((r) => [r.candidate, r.family || "—", r.features || "—", fmt(r.cv_score),
      fmt(r.cv_std), fmt(r.fit_seconds, 2), r.status || "ok"])));
  return panel("panel-leaderboard", "Leaderboard", ...body);
}

function baselinePanel(v, metrics) {
  const baseline = v.baseline;
  if (!object(baseline) || !object(baseline.metrics)) return null;
  const differences = object(baseline.head_minus_baseline) ? baseline.head_minus_baseline : {};
  const keys = Object.keys(baseline.metrics).filter((key) => isScore(key, baseline.metrics[key]));
  if (!keys.length) return null;
  const rows = keys.map((key) => {
    const mine = metrics[key];
    const theirs = baseline.metrics[key];
    const diff = isNumber(differences[key]) ? differences[key] : isNumber(mine) ? mine - theirs : null;
    let verdict = "same";
    if (isNumber(diff) && Math.abs(diff) >= 0.0005) {
      verdict = (diff > 0) !== LOWER_IS_BETTER.has(key) ? "better" : "worse";
    }
    const sign = isNumber(diff) ? (diff > 0 ? "+" : diff < 0 ? "−" : "±") + Math.abs(diff).toFixed(3) : "—";
    const word = { better: "head better", worse: "head worse", same: "no difference" }[verdict];
    return el("tr", { "data-metric": key },
      el("th", { scope: "row" }, metricName(key)),
      el("td", { class: "num head-value" }, fmt(mine)),
      el("td", { class: "num baseline-value" }, fmt(theirs)),
      el("td", { class: `num diff ${isNumber(diff) ? verdict : ""}`, "data-diff": fmt(diff, 4) },
        sign, isNumber(diff) ? el("span", { class: "sr-only" }, ` (${word})`) : "",
        isNumber(diff) && verdict !== "same" ? el("span", { "aria-hidden": "true" }, verdict === "better" ? " ▲" : " ▼") : ""));
  });
  return panel("panel-baseline", "Against the baseline",
    el("p", {}, "Baseline: ", el("code", { class: "baseline-name" }, baseline.name || "unnamed"),
      el("span", { class: "meta" }, " (fitted on the same split)")),
    el("div", { class: "table-wrap" }, el("table", { class: "baseline" },
      el("caption", { class: "sr-only" }, "This head against the baseline"),
      el("thead", {}, el("tr", {}, ...["Metric", "Head", "Baseline", "Difference"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows))));
}

function confusionPanel(metrics) {
  const matrix = metrics.confusion_matrix;
  const labels = Array.isArray(metrics.labels) ? metrics.labels.map(String) : null;
  const square = (m, n) => Array.isArray(m) && m.length === n &&
    m.every((row) => Array.isArray(row) && row.length === n && row.every(isNumber));
  if (Array.isArray(matrix) && labels && square(matrix, labels.length)) {
    return panel("panel-confusion", "Confusion matrix",
      el("div", { class: "chart-wrap" }, confusionMatrix(matrix, labels, "Confusion matrix")),
      el("p", { class: "meta" }, "Shade: share of the true class's rows."),
      dataTable("Confusion matrix", ["true \\ predicted", ...labels], matrix.map((row, i) => [labels[i], ...row.map(String)])));
  }
  if (object(matrix)) {
    const per = Object.entries(matrix).filter(([, m]) => square(m, 2));
    if (!per.length) return null;
    return panel("panel-confusion", "Confusion matrix per label",
      el("div", { class: "small-multiples" }, ...per.map(([label, m]) => el("figure", { class: "label-matrix", "data-label": label },
        el("figcaption", {}, label), confusionMatrix(m, ["no", "yes"], `Confusion matrix of ${label}`)))),
      el("p", { class: "meta" }, "Per label: rows are the truth (no/yes), columns the prediction; shade: share of the row."),
      dataTable("Confusion matrix per label", ["label", "true negatives", "false positives", "false negatives", "true positives"],
        per.map(([label, m]) => [label, String(m[0][0]), String(m[0][1]), String(m[1][0]), String(m[1][1])])));
  }
  return null;
}

function f1Panel(metrics) {
  const per = metrics.per_class;
  if (!object(per)) return null;
  const items = Object.entries(per).filter(([, s]) => object(s) && isNumber(s.f1)).map(([label, s]) => ({ label, value: s.f1 }));
  if (!items.length) return null;
  const extra = ["roc_auc", "threshold"].filter((key) => Object.values(per).some((s) => object(s) && isNumber(s[key])));
  return panel("panel-f1", "F1 per class",
    el("div", { class: "chart-wrap" }, scoreBars(items, "F1 per class", "F1")),
    dataTable("Scores per class", ["class", "precision", "recall", "F1", "support", ...extra.map(metricName)],
      Object.entries(per).filter(([, s]) => object(s)).map(([label, s]) => [label, fmt(s.precision), fmt(s.recall),
        fmt(s.f1), isNumber(s.support) ? String(s.support) : "—", ...extra.map((key) => fmt(s[key]))])));
}

function curvePanel(kind, metrics) {
  const all = object(metrics.curves) ? metrics.curves[kind] : null;
  if (!object(all)) return null;
  const curves = Object.fromEntries(Object.entries(all).filter(([, c]) => object(c) && Array.isArray(c.x) &&
    Array.isArray(c.y) && c.x.length === c.y.length && c.x.length > 1 && c.x.every(isNumber) && c.y.every(isNumber)));
  if (!Object.keys(curves).length) return null;
  const per = object(metrics.per_class) ? metrics.per_class : {};
  const key = kind === "roc" ? "roc_auc" : "pr_auc";
  const notes = Object.fromEntries(Object.keys(curves).map((label) =>
    [label, object(per[label]) && isNumber(per[label][key]) ? `${metricName(key)} ${fmt(per[label][key])}` : ""]));
  const overall = isNumber(metrics[key]) ? ` (${metricName(key)} ${fmt(metrics[key])})` : "";
  const title = (kind === "roc" ? "ROC" : "Precision-recall") + overall;
  const [chart, legend] = curveChart(kind, curves, notes);
  return panel(`panel-${kind}`, title, el("div", { class: "chart-wrap" }, chart), legend);
}

function calibrationPanel(v) {
  const calibration = v.calibration;
  if (!object(calibration)) return null;
  const bins = Array.isArray(calibration.reliability) ? calibration.reliability.filter(object) : [];
  const facts = [];
  if (isNumber(calibration.ece)) facts.push(el("span", {}, "ECE ", el("strong", { class: "ece" }, fmt(calibration.ece))));
  if (calibration.method) facts.push(el("span", {}, "method ", el("strong", { class: "method" }, String(calibration.method))));
  if (!facts.length && !bins.length) return null;
  const body = [el("p", {}, ...facts.flatMap((f, i) => (i ? [" · ", f] : [f])))];
  if (bins.some((bin) => isNumber(bin.confidence) && isNumber(bin.accuracy) && bin.count > 0)) {
    body.push(el("div", { class: "chart-wrap" }, reliabilityDiagram(bins)),
      dataTable("Reliability bins", ["bin", "mean confidence", "accuracy", "rows"],
        bins.map((bin) => [`${fmt(bin.low, 2)}–${fmt(bin.high, 2)}`, fmt(bin.confidence), fmt(bin.accuracy),
          isNumber(bin.count) ? String(bin.count) : "—"])));
  }
  return panel("panel-calibration", "Calibration", ...body);
}
