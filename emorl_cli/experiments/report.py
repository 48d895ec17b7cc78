"""`emorl report`: mean ± std over seeds of what runs evaluated during training, per setting.

A *run* is a folder with `config.yaml` and `metrics.jsonl` (from `emorl train`, a sweep, the demo). A
*setting* is what the runs' configs say apart from `training.seed`: runs whose configs differ only in the
seed are seeds of one setting, and a setting is labelled by the config values that tell it from the others
(`lr=0.0007`). Per run, the *final* figures are its last evaluation row and the *best* ones its row with
the highest FG-ARI (lowest test loss without masks); per setting, each figure is the mean and the sample
standard deviation (n − 1) over its runs — the layout of the paper's Table 1 (FG-ARI in %).
Runs without evaluation rows are listed as missing, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from emorl_cli.config import config_from_dict, config_to_dict, read_yaml_file
from emorl_cli.errors import EmorlError, InputError
from emorl_cli.experiments.sweep import short_keys
from emorl_cli.json_input import read_json
from emorl_cli.training.run_logs import eval_rows
from emorl_cli.training.rundir import RunDir

FIGURES = ("fg_ari", "ari", "mse", "kl", "slot_spread")
SEED_KEY = "training.seed"
# Config fields that say where things are, not what was trained: runs that differ only in them are seeds of
# one setting (every `emorl demo --out D` synthesises the same data into its own D/data).
WHERE_KEYS = frozenset({"data.data_dir"})


@dataclass(frozen=True)
class Mark:
    """A point of the training curves: a step, or minutes of wall clock."""

    unit: str  # "step" or "minute"
    value: float

    @property
    def label(self) -> str:
        return f"step {self.value:g}" if self.unit == "step" else f"{self.value:g} min"


@dataclass
class RunFigures:
    """One run's evaluation rows and where they came from."""

    folder: Path
    config: dict[str, Any]  # flattened: "training.lr" → 0.0007
    rows: list[dict[str, Any]]
    finished: Optional[dict[str, Any]] = None  # finished.json: {"step", "reason", "seconds"}, or None

    @property
    def seed(self) -> Any:
        return self.config.get(SEED_KEY)

    @property
    def final(self) -> Optional[dict[str, Any]]:
        return self.rows[-1] if self.rows else None

    def at(self, point: Mark) -> Optional[dict[str, Any]]:
        """The last evaluation row at or before a step (or a wall-clock minute); None before the first
        evaluation and None at a mark the run never reached, so that a run stopped early does not count its
        last figure at later marks. A run that ended on its time budget reached every minute up to that
        budget rounded up to a whole minute (a 15-minute demo trains 14.3 minutes at I = 2, 14.8 at I = 0,
        and counts at 15)."""
        key, limit = ("step", point.value) if point.unit == "step" else ("seconds", point.value * 60.0)
        if not self.reached(key, limit):
            return None
        reached = [r for r in self.rows if _number(r.get(key)) is not None and r[key] <= limit + 1e-9]
        return reached[-1] if reached else None

    def reached(self, key: str, limit: float) -> bool:
        """Whether the run got to `limit` steps or seconds."""
        furthest = max((_number(r.get(key)) or 0.0 for r in self.rows), default=0.0)
        if furthest >= limit - 1e-9:
            return True
        budget = self.finished or {}
        if key == "seconds" and budget.get("reason") == "time budget" and _number(budget.get("seconds")):
            return math.ceil(budget["seconds"] / 60.0 - 1e-9) * 60.0 >= limit - 1e-9
        return False

    @property
    def best(self) -> Optional[dict[str, Any]]:
        scored = [r for r in self.rows if _number(r.get("fg_ari")) is not None]
        if scored:
            return max(scored, key=lambda r: r["fg_ari"])
        scored = [r for r in self.rows if _number(r.get("loss")) is not None]
        return min(scored, key=lambda r: r["loss"]) if scored else None


