"""`emorl bench --suite gpu`: the figures a first run on a GPU should produce, in one JSON, in under 8 minutes.

The suite measures, in this order (each item has a planned time; the plan stays under `BUDGET_SECONDS`):

1. training steps of the tetrominoes and clevr6 configs (their batch of 32) in fp32, bf16 and fp16, and
   of the multi_dsprites and clevrtex configs (batch 32, 64×64 and 128×128) in fp32 and bf16: seconds per
   step, images per second, peak CUDA memory (the fp32 items also count FLOPs);
2. evaluation of the tetrominoes and clevr6 configs, batched and one image at a time;
3. host waits: how often a training step makes the CPU wait for the GPU (torch's sync debug mode);
4. a 2.5-minute training run of the tetrominoes config on synthetic Tetrominoes (`emorl data synth`)
   through `emorl train`'s own loop, then FG-ARI on 320 synthetic test images;
5. the training steps again with `training.compile: true` (bf16), first-step (compile) time included.

Compilation takes the longest and varies most, so it comes last, each config in a child process killed when
the budget runs out; an item that would end after the budget is skipped and says so. The JSON is rewritten
after every item, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli import __version__
from emorl_cli.config import Config, load_config
from emorl_cli.errors import EmorlError
from emorl_cli.files import atomic_write_json
from emorl_cli.json_input import parse_json

BUDGET_SECONDS = 480.0  # the whole suite, on one GPU
RUN_SECONDS = 150.0  # the training run's training time
RUN_TRAIN_IMAGES, RUN_TEST_IMAGES = 20_000, 320
CONFIGS = ("tetrominoes", "clevr6")
# the paper's other image sizes: training steps only, in the precisions a GPU user would train in
LARGE_CONFIGS = ("multi_dsprites", "clevrtex")
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
LARGE_PRECISIONS = ("fp32", "bf16")
EVAL_IMAGES = 160
SYNC_STEPS = 5
# Planned seconds per item (process start-up and CUDA initialisation are in STARTUP_SECONDS).
STARTUP_SECONDS = 15.0
PLANNED = {"train": 12.0, "train_large": 10.0, "eval": 15.0, "syncs": 15.0, "compile": 60.0, "run_extra": 30.0}


@dataclass
class Item:
    """One measurement of the suite."""

    name: str
    kind: str  # train | eval | syncs | run | compile
    config: str
    overrides: list[str]
    planned_seconds: float
    what: str
    status: str = "planned"  # planned | done | failed | skipped
    seconds: Optional[float] = None
    result: Optional[dict[str, Any]] = None
    error: Optional[str] = None


@dataclass
class SuiteReport:
    """The suite's JSON: environment, budget, every item, and a summary of the main figures."""

    suite: str
    dry_run: bool
    device: str
    versions: dict[str, str]
    settings: dict[str, Any]
    budget_seconds: float
    planned_seconds: float
    items: list[Item]
    seconds: Optional[float] = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    configs: tuple[str, ...] = CONFIGS, run_seconds: float = RUN_SECONDS, large_configs: tuple[str, ...] = LARGE_CONFIGS
) -> list[Item]:
    """The suite's items in the order they run, with their planned seconds."""
    items = []
    for config in configs + large_configs:
        load_config(config)  # a missing or broken config fails now, not on the GPU
    for config in large_configs:
        for label in LARGE_PRECISIONS:
            items.append(
                Item(
                    f"train {config} {label}",
                    "train",
                    config,
                    [f"training.mixed_precision={PRECISIONS[label]}"],
                    PLANNED["train_large"],
                    f"training step of {config} (batch 32) in {label}: s/step, img/s, peak memory",
                )
            )
    for config in configs:
        for label, mode in PRECISIONS.items():
            items.append(
                Item(
                    f"train {config} {label}",
                    "train",
                    config,
                    [f"training.mixed_precision={mode}"],
                    PLANNED["train"],
                    f"training step of {config} (batch 32) in {label}: s/step, img/s, peak memory",
                )
            )
        items.append(
            Item(
                f"eval {config}",
                "eval",
                config,
                [],
                PLANNED["eval"],
                f"evaluation of {EVAL_IMAGES} {config} images (FG-ARI, MSE, KL), batched and one at a time",
            )
        )
    items.append(
        Item(
            "host waits per step",
            "syncs",
            configs[0],
            [],
            PLANNED["syncs"],
            f"CPU-GPU synchronisations in {SYNC_STEPS} training steps (fp32, bf16, fp16), torch's sync debug mode",
        )
    )
    items.append(
        Item(
            "training run",
            "run",
            "tetrominoes",
            [],
            run_seconds + PLANNED["run_extra"],
            f"{run_seconds:.0f} s of `emorl train tetrominoes` on {RUN_TRAIN_IMAGES} synthetic images, "
            f"then FG-ARI on {RUN_TEST_IMAGES} test images",
        )
    )
    for config in configs:
        items.append(
            Item(
                f"train {config} bf16+compile",
                "compile",
                config,
                ["training.mixed_precision=bf16", "training.compile=true"],
                PLANNED["compile"],
                f"training step of {config} in bf16 with training.compile: compile time, then s/step, img/s",
            )
        )
    return items


