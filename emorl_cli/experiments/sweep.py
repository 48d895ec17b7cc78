"""`emorl sweep`: the cross product of seeds and grid values as ordinary training runs, N at a time.

Each run is `emorl train CONFIG --out DIR/<name> --set …` in a subprocess of its own, with its own log
(`DIR/<name>/train.log`), so a run of a sweep is exactly a run a user could start by hand (and resume,
evaluate, draw). The name lists the run's own overrides, grid keys first: `lr=7e-4,seed=2`.

Scheduling: `jobs` runs at a time. On a CPU the cores are split between them (`--threads` and
OMP_NUM_THREADS of each run); where CUDA devices exist, each job slot gets one device
(CUDA_VISIBLE_DEVICES). Run state comes from the run folder alone, so an interrupted sweep is resumed by
the same command: finished runs (finished.json, for the current iters or time budget) are skipped, runs
with checkpoints continue with `--resume`, the others start afresh.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from emorl_cli.config import SEED_MAX, Config, load_config, resolve_config_path
from emorl_cli.errors import EmorlError, InputError
from emorl_cli.files import atomic_write_json, inner_folder, open_for_writing
from emorl_cli.json_input import read_json
from emorl_cli.locks import describe_holder, folder_holder
from emorl_cli.training.run_logs import eval_rows, read_rows
from emorl_cli.training.rundir import RunDir

LOG_NAME = "train.log"
PLAN_NAME = "sweep.json"
# Characters kept in a run name as typed; anything else (a '/', a space, a ',' inside a list) becomes '_'.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-\[\]]")
POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 20.0
# Runs in one sweep: far more than a table over seeds needs; a typo (--seeds 1-100000000) would otherwise
# plan, check and list a hundred million runs before starting one.
MAX_RUNS = 10_000


# --------------------------------------------------------------------------------------------- parsing


def parse_seeds(text: str) -> list[int]:
    """'1-4' → [1, 2, 3, 4]; '1,3' → [1, 3]; '1-2,7' → [1, 2, 7] (order kept, duplicates dropped).

    Every seed is within 0..SEED_MAX and there are at most MAX_RUNS of them, checked from the ranges' ends
    before any list is built.
    """
    bounds: list[tuple[int, int]] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if not match:
            raise InputError(f"--seeds {text!r}: {part!r} is not a seed or a range; write e.g. 1-4 or 1,2,5")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise InputError(f"--seeds {text!r}: the range {part!r} is empty; write the smaller seed first")
        if low < 0 or high > SEED_MAX:
            raise InputError(f"--seeds {text!r}: {part!r} leaves the seeds' range 0 to {SEED_MAX}; e.g. --seeds 1-4")
        bounds.append((low, high))
    count = sum(high - low + 1 for low, high in bounds)
    if count > MAX_RUNS:
        raise InputError(
            f"--seeds {text!r} gives {count:,} seeds, more than the {MAX_RUNS:,} runs a sweep takes; e.g. --seeds 1-4"
        )
    seeds: dict[int, None] = {}  # ordered and duplicate-free
    for low, high in bounds:
        seeds.update(dict.fromkeys(range(low, high + 1)))
    return list(seeds)


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: 'a,[1, 2],b' → ['a', '[1, 2]', 'b']."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['training.lr=7e-4,1e-3', …] → [('training.lr', ['7e-4', '1e-3']), …]."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or len(key.split(".")) < 2 or not all(key.split(".")):
            raise InputError(f"--grid {item!r} is not of the form section.field=v1,v2; e.g. training.lr=7e-4,1e-3")
        if key == "training.seed":
            raise InputError("--grid training.seed=…: give seeds with --seeds, e.g. --seeds 1-4")
        if key in (k for k, _ in grid):
            raise InputError(f"--grid {key} is given twice; list all its values in one --grid {key}=v1,v2")
        values = split_values(text)
        if any(not v for v in values):
            raise InputError(f"--grid {item!r} has an empty value; e.g. --grid {key}=v1,v2")
        grid.append((key, values))
    return grid


def short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key where two keys share the last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last, strict=True)}


# --------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: its folder name and the overrides that make it (grid values, then seed)."""

    name: str
    overrides: tuple[str, ...]
    seed: int


