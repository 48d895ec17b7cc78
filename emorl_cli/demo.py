"""`emorl demo [DATASET]`: synthesise a dataset, train its demo config for a time budget, evaluate and draw.

One demo per synthetic dataset (`DEMOS`): Tetrominoes (`configs/demo.yaml`, the default) and Multi-dSprites
(`configs/demo_multi_dsprites.yaml`). The budget covers the whole command: data synthesis, training,
evaluation (FG-ARI, MSE, KL on the test split), `viz` and `gifs`. Training stops when the time left equals
an estimate of what the later stages need, so the command ends close to the budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from emorl_cli.config import Config, config_from_dict, config_to_dict, load_config
from emorl_cli.data.registry import DATASETS
from emorl_cli.data.synth import synthesize
from emorl_cli.errors import InputError
from emorl_cli.evaluate.ari_report import format_stats
from emorl_cli.files import ensure_writable_folder, refuse_links
from emorl_cli.training.pace import PaceCheck
from emorl_cli.training.precision import cpu_has_native_bf16
from emorl_cli.training.progress import TrainingProgress

DEMO_TRAIN_IMAGES = 10_000
DEMO_TEST_IMAGES = 320
# Seconds the stages after training take on a 2-core CPU at I = 3 for the Tetrominoes demo (measured),
# reserved from the budget; they scale with the I + 1 decodes per image (measured at I = 0: about 10 s in
# all) and with the demo's `reserve_scale`.
RESERVE_EVAL, RESERVE_VIZ, RESERVE_GIFS = 25.0, 8.0, 20.0
RESERVE_AT_ITERS = 3


@dataclass(frozen=True)
class DemoSpec:
    """One dataset's demo: its shipped config, default budget and the cost of its later stages."""

    config: str
    minutes: float
    reserve_scale: float  # evaluation and pictures cost this many times the Tetrominoes demo's
    about: str
    # the published figure of this demo and the training steps behind it (the pace check compares them with
    # what this machine will make in the budget); None where the README has no figure yet
    reference_steps: Optional[int] = None
    reference: str = ""


DEMOS: dict[str, DemoSpec] = {
    "tetrominoes": DemoSpec(
        "demo",
        10.0,
        1.0,
        "Tetrominoes, 35×35, three pieces",
        reference_steps=1_850,  # the 10-minute demos of the README's table made 1,843–1,939 steps
        reference="the README's FG-ARI of 0.77 ± 0.05 (seeds 1–4)",
    ),
    "multi_dsprites": DemoSpec("demo_multi_dsprites", 20.0, 4.0, "Multi-dSprites, 64×64, 2–5 sprites on grey"),
}


def demo_spec(dataset: str) -> DemoSpec:
    """The demo of a dataset name; InputError naming the choices for any other."""
    if dataset not in DEMOS:
        raise InputError(f"no demo for dataset {dataset!r}; choose one of: {', '.join(DEMOS)}")
    return DEMOS[dataset]


@dataclass
class DemoResult:
    """What the demo produced: metrics and every output path."""

    metrics: dict[str, dict[str, float]]
    paths: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0


def demo_config(
    out_dir: Path,
    overrides: Optional[list[str]] = None,
    dataset: str = "tetrominoes",
    data_dir: Optional[Path] = None,
) -> Config:
    """The dataset's demo config (with dotted overrides), its data in `data_dir` (default: `out_dir`/data).

    The demo configs train in bf16; on a CPU without native bf16 the demo trains in float32 instead, unless
    `training.mixed_precision` is overridden explicitly.
    """
    raw = config_to_dict(load_config(demo_spec(dataset).config, overrides))
    raw["data"]["data_dir"] = str(data_dir if data_dir is not None else out_dir / "data")
    explicit = any(item.split("=", 1)[0].strip() == "training.mixed_precision" for item in overrides or [])
    if raw["training"]["mixed_precision"] == "bf16" and not explicit and not cpu_has_native_bf16():
        raw["training"]["mixed_precision"] = "no"
    return config_from_dict(raw, source="demo config")


def ensure_data(cfg: Config) -> Path:
    """Synthesise the demo's dataset unless both files are already there (made once, then reused)."""
    folder = Path(cfg.data.data_dir)
    spec = DATASETS[cfg.data.dataset]
    missing = [split for split in ("train", "test") if not (folder / spec.file_for(split)).exists()]
    if missing:
        counts = {
            "train": DEMO_TRAIN_IMAGES if "train" in missing else 0,
            "test": DEMO_TEST_IMAGES if "test" in missing else 0,
        }
        synthesize(cfg.data.dataset, folder, counts["train"], counts["test"], seed=0)
    return folder


