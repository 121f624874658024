// Charts drawn as inline SVG from a head version's metadata; colours come from page.css,
// so they follow the light or dark scheme. Every chart has a text alternative.
"use strict";

import { el, fmt, isNumber, svg } from "./common.js";

const PALETTE_SIZE = 8; // .s0 … .s7 in page.css

/** A chart's frame: an <svg role="img"> with a title, sized by its viewBox. */
function frame(width, height, label, className) {
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": label, class: "chart " + className, preserveAspectRatio: "xMinYMin meet" },
  svg("title", {}, label));
}

/** Text cut to `max` characters (the full text stays in a tooltip). */
function shorten(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function tooltip(text) { return svg("title", {}, text); }

/** A <details> with the chart's numbers as a table, for screen readers and copying. */
export function dataTable(caption, headers, rows) {
  const table = el("table", { class: "data" },
    el("caption", { class: "sr-only" }, caption),
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {},
      ...cells.map((c, i) => i === 0 ? el("th", { scope: "row" }, c) : el("td", { class: "num" }, c))))));
  return el("details", { class: "table" }, el("summary", {}, "Show the numbers"),
    el("div", { class: "table-wrap" }, table));
}

// -- confusion matrix --------------------------------------------------------------------

/**
 * A confusion-matrix heat map: rows are true classes, columns predicted ones; each cell
 * shows its count and is shaded by its share of the true class's rows.
 */
export function confusionMatrix(matrix, labels, title) {
  const n = labels.length;
  const cell = n <= 6 ? 52 : n <= 12 ? 34 : Math.max(12, Math.floor(420 / n));
  const longest = Math.min(18, Math.max(...labels.map((l) => String(l).length)));
  const left = 28 + longest * 7.2;
  const top = 22;
  const bottom = 28 + longest * 6;
  const width = left + n * cell + 8;
  const height = top + n * cell + bottom;
  const root = frame(width, height, `${title}: rows are true classes, columns predicted`, "confusion");
  const rowTotals = matrix.map((row) => row.reduce((a, b) => a + b, 0));
  matrix.forEach((row, i) => row.forEach((count, j) => {
    const share = rowTotals[i] ? count / rowTotals[i] : 0;
    const x = left + j * cell;
    const y = top + i * cell;
    const g = svg("g", { class: "cm-cell" + (i === j ? " diagonal" : ""), "data-true": labels[i],
      "data-predicted": labels[j], "data-count": count },
    tooltip(`true ${labels[i]}, predicted ${labels[j]}: ${count} (${(share * 100).toFixed(0)}% of ${labels[i]})`),
    svg("rect", { x, y, width: cell - 2, height: cell - 2, rx: 3, class: "heat",
      "fill-opacity": (0.06 + 0.94 * share).toFixed(3) }));
    if (cell >= 20) {
      g.append(svg("text", { x: x + (cell - 2) / 2, y: y + (cell - 2) / 2, class: "count" + (share > 0.55 ? " on-heat" : ""),
        "text-anchor": "middle", "dominant-baseline": "central" }, String(count)));
    }
    root.append(g);
  }));
  labels.forEach((label, i) => {
    const name = String(label);
    root.append(svg("text", { x: left - 6, y: top + i * cell + (cell - 2) / 2, class: "tick",
      "text-anchor": "end", "dominant-baseline": "central" }, tooltip(name), shorten(name, 18)));
    const cx = left + i * cell + (cell - 2) / 2;
    const cy = top + n * cell + 6;
    root.append(svg("text", { x: cx, y: cy, class: "tick", "text-anchor": "end", "dominant-baseline": "central",
      transform: `rotate(-45 ${cx} ${cy})` }, tooltip(name), shorten(name, 18)));
  });
  root.append(svg("text", { x: left + (n * cell) / 2, y: 14, class: "axis", "text-anchor": "middle" }, "predicted →"));
  root.append(svg("text", { x: 12, y: top + (n * cell) / 2, class: "axis", "text-anchor": "middle",
    transform: `rotate(-90 12 ${top + (n * cell) / 2})` }, "true →"));
  return root;
}

// -- horizontal bars (per-class F1) ------------------------------------------------------

