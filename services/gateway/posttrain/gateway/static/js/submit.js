// Submit a pipeline: paste YAML or JSON, or choose a file. A refusal (422) is shown as a table
// of its problems by stage and field; an accepted pipeline opens at its own URL.

import {post} from "./api.js";
import {el} from "./dom.js";

function newKey() {
  return (crypto.randomUUID && crypto.randomUUID()) ||
    `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function contentType(text, fileName) {
  if (fileName && /\.json$/i.test(fileName)) return "application/json";
  if (fileName && /\.ya?ml$/i.test(fileName)) return "application/yaml";
  const first = text.trim()[0];
  return first === "{" || first === "[" ? "application/json" : "application/yaml";
}

export function errorsTable(errors) {
  return el("table", {class: "errors", id: "submit-errors"},
    el("colgroup", {}, el("col", {style: "width: 20%"}), el("col", {style: "width: 25%"}), el("col")),
    el("thead", {}, el("tr", {}, ["stage", "field", "problem"].map((h) => el("th", {text: h})))),
    el("tbody", {}, errors.map((e) => el("tr", {},
      el("td", {class: "mono", text: e.stage ?? "(pipeline)"}),
      el("td", {class: "mono", text: e.field ?? ""}),
      el("td", {class: "error", text: e.message ?? ""})))));
}

export function mountSubmit(root) {
  const area = el("textarea", {id: "document", spellcheck: "false",
    placeholder: "name: my-pipeline\nstages:\n  - {name: a, task: command, params: {argv: [echo, hi]}}"});
  const file = el("input", {id: "file", type: "file", accept: ".yaml,.yml,.json,text/yaml,application/json"});
  const result = el("div", {id: "submit-result"});
  const button = el("button", {id: "submit", type: "button", text: "submit"});
  let fileName = null;
  let key = newKey();
  let keyFor = null;

  file.addEventListener("change", async () => {
    const chosen = file.files && file.files[0];
    if (!chosen) return;
    fileName = chosen.name;
    area.value = await chosen.text();
    result.replaceChildren(el("p", {class: "muted",
      text: `${chosen.name} loaded. Relative paths in it are resolved by the agent that runs ` +
        "each stage (the CLI makes them absolute; here, give absolute ones)."}));
  });
  area.addEventListener("input", () => { fileName = null; });

  button.addEventListener("click", async () => {
    const text = area.value;
    if (!text.trim()) {
      result.replaceChildren(el("p", {class: "error", text: "Paste a pipeline or choose a file first."}));
      return;
    }
    // The same document sent twice (a double click, a retry after a lost answer) carries the
    // same Idempotency-Key, so the gateway submits it once.
    if (keyFor !== text) { key = newKey(); keyFor = text; }
    button.disabled = true;
    try {
      const answer = await post("/v1/pipelines", text, contentType(text, fileName),
        {"idempotency-key": key});
      if (answer.status === 422) {
        const errors = (answer.body && answer.body.errors) || [];
        result.replaceChildren(
          el("p", {class: "error", text: `Refused: ${errors.length} problem(s).`}),
          errorsTable(errors));
      } else if (answer.ok) {
        location.hash = `#/pipelines/${encodeURIComponent(answer.body.pipeline_id)}`;
      } else {
        const detail = answer.body && answer.body.detail;
        result.replaceChildren(el("p", {class: "error",
          text: `${answer.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`}));
      }
    } catch (error) {
      result.replaceChildren(el("p", {class: "error", text: `Not sent: ${error.message}`}));
    } finally {
      button.disabled = false;
    }
  });

  root.replaceChildren(el("section", {},
    el("h2", {text: "Submit a pipeline"}),
    el("p", {class: "muted", text: "A pipeline file, YAML or JSON: a name, and stages each with a " +
      "name, a task, params and depends_on."}),
    el("div", {class: "controls"}, el("label", {for: "file", text: "file "}), file),
    area,
    el("div", {class: "controls"}, button),
    result));
  return {unmount() {}};
}
