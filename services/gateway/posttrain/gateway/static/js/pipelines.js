// The pipelines, newest first, refreshed every few seconds.

import {getJson} from "./api.js";
import {el, statusText, unavailable, when} from "./dom.js";

export function mountPipelines(root) {
  const body = el("tbody", {id: "pipelines"});
  const note = el("div");
  root.replaceChildren(el("section", {},
    el("h2", {}, "Pipelines ", el("small", {}, el("a", {href: "#/submit", text: "submit one"}))),
    note,
    el("table", {},
      el("colgroup", {}, el("col", {style: "width: 24%"}), el("col", {style: "width: 11%"}),
        el("col", {style: "width: 12%"}), el("col", {style: "width: 17%"}),
        el("col", {style: "width: 17%"}), el("col", {style: "width: 19%"})),
      el("thead", {}, el("tr", {}, ["name", "status", "submitted by", "submitted", "finished",
        "id"].map((h) => el("th", {text: h})))),
      body)));

  async function refresh() {
    let list;
    try {
      list = await getJson("/v1/pipelines?limit=100");
    } catch (error) {
      note.replaceChildren(unavailable("The pipeline list", error));
      return;
    }
    note.replaceChildren(list.length ? "" : el("p", {class: "muted", text: "No pipelines yet."}));
    body.replaceChildren(...list.map((p) => {
      const href = `#/pipelines/${encodeURIComponent(p.pipeline_uuid)}`;
      return el("tr", {class: "pick", "data-pipeline": p.pipeline_uuid,
        onclick: () => { location.hash = href; }},
      el("td", {}, el("a", {href, text: p.name})),
      el("td", {}, statusText(p.status)),
      el("td", {text: p.submitted_by || ""}),
      el("td", {text: when(p.submitted_at)}),
      el("td", {text: when(p.finished_at)}),
      el("td", {class: "mono", text: p.pipeline_uuid}));
    }));
  }

  refresh();
  const timer = setInterval(refresh, 3000);
  return {unmount: () => clearInterval(timer)};
}
