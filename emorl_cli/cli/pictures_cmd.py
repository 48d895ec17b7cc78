"""`emorl gifs` (latent traversals) and `emorl viz` (every layer and refinement step)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emorl_cli.cli.console import console
from emorl_cli.cli.inference import GIF_IMAGES, VIZ_IMAGES, InferenceOptions, inference_command
from emorl_cli.cli.options import MAX_FRAMES, in_range
from emorl_cli.cli.progress import image_progress
from emorl_cli.errors import InputError


@inference_command(GIF_IMAGES, out_required=True)
def gifs(
    opts: InferenceOptions,
    image_index: Annotated[int, typer.Option("--image-index", help="Test image whose slots are traversed.")] = 0,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", help="Most active latent dimensions per slot.", callback=in_range("latent dimensions", 1)
        ),
    ] = 10,
    frames: Annotated[
        int, typer.Option("--frames", help="Frames per GIF.", callback=in_range("frames of a traversal", 2, MAX_FRAMES))
    ] = 8,
) -> None:
    """Per slot, GIFs traversing its top-k most active latent dimensions (slot_{k}_row_{r}.gif) + one sheet.

    Example: emorl gifs --checkpoint runs/tetro/checkpoints/step_0200000.pt --data-dir data/synth --out gifs --top-k 10
    """
    from emorl_cli.evaluate.session import batches_of
    from emorl_cli.files import atomic_write_json
    from emorl_cli.pictures import check_gifs_memory, make_gifs

    loaded = opts.load()
    check_gifs_memory(loaded.cfg, top_k, frames, next(loaded.model.parameters()).device)
    dataset = opts.open_split(loaded.cfg, need_masks=False)
    if not 0 <= image_index < len(dataset):
        raise InputError(
            f"--image-index {image_index} is outside the {len(dataset)} images of {opts.split}; "
            f"pick 0..{len(dataset) - 1}"
        )
    count = opts.image_count(loaded.cfg, dataset)
    # the traversed image first, then the others for the latent ranges
    indices = [image_index] + [i for i in range(count) if i != image_index][: count - 1]
    out = opts.out
    with image_progress("gifs", 1) as advance:
        result = make_gifs(
            loaded.model,
            loaded.objective(),
            batches_of(dataset, indices, opts.batch(loaded, count)),
            out,
            refinement_iters=loaded.refinement_iters(opts.refinement_iters),
            num_images=count,
            top_k=min(top_k, loaded.cfg.model.z_size),
            frames=frames,
            seed=opts.seed_for(loaded.cfg),
        )
        advance(1)
    atomic_write_json(
        Path(out) / "traversals.json",
        {"image_index": image_index, "dims": result["dims"], "activeness": result["activeness"]},
    )
    console.print(f"wrote {len(result['gifs'])} GIFs to {out}/ (slot_{{k}}_row_{{r}}.gif)", highlight=False)
    console.print(f"sheet: {result['sheet']}\ndims: {Path(out) / 'traversals.json'}", highlight=False)


@inference_command(VIZ_IMAGES, out_required=True)
def viz(
    opts: InferenceOptions,
    embed: Annotated[bool, typer.Option("--embed", help="Inline the PNGs into index.html.")] = False,
) -> None:
    """Per image, a PNG whose rows are the L layers and I refinement steps; index.html; arrays in viz.npz.

    Example: emorl viz --checkpoint runs/tetro/checkpoints/step_0200000.pt --data-dir data/synth --out viz
    """
    import torch

    from emorl_cli.evaluate.session import batches_of
    from emorl_cli.pictures import make_viz

    loaded = opts.load()
    torch.manual_seed(opts.seed_for(loaded.cfg))
    dataset = opts.open_split(loaded.cfg, need_masks=False)
    count = opts.image_count(loaded.cfg, dataset)
    out = opts.out
    with image_progress("viz", count) as advance:
        index = make_viz(
            loaded.model,
            loaded.objective(),
            batches_of(dataset, list(range(count)), opts.batch(loaded, count)),
            out,
            refinement_iters=loaded.refinement_iters(opts.refinement_iters),
            num_images=count,
            embed_images=embed,
            progress=advance,
        )
    console.print(f"wrote {count} figures to {out}/\nindex: {index}\narrays: {Path(out) / 'viz.npz'}", highlight=False)
