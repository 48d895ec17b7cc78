"""`emorl gifs` (latent traversals) and `emorl viz` (every layer and refinement step)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emorl_cli.cli.console import console
from emorl_cli.cli.eval_cmd import DataFileOpt, SplitOpt
from emorl_cli.cli.options import CheckpointOpt, ConfigOpt, DataDirOpt, IterOpt, SeedOpt, SetOpt, in_range
from emorl_cli.cli.progress import image_progress
from emorl_cli.errors import InputError

OutRequired = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]


def gifs(
    checkpoint: CheckpointOpt,
    out: OutRequired,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
    data: DataFileOpt = None,
    split: SplitOpt = "test",
    image_index: Annotated[int, typer.Option("--image-index", help="Test image whose slots are traversed.")] = 0,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", help="Most active latent dimensions per slot.", callback=in_range("latent dimensions", 1)
        ),
    ] = 10,
    frames: Annotated[
        int, typer.Option("--frames", help="Frames per GIF.", callback=in_range("frames of a traversal", 2))
    ] = 8,
    num_images: Annotated[
        int,
        typer.Option(
            "--num-images",
            help="Images for latent ranges/activeness.",
            callback=in_range("the number of test images", 1),
        ),
    ] = 100,
    refinement_iters: IterOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Per slot, GIFs traversing its top-k most active latent dimensions (slot_{k}_row_{r}.gif) + one sheet."""
    from emorl_cli.evaluate.session import batches_of, load_model, open_eval_split
    from emorl_cli.files import atomic_write_json
    from emorl_cli.pictures import make_gifs

    loaded = load_model(checkpoint, config, overrides)
    dataset = open_eval_split(loaded.cfg, data_dir=data_dir, data_file=data, split=split, need_masks=False)
    if not 0 <= image_index < len(dataset):
        raise InputError(
            f"--image-index {image_index} is outside the {len(dataset)} images of {split}; pick 0..{len(dataset) - 1}"
        )
    count = min(num_images, len(dataset))
    # the traversed image first, then the others for the latent ranges
    indices = [image_index] + [i for i in range(count) if i != image_index][: count - 1]
    with image_progress("gifs", 1) as advance:
        result = make_gifs(
            loaded.model,
            loaded.objective(),
            batches_of(dataset, indices, loaded.cfg.eval.batch_size),
            out,
            refinement_iters=loaded.refinement_iters(refinement_iters),
            num_images=count,
            top_k=min(top_k, loaded.cfg.model.z_size),
            frames=frames,
            seed=loaded.cfg.training.seed if seed is None else seed,
        )
        advance(1)
    atomic_write_json(
        Path(out) / "traversals.json",
        {"image_index": image_index, "dims": result["dims"], "activeness": result["activeness"]},
    )
    console.print(f"wrote {len(result['gifs'])} GIFs to {out}/ (slot_{{k}}_row_{{r}}.gif)", highlight=False)
    console.print(f"sheet: {result['sheet']}\ndims: {Path(out) / 'traversals.json'}", highlight=False)


def viz(
    checkpoint: CheckpointOpt,
    out: OutRequired,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
    data: DataFileOpt = None,
    split: SplitOpt = "test",
    num_images: Annotated[
        int, typer.Option("--num-images", help="Images to draw.", callback=in_range("images to draw", 1))
    ] = 8,
    refinement_iters: IterOpt = None,
    seed: SeedOpt = None,
    embed: Annotated[bool, typer.Option("--embed", help="Inline the PNGs into index.html.")] = False,
) -> None:
    """Per image, a PNG whose rows are the L layers and I refinement steps; index.html; arrays in viz.npz."""
    import torch

    from emorl_cli.evaluate.session import batches_of, load_model, open_eval_split
    from emorl_cli.pictures import make_viz

    loaded = load_model(checkpoint, config, overrides)
    torch.manual_seed(loaded.cfg.training.seed if seed is None else seed)
    dataset = open_eval_split(loaded.cfg, data_dir=data_dir, data_file=data, split=split, need_masks=False)
    count = min(num_images, len(dataset))
    iters = loaded.refinement_iters(refinement_iters)
    with image_progress("viz", count) as advance:
        index = make_viz(
            loaded.model,
            loaded.objective(),
            batches_of(dataset, list(range(count)), loaded.cfg.eval.batch_size),
            out,
            refinement_iters=iters,
            num_images=count,
            embed_images=embed,
            progress=advance,
        )
    console.print(f"wrote {count} figures to {out}/\nindex: {index}\narrays: {Path(out) / 'viz.npz'}", highlight=False)
