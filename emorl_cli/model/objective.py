"""What a forward pass optimises: the plain ELBO or the GECO-weighted objective of the original.

Per image b and stage i (i = 0 after the L bottom-up layers, i = 1..I after each refinement step):

- ELBO:  ℓ_b = NLL_b + kl_beta·KL_b
- GECO:  ℓ_b = kl_beta·KL_b − softplus(β)·(C_t + sg(C_ema − C_t)),  C_t = C − NLL_b
         (sg = stop-gradient). Its *value* is kl_beta·KL_b − softplus(β)·C_ema and its *gradient* is
         that of kl_beta·KL_b + softplus(β)·NLL_b; the target C cancels, so it is not needed here.
         softplus(β) is a constant (β is not trained by backprop).

The original's training loss is the batch mean of ℓ; the refinement network sees the gradient of ℓ
with respect to the posterior parameters λ (see `refinement_grad`).

Who decides "before the GECO warm start → ELBO"? Not the model: `emorl_cli.geco.training_objective(step,
geco, kl_beta)` applies the original's rule and the training loop calls it every step, so the model never
sees the step. For evaluation the original passes step = warm_start + 1, i.e. it uses `Objective.geco(state)`
when the run trained with GECO and `Objective.elbo()` otherwise.

β and C_ema are Python floats, or — for a training step, `Objective.geco(..., keep_tensors=True)` — the
GECO state's 0-d tensors as they are, so building the objective never reads the device. The tensor form
computes the same numbers: softplus(β) in float32, products of the two in float64 as Python does with floats.

`refinement_grad` says which gradient feeds the refinement network:
- "per_image" (default): ∇λ of Σ_b ℓ_b — each image's refinement depends on that image alone, whatever
  the batch; equal to the original at batch size 1 (how its eval.py runs).
- "batch_mean": ∇λ of Σ_b ℓ_b / B — exactly the original's training (the gradient is 1/B smaller; after the
  layer norm this differs only through the norm's ε = 1e-5, so results depend weakly on the batch size).
  B is `global_batch_size` when given (data parallelism: the whole batch across processes, so N processes
  compute what one process with the whole batch would), else this call's batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Optional, Union

import torch

GECO_BETA_INIT = 0.55  # softplus(0.55) ≈ 1


def _as_float(value: Any) -> float:
    return float(value.detach().cpu().item()) if isinstance(value, torch.Tensor) else float(value)


def _softplus(value: float) -> float:
    # in float32 like the original's torch.nn.functional.softplus on a float32 parameter
    return float(torch.nn.functional.softplus(torch.tensor(value, dtype=torch.float32)))


def _wide(value: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor in float64, the precision of Python's float (float32 where the device has no float64)."""
    return value.detach().to(torch.float32 if value.device.type == "mps" else torch.float64)


Number = Union[float, torch.Tensor]  # a Python float, or a 0-d tensor that is never read back to the host


@dataclass(frozen=True)
class Objective:
    """An immutable description of the loss; build it with `elbo` or `geco`."""

    kind: Literal["elbo", "geco"] = "elbo"
    kl_beta: float = 1.0
    geco_beta: Number = GECO_BETA_INIT  # raw β; the NLL weight is softplus(β)
    geco_c_ema: Number = 0.0  # EMA of the constraint C − NLL, enters the loss value only
    refinement_grad: Literal["per_image", "batch_mean"] = "per_image"
    global_batch_size: Optional[int] = None  # B of "batch_mean" (None: the batch of the call)

    def __post_init__(self) -> None:
        if self.kind not in ("elbo", "geco"):
            raise ValueError(f"Objective.kind must be 'elbo' or 'geco', got {self.kind!r}")
        if self.refinement_grad not in ("per_image", "batch_mean"):
            raise ValueError(f"refinement_grad must be 'per_image' or 'batch_mean', got {self.refinement_grad!r}")
        if not math.isfinite(self.kl_beta) or self.kl_beta < 0:
            raise ValueError(f"kl_beta must be finite and ≥ 0, got {self.kl_beta}")
        if self.global_batch_size is not None and self.global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be positive, got {self.global_batch_size}")

    @classmethod
    def elbo(
        cls, kl_beta: float = 1.0, *, refinement_grad: str = "per_image", global_batch_size: Optional[int] = None
    ) -> Objective:
        """NLL + kl_beta·KL."""
        return cls(
            "elbo",
            float(kl_beta),
            refinement_grad=refinement_grad,  # type: ignore[arg-type]
            global_batch_size=global_batch_size,
        )

    @classmethod
    def geco(
        cls,
        geco_state_or_beta: Any,
        c_ema: Optional[float] = None,
        *,
        kl_beta: float = 1.0,
        refinement_grad: str = "per_image",
        global_batch_size: Optional[int] = None,
        keep_tensors: bool = False,
    ) -> Objective:
        """kl_beta·KL + softplus(β)·NLL (value: kl_beta·KL − softplus(β)·C_ema).

        `geco_state_or_beta` is a `emorl_cli.geco.GECO`, its `state_dict()` ({"beta", "C_ema"}), or β
        itself (a float or 0-d tensor; then `c_ema` gives C_ema, default 0). With `keep_tensors`, tensor
        values stay tensors (not read to the host; see the module docstring).
        """
        if hasattr(geco_state_or_beta, "beta") and hasattr(geco_state_or_beta, "C_ema"):
            beta, ema = geco_state_or_beta.beta, geco_state_or_beta.C_ema
        elif isinstance(geco_state_or_beta, dict):
            beta, ema = geco_state_or_beta["beta"], geco_state_or_beta["C_ema"]
        else:
            beta, ema = geco_state_or_beta, 0.0
        if c_ema is not None:
            ema = c_ema

        def value(v: Any) -> Number:
            return v.detach() if keep_tensors and isinstance(v, torch.Tensor) else _as_float(v)

        return cls(
            "geco",
            float(kl_beta),
            value(beta),
            value(ema),
            refinement_grad,  # type: ignore[arg-type]
            global_batch_size,
        )

    @cached_property
    def nll_weight(self) -> Number:
        """Weight of the NLL in the gradient: 1 (ELBO) or softplus(β) (GECO); a float64 0-d tensor when β is a
        tensor (softplus in float32, then widened to Python's precision)."""
        if self.kind == "elbo":
            return 1.0
        if isinstance(self.geco_beta, torch.Tensor):
            return _wide(torch.nn.functional.softplus(self.geco_beta.to(torch.float32)))
        return _softplus(self.geco_beta)

    def per_image(self, nll: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """ℓ_b for NLL [B] and KL [B] → [B], with the value and gradient described above."""
        if self.kind == "elbo":
            return nll + self.kl_beta * kl
        weight = self.nll_weight
        c_ema = _wide(self.geco_c_ema) if isinstance(self.geco_c_ema, torch.Tensor) else self.geco_c_ema
        return self.kl_beta * kl + weight * (nll - nll.detach()) - weight * c_ema

    def refinement_target(self, per_image: torch.Tensor) -> torch.Tensor:
        """The scalar whose gradient w.r.t. λ the refinement network sees."""
        if self.refinement_grad == "per_image":
            return per_image.sum()
        return per_image.sum() / (self.global_batch_size or per_image.shape[0])