def name_part(value: str) -> str:
    """A grid value as it appears in a run name: spaces dropped, unsafe characters as '_'."""
    return _UNSAFE.sub("_", re.sub(r"\s+", "", value))


def plan_runs(seeds: list[int], grid: list[tuple[str, list[str]]]) -> list[RunSpec]:
    """Every (grid values, seed) combination, grid-major (all seeds of a setting together)."""
    if not seeds:
        raise InputError("--seeds gave no seeds; e.g. --seeds 1-4")
    settings = math.prod(len(values) for _, values in grid)
    if settings * len(seeds) > MAX_RUNS:
        raise InputError(
            f"{len(seeds):,} seeds × {settings:,} grid settings make {settings * len(seeds):,} runs, more than the "
            f"{MAX_RUNS:,} a sweep takes; give fewer seeds or grid values"
        )
    short = short_keys([k for k, _ in grid])
    runs = []
    for values in itertools.product(*(v for _, v in grid)):
        pairs = list(zip((k for k, _ in grid), values, strict=True))
        for seed in seeds:
            name = ",".join([f"{short[k]}={name_part(v)}" for k, v in pairs] + [f"seed={seed}"])
            overrides = tuple(f"{k}={v}" for k, v in pairs) + (f"training.seed={seed}",)
            runs.append(RunSpec(name, overrides, seed))
    return runs


def is_finished(run_dir: Path, cfg: Config) -> bool:
    """Whether a run folder holds a run finished for this config (its iters, or its time budget)."""
    marker = RunDir(run_dir).finished
    if not marker.is_file():
        return False
    try:
        done = read_json(marker, expect=dict)
        if done.get("reason") == "iters":
            return int(done.get("step", -1)) >= cfg.training.iters
        budget = cfg.training.max_minutes
        return budget is not None and float(done.get("seconds", 0.0)) >= budget * 60.0
    except (EmorlError, TypeError, ValueError, OverflowError):  # a damaged marker: the run is not finished
        return False


# --------------------------------------------------------------------------------------------- running


@dataclass
class RunStatus:
    """What the sweep knows of one run: state is pending, running, finished, skipped, held (another process,
    such as a second sweep into the same folder, trains it), failed or stopped."""

    spec: RunSpec
    folder: Path
    state: str = "pending"
    returncode: Optional[int] = None
    started: Optional[float] = None
    seconds: float = 0.0
    step: Optional[int] = None
    fg_ari: Optional[float] = None
    device: Optional[str] = None
    holder: str = ""  # who trains it, when held by another process

    @property
    def log(self) -> Path:
        return self.folder / LOG_NAME

    def refresh(self) -> None:
        """Read the last step and the last evaluation's FG-ARI from the run's metrics.jsonl."""
        metrics = RunDir(self.folder).metrics
        rows, _ = read_rows(metrics)
        if rows:
            self.step = max(int(r["step"]) for r in rows)
        evaluated = [r for r in eval_rows(metrics) if r.get("fg_ari") is not None]
        if evaluated:
            self.fg_ari = float(evaluated[-1]["fg_ari"])
        if self.started is not None and self.state == "running":
            self.seconds = time.monotonic() - self.started


