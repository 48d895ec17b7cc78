"""Mixed precision of a training step: autocast, and dynamic loss scaling under fp16.

`training.mixed_precision`:
- "no":   float32 throughout.
- "bf16": autocast to bfloat16 (float32's range: no loss scaling needed).
- "fp16": autocast to float16 and torch's GradScaler: the loss is multiplied by a scale S before backward
          so small gradients do not underflow to zero in float16; the gradients are divided by S again
          (after the all-reduce, before clipping); a step whose gradients hold inf or NaN is skipped (no
          Adam update, no GECO update) and S is halved; after 2000 good steps in a row S doubles.

Under fp16 the optimizer is Adam's fused kernel, which reads the scaler's found-inf flag on the device:
skipping a step then needs no read of the device by the host. Autocast is torch's own on every device.
`emorl train` refuses fp16 on a CPU (`check_supported`); `Precision` itself works there, which the tests
use with small images.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli.errors import TrainingError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("emorl")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated
    and slower than float32. False where it cannot tell (no /proc/cpuinfo)."""
    try:
        flags = set(cpuinfo.read_text(errors="replace").split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def check_supported(mode: str, device: torch.device) -> None:
    """Refuse fp16 on a CPU: torch's float16 convolution backward there is a reference loop, about 100×
    slower than float32 (2 s per encoder convolution at batch 2 on this project's CPU). Note bf16 on a
    CPU that only emulates it (no AVX-512 BF16 or AMX): correct, but slower than float32."""
    if mode == "fp16" and torch.device(device).type == "cpu":
        raise TrainingError(
            "training.mixed_precision=fp16 is for GPUs: on a CPU, float16 convolution backward is about 100x "
            "slower than float32; use bf16 (fast on CPUs with AVX-512 BF16 or AMX) or no"
        )
    if mode == "bf16" and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        # a note, not a refusal: the run is correct, only slow (a 64x64 step measured 10x float32's time)
        log.warning(
            "training.mixed_precision=bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX flag in "
            "/proc/cpuinfo): bf16 is emulated here, several times slower than float32; set "
            "training.mixed_precision=no"
        )


class Precision:
    """Autocast context, loss scaling and the count of skipped steps for one `mixed_precision` mode."""

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, torch.device(device)
        self.dtype = AUTOCAST_DTYPES.get(mode)
        self.scales_loss = mode == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.scales_loss)
        self.skipped = torch.zeros((), dtype=torch.int64, device=self.device)  # skipped steps so far

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def make_optimizer(self, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
        """Adam; the fused kernel under fp16 (it skips inf/NaN steps on the device)."""
        return torch.optim.Adam(params, lr=lr, fused=True) if self.scales_loss else torch.optim.Adam(params, lr=lr)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load Adam's state saved under any mode: the kernel choice and the step counters' device follow
        this mode (the fused kernel keeps them on the parameters' device, the others on the CPU)."""
        optimizer.load_state_dict(state)
        for group in optimizer.param_groups:
            group["fused"] = self.scales_loss or None
            for param in group["params"]:
                entry = optimizer.state.get(param, {})
                if "step" in entry:
                    where = param.device if self.scales_loss else torch.device("cpu")
                    entry["step"] = entry["step"].to(device=where, dtype=torch.float32)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), with the loss multiplied by the current scale under fp16."""
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (before clipping); records whether any is inf/NaN."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> Optional[torch.Tensor]:
        """The optimizer step; under fp16 it is skipped on inf/NaN gradients and the scale is updated.

        Returns a 0-d bool tensor on the device, True when the update was applied (None without scaling).
        """
        if not self.scales_loss:
            optimizer.step()
            return None
        found_inf = sum(self.scaler._found_inf_per_device(optimizer).values())  # 0-d float, set by unscale_
        self.scaler.step(optimizer)
        self.scaler.update()
        applied = found_inf == 0
        self.skipped = self.skipped + (~applied).to(torch.int64)
        return applied

    def scalars(self) -> dict[str, torch.Tensor]:
        """Logged under fp16: skipped_steps (in the whole run) and loss_scale (S after this step)."""
        if not self.scales_loss:
            return {}
        return {"skipped_steps": self.skipped, "loss_scale": self.scaler._get_scale_async()}

    def state_dict(self) -> Optional[dict[str, Any]]:
        if not self.scales_loss:
            return None
        return {"scaler": self.scaler.state_dict(), "skipped_steps": int(self.skipped)}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """Restore the scale and the skipped-step count (nothing to restore from a run without fp16)."""
        if not self.scales_loss or not state:
            return
        self.scaler.load_state_dict(state["scaler"])
        self.skipped = torch.tensor(int(state["skipped_steps"]), dtype=torch.int64, device=self.device)
