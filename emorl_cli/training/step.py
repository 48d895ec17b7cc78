"""One optimisation step with the original's train.py semantics, for 1 or N processes.

Per step s (0-based):
    I      = the refinement curriculum's I at s
    lr     = training.lr · lr_factor(s)                     (warm-up from 0, then exponential decay)
    loss   = model(images, Objective.for_training_step(s, GECO)).loss, images = this process's share
    grads  averaged over processes (one flat all-reduce, as DDP would), clipped, Adam step
    GECO   NLL = global-batch mean of the final NLL; s == warm_start → init EMA; s > warm_start →
           update EMA and step β (identical on every process because every process sees the same NLL)

The refinement gradient is ∇λ of Σ_b ℓ_b / (global batch): the original's batch mean at its global batch
size, whatever the number of processes.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from emorl_cli.config import Config
from emorl_cli.errors import TrainingError
from emorl_cli.geco import GECO
from emorl_cli.model import Objective, build_model
from emorl_cli.training.noise import GlobalBatchNoise
from emorl_cli.training.order import local_batch_size
from emorl_cli.training.schedule import lr_factor


def make_accelerator(mixed_precision: str = "no", cpu: bool = False):
    """An Accelerator; the shared state is reset so several runs can share one Python process."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _all_reduce_mean_(tensors: list[torch.Tensor], accelerator: Any) -> None:
    """Average tensors across processes in place with a single flat all-reduce."""
    if accelerator.num_processes == 1 or not tensors:
        return
    flat = accelerator.reduce(torch.cat([t.reshape(-1) for t in tensors]), reduction="mean")
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


class StepRunner:
    """The model, optimizer and GECO state of a run, and the code of one training step."""

    def __init__(self, cfg: Config, accelerator: Any):
        self.cfg, self.accelerator = cfg, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device
        self.local_batch = local_batch_size(cfg.training.batch_size, self.world)
        torch.manual_seed(cfg.training.seed)  # the same initial weights on every process
        self.model = build_model(cfg.model).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.training.lr)
        self.geco: Optional[GECO] = GECO.from_config(cfg) if cfg.model.kind == "emorl" and cfg.geco.enabled else None

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "geco": self.geco.state_dict() if self.geco is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.geco is not None and state.get("geco"):
            self.geco.load_state_dict(state["geco"])

    # ------------------------------------------------------------------------------------------ step

    def objective(self, step: int) -> Optional[Objective]:
        if self.cfg.model.kind != "emorl":
            return None
        return Objective.for_training_step(
            step,
            self.geco,
            self.cfg.training.kl_beta,
            refinement_grad="batch_mean",
            global_batch_size=self.cfg.training.batch_size,
        )

    def __call__(self, step: int, images: torch.Tensor) -> dict[str, float]:
        """Train on this process's images [B/N, 3, H, W] for step `step`; returns the logged scalars."""
        t = self.cfg.training
        for group in self.optimizer.param_groups:
            group["lr"] = t.lr * lr_factor(step, t.warmup, t.lr_decay_rate, t.lr_decay_steps)
        kwargs: dict[str, Any] = {"noise": GlobalBatchNoise(t.seed, step, self.rank, self.world, self.device)}
        if self.cfg.model.kind == "emorl":
            kwargs["refinement_iters"] = t.refinement_iters_at(step)
        with self.accelerator.autocast():
            out = self.model(images, self.objective(step), **kwargs)

        zero = torch.zeros_like(out.loss)
        stats = torch.stack(
            [
                out.loss.detach(),
                (out.nll if out.nll is not None else zero).detach().mean(),
                (out.kl if out.kl is not None else zero).detach().mean(),
                out.mse.detach().mean(),
            ]
        ).float()
        if self.world > 1:
            stats = self.accelerator.reduce(stats, reduction="mean")
        loss, nll, kl, mse = (float(v) for v in stats)
        if not math.isfinite(loss):
            raise NonFiniteLoss(step, loss)

        self.optimizer.zero_grad(set_to_none=False)
        out.loss.backward()
        _all_reduce_mean_([p.grad for p in self.model.parameters() if p.grad is not None], self.accelerator)
        scalars = {"loss": loss, "nll": nll, "kl": kl, "mse": mse, "lr": self.optimizer.param_groups[0]["lr"]}
        if t.clip_grad_norm is not None:
            scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm))
        self.optimizer.step()

        if self.geco is not None:
            self.geco.update(step, torch.tensor(nll, device=self.device))
            scalars["geco_beta"] = float(self.geco.beta)
            scalars["geco_C_ema"] = float(self.geco.C_ema)
        for i, delta in enumerate(out.deltas.tolist()):
            scalars[f"norm_delta_lamda_{i}"] = delta
        return scalars


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite; the caller names the last good checkpoint."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"the training loss became {value} at step {step}")
