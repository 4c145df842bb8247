// The trainer agents: capacity, labels, what each runs, and when it was last heard from.

import {getJson} from "./api.js";
import {ago, el, unavailable, when} from "./dom.js";

function labels(value) {
  if (!value) return "";
  if (Array.isArray(value)) return value.join(", ");
  return Object.entries(value).map(([k, v]) => `${k}=${v}`).join(", ");
}

export function agentsTable(agents) {
  const stageLink = (r) => el("div", {},
    el("a", {href: `#/pipelines/${encodeURIComponent(r.pipeline_uuid)}/stages/` +
      encodeURIComponent(r.stage), text: `${r.stage}`}),
    el("small", {text: ` attempt ${r.attempt ?? "?"} · ${r.pipeline_uuid}`}));
  return el("table", {id: "agents"},
    el("thead", {}, el("tr", {}, ["agent", "state", "labels", "GPUs free / total", "slots",
      "running", "last heartbeat"].map((h) => el("th", {text: h})))),
    el("tbody", {}, agents.map((a) => el("tr", {"data-agent": a.agent_id},
      el("td", {class: "mono", text: a.agent_id}),
      el("td", {}, el("span", {class: `status ${a.alive ? "s-succeeded" : "s-failed"}`,
        text: a.alive ? "alive" : "silent"})),
      el("td", {text: labels(a.labels)}),
      el("td", {text: `${a.gpus_free ?? "?"} / ${a.gpus ?? "?"}`}),
      el("td", {text: a.slots ?? "—"}),
      el("td", {}, (a.running || []).length ? a.running.map(stageLink) : "—"),
      el("td", {title: when(a.last_heartbeat_at), text: ago(a.last_heartbeat_at)})))));
}

export function mountAgents(root) {
  const box = el("section", {}, el("h2", {text: "Agents"}), el("p", {text: "Loading…"}));
  root.replaceChildren(box);

  async function refresh() {
    let doc;
    try {
      doc = await getJson("/v1/agents");
    } catch (error) {
      box.replaceChildren(el("h2", {text: "Agents"}), unavailable("The list of agents", error));
      return;
    }
    const agents = doc.agents || [];
    box.replaceChildren(el("h2", {text: "Agents"}),
      agents.length ? agentsTable(agents) : el("p", {class: "muted", text: "No agent has been heard from."}));
  }

  refresh();
  const timer = setInterval(refresh, 5000);
  return {unmount: () => clearInterval(timer)};
}
