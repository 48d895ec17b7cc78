"""`emorl bench`: measured seconds per step, images per second and peak memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from emorl_cli.cli.console import console, print_table
from emorl_cli.cli.options import BatchSizeOpt, SetOpt, in_range
from emorl_cli.config import load_config, resolve_config_path
from emorl_cli.errors import InputError
from emorl_cli.files import atomic_write_json


def bench(
    config: Annotated[str, typer.Argument(help="Config name or YAML path.")] = "tetrominoes",
    mode: Annotated[str, typer.Option("--mode", help="train, eval or data.")] = "train",
    suite: Annotated[
        Optional[str],
        typer.Option("--suite", help="'gpu': the one-shot GPU check (every figure a GPU run needs, one JSON)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --suite: print the plan, measure nothing.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="With --suite: write the JSON here.")] = None,
    batch_size: BatchSizeOpt = None,
    steps: Annotated[
        int, typer.Option("--steps", help="Timed repetitions (train, data).", callback=in_range("repetitions", 1))
    ] = 10,
    num_images: Annotated[
        int, typer.Option("--num-images", help="Images to evaluate (eval).", callback=in_range("images", 1))
    ] = 320,
    single: Annotated[bool, typer.Option("--single/--no-single", help="Also time one image at a time (eval).")] = True,
    overrides: SetOpt = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Measure on the CPU even when a GPU is present.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Measure training or evaluation speed and peak memory (median and interquartile range).

    Example: emorl bench tetrominoes --mode train --batch-size 32 --steps 5
    """
    from emorl_cli import bench as lib

    if suite is not None:
        _suite(suite, dry_run=dry_run, out=out)
        return
    if dry_run or out is not None:
        raise InputError("--dry-run and --out go with --suite gpu; without it `emorl bench` prints one table")
    cfg = load_config(config, overrides)
    name = resolve_config_path(config).stem
    train_batch = batch_size if batch_size is not None else cfg.training.batch_size
    if mode == "train":
        result = lib.bench_train(cfg, name, batch_size=train_batch, steps=steps, cpu=cpu)
    elif mode == "eval":
        result = lib.bench_eval(
            cfg,
            name,
            batch_size=batch_size if batch_size is not None else cfg.eval.batch_size,
            num_images=num_images,
            one_at_a_time=single,
            cpu=cpu,
        )
    elif mode == "data":
        result = lib.bench_data(cfg, name, batch_size=train_batch, steps=steps * 100)
    else:
        raise InputError(f"--mode must be train, eval or data, got {mode!r}")
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    _table(result)


def _table(result) -> None:
    table = Table(title=f"emorl bench --mode {result.mode} {result.config} (batch {result.batch_size})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    q1, q3 = result.spread
    table.add_row("seconds per step (median)", f"{result.seconds_per_step:.4f}")
    table.add_row("interquartile range", f"{q1:.4f} – {q3:.4f}")
    table.add_row("images per second", f"{result.images_per_second:,.1f}")
    table.add_row(f"peak memory ({result.memory_kind})", f"{result.peak_memory_mb:,.0f} MB")
    for key, value in result.extra.items():
        table.add_row(key.replace("_", " "), f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("mixed precision", result.mixed_precision)
    table.add_row("device", result.device)
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in result.versions.items()))
    print_table(table)


def _suite(name: str, *, dry_run: bool, out: Optional[Path]) -> None:
    """`--suite gpu`: print the plan, then (unless --dry-run) measure each item and write the JSON."""
    from emorl_cli import gpu_check

    if name != "gpu":
        raise InputError(f"--suite must be gpu, got {name!r}")
    items = gpu_check.plan()
    report = gpu_check.new_report(items, gpu_check.suite_device(), dry_run=True)
    table = Table(title=f"emorl bench --suite gpu: the plan (budget {gpu_check.BUDGET_SECONDS:.0f} s)")
    for column in ("item", "what", "planned s"):
        table.add_column(column, justify="right" if column == "planned s" else "left")
    table.add_row("start-up", "import torch, initialise CUDA", f"{gpu_check.STARTUP_SECONDS:.0f}")
    for item in items:
        table.add_row(item.name, item.what, f"{item.planned_seconds:.0f}")
    table.add_row("total", "", f"{report.planned_seconds:.0f}")
    print_table(table)
    if dry_run:
        if out is not None:
            atomic_write_json(out, report.to_dict())
            console.print(f"plan: {out}", highlight=False)
        console.print(f"dry run on {report.device}: nothing measured", highlight=False)
        return
    if report.device.startswith("cpu"):
        console.print("[yellow]no CUDA GPU here: the suite runs on the CPU, slowly and partly skipped[/]")

    def show(index: int, item) -> None:
        if item.status == "planned":
            planned = f"planned {item.planned_seconds:.0f} s"
            console.print(f"[{index + 1}/{len(items)}] {item.name} ({planned})", highlight=False)
        else:
            console.print(f"    {item.status} in {item.seconds or 0:.0f} s: {_headline(item)}", highlight=False)

    final = gpu_check.run_suite(items, out=out, on_item=show)
    console.print(f"suite done in {final.seconds or 0:.0f} s" + (f"; figures: {out}" if out else ""), highlight=False)
    if out is None:
        typer.echo(json.dumps(final.to_dict()))


def _headline(item) -> str:
    if item.status != "done":
        return item.error or ""
    r = item.result
    if item.kind in ("train", "compile"):
        return f"{r['seconds_per_step']:.4f} s/step, {r['images_per_second']:,.0f} img/s, {r['peak_memory_mb']:,.0f} MB"
    if item.kind == "eval":
        e = r["extra"]
        return f"{e['batched_seconds']:.2f} s batched, {e.get('one_at_a_time_seconds', 0):.2f} s one at a time"
    if item.kind == "run":
        fg = r.get("fg_ari") or {}
        return f"{r['steps']} steps, {r['images_per_second']:,.0f} img/s, FG-ARI {fg.get('mean', float('nan')):.3f}"
    if item.kind == "syncs":
        return ", ".join(f"{label} {v['syncs']} in {v['steps']} steps" for label, v in r.items())
    return ""