@dataclass
class SweepPlan:
    """A whole sweep: the config, the runs, where they go and how many run at once."""

    config: str
    runs: list[RunSpec]
    out_dir: Path
    jobs: int
    sets: list[str] = field(default_factory=list)
    data_dir: Optional[Path] = None
    threads: int = 1
    devices: list[str] = field(default_factory=list)  # CUDA device ids, one per job slot (round-robin)

    def run_config(self, spec: RunSpec) -> Config:
        return load_config(self.config, self.sets + list(spec.overrides))

    def command(self, spec: RunSpec, resume: bool) -> list[str]:
        """The `emorl train` command line of one run."""
        sets = [arg for item in self.sets + list(spec.overrides) for arg in ("--set", item)]
        data = ["--data-dir", str(self.data_dir)] if self.data_dir is not None else []
        return [
            sys.executable, "-m", "emorl_cli", "--threads", str(self.threads),
            "train", self.config, "--out", str(self.out_dir / spec.name), *data, *sets,
            *(["--resume"] if resume else []),
        ]  # fmt: skip


def config_argument(config: str) -> str:
    """A shipped name as is, a YAML path made absolute (the runs may start from another folder)."""
    path = resolve_config_path(config)
    return config if path.parent.name == "configs" and path.stem == config else str(path.resolve())


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class SweepInterrupted(EmorlError):
    """The user stopped the sweep; the runs were stopped and resume with the same command."""


def run_sweep(plan: SweepPlan, on_change: Callable[[list[RunStatus]], None] = lambda s: None) -> list[RunStatus]:
    """Run every unfinished run of `plan`, `plan.jobs` at a time; returns the final status of each run.

    `on_change` is called with all statuses whenever one changes and about once a second while runs go on.
    Ctrl-C stops the running runs (SIGINT, then SIGKILL after a grace period) and raises SweepInterrupted.
    """
    statuses = [RunStatus(spec, plan.out_dir / spec.name) for spec in plan.runs]
    for status in statuses:
        if is_finished(status.folder, plan.run_config(status.spec)):
            status.state = "skipped"
        status.refresh()
    write_plan(plan)
    running: dict[int, tuple[RunStatus, subprocess.Popen, object]] = {}
    free_slots = list(range(plan.jobs))
    on_change(statuses)
    try:
        while True:
            for slot in list(free_slots):
                waiting = _next_free(plan, statuses)
                if waiting is None:
                    break
                free_slots.remove(slot)
                try:
                    running[slot] = _start(plan, waiting, slot)
                except EmorlError:  # its folder cannot be written (a link planted there, a full disk): stop all
                    _stop_all(running.values())
                    raise
                on_change(statuses)
            if not running:
                break
            time.sleep(POLL_SECONDS)
            for slot, (status, process, log) in list(running.items()):
                status.refresh()
                code = process.poll()
                if code is None:
                    continue
                log.close()  # type: ignore[attr-defined]
                status.returncode = code
                status.state = "finished" if code == 0 else _after_failure(plan, status)
                status.refresh()
                del running[slot]
                free_slots.append(slot)
            on_change(statuses)
    except KeyboardInterrupt:
        _stop_all(running.values())
        for status, _, _ in running.values():
            status.state = "stopped"
        on_change(statuses)
        stopped = [status.spec.name for status, _, _ in running.values()]
        waiting = sum(s.state == "pending" for s in statuses)
        names = f" ({', '.join(stopped)})" if stopped else ""
        raise SweepInterrupted(
            f"sweep interrupted; {len(stopped)} running run(s){names} stopped, each keeping its checkpoints, and "
            f"{waiting} not started; run the same command again to resume them (finished runs are skipped)"
        ) from None
    return statuses


def _next_free(plan: SweepPlan, statuses: list[RunStatus]) -> Optional[RunStatus]:
    """The next pending run no other process holds; pending runs another process trains become `held`."""
    for status in statuses:
        if status.state != "pending":
            continue
        holder = folder_holder(status.folder)
        if holder is None:
            return status
        status.state, status.holder = "held", describe_holder(holder)
    return None


