"""GECO (Rezende & Viola 2018, "Taming VAEs") as EfficientMORL's training uses it.

Minimise the KL subject to a reconstruction constraint E[NLL] ≤ −C. The state is two float32 scalars:

- C_ema: exponential moving average of the constraint C − NLL (C = target per pixel·channel × C·H·W).
  It is *initialised* to C − NLL at the warm-start step and updated after every later step:
  C_ema ← α·C_ema + (1 − α)·(C − NLL).
- beta: the Lagrange parameter before the softplus (the NLL weight is softplus(beta)), starting at 0.55
  (softplus(0.55) ≈ 1). After every step past the warm start: beta ← max(0.55, beta − η·C_ema), with η
  multiplied by `step_size_acceleration` while the constraint is met (C_ema > 0; 1 = the original).

The update order per training step is the original's (train.py): forward/backward/optimizer step with the
current state, then `update(step, nll)`. NLL is the batch mean of the final-stage per-image NLL (summed over
pixels and channels): `ModelOutput.nll.mean()`. With several processes, pass the NLL averaged over all
processes; given the same inputs every process computes bit-identical state (plain float32 arithmetic).

The state lives on `device` (`to(device)`; the CPU by default) and the update never reads it back to the
host, so a training step on a GPU does not wait for the device; `applied` (a 0-d bool tensor) leaves the
state unchanged for a step whose update was skipped (fp16 loss scaling found inf/NaN gradients).

How the state enters the loss is `emorl_cli.model.Objective`; which objective a training step uses is the
original's warm-start rule, `training_objective(step, geco, kl_beta)` (or `GECO.objective(step, kl_beta)`).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from emorl_cli.config import Config, GecoConfig
from emorl_cli.errors import CheckpointError
from emorl_cli.model.objective import GECO_BETA_INIT, Objective

BETA_FLOOR = GECO_BETA_INIT  # softplus(0.55) ≈ 1: the NLL never weighs less than in the ELBO
STATE_KEYS = ("C_ema", "beta")


def _scalar(value: Union[float, torch.Tensor], device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """A detached float32 0-d tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.tensor(float(value), dtype=torch.float32, device=device)


