"""`emorl report --plot`: FG-ARI against training steps and against minutes, per setting.

A thin line per run (seed) and a bold line for the mean of the setting: over steps at the steps every run
evaluated, over minutes on a common grid (each run interpolated linearly between its evaluations, over the
span all runs cover). Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emorl_cli.experiments.report import Report, RunFigures, Setting
from emorl_cli.files import atomic_path

GRID_POINTS = 100


def run_curve(run: RunFigures, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, FG-ARI) of one run's evaluations; x is 'step' or 'minutes'."""
    rows = [r for r in run.rows if isinstance(r.get("fg_ari"), (int, float))]
    if axis == "step":
        x = np.array([r["step"] for r in rows], dtype=np.float64)
    else:
        x = np.array([r.get("seconds", np.nan) for r in rows], dtype=np.float64) / 60.0
    y = np.array([r["fg_ari"] for r in rows], dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def mean_curve(setting: Setting, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """The setting's mean FG-ARI: at steps all runs share, or on a grid over the minutes all runs cover."""
    curves = [run_curve(run, axis) for run in setting.runs]
    curves = [(x, y) for x, y in curves if x.size]
    if not curves:
        return np.zeros(0), np.zeros(0)
    if axis == "step":
        shared = sorted(set.intersection(*(set(x.tolist()) for x, _ in curves)))
        means = [np.mean([y[x == s][0] for x, y in curves]) for s in shared]
        return np.array(shared), np.array(means)
    low, high = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
    if high < low:
        return np.zeros(0), np.zeros(0)
    grid = np.linspace(low, high, GRID_POINTS)
    return grid, np.mean([np.interp(grid, x, y) for x, y in curves], axis=0)


def plot_curves(report: Report, path: Path, title: str = "FG-ARI on the test split during training") -> Path:
    """Write the two-panel PNG (steps, minutes) atomically; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for index, setting in enumerate(report.settings):
        colour = colours(index % 10)
        for axis, ax in zip(("step", "minutes"), axes, strict=True):
            for run in setting.runs:
                x, y = run_curve(run, axis)
                ax.plot(x, y, color=colour, linewidth=0.8, alpha=0.45)
            x, y = mean_curve(setting, axis)
            label = f"{setting.label} (mean of {len(setting.runs)})" if axis == "step" else None
            ax.plot(x, y, color=colour, linewidth=2.6, label=label)
    for ax, xlabel in zip(axes, ("training step", "minutes (wall clock, evaluation included)"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FG-ARI")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    if report.settings:
        axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(path)