def environment(device: torch.device) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(device name, versions, numerics settings that change GPU speed) for the report."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    versions = {"emorl": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    if device.type == "cuda":
        versions["cuda"] = str(torch.version.cuda)
        versions["cudnn"] = str(torch.backends.cudnn.version())
    settings = {
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    return name, versions, settings


def suite_device() -> torch.device:
    """The GPU the suite measures (the CPU where there is none)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def new_report(items: list[Item], device: torch.device, dry_run: bool) -> SuiteReport:
    name, versions, settings = environment(device)
    planned = STARTUP_SECONDS + sum(item.planned_seconds for item in items)
    return SuiteReport("gpu", dry_run, name, versions, settings, BUDGET_SECONDS, planned, items)


# ------------------------------------------------------------------------------------------------ items


def _config(item: Item, shrink: list[str]) -> Config:
    return load_config(item.config, item.overrides + shrink)


def _train(item: Item, cfg: Config, smoke: bool) -> dict[str, Any]:
    from emorl_cli.bench import bench_train

    budget = max(1.0, item.planned_seconds - (55.0 if item.kind == "compile" else 4.0))
    result = bench_train(
        cfg,
        item.config,
        batch_size=cfg.training.batch_size,
        steps=1 if smoke else 500,
        warmup=1 if smoke else 3,
        seconds=None if smoke else budget,
        count=cfg.training.mixed_precision == "no" and not cfg.training.compile,
    )
    return result.to_dict()


def bench_in_subprocess(
    config: str, overrides: list[str], *, batch_size: int, steps: int, timeout: float
) -> dict[str, Any]:
    """`emorl bench CONFIG --mode train --json` in a child process, killed after `timeout` seconds, so a
    compilation that runs long cannot take the suite past its budget."""
    command = [sys.executable, "-m", "emorl_cli", "bench", config, "--mode", "train"]
    command += ["--batch-size", str(batch_size), "--steps", str(steps), "--json"]
    command += [arg for item in overrides for arg in ("--set", item)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EmorlError(
            f"did not finish in {timeout:.0f} s; measure it alone: emorl bench {config} "
            + " ".join(f"--set {o}" for o in overrides)
        ) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        said = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
        raise EmorlError(f"emorl bench exited with {done.returncode}: {said[-1][:300]}")
    return parse_json(lines[-1], "the last line emorl bench printed", advice="run that emorl bench alone to see it")


def _compile(item: Item, cfg: Config, smoke: bool, left: float) -> dict[str, Any]:
    """A compile item: in this process in miniature, else in a child process bounded by the time left."""
    if smoke:
        return _train(item, cfg, smoke)
    return bench_in_subprocess(
        item.config, item.overrides, batch_size=cfg.training.batch_size, steps=50, timeout=max(10.0, left)
    )


def _eval(item: Item, cfg: Config, smoke: bool) -> dict[str, Any]:
    from emorl_cli.bench import bench_eval

    images = 4 if smoke else EVAL_IMAGES
    return bench_eval(cfg, item.config, batch_size=min(cfg.eval.batch_size, images), num_images=images).to_dict()


def _syncs(item: Item, cfg: Config, smoke: bool) -> dict[str, Any]:
    """Synchronisations torch reports (sync debug mode 'warn') during steps, per precision (CUDA only)."""
    from emorl_cli.accelerator import make_accelerator
    from emorl_cli.bench import _test_images
    from emorl_cli.training.step import StepRunner

    if not torch.cuda.is_available():
        raise SkipItem("needs a CUDA GPU")
    out: dict[str, Any] = {}
    for label, mode in PRECISIONS.items():
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.training.mixed_precision = mode
        runner = StepRunner(run_cfg, make_accelerator(mode))
        images = _test_images(run_cfg, run_cfg.training.batch_size)["imgs"].to(runner.device)
        start = run_cfg.geco.warm_start + 1
        for step in range(start, start + 3):  # warm-up: allocations, cuDNN choices
            runner(step, images)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for step in range(start + 3, start + 3 + SYNC_STEPS):
                    runner(step, images)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        messages = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        out[label] = {"syncs": len(messages), "steps": SYNC_STEPS, "first": messages[:3]}
        del runner
        _free()
    return out


def _run(item: Item, cfg_name: str, smoke: bool, train_seconds: float, work: Path) -> dict[str, Any]:
    """A real `emorl train` run for `train_seconds` on synthetic data, then FG-ARI on the test split."""
    from emorl_cli.data.synth import synthesize
    from emorl_cli.evaluate.ari_report import run_ari_eval
    from emorl_cli.evaluate.session import load_model, open_eval_split
    from emorl_cli.training.loop import train

    started = time.perf_counter()
    data = work / "data"
    train_images, test_images = (64, 8) if smoke else (RUN_TRAIN_IMAGES, RUN_TEST_IMAGES)
    synthesize("tetrominoes", data, train_images, test_images, seed=0)
    synth_seconds = time.perf_counter() - started
    overrides = [f"data.data_dir={data}", "training.image_every=1000000", "training.checkpoint_every=1000000"]
    cfg = load_config(cfg_name, item.overrides + overrides + (SMOKE if smoke else []))
    result = train(cfg, work / "run", show_progress=False, max_seconds=train_seconds)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(result.last_checkpoint, device=device)
    test = open_eval_split(loaded.cfg, data_dir=data)
    report = run_ari_eval(
        loaded,
        test,
        num_images=min(test_images, len(test)),
        batch_size=loaded.cfg.eval.batch_size,
        samples=1,
        refinement_iters=None,
        seed=0,
        out_dir=None,
    )
    return {
        "config": cfg_name,
        "mixed_precision": cfg.training.mixed_precision,
        "batch_size": cfg.training.batch_size,
        "steps": result.steps,
        "train_seconds": result.seconds,
        "steps_per_second": result.steps / result.seconds if result.seconds else None,
        "images_per_second": result.steps * cfg.training.batch_size / result.seconds if result.seconds else None,
        "warmup_steps": cfg.training.warmup,
        "final_scalars": result.final_scalars,
        "synth_seconds": synth_seconds,
        "fg_ari": report.summary.get("fg_ari"),
        "mse": report.summary.get("mse"),
        "eval_seconds": report.seconds,
    }


class SkipItem(EmorlError):
    """An item that cannot run here (e.g. needs CUDA)."""


# Tiny settings for `smoke=True` (the test suite runs the whole suite on a CPU in seconds with them).
SMOKE = ["model.z_size=8", "training.batch_size=2", "eval.batch_size=2", "training.log_every=1"]


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_suite(
    items: list[Item],
    *,
    out: Optional[Path] = None,
    smoke: bool = False,
    budget: float = BUDGET_SECONDS,
    on_item: Callable[[int, Item], None] = lambda index, item: None,
) -> SuiteReport:
    """Measure every item (skipping those that would end after `budget`); writes `out` after each item.

    `on_item(index, item)` is called before (status "planned") and after each item.
    """
    report = new_report(items, suite_device(), dry_run=False)
    started = time.perf_counter()
    reserve = PLANNED["run_extra"]
    for index, item in enumerate(items):
        on_item(index, item)
        elapsed = time.perf_counter() - started
        left = budget - STARTUP_SECONDS - elapsed
        if item.planned_seconds > left and not smoke:
            if item.kind != "run" or left < reserve + 30.0:
                item.status = "skipped"
                item.error = f"out of time ({left:.0f} s left, {item.planned_seconds:.0f} planned)"
                on_item(index, item)
                continue
        item_start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="emorl-gpu-") as folder:
                item.result = _measure(item, smoke, left, Path(folder))
            item.status = "done"
        except SkipItem as exc:
            item.status, item.error = "skipped", str(exc)
        except Exception as exc:  # one failure must not cost the rest of a one-shot GPU run
            item.status, item.error = "failed", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:400]}"
        item.seconds = time.perf_counter() - item_start
        _free()
        report.seconds = time.perf_counter() - started
        report.summary = summarize(items)
        if out is not None:
            atomic_write_json(out, report.to_dict())
        on_item(index, item)
    return report


def _measure(item: Item, smoke: bool, left: float, work: Path) -> dict[str, Any]:
    """Run one item; `left`: seconds of the budget left (bounds the training run and compilation)."""
    shrink = SMOKE if smoke else []
    if item.kind == "run":
        train_seconds = 2.0 if smoke else min(RUN_SECONDS, left - PLANNED["run_extra"])
        return _run(item, item.config, smoke, train_seconds, work)
    cfg = _config(item, shrink)
    if item.kind == "train":
        return _train(item, cfg, smoke)
    if item.kind == "compile":
        return _compile(item, cfg, smoke, left)
    if item.kind == "eval":
        return _eval(item, cfg, smoke)
    if item.kind == "syncs":
        return _syncs(item, cfg, smoke)
    raise EmorlError(f"unknown suite item kind {item.kind!r}")


def summarize(items: list[Item]) -> dict[str, Any]:
    """The headline figures of the finished items: one row per training item, eval speed-ups, the run."""
    train, evaluation, run, syncs = [], [], None, None
    for item in items:
        if item.status != "done" or item.result is None:
            continue
        r = item.result
        if item.kind in ("train", "compile"):
            train.append(
                {
                    "item": item.name,
                    "seconds_per_step": r["seconds_per_step"],
                    "images_per_second": r["images_per_second"],
                    "peak_memory_mb": r["peak_memory_mb"],
                    "first_step_seconds": r["extra"].get("first_step_seconds"),
                }
            )
        elif item.kind == "eval":
            extra = r["extra"]
            evaluation.append(
                {
                    "item": item.name,
                    "batched_seconds": extra["batched_seconds"],
                    "one_at_a_time_seconds": extra.get("one_at_a_time_seconds"),
                    "speedup": extra.get("speedup"),
                    "peak_memory_mb": r["peak_memory_mb"],
                }
            )
        elif item.kind == "run":
            run = {k: r[k] for k in ("steps", "train_seconds", "images_per_second", "fg_ari")}
        elif item.kind == "syncs":
            syncs = {label: v["syncs"] for label, v in r.items()}
    return {"train": train, "eval": evaluation, "run": run, "host_waits": syncs}
