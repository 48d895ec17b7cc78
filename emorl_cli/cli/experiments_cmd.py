"""`emorl sweep` and `emorl report`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live
from rich.table import Table

from emorl_cli.cli.console import console, err_console, is_interactive, print_table
from emorl_cli.cli.options import THREADS_KEY, ConfigArg, DataDirOpt, LogWithOpt, SetOpt, in_range, log_with_overrides
from emorl_cli.errors import EmorlError, InputError
from emorl_cli.experiments.sweep import MAX_RUNS

STATE_STYLE = {
    "pending": "dim",
    "running": "yellow",
    "finished": "green",
    "skipped": "green",
    "failed": "bold red",
    "stopped": "red",
    "held": "yellow",
}


def _status_table(statuses) -> Table:
    table = Table(title="emorl sweep")
    for column in ("run", "state", "step", "FG-ARI (last eval)", "minutes", "log"):
        table.add_column(column, justify="right" if column in ("step", "minutes") else "left")
    for s in statuses:
        state = s.state + (f" (exit {s.returncode})" if s.state == "failed" else "")
        state += f" [GPU {s.device}]" if s.device is not None and s.state == "running" else ""
        table.add_row(
            s.spec.name,
            f"[{STATE_STYLE.get(s.state, '')}]{state}[/]",
            "" if s.step is None else f"{s.step:,}",
            "" if s.fg_ari is None else f"{s.fg_ari:.3f}",
            f"{s.seconds / 60:.1f}" if s.seconds else "",
            str(s.log),
        )
    return table


class _PlainStatus:
    """Without a terminal: one line per run whenever its state changes."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, statuses) -> None:
        for s in statuses:
            if self.seen.get(s.spec.name) == s.state:
                continue
            self.seen[s.spec.name] = s.state
            figures = "" if s.fg_ari is None else f", FG-ARI {s.fg_ari:.3f}"
            step = "" if s.step is None else f", step {s.step}"
            err_console.print(
                f"sweep: {s.spec.name} {s.state}{step}{figures} (log {s.log})", highlight=False, soft_wrap=True
            )


def sweep(
    ctx: typer.Context,
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder: one run folder per combination.")],
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, e.g. 1-4 or 1,2,5.")] = "1",
    grid: Annotated[
        Optional[list[str]],
        typer.Option("--grid", "-g", help="A config field and its values: --grid training.lr=7e-4,1e-3 (repeatable)."),
    ] = None,
    overrides: SetOpt = None,
    jobs: Annotated[
        Optional[int],
        typer.Option(
            "--jobs",
            "-j",
            help="Runs at a time (default: one per GPU, else 1); CPU threads are split (`emorl --threads N "
            "sweep …`: N threads each).",
            callback=in_range("runs at a time", 1, MAX_RUNS),
        ),
    ] = None,
    minutes: Annotated[
        Optional[float], typer.Option("--minutes", "-m", help="Wall-clock budget per run (training.max_minutes).")
    ] = None,
    data_dir: DataDirOpt = None,
    log_with: LogWithOpt = None,
) -> None:
    """Train every combination of --seeds and --grid values, --jobs at a time; rerun to resume.

    Example: emorl sweep demo --seeds 1-4 --grid training.lr=7e-4,1e-3 --minutes 15 --out sweeps/lr --jobs 2
    """
    from emorl_cli.config import load_config
    from emorl_cli.experiments.sweep import plan_sweep, run_sweep
    from emorl_cli.training.trackers import check_trackers

    overrides = (overrides or []) + log_with_overrides(log_with)
    check_trackers(load_config(config, overrides).training.log_with)  # before any run starts
    threads = ctx.meta.get(THREADS_KEY)  # the global `emorl --threads N` wins over the split of the cores

    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise InputError(f"--minutes must be a positive number, got {minutes}; e.g. --minutes 15")
    plan = plan_sweep(
        config,
        seeds=seeds,
        grid=grid or [],
        sets=overrides or [],
        out_dir=out,
        jobs=jobs,
        minutes=minutes,
        data_dir=data_dir,
        threads=threads,
    )
    where = f"GPUs {','.join(plan.devices)}" if plan.devices else f"{plan.threads} CPU thread(s) each"
    err_console.print(
        f"sweep: {len(plan.runs)} runs in {plan.out_dir}, {plan.jobs} at a time, {where}",
        highlight=False,
        soft_wrap=True,
    )
    if is_interactive():
        with Live(_status_table([]), console=err_console, refresh_per_second=1) as live:
            statuses = run_sweep(plan, lambda s: live.update(_status_table(s)))
    else:
        statuses = run_sweep(plan, _PlainStatus())
        print_table(_status_table(statuses))
    for s in statuses:
        if s.state == "held":
            err_console.print(
                f"[yellow]note:[/] {s.spec.name} left to another process that trains it ({s.holder}); rerun "
                "the sweep after it to see it finished",
                highlight=False,
                soft_wrap=True,
            )
    failed = [s for s in statuses if s.state == "failed"]
    if failed:
        logs = ", ".join(str(s.log) for s in failed)
        raise EmorlError(f"{len(failed)} of {len(statuses)} runs failed; see {logs}; fix and rerun to resume")
    console.print(f"summarise with: emorl report {plan.out_dir}", highlight=False, soft_wrap=True)


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or folders of runs (a sweep's --out).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Also write one CSV line per setting.")] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Also write a PNG of FG-ARI against steps and minutes.")
    ] = None,
    at_steps: Annotated[
        Optional[list[float]],
        typer.Option("--at-step", help="Add the FG-ARI at this step (the last evaluation before it); repeatable."),
    ] = None,
    at_minutes: Annotated[
        Optional[list[float]],
        typer.Option("--at-minute", help="Add the FG-ARI at this many minutes of wall clock; repeatable."),
    ] = None,
) -> None:
    """Mean ± std over seeds, per setting, of the figures runs evaluated during training (paper's Table 1).

    Example: emorl report sweeps/lr --plot sweeps/lr/curves.png --csv sweeps/lr/table.csv
    """
    from emorl_cli.experiments.report import Mark, build_report, table_columns, table_rows, to_csv
    from emorl_cli.files import atomic_write_text

    marks = [Mark("step", v) for v in at_steps or []] + [Mark("minute", v) for v in at_minutes or []]
    bad = [m.label for m in marks if not (math.isfinite(m.value) and m.value > 0)]
    if bad:
        raise InputError(f"--at-step and --at-minute take positive numbers, got {', '.join(bad)}")
    result = build_report(runs, marks)
    if not result.settings:  # before --csv or --plot writes anything
        for folder, reason in result.missing:
            err_console.print(f"[yellow]missing:[/] {folder}: {reason}", highlight=False, soft_wrap=True)
        raise InputError(f"none of the {len(result.missing)} runs has evaluation figures; nothing to report")
    if csv_path is not None:
        atomic_write_text(csv_path, to_csv(result))
    if plot is not None:
        from emorl_cli.experiments.curves import plot_curves

        plot_curves(result, plot)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        table = Table(title="FG-ARI and ARI in %, mean ± std over seeds (final evaluation unless marked best)")
        for column in table_columns(result):
            table.add_column(column, justify="left" if column == "setting" else "right")
        for row in table_rows(result):
            table.add_row(*row)
        print_table(table)
    for folder, reason in result.missing:
        err_console.print(f"[yellow]missing:[/] {folder}: {reason}", highlight=False, soft_wrap=True)
    for label, path in (("csv", csv_path), ("plot", plot)):
        if path is not None:
            err_console.print(f"{label}: {path}", highlight=False, soft_wrap=True)