def _after_failure(plan: SweepPlan, status: RunStatus) -> str:
    """The state of a run whose training exited with an error: another process may have started it first
    (a second sweep into the same folder), finished it (`skipped`) or hold it still (`held`)."""
    if is_finished(status.folder, plan.run_config(status.spec)):
        return "skipped"
    holder = folder_holder(status.folder)
    if holder is not None:
        status.holder = describe_holder(holder)
        return "held"
    return "failed"


def _start(plan: SweepPlan, status: RunStatus, slot: int) -> tuple[RunStatus, subprocess.Popen, object]:
    """Start one run (fresh, or resumed when its folder holds checkpoints) with its log file."""
    resume = RunDir(status.folder).latest_checkpoint() is not None
    command = plan.command(status.spec, resume)
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads)}
    if plan.devices:
        status.device = plan.devices[slot % len(plan.devices)]
        env["CUDA_VISIBLE_DEVICES"] = status.device
    inner_folder(plan.out_dir, status.folder.relative_to(plan.out_dir).as_posix())
    log = open_for_writing(status.log, "a")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log.write(f"=== {stamp} emorl sweep {'resumes' if resume else 'starts'}: {' '.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    status.state, status.started = "running", time.monotonic()
    return status, process, log


def _stop_all(running) -> None:
    """SIGINT every running run (training stops between steps), SIGKILL those still alive after the grace."""
    items = list(running)
    for _, process, _ in items:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for _, process, log in items:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def write_plan(plan: SweepPlan) -> Path:
    """DIR/sweep.json: what this sweep runs (rewritten by every invocation)."""
    path = plan.out_dir / PLAN_NAME
    atomic_write_json(
        path,
        {
            "config": plan.config,
            "set": plan.sets,
            "jobs": plan.jobs,
            "threads_per_run": plan.threads,
            "devices": plan.devices,
            "runs": [{"name": r.name, "overrides": list(r.overrides), "seed": r.seed} for r in plan.runs],
        },
    )
    return path


# --------------------------------------------------------------------------------------------- building


def plan_sweep(
    config: str,
    *,
    seeds: str,
    grid: list[str],
    sets: list[str],
    out_dir: Path,
    jobs: Optional[int] = None,
    minutes: Optional[float] = None,
    data_dir: Optional[Path] = None,
    threads: Optional[int] = None,
) -> SweepPlan:
    """Check every run's config before anything starts, and decide jobs, threads and devices.

    The shipped demo configs (`demo`, `demo_multi_dsprites`) read the synthetic data `emorl demo` makes:
    without --data-dir they are synthesised into DIR/data on first use, as the demo does in its own folder.
    `threads` (the global `emorl --threads N`) is every run's thread count; without it the CPU cores are
    split between the jobs.
    """
    import torch

    if minutes is not None:
        sets = [*sets, f"training.max_minutes={minutes}"]
    runs = plan_runs(parse_seeds(seeds), parse_grid(grid))
    devices = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if jobs is None:
        jobs = max(1, len(devices))
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    jobs = min(jobs, len(runs))
    plan = SweepPlan(
        config=config_argument(config),
        runs=runs,
        out_dir=Path(out_dir).resolve(),
        jobs=jobs,
        sets=list(sets),
        data_dir=Path(data_dir).resolve() if data_dir is not None else None,
        threads=threads if threads is not None else max(1, cpu_count() // jobs),
        devices=devices,
    )
    for spec in runs:
        try:
            plan.run_config(spec)
        except EmorlError as exc:
            raise InputError(f"run {spec.name}: {exc}") from None
    try:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the sweep folder {plan.out_dir} ({exc.strerror}); choose another --out"
        ) from None
    from emorl_cli.demo import DEMOS, ensure_data

    if plan.data_dir is None and config in {spec.config for spec in DEMOS.values()}:
        plan.data_dir = inner_folder(plan.out_dir, "data")  # never a link planted in its place
        ensure_data(load_config(config, [*plan.sets, f"data.data_dir={plan.data_dir}"]))
    return plan