class GECO:
    """GECO state (C_ema, beta) and its update rule. `target` is the whole-image target C (nats)."""

    def __init__(
        self,
        target: float,
        *,
        ema_alpha: float = 0.99,
        beta_step_size: float = 1e-6,
        step_size_acceleration: float = 1.0,
        warm_start: int = 1000,
    ):
        self.target = float(target)
        self.ema_alpha = float(ema_alpha)
        self.beta_step_size = float(beta_step_size)
        self.step_size_acceleration = float(step_size_acceleration)
        self.warm_start = int(warm_start)
        self.device = torch.device("cpu")
        self.C_ema = torch.tensor(0.0)
        self.beta = torch.tensor(BETA_FLOOR)

    def to(self, device: Union[str, torch.device]) -> GECO:
        """Keep the state on `device` (where the training step runs); returns self."""
        self.device = torch.device(device)
        self.C_ema, self.beta = _scalar(self.C_ema, self.device), _scalar(self.beta, self.device)
        return self

    @classmethod
    def from_config(cls, cfg: Union[Config, GecoConfig], total_target: float | None = None) -> GECO:
        """From a whole `Config` (target scaled by C·H·W) or a `GecoConfig` plus the total target."""
        if isinstance(cfg, Config):
            geco, total = cfg.geco, cfg.geco_total_target()
        else:
            if total_target is None:
                raise ValueError("GECO.from_config(GecoConfig) needs total_target = target · C·H·W")
            geco, total = cfg, total_target
        return cls(
            total,
            ema_alpha=geco.ema_alpha,
            beta_step_size=geco.beta_step_size,
            step_size_acceleration=geco.step_size_acceleration,
            warm_start=geco.warm_start,
        )

    # ------------------------------------------------------------------------------------------ update

    def constraint(self, nll: Union[float, torch.Tensor]) -> torch.Tensor:
        """C − NLL (float32): positive when the reconstruction is better than the target."""
        target = torch.tensor(self.target, dtype=torch.float32)  # a CPU scalar: no copy to the device
        return target - _scalar(nll, self.device)

    def update(self, step: int, nll: Union[float, torch.Tensor], applied: Optional[torch.Tensor] = None) -> None:
        """After training step `step`: initialise the EMA at the warm start, later update EMA then beta.

        `applied`: 0-d bool tensor, False when the step's optimizer update was skipped; the state then stays
        as it was (a skipped warm-start step leaves the EMA at 0).
        """
        if step < self.warm_start:
            return
        if step == self.warm_start:
            c_ema, beta = self.constraint(nll), self.beta
        else:
            c_ema = self.C_ema * self.ema_alpha + self.constraint(nll) * (1.0 - self.ema_alpha)
            beta = self._stepped_beta(c_ema)
        if applied is not None:
            c_ema, beta = torch.where(applied, c_ema, self.C_ema), torch.where(applied, beta, self.beta)
        self.C_ema, self.beta = c_ema, beta

    def _stepped_beta(self, c_ema: torch.Tensor) -> torch.Tensor:
        """beta − η·C_ema, η accelerated while the constraint is met, floored (chosen on the device)."""
        stepped = self.beta - self.beta_step_size * c_ema
        if self.step_size_acceleration != 1.0:
            fast = self.beta - (self.beta_step_size * self.step_size_acceleration) * c_ema
            stepped = torch.where(c_ema > 0, fast, stepped)
        return stepped.clamp_min(BETA_FLOOR)

    @property
    def nll_weight(self) -> float:
        """softplus(beta): the weight of the NLL in the GECO objective."""
        return float(torch.nn.functional.softplus(self.beta))

    def objective(self, step: int, kl_beta: float = 1.0, **kwargs: Any) -> Objective:
        """The objective of training step `step` (ELBO before the warm start, see `training_objective`)."""
        return training_objective(step, self, kl_beta, **kwargs)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"C_ema", "beta"}: float32 0-d CPU tensors (a copy)."""
        return {"C_ema": self.C_ema.detach().cpu().clone(), "beta": self.beta.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output (or the original checkpoint's geco_C_ema / geco_beta values)."""
        missing = [k for k in STATE_KEYS if k not in state]
        extra = [k for k in state if k not in STATE_KEYS]
        if missing or extra:
            raise CheckpointError(
                f"GECO state must have keys {list(STATE_KEYS)}; missing {missing}, unexpected {extra}; "
                "the checkpoint is damaged or not an emorl checkpoint"
            )
        self.C_ema = _scalar(state["C_ema"], self.device)
        self.beta = _scalar(state["beta"], self.device)

    def __repr__(self) -> str:
        return (
            f"GECO(target={self.target}, C_ema={float(self.C_ema):.4f}, beta={float(self.beta):.6f}, "
            f"warm_start={self.warm_start})"
        )


def training_objective(
    step: int,
    geco: Optional[Any] = None,
    kl_beta: float = 1.0,
    *,
    refinement_grad: str = "per_image",
    global_batch_size: Optional[int] = None,
    keep_tensors: bool = False,
) -> Objective:
    """The objective of training step `step`, by the original's rule: GECO iff a GECO state is given
    (anything with `warm_start`, `beta`, `C_ema`), kl_beta != 0 and step ≥ geco.warm_start; else the ELBO.

    `keep_tensors`: take the GECO state's tensors as they are (a training step: no read of the device).
    """
    grad = {"refinement_grad": refinement_grad, "global_batch_size": global_batch_size}
    if geco is None or kl_beta == 0 or step < geco.warm_start:
        return Objective.elbo(kl_beta, **grad)
    return Objective.geco(geco, kl_beta=kl_beta, keep_tensors=keep_tensors, **grad)