def run_demo(
    out_dir: Path,
    *,
    dataset: str = "tetrominoes",
    minutes: Optional[float] = None,
    checkpoint: Optional[Path] = None,
    config: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    data_dir: Optional[Path] = None,
    on_stage: Callable[[str], None] = lambda stage: None,
    progress: Optional[TrainingProgress] = None,
) -> DemoResult:
    """The whole workflow; with `checkpoint`, skip training and show that model instead.

    `minutes`: the whole command's budget (None: the dataset's default, `DEMOS`); `data_dir`: where the
    synthetic data are made once and reused (default: `out_dir`/data).
    """
    from emorl_cli.evaluate.ari_report import run_ari_eval
    from emorl_cli.evaluate.session import batches_of, load_model, open_eval_split
    from emorl_cli.pictures import make_gifs, make_viz
    from emorl_cli.training.loop import train

    started = time.perf_counter()
    spec = demo_spec(dataset)
    minutes = spec.minutes if minutes is None else minutes
    budget = minutes * 60.0
    out_dir = Path(out_dir)
    if not (math.isfinite(budget) and budget > 0):
        raise InputError(f"the demo's time budget must be a positive number of minutes, got {minutes}")
    cfg = demo_config(out_dir, overrides, dataset, data_dir)
    # every input is checked before minutes of work: the output folder, and a given checkpoint
    ensure_writable_folder(out_dir, "demo folder")
    for part in ("data", "eval", "viz", "gifs"):  # the folders it writes in: never a link planted in their place
        refuse_links(out_dir, part)
    given = load_model(Path(checkpoint), config) if checkpoint is not None else None
    paths: dict[str, Path] = {}
    seconds: dict[str, float] = {}

    def mark(stage: str, since: float) -> float:
        now = time.perf_counter()
        seconds[stage] = now - since
        return now

    on_stage("data")
    paths["data"] = ensure_data(cfg)
    t = mark("data", started)
    steps = 0
    if checkpoint is None:
        on_stage("train")
        run = out_dir / time.strftime("run-%Y%m%d-%H%M%S")
        reserve = _reserve(budget, cfg.test_refinement_iters(), spec.reserve_scale)
        train_seconds = max(1.0, budget - (time.perf_counter() - started) - reserve)
        if spec.reference_steps is not None:
            progress = PaceCheck(progress, spec.reference_steps, spec.reference, extra_seconds=budget - train_seconds)
        result = train(cfg, run, progress=progress, max_seconds=train_seconds)
        checkpoint, steps = result.last_checkpoint, result.start_step + result.steps
        paths["run"], paths["checkpoint"] = run, checkpoint
        t = mark("train", t)
    else:
        paths["checkpoint"] = Path(checkpoint)

    loaded = given if given is not None else load_model(Path(checkpoint), config)
    test = open_eval_split(loaded.cfg, data_dir=paths["data"])
    on_stage("eval")
    report = run_ari_eval(
        loaded,
        test,
        num_images=min(DEMO_TEST_IMAGES, len(test)),
        batch_size=loaded.cfg.eval.batch_size,
        samples=1,
        refinement_iters=None,
        seed=0,
        out_dir=out_dir / "eval",
    )
    paths["results"] = report.results_path
    paths["per_image"] = report.per_image_path
    t = mark("eval", t)
    on_stage("viz")
    objective, iters = loaded.objective(), loaded.refinement_iters(None)
    shown = min(8, len(test))
    paths["viz"] = make_viz(
        loaded.model,
        objective,
        batches_of(test, list(range(shown)), shown),
        out_dir / "viz",
        refinement_iters=iters,
        num_images=shown,
    )
    t = mark("viz", t)
    on_stage("gifs")
    ranged = min(16, len(test))
    gifs = make_gifs(
        loaded.model,
        objective,
        batches_of(test, list(range(ranged)), ranged),
        out_dir / "gifs",
        refinement_iters=iters,
        num_images=ranged,
        top_k=4,
        frames=8,
    )
    paths["gifs"] = out_dir / "gifs"
    paths["gif_sheet"] = gifs["sheet"]
    mark("gifs", t)
    seconds["total"] = time.perf_counter() - started
    return DemoResult(metrics=report.summary, paths=paths, seconds=seconds, steps=steps)


def _reserve(budget: float, refinement_iters: int, scale: float = 1.0) -> float:
    """Seconds kept for evaluation and pictures at test-time I: the measured estimate times the demo's
    `reserve_scale`, at most 40% of a tiny budget."""
    measured = (RESERVE_EVAL + RESERVE_VIZ + RESERVE_GIFS) * (refinement_iters + 1) / (RESERVE_AT_ITERS + 1)
    return min(measured * scale, 0.4 * budget)


def summary_rows(result: DemoResult) -> list[tuple[str, Any]]:
    """(label, value) rows of the closing table."""
    rows: list[tuple[str, Any]] = []
    for key, label in (("fg_ari", "FG-ARI"), ("mse", "MSE"), ("kl", "KL")):
        if key in result.metrics:
            rows.append((label, format_stats(result.metrics[key])))
    if result.steps:
        rows.append(("training steps", result.steps))
    rows.append(("seconds (total)", f"{result.seconds.get('total', 0):.0f}"))
    rows += [(name, str(path)) for name, path in result.paths.items()]
    return rows
