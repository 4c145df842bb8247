// A training job's metric charts: the metrics it reports (pick which), one chart per chosen
// metric, its anomalies and actions marked at their steps. Data from
// /v1/jobs/{job}/series (downsampled by the gateway); a gateway without that endpoint is read
// through /v1/jobs/{job}/metrics (its latest 1000 points) instead.

import {getJson} from "./api.js";
import {el, unavailable} from "./dom.js";
import {metricChart} from "./chart.js";

const NOT_METRICS = new Set(["step", "seq", "source", "timestamp", "epoch", "custom"]);
const PREFERRED = ["loss", "reward_mean", "kl_divergence", "grad_norm", "learning_rate"];
const PREFS_KEY = "posttrain-chart-fields";

function storedFields() {
  try {
    return JSON.parse(localStorage.getItem(PREFS_KEY) || "null");
  } catch {
    return null;
  }
}

export class JobCharts {
  /** box: where to draw; anomaliesOf(job) -> the job's recorded anomalies. */
  constructor(box, jobId, anomaliesOf) {
    this.box = box;
    this.jobId = jobId;
    this.anomaliesOf = anomaliesOf;
    this.available = [];
    this.chosen = null;
    this.data = null;  // {steps, values: {field: [...]}, nonFinite: {field: [...]}, note}
    this.loading = null;
    this.again = false;
    this.fieldsBox = el("div", {class: "fields"});
    this.noteBox = el("div", {class: "legend"});
    this.chartsBox = el("div", {class: "charts", "data-job": jobId});
    box.replaceChildren(
      el("h3", {}, "Metrics ", el("small", {class: "mono", text: jobId})),
      this.fieldsBox, this.chartsBox, this.noteBox);
  }

  /** Fetch again (at most one fetch at a time; a call during one asks for one more). */
  refresh() {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = this._load().finally(() => {
      this.loading = null;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    });
    return this.loading;
  }

  async _discover() {
    const latest = await getJson(`/v1/jobs/${encodeURIComponent(this.jobId)}/metrics?limit=1`);
    if (!latest.length) return false;
    const point = latest[0];
    this.available = Object.keys(point).filter((k) => !NOT_METRICS.has(k) &&
      (typeof point[k] === "number" || ["NaN", "Infinity", "-Infinity"].includes(point[k])));
    const stored = storedFields() || PREFERRED;
    let chosen = stored.filter((f) => this.available.includes(f)).slice(0, 4);
    if (!chosen.length) chosen = this.available.slice(0, 2);
    this.chosen = chosen;
    this._drawFields();
    return true;
  }

  _drawFields() {
    this.fieldsBox.replaceChildren(...this.available.map((field) => {
      const box = el("input", {type: "checkbox", value: field,
        checked: this.chosen.includes(field)});
      box.addEventListener("change", () => {
        this.chosen = this.available.filter((f) =>
          f === field ? box.checked : this.chosen.includes(f));
        localStorage.setItem(PREFS_KEY, JSON.stringify(this.chosen));
        this.refresh();
      });
      return el("label", {}, box, " ", field);
    }));
  }

  async _series() {
    const job = encodeURIComponent(this.jobId);
    const fields = this.chosen.join(",");
    try {
      const doc = await getJson(`/v1/jobs/${job}/series?fields=${encodeURIComponent(fields)}&points=500`);
      return {steps: doc.step || [], values: doc.values || {}, nonFinite: doc.non_finite || {},
        note: ""};
    } catch (error) {
      if (!error.missingEndpoint) throw error;
    }
    // An older gateway: the latest points, as they are.
    const points = (await getJson(`/v1/jobs/${job}/metrics?limit=1000`)).reverse();
    const values = {}, nonFinite = {};
    for (const field of this.chosen) {
      values[field] = points.map((p) => (typeof p[field] === "number" ? p[field] : null));
      nonFinite[field] = points.filter((p) => typeof p[field] === "string").map((p) => p.step);
    }
    return {steps: points.map((p) => p.step), values, nonFinite,
      note: "The latest 1000 points (this gateway has no series endpoint)."};
  }

  async _load() {
    try {
      if (!this.chosen && !(await this._discover())) {
        this.chartsBox.replaceChildren(el("p", {class: "muted", text: "No metrics reported yet."}));
        return;
      }
      this.data = await this._series();
    } catch (error) {
      this.chartsBox.replaceChildren(unavailable("The metrics of this job", error));
      return;
    }
    this.draw();
  }

  /** Draw again from what was fetched (after the anomalies changed, say). */
  draw() {
    if (!this.data || !this.chosen) return;
    const anomalies = this.anomaliesOf(this.jobId);
    this.chartsBox.replaceChildren(...this.chosen.map((field) => metricChart({
      field,
      steps: this.data.steps,
      values: this.data.values[field] || [],
      nonFinite: this.data.nonFinite[field] || [],
      anomalies,
    })));
    const marks = anomalies.length
      ? `${anomalies.length} anomal${anomalies.length === 1 ? "y" : "ies"} marked (▼ at its ` +
        "step, ◆ an action taken; hover for the message). "
      : "";
    this.noteBox.textContent = marks + this.data.note;
  }
}
