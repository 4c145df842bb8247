"""The report's HTML page (one static file beside its PNGs, no script), written by
``write_report``."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from posttrain.report.charts import draw_stage
from posttrain.report.model import RunReport, StageRun, improvements

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }
th { background: #f3f3f3; }
.ok { color: #176e2a; font-weight: bold; } .bad { color: #b01c1c; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def write_report(report: RunReport, directory: Path) -> Path:
    """Write ``index.html`` and one PNG per charted stage into ``directory`` (made if needed);
    the page's path. The page is written last, through a temporary file: once it is there, so
    are the charts it shows."""
    directory.mkdir(parents=True, exist_ok=True)
    charts = {s.name: draw_stage(s, directory).name for s in report.stages if s.charted}
    page = directory / "index.html"
    partial = directory / f".index.html.{os.getpid()}"
    partial.write_text(render(report, charts), encoding="utf-8")
    partial.replace(page)
    return page


def render(report: RunReport, charts: dict[str, str]) -> str:
    """The page's HTML; ``charts``: stage name -> its PNG's file name beside the page."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>posttrain report: {e(report.name)} ({e(report.pipeline_id)})</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{e(report.name)}</h1>",
        f"<p>pipeline <code>{e(report.pipeline_id)}</code>: <b>{e(report.status)}</b></p>",
    ]
    if report.web_url:
        url = e(report.web_url, quote=True)
        parts.append(f'<p>Live web page (while the gateway runs): <a href="{url}">{url}</a></p>')
    parts += _verdict(report)
    parts += _stage_table(report.stages)
    parts += _evaluation_table(report)
    for stage in report.stages:
        if stage.name in charts:
            parts += _stage_section(stage, charts[stage.name])
    parts.append("</body></html>")
    return "\n".join(parts)


def _verdict(report: RunReport) -> list[str]:
    if report.baseline is None:
        return []
    found = improvements(report.evaluation, report.baseline)
    if not found:
        return [f'<p class="bad">{html.escape(report.baseline)} was not evaluated.</p>']
    return [
        "<ul>",
        *(
            f'<li class="{"ok" if i.improved else "bad"}">{html.escape(i.describe())}</li>'
            for i in found
        ),
        "</ul>",
    ]


def _stage_table(stages: Sequence[StageRun]) -> list[str]:
    rows = [
        "<h2>Stages</h2><table>",
        "<tr><th>stage</th><th>task</th><th>status</th><th>attempt</th><th>agent</th>"
        "<th>seconds</th><th>anomalies</th><th>actions</th></tr>",
    ]
    for s in stages:
        seconds = f"{s.seconds:.1f}" if s.seconds is not None else ""
        anomalies = sum(m.kind == "anomaly" for m in s.markers)
        actions = sum(m.kind == "action" for m in s.markers)
        cells = (s.name, s.task, s.status, s.attempt, s.agent_id or "", seconds, anomalies, actions)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return rows


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _evaluation_table(report: RunReport) -> list[str]:
    if not report.evaluation:
        return []
    rows = [
        "<h2>Evaluation (held-out prompts)</h2><table>",
        "<tr><th>model of stage</th><th>accuracy</th><th>reward</th><th>loss</th>"
        "<th>checkpoint</th></tr>",
    ]
    for r in report.evaluation:
        cells = (
            r.stage,
            _number(r.accuracy, 2),
            _number(r.reward, 3),
            _number(r.loss, 3),
            r.model,
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return rows


def _stage_section(stage: StageRun, chart: str) -> list[str]:
    e = html.escape
    parts = [
        f'<h2 id="stage-{e(stage.name, quote=True)}">{e(stage.name)}</h2>',
        f'<img src="{e(chart, quote=True)}" alt="loss, reward, KL and gradient norm of '
        f'{e(stage.name, quote=True)}">',
    ]
    if stage.markers:
        parts.append("<ul>")
        parts += [f"<li>step {m.step}: {e(m.kind)} {e(m.label)}</li>" for m in stage.markers]
        parts.append("</ul>")
    else:
        parts.append("<p>No anomaly; no action.</p>")
    return parts