/** Horizontal bars from 0 to 1 with the value printed at the end of each. */
export function scoreBars(items, title, valueName) {
  const longest = Math.min(22, Math.max(...items.map((item) => item.label.length), 4));
  const left = 12 + longest * 6.6;
  const barWidth = 190;
  const row = 24;
  const width = left + barWidth + 60;
  const height = items.length * row + 26;
  const root = frame(width, height, title, "bars");
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    const x = left + tick * barWidth;
    root.append(svg("line", { x1: x, x2: x, y1: 0, y2: items.length * row, class: "grid" }),
      svg("text", { x, y: items.length * row + 16, class: "tick", "text-anchor": "middle" }, String(tick)));
  }
  items.forEach((item, i) => {
    const y = i * row;
    const value = isNumber(item.value) ? Math.max(0, Math.min(1, item.value)) : 0;
    root.append(svg("g", { class: "bar-row", "data-label": item.label, "data-value": fmt(item.value, 4) },
      tooltip(`${item.label}: ${valueName} ${fmt(item.value)}`),
      svg("text", { x: left - 6, y: y + row / 2, class: "tick", "text-anchor": "end", "dominant-baseline": "central" },
        shorten(item.label, 22)),
      svg("rect", { x: left, y: y + 4, width: (value * barWidth).toFixed(1), height: row - 8, rx: 3, class: "bar" }),
      svg("text", { x: left + value * barWidth + 5, y: y + row / 2, class: "value", "dominant-baseline": "central" },
        fmt(item.value))));
  });
  return root;
}

// -- curves (ROC, precision-recall, reliability) -----------------------------------------

const PLOT = { left: 46, top: 10, size: 260, bottom: 40 };

function axes(root, xLabel, yLabel) {
  const { left, top, size } = PLOT;
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    const x = left + tick * size;
    const y = top + (1 - tick) * size;
    root.append(
      svg("line", { x1: x, x2: x, y1: top, y2: top + size, class: "grid" }),
      svg("line", { x1: left, x2: left + size, y1: y, y2: y, class: "grid" }),
      svg("text", { x, y: top + size + 15, class: "tick", "text-anchor": "middle" }, String(tick)),
      svg("text", { x: left - 6, y, class: "tick", "text-anchor": "end", "dominant-baseline": "central" }, String(tick)));
  }
  root.append(
    svg("rect", { x: left, y: top, width: size, height: size, class: "plot-frame" }),
    svg("text", { x: left + size / 2, y: top + size + 33, class: "axis", "text-anchor": "middle" }, xLabel),
    svg("text", { x: 12, y: top + size / 2, class: "axis", "text-anchor": "middle",
      transform: `rotate(-90 12 ${top + size / 2})` }, yLabel));
}

const px = (x) => PLOT.left + x * PLOT.size;
const py = (y) => PLOT.top + (1 - y) * PLOT.size;

