"""What the five inference commands share — `eval ari`, `eval dci`, `eval activeness`, `viz` and `gifs`:
their common options, declared once, and the one helper that opens the model and the split.

A command written as

    @inference_command(EVAL_IMAGES)
    def ari(opts: InferenceOptions, samples: SamplesOpt = None) -> None: ...

gets every shared option (--checkpoint, --config, --set, --data-dir, --data, --split, --num-images,
--batch-size, --refinement-iters, --seed, --out) in front of its own, and receives them as one
`InferenceOptions`. Only the count of images differs between the commands (default, help and range
message: `ImageCount`), and whether --out is required (`viz`, `gifs`) or defaults to a folder next to the
checkpoint (`eval …`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from emorl_cli.cli import stopping
from emorl_cli.cli.options import (
    BatchSizeOpt,
    CheckpointOpt,
    ConfigOpt,
    DataDirOpt,
    IterOpt,
    OutOpt,
    SeedOpt,
    SetOpt,
    in_range,
)

if TYPE_CHECKING:  # the library (torch) is imported only when a command runs
    from emorl_cli.config import Config
    from emorl_cli.data.dataset import H5Dataset
    from emorl_cli.evaluate.session import LoadedModel

DataFileOpt = Annotated[
    Optional[Path],
    typer.Option("--data", help="An .h5 file (ClevrTex: a variant folder) to evaluate on (instead of --data-dir)."),
]
SplitOpt = Annotated[str, typer.Option("--split", help="Group of the .h5 file: test or train (ClevrTex: also val).")]
OutRequired = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]


@dataclass(frozen=True)
class ImageCount:
    """A command's --num-images: its default (None: the config's eval.num_images), help, and the words of
    its range check ("--num-images must be at least 1 (MEANING), got 0")."""

    default: Optional[int]
    help: str
    meaning: str

    def annotation(self) -> Any:
        option = typer.Option("--num-images", help=self.help, callback=in_range(self.meaning, 1))
        return Annotated[Optional[int] if self.default is None else int, option]


EVAL_IMAGES = ImageCount(None, "Images to use (default: eval.num_images).", "the number of test images to use")
ACTIVENESS_IMAGES = ImageCount(100, "Images for ranges and activeness.", "the number of test images")
GIF_IMAGES = ImageCount(100, "Images for latent ranges/activeness.", "the number of test images")
VIZ_IMAGES = ImageCount(8, "Images to draw.", "images to draw")


@dataclass(frozen=True)
class InferenceOptions:
    """The shared options of one inference command, as given on the command line."""

    checkpoint: Path
    config: Optional[str]
    overrides: Optional[list[str]]
    data_dir: Optional[Path]
    data: Optional[Path]
    split: str
    num_images: Optional[int]
    batch_size: Optional[int]
    refinement_iters: Optional[int]
    seed: Optional[int]
    out: Optional[Path]

    def load(self) -> LoadedModel:
        """The model of --checkpoint (an original .pth needs --config), with --set applied."""
        from emorl_cli.evaluate.session import load_model

        return load_model(self.checkpoint, self.config, self.overrides)

    def open_split(self, cfg: Config, *, need_masks: bool = True, load_factors: Optional[bool] = None) -> H5Dataset:
        """The images: --data wins over --data-dir and the config's folder (see `open_eval_split`)."""
        from emorl_cli.evaluate.session import open_eval_split

        return open_eval_split(
            cfg,
            data_dir=self.data_dir,
            data_file=self.data,
            split=self.split,
            need_masks=need_masks,
            load_factors=load_factors,
        )

    def open(self, *, need_masks: bool = True, load_factors: Optional[bool] = None) -> tuple[LoadedModel, H5Dataset]:
        """The model, then its split: the one way every inference command starts."""
        loaded = self.load()
        return loaded, self.open_split(loaded.cfg, need_masks=need_masks, load_factors=load_factors)

    def images(self, cfg: Config) -> int:
        """--num-images, else the config's eval.num_images."""
        return self.num_images if self.num_images is not None else cfg.eval.num_images

    def image_count(self, cfg: Config, dataset: H5Dataset) -> int:
        """The images to use: `images(cfg)`, at most the split's size."""
        return min(len(dataset), self.images(cfg))

    def batch(self, loaded: LoadedModel, count: int) -> int:
        """--batch-size, else the config's eval.batch_size, at most the `count` images to infer; refused in one
        line when a batch of it cannot fit in the memory the model's device has free."""
        from emorl_cli.training.memory import fit_inference_batch

        wanted = self.batch_size if self.batch_size is not None else loaded.cfg.eval.batch_size
        return fit_inference_batch(loaded, wanted, count)

    def seed_for(self, cfg: Config) -> int:
        """--seed, else the config's training.seed."""
        return self.seed if self.seed is not None else cfg.training.seed

    def out_dir(self, what: str) -> Path:
        """--out, else CHECKPOINT_STEM-WHAT next to the checkpoint."""
        return self.out if self.out is not None else self.checkpoint.parent / f"{self.checkpoint.stem}-{what}"


def _shared_parameters(images: ImageCount, out_required: bool) -> list[inspect.Parameter]:
    """The shared options as keyword-only parameters, in the order `--help` lists them."""

    def option(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    required_out = [option("out", OutRequired)] if out_required else []
    optional_out = [] if out_required else [option("out", OutOpt, None)]
    return [
        option("checkpoint", CheckpointOpt),
        *required_out,
        option("config", ConfigOpt, None),
        option("overrides", SetOpt, None),
        option("data_dir", DataDirOpt, None),
        option("data", DataFileOpt, None),
        option("split", SplitOpt, "test"),
        option("num_images", images.annotation(), images.default),
        option("batch_size", BatchSizeOpt, None),
        option("refinement_iters", IterOpt, None),
        option("seed", SeedOpt, None),
        *optional_out,
    ]


def inference_command(images: ImageCount, *, out_required: bool = False) -> Callable[[Callable], Callable]:
    """Give a command `f(opts: InferenceOptions, **own_options)` the shared options (see the module docstring);
    Typer reads the combined signature, the command receives the shared ones as `opts`."""

    def decorate(command: Callable) -> Callable:
        shared = _shared_parameters(images, out_required)
        own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]  # after `opts`

        @functools.wraps(command)
        def run(**options: Any) -> Any:
            opts = InferenceOptions(**{p.name: options.pop(p.name) for p in shared})
            where = opts.out if opts.out is not None else "the output folder"
            stopping.on_stop(
                lambda: (
                    f"no results were written to {where} (each file is written whole, results at the end); "
                    f"run `{stopping.rerun_command()}` again"
                )
            )
            return command(opts, **options)

        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            shared + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        )
        run.__annotations__ = {}  # the signature above carries them, resolved
        return run

    return decorate
