// Small DOM helpers: elements built from data with textContent (never innerHTML), SVG elements,
// and how times and numbers are written.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

/** A hover text for an SVG element: its <title>. */
export function titled(node, text) {
  node.append(svg("title", {text}));
  return node;
}

export function statusText(status) {
  return el("span", {class: `status s-${status}`, text: status});
}

function toDate(value) {
  if (value == null || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "2026-12-02 21:03:10" in the viewer's time zone. */
export function when(value) {
  const date = toDate(value);
  if (!date) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** "12 s ago", "3 min ago". */
export function ago(value) {
  const date = toDate(value);
  if (!date) return "never";
  const s = Math.max(0, (Date.now() - date.getTime()) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

export function duration(start, end) {
  const a = toDate(start);
  const b = toDate(end) || (a ? new Date() : null);
  if (!a || !b) return "";
  const s = Math.max(0, (b - a) / 1000);
  return s < 120 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** A number short enough for an axis tick or a table cell. */
export function num(value) {
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  const a = Math.abs(value);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

/** A section's note that a gateway endpoint is not available (yet). */
export function unavailable(what, error) {
  const why = error && error.missingEndpoint
    ? "this gateway has no such endpoint yet"
    : (error && error.message) || "no answer";
  return el("p", {class: "unavailable", text: `${what} is unavailable: ${why}.`});
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "rejected"]);
export const STAGE_DONE = new Set(["succeeded", "failed", "cancelled", "lost"]);
