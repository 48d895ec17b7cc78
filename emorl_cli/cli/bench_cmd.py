"""`emorl bench`: measured seconds per step, images per second and peak memory."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from emorl_cli.cli.console import print_table
from emorl_cli.cli.options import BatchSizeOpt, SetOpt, in_range
from emorl_cli.config import load_config, resolve_config_path
from emorl_cli.errors import InputError


def bench(
    config: Annotated[str, typer.Argument(help="Config name or YAML path.")] = "tetrominoes",
    mode: Annotated[str, typer.Option("--mode", help="train, eval or data.")] = "train",
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
    """Measure training or evaluation speed and peak memory (median and interquartile range)."""
    from emorl_cli import bench as lib

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