@dataclass
class Setting:
    """Runs that differ only in their seed, and the figures over them."""

    label: str
    values: dict[str, Any]  # the config values that tell this setting from the others
    runs: list[RunFigures] = field(default_factory=list)

    def figures(self, which: str | Mark) -> dict[str, dict[str, Any]]:
        """figure → {mean, std, n} over runs of their `which` row: 'final', 'best', or the row at a Mark."""
        rows = [run.at(which) if isinstance(which, Mark) else getattr(run, which) for run in self.runs]
        out = {}
        for name in (*FIGURES, "step", "seconds"):
            values = [v for row in rows if row is not None and (v := _number(row.get(name))) is not None]
            out[name] = mean_std(values)
        return out


@dataclass
class Report:
    settings: list[Setting]
    missing: list[tuple[Path, str]]
    marks: list[Mark] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": [
                {
                    "label": s.label,
                    "values": s.values,
                    "runs": [str(r.folder) for r in s.runs],
                    "seeds": [r.seed for r in s.runs],
                    "final": s.figures("final"),
                    "best": s.figures("best"),
                    "at": {m.label: s.figures(m) for m in self.marks},
                }
                for s in self.settings
            ],
            "missing": [{"run": str(path), "reason": reason} for path, reason in self.missing],
            "std": "sample standard deviation over runs (n - 1); 0 for a single run",
        }


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1; 0 for one value, None for none)."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size)}


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training": {"lr": 1}} → {"training.lr": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# --------------------------------------------------------------------------------------------- reading


def find_runs(paths: list[Path]) -> list[tuple[Path, Optional[Path]]]:
    """(run folder, the folder of runs it was found in or None) for each run among `paths`: each path is a
    run (it has config.yaml) or a folder of runs (a sweep)."""
    found: list[tuple[Path, Optional[Path]]] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path} is not a folder; give run folders or a sweep's folder")
        if RunDir(path).config.is_file():
            found.append((path, None))
            continue
        children = sorted(p for p in path.iterdir() if RunDir(p).config.is_file())
        if not children:
            raise InputError(f"{path} holds no runs (no config.yaml in it or its sub-folders); give a run folder")
        found += [(child, path) for child in children]
    return found


def read_run(folder: Path) -> RunFigures:
    """A run's config (fields it predates filled with today's defaults, so that runs of different emorl
    versions compare field by field) and its evaluation rows."""
    run = RunDir(folder)
    config = read_yaml_file(run.config, error=InputError, what="the run's config") or {}
    if not isinstance(config, dict):
        raise InputError(f"{run.config} holds no config (a {type(config).__name__}); is {folder} a run folder?")
    try:
        config = config_to_dict(config_from_dict(config, source=str(run.config)))
    except EmorlError:
        pass  # not a config this version validates: compare what it holds
    try:
        finished = read_json(run.finished, expect=dict) if run.finished.is_file() else None
    except EmorlError:
        finished = None  # a torn or unreadable finished.json: judge the run by its rows alone
    return RunFigures(folder=folder, config=flatten(config), rows=eval_rows(run.metrics), finished=finished)


def _label(values: dict[str, Any], short: dict[str, str]) -> str:
    if not values:
        return "all runs"
    return ",".join(f"{short[k]}={_show(v)}" for k, v in values.items())


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def build_report(paths: list[Path], marks: Optional[list[Mark]] = None) -> Report:
    """Group the runs under `paths` into settings and collect their evaluation rows; `marks` add the
    figures at given steps or minutes (the last evaluation at or before each)."""
    found = find_runs(paths)
    runs = [read_run(folder) for folder, _ in found]
    missing = [(r.folder, "no evaluation rows in metrics.jsonl (train with training.eval_every > 0)") for r in runs]
    missing = [m for m, r in zip(missing, runs, strict=True) if not r.rows]
    keys = sorted({k for r in runs for k in r.config} - {SEED_KEY} - WHERE_KEYS)
    varying = [k for k in keys if len({_show(r.config.get(k)) for r in runs}) > 1]
    short = short_keys(varying)
    settings: dict[str, Setting] = {}
    sources: dict[str, set[Optional[Path]]] = {}
    for run, (_, source) in zip(runs, found, strict=True):
        if not run.rows:
            continue
        values = {k: run.config.get(k) for k in varying}
        label = _label(values, short)
        settings.setdefault(label, Setting(label, values)).runs.append(run)
        sources.setdefault(label, set()).add(source)
    _name_by_folder(list(settings.values()), sources)
    return Report(list(settings.values()), missing, list(marks or []))


