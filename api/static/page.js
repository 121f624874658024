// The page's entry point: the "try it" form (predict, embed) and the head view.
"use strict";

import { $, InputError, api, busy, el, setUpKey } from "./common.js";
import { fillHeadPicker, setUpHeadView } from "./heads.js";

const els = { texts: $("texts"), head: $("head"), key: $("api-key"), remember: $("remember-key"),
  predict: $("predict"), embed: $("embed"), reload: $("reload-heads"), results: $("results"), status: $("status") };
const tryButtons = [els.predict, els.embed, els.reload];
const tryBusy = (label, fn) => busy(label, fn, tryButtons, els.status);

function fillPredictHeads(data) {
  const keep = els.head.value;
  const heads = (data && data.heads) || [];
  els.head.replaceChildren();
  if (!heads.length) {
    els.head.append(el("option", { value: "" }, "No heads loaded (server default)"));
    return;
  }
  for (const h of heads) {
    const text = `${h.name} (v${h.live_version}, ${h.task}, ${(h.labels || []).length} labels)`;
    els.head.append(el("option", { value: h.name }, text));
  }
  const names = heads.map((h) => h.name);
  els.head.value = names.includes(keep) ? keep : (names.includes(data.default_head) ? data.default_head : names[0]);
}

/** GET /heads once for both head pickers; `redraw` also reloads the head view. */
async function loadHeads(redraw = true) {
  let data;
  try { data = await api("GET", "/heads"); } catch (e) {
    els.head.replaceChildren(el("option", { value: "" }, "Could not load heads (server default)"));
    throw e;
  }
  fillPredictHeads(data);
  await fillHeadPicker(data, els.head.value, redraw);
}

function readTexts() {
  return els.texts.value.split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
}

function bars(probabilities, chosen) {
  const grid = el("div", { class: "bars" });
  const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of entries) {
    const pct = Math.max(0, Math.min(1, p)) * 100;
    const hit = chosen.includes(label);
    grid.append(
      el("span", {}, label),
      el("div", { class: "track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1",
        "aria-valuenow": p.toFixed(3), "aria-label": label + " probability" },
      el("div", { class: "fill" + (hit ? " hit" : ""), style: { width: pct.toFixed(1) + "%" } })),
      el("span", { class: "num" }, p.toFixed(3)));
  }
  return grid;
}

async function predict() {
  const texts = readTexts();
  if (!texts.length) throw new InputError("Type at least one text (one per line).");
  const body = { texts };
  if (els.head.value) body.head = els.head.value;
  const data = await api("POST", "/predict", body);
  els.results.replaceChildren(el("p", { class: "meta" }, `Head ${data.head}, version ${data.version}`));
  data.predictions.forEach((p, i) => {
    const chosen = p.labels ? p.labels : (p.label != null ? [p.label] : []);
    const tags = chosen.length ? chosen.map((l) => el("span", { class: "pred" }, l))
      : [el("span", { class: "none" }, "no label above threshold")];
    els.results.append(el("article", { class: "card", "aria-label": "Prediction " + (i + 1) },
      el("p", { class: "text" }, texts[i]),
      el("div", {}, el("span", { class: "sr-only" }, "Predicted: "), ...tags),
      bars(p.probabilities || {}, chosen)));
  });
}

async function embed() {
  const texts = readTexts();
  if (!texts.length) throw new InputError("Type at least one text (one per line).");
  const data = await api("POST", "/embed", { texts });
  els.results.replaceChildren(el("p", { class: "meta" },
    `Model ${data.model} · dim ${data.dim} · cached ${data.cached} of ${texts.length}` +
    (data.truncated ? ` · truncated ${data.truncated}` : "")));
  data.embeddings.forEach((v, i) => {
    const head = v.slice(0, 8).map((x) => x.toFixed(4)).join(", ");
    els.results.append(el("article", { class: "card", "aria-label": "Embedding " + (i + 1) },
      el("p", { class: "text" }, texts[i]),
      el("p", { class: "vec" }, "[" + head + (v.length > 8 ? ", …" : "") + "]")));
  });
}

setUpKey(els.key, els.remember);
setUpHeadView(() => loadHeads(false));
$("form").addEventListener("submit", (e) => { e.preventDefault(); tryBusy("Predicting…", predict); });
els.embed.addEventListener("click", () => tryBusy("Embedding…", embed));
els.reload.addEventListener("click", () => tryBusy("Loading heads…", loadHeads));
els.key.addEventListener("change", () => tryBusy("Loading heads…", loadHeads));
els.texts.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); els.predict.click(); }
});
tryBusy("Loading heads…", loadHeads);
