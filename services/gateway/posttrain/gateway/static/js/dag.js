// A pipeline's DAG as SVG: one column per layer, a box per stage coloured by its status, and an
// arrow from each dependency to the stage that waits on it. Each box links to the stage's URL.

import {svg, titled} from "./dom.js";

const W = 176;   // a stage box
const H = 50;
const COL_GAP = 70;
const ROW_GAP = 16;
const PAD = 12;

function short(name, room) {
  return name.length > room ? name.slice(0, room - 1) + "…" : name;
}

/**
 * status: the pipeline's status document (layers, stages with depends_on);
 * chosen: the stage shown below, if any; anomalies: {stage: count}; href(stage) -> link.
 */
export function drawDag(status, {chosen = null, anomalies = {}, href}) {
  const byName = Object.fromEntries(status.stages.map((s) => [s.name, s]));
  const layers = status.layers && status.layers.length
    ? status.layers
    : [status.stages.map((s) => s.name)];
  const tallest = Math.max(1, ...layers.map((l) => l.length));
  const width = PAD * 2 + layers.length * W + (layers.length - 1) * COL_GAP;
  const height = PAD * 2 + tallest * H + (tallest - 1) * ROW_GAP;
  const at = {};
  layers.forEach((layer, col) => {
    const columnHeight = layer.length * H + (layer.length - 1) * ROW_GAP;
    const top = PAD + (height - 2 * PAD - columnHeight) / 2;
    layer.forEach((name, row) => {
      at[name] = {x: PAD + col * (W + COL_GAP), y: top + row * (H + ROW_GAP)};
    });
  });

  const root = svg("svg", {
    class: "dag",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": `the stages of ${status.name}`,
    "data-edges": 0,
  });
  root.style.width = `min(100%, ${width}px)`;
  root.append(svg("defs", {}, svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse",
  }, svg("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#90a4ae"}))));

  let edges = 0;
  const edgeGroup = svg("g", {class: "edges"});
  for (const stage of status.stages) {
    for (const dep of stage.depends_on || []) {
      const from = at[dep];
      const to = at[stage.name];
      if (!from || !to) continue;
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x - 2, y2 = to.y + H / 2;
      const bend = Math.max(20, (x2 - x1) / 2);
      const path = svg("path", {
        class: "edge",
        d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)",
        "data-from": dep,
        "data-to": stage.name,
      });
      edgeGroup.append(titled(path, `${stage.name} depends on ${dep}`));
      edges += 1;
    }
  }
  root.setAttribute("data-edges", edges);
  root.append(edgeGroup);

  for (const layer of layers) {
    for (const name of layer) {
      const s = byName[name] || {name, status: "pending", attempt: 0};
      const {x, y} = at[name];
      const link = svg("a", {href: href(name)});
      const group = svg("g", {
        class: `node ${s.status}${name === chosen ? " chosen" : ""}`,
        "data-stage": name,
        "data-status": s.status,
      });
      group.append(
        svg("rect", {x, y, width: W, height: H, rx: 5}),
        svg("rect", {class: "band", x: x + 1.25, y: y + 1.25, width: 6, height: H - 2.5, rx: 2}),
        svg("text", {class: "name", x: x + 14, y: y + 20, text: short(name, 20)}),
        svg("text", {x: x + 14, y: y + 38,
          text: `${s.status}${s.attempt ? ` · attempt ${s.attempt}` : ""}`}),
      );
      const count = anomalies[name] || 0;
      if (count) {
        group.append(titled(
          svg("text", {class: "badge", x: x + W - 8, y: y + 18, "text-anchor": "end", text: `⚠${count}`}),
          `${count} anomal${count === 1 ? "y" : "ies"} raised on this stage`,
        ));
      }
      const tip = [`${name}: ${s.status}`, s.task && `task ${s.task}`,
        s.agent_id && `on ${s.agent_id}`, s.error && `error: ${s.error}`,
        s.waiting_reason && `waiting: ${s.waiting_reason}`].filter(Boolean).join("\n");
      titled(group, tip);
      link.append(group);
      root.append(link);
    }
  }
  return root;
}
