"""`emorl eval ari|dci|activeness`: metrics of a checkpoint (ours, or an original .pth with --config)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from emorl_cli.cli.console import console, print_table
from emorl_cli.cli.inference import (
    ACTIVENESS_IMAGES,
    EVAL_IMAGES,
    InferenceOptions,
    inference_command,
)
from emorl_cli.cli.options import in_range
from emorl_cli.cli.progress import image_progress
from emorl_cli.errors import InputError

app = typer.Typer(no_args_is_help=True)

VariantOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--variant",
        help="ClevrTex only: evaluate this variant (full, pbg, vbg, grassbg, camo, outd; repeatable; "
        "default: the config's data.test_file).",
    ),
]


@app.command()
@inference_command(EVAL_IMAGES)
def ari(
    opts: InferenceOptions,
    samples: Annotated[
        Optional[int],
        typer.Option("--samples", help="Stochastic passes per image.", callback=in_range("passes per image", 1)),
    ] = None,
    variant: VariantOpt = None,
) -> None:
    """FG-ARI (background dropped), ARI, MSE, KL and NLL per image; mean ± std over images.

    On ClevrTex: the benchmark's ARI, FG-ARI, mIoU and MSE (summed over pixels) and KL, one row per variant.

    Example: emorl eval ari --checkpoint runs/tetro/checkpoints/step_0200000.pt --data-dir data/synth --samples 5
    """
    from emorl_cli.evaluate.ari_report import format_stats, run_ari_eval
    from emorl_cli.evaluate.clevrtex_report import open_variants, run_clevrtex_eval
    from emorl_cli.viz.pages import METRIC_LABELS

    loaded = opts.load()
    cfg = loaded.cfg
    limit = opts.images(cfg)
    n_samples = samples if samples is not None else cfg.eval.samples
    if cfg.data.dataset == "clevrtex":
        variants = open_variants(cfg, variant or [], data_dir=opts.data_dir, data_file=opts.data, split=opts.split)
        run, data_set, total = run_clevrtex_eval, variants, sum(min(len(d), limit) for d in variants.values())
    elif variant:
        raise InputError(f"--variant applies to ClevrTex configs only; this checkpoint's data is {cfg.data.dataset!r}")
    else:
        dataset = opts.open_split(cfg)
        run, data_set, total = run_ari_eval, dataset, min(len(dataset), limit)
    report = _run_sharded(
        run,
        loaded,
        data_set,
        total=total * n_samples,
        num_images=limit,
        batch_size=opts.batch(loaded, limit),
        samples=n_samples,
        refinement_iters=opts.refinement_iters,
        seed=opts.seed_for(cfg),
        out_dir=opts.out_dir("eval"),
    )
    if report is None:  # not the main process
        return
    if cfg.data.dataset == "clevrtex":
        _clevrtex_table(report, loaded, opts.split, opts.refinement_iters)
        return
    iters = loaded.refinement_iters(opts.refinement_iters)
    table = Table(
        title=f"{opts.checkpoint.name} on {dataset.path.name}/{opts.split}: {len(report.per_image)} images"
        + (f", I={iters}" if iters is not None else ""),
        caption="mean ± std over images"
        + (
            f"; each image inferred {n_samples}× (stochastic), sample std = mean per-image std"
            if n_samples > 1
            else "; inference is stochastic: use --samples S to average S passes"
        ),
    )
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    if n_samples > 1:
        table.add_column("sample std", justify="right")
    for metric, stats in report.summary.items():
        row = [METRIC_LABELS[metric], format_stats(stats)]
        if n_samples > 1:
            row.append(f"{stats['sample_std']:.3g}" if stats["sample_std"] is not None else "n/a")
        table.add_row(*row)
    print_table(table)
    console.print(f"results: {report.results_path}\nper image: {report.per_image_path}", highlight=False)


def _run_sharded(run, loaded, data_set, *, total: int, samples: int, **kwargs):
    """`run(loaded, data_set, …)` (`run_ari_eval` or `run_clevrtex_eval`) under a progress bar, sharded over
    the processes of a multi-process launch; returns its report on the main process, None on the others."""
    from emorl_cli.accelerator import launched_accelerator

    accelerator = launched_accelerator()
    with image_progress("eval ari", total, enabled=accelerator is None) as advance:
        report = run(
            loaded,
            data_set,
            samples=samples,
            accelerator=accelerator,
            progress=lambda n: advance(n * samples),
            **kwargs,
        )
    if accelerator is not None:  # every process reaches this point before any leaves the process group
        accelerator.wait_for_everyone()
        is_main = accelerator.is_main_process
        accelerator.end_training()
        if not is_main:
            return None
    return report


def _clevrtex_table(report, loaded, split: str, refinement_iters: Optional[int]) -> None:
    """`eval ari` on ClevrTex: one table row per variant."""
    from emorl_cli.evaluate.ari_report import format_stats
    from emorl_cli.evaluate.clevrtex_report import CLEVRTEX_METRICS
    from emorl_cli.viz.pages import METRIC_LABELS

    iters = loaded.refinement_iters(refinement_iters)
    table = Table(
        title=f"{loaded.checkpoint.name} on ClevrTex ({split})" + (f", I={iters}" if iters is not None else ""),
        caption="mean ± std over images; MSE summed over pixels and channels (the ClevrTex benchmark's)",
    )
    table.add_column("variant")
    table.add_column("images", justify="right")
    metrics = [m for m in CLEVRTEX_METRICS if any(m in s for s in report.summaries.values())]
    for metric in metrics:
        table.add_column(METRIC_LABELS[metric], justify="right")
    for name, summary in report.summaries.items():
        cells = [format_stats(summary[m]) if m in summary else "" for m in metrics]
        table.add_row(name, str(len(report.per_image[name])), *cells)
    print_table(table)
    console.print(f"results: {report.results_path}", highlight=False)


@app.command()
@inference_command(EVAL_IMAGES)
def dci(
    opts: InferenceOptions,
    estimators: Annotated[
        int,
        typer.Option("--estimators", help="Trees per gradient-boosted model.", callback=in_range("trees per model", 1)),
    ] = 100,
    min_iou: Annotated[
        float,
        typer.Option(
            "--min-iou", help="Drop slot-object matches below this IoU.", callback=in_range("an IoU", 0.0, 1.0)
        ),
    ] = 0.1,
    min_pixels: Annotated[
        int,
        typer.Option("--min-pixels", help="Skip objects smaller than this.", callback=in_range("pixels", 0)),
    ] = 50,
) -> None:
    """DCI disentanglement, completeness and informativeness of the final posterior means (dci.json).

    Example: emorl eval dci --checkpoint models/emorl-clevr6-seed-2004-state-300000.pth --config clevr6 --data-dir data
    """
    from emorl_cli.evaluate.dci_report import run_dci_eval

    loaded, dataset = opts.open(load_factors=True)
    count = opts.image_count(loaded.cfg, dataset)
    with image_progress("eval dci", count) as advance:
        scores, path = run_dci_eval(
            loaded,
            dataset,
            num_images=count,
            batch_size=opts.batch(loaded, count),
            refinement_iters=opts.refinement_iters,
            seed=opts.seed_for(loaded.cfg),
            estimators=estimators,
            min_iou=min_iou,
            min_pixels=min_pixels,
            out_dir=opts.out_dir("dci"),
            progress=advance,
        )
    table = Table(
        title=f"DCI of {opts.checkpoint.name}: {scores['matched']} matched slots from {scores['images']} images"
    )
    table.add_column("score")
    table.add_column("value", justify="right")
    for key in ("disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        table.add_row(key.replace("_", " "), f"{scores[key]:.3f}")
    print_table(table)
    console.print(f"results: {path}", highlight=False)


@app.command()
@inference_command(ACTIVENESS_IMAGES)
def activeness(opts: InferenceOptions) -> None:
    """Latent ranges and per-dimension activeness (the pass `gifs` uses), written to activeness.json.

    Example: emorl eval activeness --checkpoint runs/tetro/checkpoints/step_0200000.pt --data-dir data/synth --out act
    """
    from emorl_cli.evaluate.dci_report import run_activeness

    loaded, dataset = opts.open(need_masks=False)
    count = opts.image_count(loaded.cfg, dataset)
    result, path = run_activeness(
        loaded,
        dataset,
        num_images=count,
        batch_size=opts.batch(loaded, count),
        refinement_iters=opts.refinement_iters,
        seed=opts.seed_for(loaded.cfg),
        out_dir=opts.out_dir("activeness"),
    )
    top = ", ".join(f"{d} ({result['activeness'][d]:.3g})" for d in result["ranking"][:10])
    console.print(f"most active latent dimensions: {top}", highlight=False)
    console.print(f"results: {path}", highlight=False)
