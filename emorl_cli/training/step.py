"""One optimisation step with the original's train.py semantics, for 1 or N processes.

Per step s (0-based):
    I      = the refinement curriculum's I at s
    lr     = training.lr · lr_factor(s)                     (warm-up from 0, then exponential decay)
    loss   = model(images, training_objective(s, GECO)).loss, images = this process's share
    grads  averaged over processes (one flat all-reduce, as DDP would), clipped, Adam step
    GECO   NLL = global-batch mean of the final NLL; s == warm_start → init EMA; s > warm_start →
           update EMA and step β (identical on every process because every process sees the same NLL)

The refinement gradient is ∇λ of Σ_b ℓ_b / (global batch): the original's batch mean at its global batch
size, whatever the number of processes.

The step never waits for the device: its scalars stay 0-d device tensors (`read` brings them to the host
at log steps), GECO's state lives on the device, and a non-finite loss is recorded on the device
(`check_finite`, called at every read and before every checkpoint, raises for the first one). Under fp16
the loss is scaled (precision.py) and GECO is not updated on a step whose update was skipped.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from emorl_cli.config import Config
from emorl_cli.errors import TrainingError
from emorl_cli.geco import GECO, training_objective
from emorl_cli.model import Objective, build_model
from emorl_cli.training.compile import compile_errors, compile_networks
from emorl_cli.training.host_memory import keep_freed_memory
from emorl_cli.training.noise import GlobalBatchNoise
from emorl_cli.training.order import local_batch_size
from emorl_cli.training.precision import Precision
from emorl_cli.training.schedule import lr_factor

Scalars = dict[str, Union[torch.Tensor, float]]  # a step's logged values: 0-d device tensors (lr: a float)


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
        if self.device.type == "cpu":
            keep_freed_memory()  # reuse the step's large blocks instead of page-faulting them in again
        self.local_batch = local_batch_size(cfg.training.batch_size, self.world)
        torch.manual_seed(cfg.training.seed)  # the same initial weights on every process
        self.model = build_model(cfg.model).to(self.device)
        self.precision = Precision(cfg.training.mixed_precision, self.device)
        self.optimizer = self.precision.make_optimizer(self.model.parameters(), lr=cfg.training.lr)
        self.geco: Optional[GECO] = None
        if cfg.model.kind == "emorl" and cfg.geco.enabled:
            self.geco = GECO.from_config(cfg).to(self.device)
        self.watch = NonFiniteWatch(self.device)
        self.compiled = cfg.training.compile
        if self.compiled:
            compile_networks(self.model)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "geco": self.geco.state_dict() if self.geco is not None else None,
        }
        loss_scaling = self.precision.state_dict()
        if loss_scaling is not None:  # fp16 only: the scale and the skipped-step count
            state["extra"] = {"loss_scaling": loss_scaling}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.precision.load_optimizer_state(self.optimizer, state["optimizer"])
        if self.geco is not None and state.get("geco"):
            self.geco.load_state_dict(state["geco"])
        self.precision.load_state_dict((state.get("extra") or {}).get("loss_scaling"))

    # ------------------------------------------------------------------------------------------ step

    def objective(self, step: int) -> Optional[Objective]:
        if self.cfg.model.kind != "emorl":
            return None
        return training_objective(
            step,
            self.geco,
            self.cfg.training.kl_beta,
            refinement_grad="batch_mean",
            global_batch_size=self.cfg.training.batch_size,
            keep_tensors=True,
        )

    def __call__(self, step: int, images: torch.Tensor) -> Scalars:
        """Train on this process's images [B/N, 3, H, W] for step `step`.

        Returns the step's scalars unread (0-d device tensors; `read` them at a log step). A non-finite loss
        does not stop the step: `check_finite` raises for it later, before anything is logged or saved.
        """
        t = self.cfg.training
        for group in self.optimizer.param_groups:
            group["lr"] = t.lr * lr_factor(step, t.warmup, t.lr_decay_rate, t.lr_decay_steps)
        kwargs: dict[str, Any] = {"noise": GlobalBatchNoise(t.seed, step, self.rank, self.world, self.device)}
        if self.cfg.model.kind == "emorl":
            kwargs["refinement_iters"] = t.refinement_iters_at(step)
        with compile_errors(self.compiled):
            with self.precision.autocast():
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
            loss, nll, kl, mse = stats.unbind()
            self.watch.observe(step, loss)

            self.optimizer.zero_grad(set_to_none=False)
            self.precision.backward(out.loss)
        _all_reduce_mean_([p.grad for p in self.model.parameters() if p.grad is not None], self.accelerator)
        self.precision.unscale_(self.optimizer)
        scalars: Scalars = {"loss": loss, "nll": nll, "kl": kl, "mse": mse, "lr": self.optimizer.param_groups[0]["lr"]}
        if t.clip_grad_norm is not None:
            scalars["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        applied = self.precision.step(self.optimizer)  # None, or False on a skipped fp16 step

        if self.geco is not None:
            self.geco.update(step, nll, applied)
            scalars["geco_beta"] = self.geco.beta
            scalars["geco_C_ema"] = self.geco.C_ema
        for i, delta in enumerate(out.deltas.detach().unbind()):
            scalars[f"norm_delta_lamda_{i}"] = delta
        scalars.update(self.precision.scalars())
        return scalars

    def check_finite(self) -> None:
        """Raise NonFiniteLoss for the first step since the run (re)started whose loss was NaN or infinite."""
        self.watch.check()

    def read(self, scalars: Scalars) -> dict[str, float]:
        """A step's scalars on the host (one wait for the device), after `check_finite`."""
        self.check_finite()
        tensors = {name: value for name, value in scalars.items() if isinstance(value, torch.Tensor)}
        host = torch.stack([v.detach().double() for v in tensors.values()]).tolist() if tensors else []
        values = dict(zip(tensors, host, strict=True))
        out: dict[str, float] = {}
        for name, value in scalars.items():
            if not isinstance(value, torch.Tensor):
                out[name] = float(value)
            else:  # float32/bf16 values are exact in float64; counters stay integers
                out[name] = values[name] if value.dtype.is_floating_point else int(values[name])
        return out


class NonFiniteWatch:
    """The first step whose loss was NaN or infinite, and that loss, kept on the device until `check`."""

    def __init__(self, device: torch.device):
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)

    def observe(self, step: int, loss: torch.Tensor) -> None:
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss, self.value)

    def check(self) -> None:
        step, value = int(self.step), float(self.value)
        if step >= 0:
            raise NonFiniteLoss(step, value)


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite; the caller names the last good checkpoint."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"the training loss became {value} at step {step}")
