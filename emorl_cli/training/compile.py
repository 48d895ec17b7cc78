"""`training.compile`: torch.compile around the networks that do the arithmetic of a step.

The encoder (convolutions and token MLP), the image decoder and the refinement network are compiled in
place (`nn.Module.compile`), so parameter names and checkpoints do not change; the code between them
(sampling, KL, the refinement gradient, grad_reuse.py's in-forward backward) runs eagerly. Compilation
happens at the first calls (and again when shapes or the grad mode change, e.g. for evaluation batches),
so the first steps are slow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from emorl_cli.errors import TrainingError

COMPILED_NETWORKS = ("encoder_pt_1", "encoder_pt_2", "image_decoder", "refinenet")
BACKEND: Any = "inductor"  # torch.compile's default; the tests use the quick "aot_eager"


def compile_networks(model: torch.nn.Module, backend: Any = None) -> list[str]:
    """Compile the networks of `model` named in COMPILED_NETWORKS in place; returns their full names."""
    names = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in COMPILED_NETWORKS:
            module.compile(backend=backend or BACKEND)
            names.append(name)
    return names


def _from_compiler(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or isinstance(
        exc, torch._dynamo.exc.TorchDynamoException
    )


@contextlib.contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Turn a failure of torch.compile inside the block into one TrainingError naming the setting."""
    if not enabled:
        yield
        return
    try:
        yield
    except Exception as exc:
        if not _from_compiler(exc):
            raise
        cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # what the compiler raised
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        raise TrainingError(
            f"training.compile=true: torch.compile failed ({type(cause).__name__}: {first}); "
            "set training.compile=false to train without it"
        ) from None
