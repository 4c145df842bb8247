// A metric's chart as SVG: the step on the x axis with its scale, the value on the y axis with
// its ticks, the series as a line (broken where a step has no finite value), steps whose value
// was NaN/Inf marked with a red cross, each anomaly as a dashed line at its step with a marker
// whose hover text is its message, and each action taken as a diamond at the step it was
// applied (or requested) at.

import {el, num, svg, titled} from "./dom.js";

const WIDTH = 560;
const HEIGHT = 210;
const M = {left: 58, right: 14, top: 16, bottom: 34};

/** About `count` round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 6) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

function extent(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) {
    if (typeof v === "number" && Number.isFinite(v)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  return lo <= hi ? [lo, hi] : null;
}

function describeAction(a) {
  const at = a.applied_step != null ? ` at step ${a.applied_step}` : "";
  const factor = a.factor != null ? ` x${a.factor}` : "";
  const why = a.refusal ? `: refused, ${a.refusal}` : a.reason ? `: ${a.reason}` : "";
  return `action ${a.action}${factor} ${a.status}${at}${why}`;
}

/**
 * field: the metric's name; steps[i] and values[i] (null for none or non-finite);
 * nonFinite: steps whose value was NaN or infinite; anomalies: recorded anomalies of the job,
 * each with its actions.
 */
export function metricChart({field, steps, values, nonFinite = [], anomalies = []}) {
  const box = el("div", {class: "chart", "data-field": field});
  const finite = values.filter((v) => typeof v === "number" && Number.isFinite(v)).length;
  box.append(el("h4", {text: field}));
  const stepsSeen = [...steps, ...nonFinite, ...anomalies.map((a) => a.step)];
  const xs = extent(stepsSeen);
  const ys = extent(values);
  if (!xs || !ys) {
    box.append(el("p", {class: "muted", text: "no points yet"}));
    return box;
  }
  let [x0, x1] = xs;
  let [y0, y1] = ys;
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const padY = (y1 - y0) * 0.06;
  y0 -= padY; y1 += padY;
  const plotW = WIDTH - M.left - M.right, plotH = HEIGHT - M.top - M.bottom;
  const sx = (x) => M.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => M.top + (1 - (y - y0) / (y1 - y0)) * plotH;

  const root = svg("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: WIDTH, height: HEIGHT,
    role: "img", "aria-label": `${field} by step`, "data-points": finite});
  root.style.width = "100%";

  // Value ticks with grid lines, then step ticks.
  const grid = svg("g", {class: "y-ticks"});
  for (const v of ticks(y0, y1, 5)) {
    const y = sy(v);
    grid.append(
      svg("line", {class: "grid-line", x1: M.left, x2: WIDTH - M.right, y1: y, y2: y}),
      svg("text", {x: M.left - 6, y: y + 4, "text-anchor": "end", text: num(v)}),
    );
  }
  const xticks = svg("g", {class: "x-ticks"});
  for (const s of ticks(x0, x1, 7).filter((s) => Number.isInteger(s))) {
    const x = sx(s);
    xticks.append(
      svg("line", {class: "axis", x1: x, x2: x, y1: M.top + plotH, y2: M.top + plotH + 4}),
      svg("text", {x, y: M.top + plotH + 16, "text-anchor": "middle", text: s}),
    );
  }
  root.append(
    grid,
    xticks,
    svg("line", {class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: M.top + plotH}),
    svg("line", {class: "axis", x1: M.left, x2: WIDTH - M.right, y1: M.top + plotH,
      y2: M.top + plotH}),
    svg("text", {x: M.left + plotW / 2, y: HEIGHT - 3, "text-anchor": "middle", text: "step"}),
  );

  // The series: one path, with a gap wherever a step has no finite value.
  let d = "";
  let pen = false;
  const dots = svg("g", {class: "points"});
  steps.forEach((s, i) => {
    const v = values[i];
    if (typeof v !== "number" || !Number.isFinite(v)) { pen = false; return; }
    d += `${pen ? "L" : "M"}${sx(s).toFixed(1)} ${sy(v).toFixed(1)} `;
    pen = true;
    if (finite <= 80) dots.append(svg("circle", {class: "point", cx: sx(s), cy: sy(v), r: 2}));
  });
  root.append(svg("path", {class: "series", d: d.trim()}), dots);

  for (const s of nonFinite) {
    root.append(titled(
      svg("g", {class: "non-finite marker"},
        svg("text", {x: sx(s), y: M.top + 10, "text-anchor": "middle", text: "×"})),
      `${field} is not finite at step ${s}`,
    ));
  }

  for (const a of anomalies) {
    const x = sx(a.step);
    const mark = svg("g", {class: `anomaly marker sev-${a.severity}`, "data-step": a.step,
      "data-type": a.anomaly_type});
    mark.append(
      svg("line", {x1: x, x2: x, y1: M.top, y2: M.top + plotH}),
      svg("path", {d: `M ${x - 6} ${M.top - 8} L ${x + 6} ${M.top - 8} L ${x} ${M.top + 2} z`}),
    );
    titled(mark, `${a.anomaly_type} (${a.severity}) at step ${a.step}: ${a.message}`);
    root.append(mark);
    for (const action of a.actions || []) {
      const step = action.applied_step != null ? action.applied_step : a.step;
      const ax = sx(Math.min(Math.max(step, x0), x1));
      const y = M.top + plotH;
      const diamond = svg("g", {class: "action marker", "data-step": step,
        "data-action": action.action},
        svg("path", {d: `M ${ax} ${y - 7} L ${ax + 6} ${y} L ${ax} ${y + 7} L ${ax - 6} ${y} z`}));
      root.append(titled(diamond, describeAction(action)));
    }
  }

  // Hovering shows the nearest step's value.
  const hover = svg("g", {class: "hover", visibility: "hidden"});
  const hoverLine = svg("line", {y1: M.top, y2: M.top + plotH});
  const hoverText = svg("text", {y: M.top + 12});
  hover.append(hoverLine, hoverText);
  root.append(hover);
  root.addEventListener("mousemove", (event) => {
    const r = root.getBoundingClientRect();
    const x = ((event.clientX - r.left) / r.width) * WIDTH;
    const step = x0 + ((x - M.left) / plotW) * (x1 - x0);
    let best = -1;
    steps.forEach((s, i) => {
      if (best < 0 || Math.abs(s - step) < Math.abs(steps[best] - step)) best = i;
    });
    if (best < 0) return;
    const hx = sx(steps[best]);
    hoverLine.setAttribute("x1", hx);
    hoverLine.setAttribute("x2", hx);
    hoverText.setAttribute("x", Math.min(hx + 4, WIDTH - 110));
    hoverText.textContent = `step ${steps[best]}: ${values[best] == null ? "—" : num(values[best])}`;
    hover.setAttribute("visibility", "visible");
  });
  root.addEventListener("mouseleave", () => hover.setAttribute("visibility", "hidden"));
  box.append(root);
  return box;
}
