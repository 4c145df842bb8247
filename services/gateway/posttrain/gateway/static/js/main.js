// The page's router: /#/ (pipelines), /#/submit, /#/agents, /#/pipelines/{id} and
// /#/pipelines/{id}/stages/{name}; and the token box.

import {onAuthProblem, setToken, token} from "./api.js";
import {mountAgents} from "./agents.js";
import {mountPipeline} from "./pipeline.js";
import {mountPipelines} from "./pipelines.js";
import {mountSubmit} from "./submit.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
let current = null;  // {key, pipeline, handle}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean)
    .map((p) => decodeURIComponent(p));
  if (parts[0] === "pipelines" && parts[1]) {
    return {name: "pipeline", id: parts[1], stage: parts[2] === "stages" ? parts[3] : null};
  }
  if (parts[0] === "submit") return {name: "submit"};
  if (parts[0] === "agents") return {name: "agents"};
  return {name: "pipelines"};
}

function show() {
  const r = route();
  banner.hidden = true;
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("current", a.dataset.nav === (r.name === "pipeline" ? "pipelines" : r.name));
  }
  if (current && r.name === "pipeline" && current.key === `pipeline:${r.id}` && current.handle.update) {
    current.handle.update(r);
    return;
  }
  if (current) current.handle.unmount();
  const mount = {pipeline: mountPipeline, submit: mountSubmit, agents: mountAgents,
    pipelines: mountPipelines}[r.name];
  current = {key: r.name === "pipeline" ? `pipeline:${r.id}` : r.name, handle: mount(view, r)};
  document.title = r.name === "pipeline" ? `posttrain: ${r.stage || r.id}` : "posttrain";
}

const tokenBox = document.getElementById("token");
const tokenState = document.getElementById("token-state");
tokenBox.value = token();
tokenState.textContent = token() ? "saved" : "";
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(tokenBox.value.trim());
  tokenState.textContent = tokenBox.value.trim() ? "saved" : "cleared";
  if (current) current.handle.unmount();
  current = null;
  show();  // everything again, with the new token
});

onAuthProblem((status, detail) => {
  banner.hidden = false;
  banner.textContent = status === 401
    ? "This gateway needs a token: paste yours in the token box above and save it."
    : `This token may not do that${detail ? `: ${detail}` : ""}.`;
});

window.addEventListener("hashchange", show);
show();
