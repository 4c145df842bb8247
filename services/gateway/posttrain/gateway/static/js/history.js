// A pipeline's history: its events (decisions, retries, anomalies, actions), oldest first,
// a page at a time, with new entries appended live.

import {getJson} from "./api.js";
import {el, unavailable, when} from "./dom.js";

const PAGE = 50;

export class History {
  constructor(box, pipelineId) {
    this.box = box;
    this.pipelineId = pipelineId;
    this.seen = new Set();
    this.nextAfter = null;
    this.atEnd = false;
    this.body = el("tbody", {id: "history"});
    this.more = el("button", {type: "button", text: "more", hidden: true,
      onclick: () => this.page()});
    this.note = el("div");
    this.table = el("table", {},
        el("colgroup", {}, el("col", {style: "width: 10.5em"}), el("col", {style: "width: 11em"}),
          el("col", {style: "width: 8em"}), el("col")),
        el("thead", {}, el("tr", {}, ["at", "event", "stage", "what happened"].map(
          (h) => el("th", {text: h})))),
        this.body);
    box.replaceChildren(el("h3", {text: "History"}), this.note, this.table, this.more);
  }

  _row(e) {
    if (this.seen.has(e.seq)) return null;
    this.seen.add(e.seq);
    const stage = e.stage
      ? el("a", {href: `#/pipelines/${encodeURIComponent(this.pipelineId)}/stages/` +
          encodeURIComponent(e.stage), text: e.attempt ? `${e.stage} #${e.attempt}` : e.stage})
      : "";
    return el("tr", {"data-seq": e.seq},
      el("td", {text: when(e.at)}), el("td", {class: "mono", text: e.type}),
      el("td", {}, stage), el("td", {class: "wrap", text: e.summary}));
  }

  async page() {
    const after = this.nextAfter == null ? "" : `&after=${this.nextAfter}`;
    let doc;
    try {
      doc = await getJson(`/v1/pipelines/${encodeURIComponent(this.pipelineId)}/history` +
        `?limit=${PAGE}${after}`);
    } catch (error) {
      this.note.replaceChildren(unavailable("The history", error));
      this.table.hidden = !this.body.children.length;
      return;
    }
    this.note.replaceChildren();
    this.table.hidden = false;
    for (const e of doc.events || []) {
      const row = this._row(e);
      if (row) this.body.append(row);
    }
    if (doc.next_after != null) this.nextAfter = doc.next_after;
    this.atEnd = doc.next_after == null;
    this.more.hidden = this.atEnd;
    if (!this.body.children.length) {
      this.note.replaceChildren(el("p", {class: "muted", text: "Nothing recorded yet."}));
    }
  }

  /** A new entry pushed by the live stream: shown once every earlier page is. */
  pushed(entry) {
    if (!this.atEnd) return;
    const row = this._row(entry);
    if (row) {
      this.note.replaceChildren();
      this.body.append(row);
    }
  }
}
