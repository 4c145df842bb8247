// One pipeline at /#/pipelines/{id}, and one of its stages at /#/pipelines/{id}/stages/{name}:
// its DAG coloured live, the stage's facts, attempts and outputs, its job's metric charts, the
// pipeline's anomalies and its history. Live through the pipeline's event stream (status,
// history, metrics, anomaly); what a gateway does not push yet is polled while the pipeline
// runs.

import {ApiError, follow, getJson, post} from "./api.js";
import {drawDag} from "./dag.js";
import {History} from "./history.js";
import {JobCharts} from "./metrics.js";
import {STAGE_DONE, TERMINAL, duration, el, statusText, unavailable, when} from "./dom.js";

const POLL_MS = 3000;
const SETTLE_MS = 30000;  // keep polling this long after the end: ingest and recorder lag
const MAX_OUTPUT_ROWS = 300;

/** [key, text] pairs for a nested value: "metrics.loss", "results[0].model". */
export function flatten(value, prefix = "", out = []) {
  const show = (v) => (v === null ? "null" : typeof v === "string" ? v : JSON.stringify(v));
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const entries = Object.entries(value);
    if (!entries.length && prefix) out.push([prefix, "{}"]);
    for (const [k, v] of entries) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (Array.isArray(value) && value.some((v) => v && typeof v === "object")) {
    value.forEach((v, i) => flatten(v, `${prefix}[${i}]`, out));
  } else if (Array.isArray(value)) {
    out.push([prefix, value.map(show).join(", ")]);
  } else {
    out.push([prefix, show(value)]);
  }
  return out;
}

function kv(pairs, id) {
  const list = el("dl", {class: "kv", id});
  for (const [k, v] of pairs) {
    if (v == null || v === "") continue;
    list.append(el("dt", {text: k}), v instanceof Node ? el("dd", {}, v) : el("dd", {text: v}));
  }
  return list;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, {once: true});
  });
}