def _name_by_folder(settings: list[Setting], sources: dict[str, set[Optional[Path]]]) -> None:
    """Several sweeps given, one setting each: label each setting by its sweep folder's name (shorter than
    the config values, which stay in `values`)."""
    folders = [next(iter(sources[s.label])) if len(sources[s.label]) == 1 else None for s in settings]
    if len(settings) > 1 and None not in folders and len(set(folders)) == len(settings):
        for setting, folder in zip(settings, folders, strict=True):
            setting.label = folder.name  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------- layout


def cell(summary: dict[str, Any], scale: float = 1.0, fmt: str = "{:.1f}", of: Optional[int] = None) -> str:
    """'mean ± std' of a figure (as the paper prints them), '—' without values; with `of` (the runs of
    the setting), how many of them the figure covers when not all."""
    if summary["mean"] is None:
        return "—"
    text = f"{fmt.format(summary['mean'] * scale)} ± {fmt.format(summary['std'] * scale)}"
    if of is not None and summary["n"] < of:
        text += f" ({summary['n']} of {of})"  # some runs never got to this mark
    return text


TABLE_COLUMNS = (
    "setting", "seeds", "steps", "minutes", "FG-ARI % (final)", "FG-ARI % (best)", "ARI %", "MSE", "KL",
    "slot spread",
)  # fmt: skip


def table_columns(report: Report) -> list[str]:
    """TABLE_COLUMNS, then one FG-ARI column per mark."""
    return [*TABLE_COLUMNS, *(f"FG-ARI % @ {m.label}" for m in report.marks)]


def table_rows(report: Report) -> list[list[str]]:
    """One row per setting, in `table_columns` order."""
    rows = []
    for setting in report.settings:
        final, best = setting.figures("final"), setting.figures("best")
        at = [cell(setting.figures(m)["fg_ari"], scale=100, of=len(setting.runs)) for m in report.marks]
        rows.append(
            [
                setting.label,
                str(len(setting.runs)),
                cell(final["step"], fmt="{:.0f}"),
                cell(final["seconds"], scale=1 / 60),
                cell(final["fg_ari"], scale=100),
                cell(best["fg_ari"], scale=100),
                cell(final["ari"], scale=100),
                cell(final["mse"], fmt="{:.2e}"),
                cell(final["kl"], fmt="{:.1f}"),
                cell(final["slot_spread"], fmt="{:.2f}"),
                *at,
            ]
        )
    return rows


def to_csv(report: Report) -> str:
    """One line per setting: label, seeds, then mean and std of every final figure and the best FG-ARI."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["setting", "seeds"]
    for name in (*FIGURES, "step", "seconds"):
        header += [f"{name}_mean", f"{name}_std"]
    header += ["best_fg_ari_mean", "best_fg_ari_std"]
    for mark in report.marks:
        header += [f"fg_ari_mean@{mark.label}", f"fg_ari_std@{mark.label}"]
    writer.writerow(header)
    for setting in report.settings:
        final, best = setting.figures("final"), setting.figures("best")
        row: list[Any] = [setting.label, len(setting.runs)]
        for name in (*FIGURES, "step", "seconds"):
            row += [final[name]["mean"], final[name]["std"]]
        row += [best["fg_ari"]["mean"], best["fg_ari"]["std"]]
        for mark in report.marks:
            at = setting.figures(mark)["fg_ari"]
            row += [at["mean"], at["std"]]
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()
