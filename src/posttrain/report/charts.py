"""One PNG per training stage: a panel per charted field (loss, reward, KL, gradient norm),
anomalies and actions drawn as vertical lines at their steps."""

from __future__ import annotations

import re
from pathlib import Path

from posttrain.report.model import CHART_FIELDS, StageRun

ANOMALY_COLOUR = "tab:red"
ACTION_COLOUR = "tab:green"


def chart_name(stage: str) -> str:
    """The PNG's file name for a stage (any character a path could trip on replaced)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stage) + ".png"


def draw_stage(stage: StageRun, directory: Path) -> Path:
    """Write ``stage``'s chart into ``directory``; its path."""
    # Agg: no display on a server, and importing pyplot must not look for one.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    fig.suptitle(f"{stage.name} ({stage.task}, attempt {stage.attempt})")
    for ax, (field, title) in zip(axes.flat, CHART_FIELDS, strict=True):
        points = stage.series.get(field, ())
        ax.set_title(title)
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, linewidth=1.2, color="tab:blue")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        for marker in stage.markers:
            colour = ANOMALY_COLOUR if marker.kind == "anomaly" else ACTION_COLOUR
            style = "--" if marker.kind == "anomaly" else ":"
            ax.axvline(marker.step, color=colour, linestyle=style, linewidth=1)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    if stage.markers:
        from matplotlib.lines import Line2D

        kinds = {m.kind for m in stage.markers}
        handles = [
            Line2D([], [], color=ANOMALY_COLOUR, linestyle="--", label="anomaly"),
            Line2D([], [], color=ACTION_COLOUR, linestyle=":", label="action"),
        ]
        fig.legend(handles=[h for h in handles if h.get_label() in kinds], loc="upper right")
    fig.tight_layout()
    path = directory / chart_name(stage.name)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