export function mountPipeline(root, params) {
  const id = params.id;
  const base = `#/pipelines/${encodeURIComponent(id)}`;
  const pid = encodeURIComponent(id);
  const controller = new AbortController();
  const state = {
    stage: params.stage || null,
    status: null,
    anomalies: null,  // null until first read
    pushed: {metrics: false, anomaly: false},
    endedAt: null,
  };
  let charts = null;

  const head = el("section", {id: "pipeline-head"}, el("p", {text: "Loading…"}));
  const dagBox = el("section", {id: "dag"});
  const stageBox = el("section", {id: "stage", hidden: true});
  const factsBox = el("div", {id: "stage-facts"});
  const chartsBox = el("div", {id: "stage-metrics"});
  stageBox.append(factsBox, chartsBox);
  const anomaliesBox = el("section", {id: "anomalies"}, el("h3", {text: "Anomalies"}));
  const historyBox = el("section", {id: "history-box"});
  root.replaceChildren(head, dagBox, stageBox, anomaliesBox, historyBox);
  const history = new History(historyBox, id);

  async function command(url, what) {
    const answer = await post(url);
    const detail = answer.body && answer.body.detail;
    head.querySelector(".command-result").textContent = answer.ok
      ? `${what}: sent.`
      : `${what} refused (${answer.status}): ${typeof detail === "string" ? detail : ""}`;
  }

  function drawHead() {
    const s = state.status;
    const controls = el("div", {class: "controls"},
      el("button", {type: "button", text: "resume",
        onclick: () => command(`/v1/pipelines/${pid}/resume`, "resume")}),
      el("button", {type: "button", text: "cancel",
        onclick: () => command(`/v1/pipelines/${pid}/cancel`, "cancel")}),
      el("span", {class: "command-result muted"}));
    const errors = (s.errors || []).map((e) =>
      el("p", {class: "error", text: `stage ${e.stage ?? "-"}, field ${e.field}: ${e.message}`}));
    head.replaceChildren(
      el("h2", {}, el("a", {href: base, text: s.name}), " ", statusText(s.status)),
      kv([["id", s.pipeline_uuid], ["submitted by", s.submitted_by],
        ["submitted", when(s.submitted_at)], ["finished", when(s.finished_at)],
        ["took", s.submitted_at ? duration(s.submitted_at, s.finished_at) : ""]]),
      controls, ...errors);
  }

  function anomalyCounts() {
    const counts = {};
    for (const a of state.anomalies || []) if (a.stage) counts[a.stage] = (counts[a.stage] || 0) + 1;
    return counts;
  }

  function drawDagBox() {
    const s = state.status;
    const edgesKnown = s.stages.some((x) => Array.isArray(x.depends_on));
    dagBox.replaceChildren(
      el("h3", {text: "Stages"}),
      drawDag(s, {chosen: state.stage, anomalies: anomalyCounts(),
        href: (name) => `${base}/stages/${encodeURIComponent(name)}`}),
      edgesKnown ? "" : el("p", {class: "unavailable",
        text: "Dependencies are unavailable from this gateway: stages are shown by layer only."}));
  }

  function drawStage() {
    if (!state.stage) {
      stageBox.hidden = true;
      if (charts) { charts = null; chartsBox.replaceChildren(); }
      return;
    }
    stageBox.hidden = false;
    const s = state.status && state.status.stages.find((x) => x.name === state.stage);
    if (!s) {
      factsBox.replaceChildren(el("h3", {text: state.stage}),
        el("p", {class: "error", text: `This pipeline has no stage ${state.stage}.`}));
      return;
    }
    const retry = el("button", {type: "button", text: "retry this stage",
      onclick: () => command(
        `/v1/pipelines/${pid}/stages/${encodeURIComponent(s.name)}/retry`, "retry")});
    const agent = s.agent_id ? el("a", {href: "#/agents", text: s.agent_id}) : null;
    const facts = kv([
      ["status", statusText(s.status)], ["task", s.task], ["attempt", s.attempt],
      ["agent", agent], ["job", s.job_id], ["task id", s.task_id],
      ["started", when(s.started_at)], ["finished", when(s.finished_at)],
      ["took", s.started_at ? duration(s.started_at, s.finished_at) : ""],
      ["depends on", (s.depends_on || []).join(", ")],
      ["waiting", s.waiting_reason], ["cached from", s.cached_from],
      ["error", s.error ? el("span", {class: "error", text: s.error}) : null],
    ], "stage-facts-list");
    const attempts = (s.attempts || []).length ? el("table", {id: "attempts"},
      el("colgroup", {}, el("col", {style: "width: 2.5em"}), el("col", {style: "width: 7.5em"}),
        el("col"), el("col"), el("col"), el("col", {style: "width: 30%"})),
      el("thead", {}, el("tr", {}, ["#", "status", "agent", "started", "finished", "error"].map(
        (h) => el("th", {text: h})))),
      el("tbody", {}, s.attempts.map((a) => el("tr", {},
        el("td", {text: a.attempt}), el("td", {}, statusText(a.status)),
        el("td", {class: "mono", text: a.agent_id || ""}),
        el("td", {text: when(a.started_at || a.dispatched_at)}),
        el("td", {text: when(a.finished_at)}),
        el("td", {class: "error", text: a.error || ""}))))) : null;
    const pairs = flatten(s.outputs || {});
    const outputs = pairs.length
      ? [kv(pairs.slice(0, MAX_OUTPUT_ROWS), "outputs"),
        pairs.length > MAX_OUTPUT_ROWS
          ? el("p", {class: "muted", text: `… and ${pairs.length - MAX_OUTPUT_ROWS} more`}) : null]
      : [el("p", {class: "muted", text: "none yet"})];
    factsBox.replaceChildren(
      el("h3", {}, el("a", {href: base, text: "↑"}), ` stage ${s.name} `, statusText(s.status)),
      facts, el("div", {class: "controls"}, retry),
      el("h4", {text: "Attempts"}), attempts || el("p", {class: "muted", text: "none yet"}),
      el("h4", {text: "Outputs"}), ...outputs.filter(Boolean));
    if (!s.job_id) {
      charts = null;
      chartsBox.replaceChildren();
    } else if (!charts || charts.jobId !== s.job_id) {
      charts = new JobCharts(chartsBox, s.job_id,
        (job) => (state.anomalies || []).filter((a) => a.job_id === job));
      charts.refresh();
    }
  }

  function drawAnomalies(error) {
    if (error) {
      anomaliesBox.replaceChildren(el("h3", {text: "Anomalies"}), unavailable("The anomalies", error));
      return;
    }
    const rows = (state.anomalies || []).map((a) => el("tr", {"data-anomaly": a.anomaly_id},
      el("td", {}, a.stage ? el("a", {href: `${base}/stages/${encodeURIComponent(a.stage)}`,
        text: a.stage}) : ""),
      el("td", {text: a.step}),
      el("td", {}, el("span", {class: `sev-${a.severity}`, text: `${a.anomaly_type} (${a.severity})`})),
      el("td", {class: "wrap", text: a.message}),
      el("td", {class: "wrap", text: (a.actions || []).map((x) => `${x.action}: ${x.status}` +
        (x.applied_step != null ? ` at step ${x.applied_step}` : "") +
        (x.refusal ? ` (${x.refusal})` : "")).join("; ") || "—"})));
    anomaliesBox.replaceChildren(el("h3", {text: "Anomalies"}), rows.length
      ? el("table", {},
        el("colgroup", {}, el("col", {style: "width: 14%"}), el("col", {style: "width: 6%"}),
          el("col", {style: "width: 20%"}), el("col"), el("col", {style: "width: 26%"})),
        el("thead", {}, el("tr", {}, ["stage", "step", "anomaly", "message", "actions"].map(
          (h) => el("th", {text: h})))),
        el("tbody", {}, rows))
      : el("p", {class: "muted", text: "None raised."}));
  }

  async function refreshAnomalies() {
    let found;
    try {
      found = await getJson(`/v1/pipelines/${pid}/anomalies`);
    } catch (error) {
      drawAnomalies(error);
      return;
    }
    const changed = state.anomalies === null ||
      JSON.stringify(found) !== JSON.stringify(state.anomalies);
    state.anomalies = found;
    if (!changed) return;
    drawAnomalies();
    if (state.status) drawDagBox();
    if (charts) charts.draw();
  }

  function onStatus(status) {
    const was = state.status;
    state.status = status;
    if (TERMINAL.has(status.status) && state.endedAt == null) state.endedAt = Date.now();
    drawHead();
    drawDagBox();
    drawStage();
    // A stage that just finished: its last points and anomalies are worth one more look.
    if (charts && was) {
      const before = was.stages.find((x) => x.name === state.stage);
      const now = status.stages.find((x) => x.name === state.stage);
      if (before && now && before.status !== now.status) charts.refresh();
    }
  }

  function onEvent(type, data) {
    if (type === "status") onStatus(data);
    else if (type === "history") history.pushed(data);
    else if (type === "metrics") {
      state.pushed.metrics = true;
      if (charts && data && data.job_uuid === charts.jobId) charts.refresh();
    } else if (type === "anomaly") {
      state.pushed.anomaly = true;
      refreshAnomalies();
    }
  }

  async function live() {
    const signal = controller.signal;
    while (!signal.aborted) {
      try {
        await follow(`/v1/pipelines/${pid}/events`, onEvent, signal);
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) return;
      }
      if (state.status && TERMINAL.has(state.status.status)) return;
      await sleep(2000, signal);
    }
  }

  // What the stream does not push (on a gateway that does not push it) is polled while the
  // pipeline runs, and for a little while after.
  const poller = setInterval(() => {
    const settling = state.endedAt == null || Date.now() - state.endedAt < SETTLE_MS;
    if (!settling) return;
    if (!state.pushed.anomaly) refreshAnomalies();
    if (!state.pushed.metrics && charts) {
      const s = state.status && state.status.stages.find((x) => x.name === state.stage);
      const stageSettling = !s || !STAGE_DONE.has(s.status) || state.endedAt == null ||
        Date.now() - state.endedAt < SETTLE_MS;
      if (stageSettling) charts.refresh();
    }
  }, POLL_MS);

  (async () => {
    try {
      onStatus(await getJson(`/v1/pipelines/${pid}`));
    } catch (error) {
      if (error.status === 404) {
        head.replaceChildren(el("h2", {class: "mono", text: id}),
          el("p", {class: "muted", text: "Not known yet (just submitted, or no such pipeline): " +
            "waiting for it to appear."}));
      } else {
        head.replaceChildren(el("h2", {class: "mono", text: id}), unavailable("This pipeline", error));
      }
    }
    refreshAnomalies();
    history.page();
    live();
  })();

  return {
    /** Another stage of the same pipeline (or none): no refetch. */
    update(next) {
      state.stage = next.stage || null;
      if (state.status) {
        drawDagBox();
        drawStage();
      }
      (state.stage ? stageBox : head).scrollIntoView({block: "nearest"});
    },
    unmount() {
      controller.abort();
      clearInterval(poller);
    },
  };
}