/** One chart of curves (points in [0,1]²), one colour per label, and its legend. */
export function curveChart(kind, curves, notes) {
  const roc = kind === "roc";
  const names = Object.keys(curves);
  const title = roc ? "ROC curves" : "Precision-recall curves";
  const root = frame(PLOT.left + PLOT.size + 12, PLOT.top + PLOT.size + PLOT.bottom,
    `${title} for ${names.join(", ")}`, "curves " + kind);
  axes(root, roc ? "false positive rate" : "recall", roc ? "true positive rate" : "precision");
  if (roc) root.append(svg("line", { x1: px(0), y1: py(0), x2: px(1), y2: py(1), class: "chance" }));
  names.forEach((name, i) => {
    const { x, y } = curves[name];
    const points = x.map((value, j) => `${px(value).toFixed(1)},${py(y[j]).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points, class: `curve s${i % PALETTE_SIZE}`, "data-label": name,
      "data-points": x.length }, tooltip(notes[name] ? `${name} (${notes[name]})` : name)));
  });
  const legend = el("ul", { class: "legend" }, ...names.map((name, i) =>
    el("li", {}, el("span", { class: `swatch s${i % PALETTE_SIZE}`, "aria-hidden": "true" }),
      name, notes[name] ? el("span", { class: "meta" }, " " + notes[name]) : "")));
  return [root, legend];
}

/** Reliability diagram: per confidence bin, how often the prediction was right. */
export function reliabilityDiagram(bins) {
  const used = bins.filter((bin) => isNumber(bin.confidence) && isNumber(bin.accuracy) && bin.count > 0);
  const root = frame(PLOT.left + PLOT.size + 12, PLOT.top + PLOT.size + PLOT.bottom,
    "Reliability diagram: accuracy against confidence per bin; the diagonal is perfect calibration",
    "reliability");
  axes(root, "confidence", "accuracy");
  root.append(svg("line", { x1: px(0), y1: py(0), x2: px(1), y2: py(1), class: "chance" }));
  const most = Math.max(1, ...used.map((bin) => bin.count));
  for (const bin of used) {
    const low = isNumber(bin.low) ? bin.low : bin.confidence - 0.05;
    const high = isNumber(bin.high) ? bin.high : bin.confidence + 0.05;
    root.append(svg("rect", { x: px(low) + 1, y: py(bin.accuracy), width: Math.max(1, (high - low) * PLOT.size - 2),
      height: bin.accuracy * PLOT.size, class: "rel-bar", "fill-opacity": (0.25 + 0.6 * bin.count / most).toFixed(3),
      "data-confidence": fmt(bin.confidence, 4), "data-accuracy": fmt(bin.accuracy, 4), "data-count": bin.count },
    tooltip(`confidence ${fmt(low, 2)}–${fmt(high, 2)}: accuracy ${fmt(bin.accuracy)} at mean confidence ` +
      `${fmt(bin.confidence)} over ${bin.count} rows`)));
  }
  const points = used.map((bin) => `${px(bin.confidence).toFixed(1)},${py(bin.accuracy).toFixed(1)}`).join(" ");
  root.append(svg("polyline", { points, class: "rel-line" }));
  for (const bin of used) {
    root.append(svg("circle", { cx: px(bin.confidence), cy: py(bin.accuracy), r: 3.5, class: "rel-point" }));
  }
  return root;
}

// -- leaderboard ---------------------------------------------------------------------------

/**
 * CV score per candidate (best first) with ± one standard deviation; the chosen one is
 * highlighted and starred. The axis starts where the scores do, and says so.
 */
export function leaderboardChart(rows, chosen, metric) {
  const scores = rows.flatMap((r) => [r.cv_score - (r.cv_std || 0), r.cv_score + (r.cv_std || 0)]);
  const low = Math.max(0, Math.floor((Math.min(...scores) - 0.02) * 20) / 20);
  const high = Math.min(1, Math.ceil((Math.max(...scores) + 0.005) * 20) / 20);
  const span = Math.max(high - low, 0.05);
  const longest = Math.min(44, Math.max(...rows.map((r) => r.candidate.length), 8));
  const left = 24 + longest * 6.6;
  const barWidth = 420;
  const row = 24;
  const width = left + barWidth + 120;
  const height = rows.length * row + 40;
  const root = frame(width, height, `Cross-validated ${metric} per candidate, best first`, "leaderboard");
  const sx = (value) => left + ((value - low) / span) * barWidth;
  const step = span > 0.3 ? 0.1 : 0.05;
  for (let tick = low; tick <= high + 1e-9; tick += step) {
    root.append(svg("line", { x1: sx(tick), x2: sx(tick), y1: 0, y2: rows.length * row, class: "grid" }),
      svg("text", { x: sx(tick), y: rows.length * row + 15, class: "tick", "text-anchor": "middle" }, tick.toFixed(2)));
  }
  root.append(svg("text", { x: left + barWidth / 2, y: rows.length * row + 33, class: "axis", "text-anchor": "middle" },
    `CV ${metric} (axis from ${low.toFixed(2)})`),
  svg("text", { x: left + barWidth + 112, y: rows.length * row + 15, class: "tick", "text-anchor": "end" }, "fit s"));
  rows.forEach((r, i) => {
    const y = i * row;
    const isChosen = chosen !== null && r.candidate === chosen;
    const end = sx(r.cv_score);
    const g = svg("g", { class: "lb-row" + (isChosen ? " chosen" : ""), "data-candidate": r.candidate,
      "data-score": fmt(r.cv_score, 4), "data-fit-seconds": fmt(r.fit_seconds, 2) },
    tooltip(`${r.candidate}: ${metric} ${fmt(r.cv_score)} ± ${fmt(r.cv_std)}, fit ${fmt(r.fit_seconds, 1)} s` +
      (isChosen ? " (chosen)" : "")),
    svg("text", { x: left - 6, y: y + row / 2, class: "tick" + (isChosen ? " strong" : ""), "text-anchor": "end",
      "dominant-baseline": "central" }, (isChosen ? "★ " : "") + shorten(r.candidate, 44)),
    svg("rect", { x: left, y: y + 4, width: Math.max(1, end - left).toFixed(1), height: row - 8, rx: 3, class: "bar" }));
    let labelAt = end;
    if (isNumber(r.cv_std) && r.cv_std > 0) {
      labelAt = sx(Math.min(high, r.cv_score + r.cv_std));
      g.append(svg("line", { x1: sx(r.cv_score - r.cv_std), x2: labelAt, y1: y + row / 2, y2: y + row / 2, class: "whisker" }),
        svg("line", { x1: labelAt, x2: labelAt, y1: y + row / 2 - 4, y2: y + row / 2 + 4, class: "whisker" }));
    }
    g.append(svg("text", { x: Math.min(labelAt, left + barWidth) + 5, y: y + row / 2, class: "value score",
      "dominant-baseline": "central" }, fmt(r.cv_score)),
    svg("text", { x: left + barWidth + 112, y: y + row / 2, class: "value", "text-anchor": "end",
      "dominant-baseline": "central" }, fmt(r.fit_seconds, 1)));
    root.append(g);
  });
  return root;
}
