"""`emorl segment --checkpoint C INPUT... --out DIR`: segment your own pictures with a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emorl_cli.cli.console import console
from emorl_cli.cli.inference import OutRequired
from emorl_cli.cli.options import BatchSizeOpt, CheckpointOpt, ConfigOpt, IterOpt, SetOpt
from emorl_cli.cli.progress import image_progress

InputsArg = Annotated[
    list[str],
    typer.Argument(
        help="Pictures: image files, folders (the pictures in them), globs ('photos/*.jpg') or .h5 files "
        "(FILE.h5 is its test group, FILE.h5:train another).",
        show_default=False,
        metavar="INPUT",
    ),
]


def segment(
    inputs: InputsArg,
    checkpoint: CheckpointOpt,
    out: OutRequired,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    batch_size: BatchSizeOpt = None,
    refinement_iters: IterOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pictures' samples (with each name).")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU even when a GPU is present.")] = False,
) -> None:
    """Segment pictures of any size: per picture a label PNG, an overlay and one RGBA PNG per slot, and
    segments.npz / segments.json for the run; rerun the same command to continue an interrupted run.

    Example: emorl segment --checkpoint runs/tetro/checkpoints/step_0200000.pt photos/ --out segments
    """
    from emorl_cli.api import resolve_device
    from emorl_cli.data.user_images import collect_sources
    from emorl_cli.evaluate.session import load_model
    from emorl_cli.segment import segment_to_folder

    sources = collect_sources(inputs)
    device = resolve_device("cpu" if cpu else "auto")
    loaded = load_model(checkpoint, config, overrides, device=str(device))
    batch = batch_size if batch_size is not None else loaded.cfg.eval.batch_size
    with image_progress("segment", len(sources)) as advance:
        result = segment_to_folder(
            loaded,
            sources,
            out,
            refinement_iters=refinement_iters,
            batch_size=batch,
            seed=seed,
            progress=advance,
        )
    if result.preparation_note:
        console.print(f"[yellow]note:[/] {result.preparation_note}", highlight=False)
    done = f"segmented {result.segmented} pictures in {result.seconds:.1f}s ({result.images_per_second:.1f}/s)"
    if result.skipped:
        done += f", {result.skipped} already done"
    console.print(f"[green]{done}[/]", highlight=False)
    console.print(f"labels, overlays, slots: {Path(out)}\nsegments: {result.npz}, {result.json}", highlight=False)
