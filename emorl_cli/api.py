"""The Python API for notebooks and scripts: load a trained model, segment pictures.

    import emorl_cli as emorl
    model = emorl.load("runs/tetro/checkpoints/step_0200000.pt")        # an original .pth: config="tetrominoes"
    result = model.segment(["photo1.png", "photo2.jpg"])                 # or a uint8 array [N, H, W, 3]
    result.labels[0], result.masks[0], result.loc[0]                    # [S, S], [K, S, S], [K, D]

`emorl_cli.load` is this module's `load` (the package imports it on first use, so `import emorl_cli` stays
light). Errors are `emorl_cli.errors.EmorlError`s whose message says what was wrong and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch

from emorl_cli.config import Config
from emorl_cli.data.user_images import sources_from_python, summarize_preparations
from emorl_cli.errors import CheckpointError, InputError
from emorl_cli.evaluate.segmentation import Segmentation, check_batch_size, segment_batches
from emorl_cli.evaluate.session import LoadedModel, load_model
from emorl_cli.training.memory import fit_inference_batch

__all__ = ["Model", "load"]

log = logging.getLogger("emorl.api")


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """'auto' → the first CUDA GPU when torch sees one, else the CPU; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return chosen


class Model:
    """A trained EfficientMORL (or Slot Attention) model ready to segment pictures (see `load`).

    Attributes:
        config: the run's resolved `Config` (data, model, training, eval).
        module: the `torch.nn.Module` itself, in eval mode.
        device: where it runs.
        checkpoint: the file it was loaded from.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device):
        self._loaded = loaded
        self.device = device

    @property
    def config(self) -> Config:
        return self._loaded.cfg

    @property
    def module(self) -> torch.nn.Module:
        return self._loaded.model

    @property
    def checkpoint(self) -> Optional[Path]:
        return self._loaded.checkpoint

    @property
    def loaded(self) -> LoadedModel:
        """The model as the evaluation commands hold it (`evaluate.session.LoadedModel`)."""
        return self._loaded

    @property
    def num_slots(self) -> int:
        return self.config.model.K

    @property
    def image_size(self) -> int:
        """S: the side of the square pictures the model sees (every picture is prepared to S×S)."""
        return self.config.data.image_size

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"emorl.Model({m.kind}, K={m.K}, D={m.z_size}, {self.image_size}x{self.image_size} pictures of "
            f"{self.config.data.dataset!r}, I={self._loaded.refinement_iters(None)}, device={self.device}, "
            f"checkpoint={str(self.checkpoint)!r})"
        )

    def segment(
        self,
        images: Any,
        refinement_iters: Optional[int] = None,
        batch_size: int = 64,
        seed: int = 0,
        names: Optional[Sequence[str]] = None,
    ) -> Segmentation:
        """Segment pictures of any size into the model's K slots.

        Args:
            images: a uint8 array [H, W, 3] or [N, H, W, 3], or a list of PIL images, file paths and uint8
                arrays [H, W, 3]. Each is prepared as the model's dataset was (the CLEVR crop, ClevrTex's
                centre crop, or a centre square crop; then a resize to S×S); `result.preparations` says what
                was done to each, and a note on the `emorl` logger sums it up.
            refinement_iters: I, the refinement steps (None: the config's test-time I).
            batch_size: pictures per forward pass.
            seed: the pictures' samples are drawn from generators seeded by (seed, name): the same call gives
                the same result.
            names: one unique name per picture (default: a file's stem, `image-000003` for the fourth array);
                `result.names` holds them, and with the seed they choose a picture's samples.
        Returns:
            a `Segmentation`: `masks` [N, K, S, S], `labels` [N, S, S], `components` [N, K, 3, S, S],
            `reconstructions` [N, 3, S, S], `loc` and `scale` [N, K, D], `images` [N, S, S, 3] (numpy arrays;
            `result.to_torch()` gives tensors, `result[i]` picture i's own arrays).
        """
        sources = sources_from_python(images, names)
        fit_inference_batch(self._loaded, check_batch_size(batch_size), len(sources), "batch_size")
        parts = list(
            segment_batches(self._loaded, sources, refinement_iters=refinement_iters, batch_size=batch_size, seed=seed)
        )
        result = Segmentation.concat(parts)
        note = summarize_preparations(result.preparations)
        if note:
            log.info(note)
        return result


def load(path: Union[str, Path], config: Optional[Union[str, Path]] = None, device: str = "auto") -> Model:
    """Load a trained model to segment pictures with.

    Args:
        path: an emorl checkpoint (`runs/NAME/checkpoints/step_*.pt`, `best.pt`; its config is inside) or an
            original EfficientMORL `.pth` file (then `config` is required).
        config: a shipped config name (`tetrominoes`, `clevr6`, …) or a YAML file: the settings an original
            `.pth` was trained with; for an emorl checkpoint it may change only the test-time I.
        device: 'auto' (a CUDA GPU when there is one, else the CPU), 'cpu', 'cuda', 'cuda:1', …
    """
    chosen = resolve_device(device)
    loaded = load_model(Path(path), None if config is None else str(config), device=str(chosen))
    if not isinstance(loaded.cfg, Config):
        raise CheckpointError(
            f"{path} holds only a model config, not the data settings pictures are prepared with; pass "
            "config= the config it was trained with"
        )
    return Model(loaded, chosen)
