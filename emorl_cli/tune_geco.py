"""`emorl tune-geco`: the original README's manual heuristic for the GECO reconstruction target, automated.

The heuristic (EfficientMORL README, "Choosing the reconstruction target"): train without GECO for the first
10–20% of the steps; the model learns the background first, which removes most of the reconstruction
error; set the target to what the model reaches by then, so that target − EMA(NLL) approaches 0 and GECO
gently raises the reconstruction weight until the foreground objects are found.

The rule, on the per pixel-and-channel NLL of a pilot run with GECO off (15% of training.iters by default):
1. smooth the logged NLL with an EMA (α = 0.9 per logged point) → curve e(t);
2. initial I = e(first point), plateau P = mean of e over the last 10% of the pilot;
3. background level B = e at the first point where the curve has made 80% of its total drop I → P
   (where it flattens after the background is learned);
4. proposal = P + margin·(B − P), margin 0.1: a value the pilot reaches near its end (10–20% of training)
   that lies below the background-only level B, so it still asks for the foreground objects.
The proposal always lies between the initial and the plateau NLL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from emorl_cli.config import Config, config_from_dict, config_to_dict
from emorl_cli.errors import ConfigError, TrainingError
from emorl_cli.files import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_file,
    ensure_writable_folder,
)
from emorl_cli.training.progress import TrainingProgress

EMA_ALPHA = 0.9
DROP_FRACTION = 0.8
PLATEAU_FRACTION = 0.1
MARGIN = 0.1
PILOT_FRACTION = 0.15


@dataclass
class GecoProposal:
    """The proposed target and the curve points it came from (per pixel and channel unless 'total')."""

    target: float
    total_target: float
    initial: float
    background: float
    background_step: int
    plateau: float
    pilot_steps: int
    margin: float = MARGIN


def pilot_config(cfg: Config, pilot_steps: int) -> Config:
    """The config of the pilot: GECO off, `pilot_steps` steps, dense NLL logging, checkpoints for resuming."""
    if cfg.model.kind != "emorl":
        raise ConfigError(f"GECO applies to EfficientMORL only; model.kind is {cfg.model.kind!r}")
    if pilot_steps < 10:
        raise ConfigError(f"--pilot-steps {pilot_steps} is too short to see the NLL flatten; use at least 10")
    raw = config_to_dict(cfg)
    raw["geco"]["enabled"] = False
    raw["training"].update(
        iters=pilot_steps,
        log_every=max(1, pilot_steps // 400),
        checkpoint_every=max(1, pilot_steps // 10),
        keep_checkpoints=1,
        image_every=max(pilot_steps, 1),
    )
    return config_from_dict(raw, source="pilot config")


def default_pilot_steps(cfg: Config) -> int:
    """15% of the config's training steps."""
    return max(10, int(round(PILOT_FRACTION * cfg.training.iters)))


def ema(values: np.ndarray, alpha: float = EMA_ALPHA) -> np.ndarray:
    """e_0 = v_0, e_t = α·e_{t−1} + (1 − α)·v_t."""
    out = np.empty_like(values, dtype=np.float64)
    current = float(values[0])
    for i, value in enumerate(values):
        current = alpha * current + (1 - alpha) * float(value) if i else current
        out[i] = current
    return out


def propose_target(steps: np.ndarray, nll_per_pixel: np.ndarray, pixels: int, pilot_steps: int) -> GecoProposal:
    """Apply the rule in the module docstring to a pilot's NLL curve (per pixel and channel)."""
    if len(steps) < 5:
        raise TrainingError(f"the pilot logged only {len(steps)} NLL values; run more --pilot-steps")
    curve = ema(nll_per_pixel)
    initial = float(curve[0])
    tail = max(1, int(round(PLATEAU_FRACTION * len(curve))))
    plateau = float(curve[-tail:].mean())
    if not initial > plateau:
        raise TrainingError(
            f"the pilot's NLL did not go down (from {initial:.4f} to {plateau:.4f} per pixel-channel); "
            f"train longer (--pilot-steps) or check the learning rate"
        )
    reached = np.nonzero(curve <= initial - DROP_FRACTION * (initial - plateau))[0]
    knee = int(reached[0]) if len(reached) else len(curve) - 1
    background = float(curve[knee])
    target = plateau + MARGIN * (background - plateau)
    return GecoProposal(
        target=round(target, 6),
        total_target=round(target * pixels, 3),
        initial=initial,
        background=background,
        background_step=int(steps[knee]),
        plateau=plateau,
        pilot_steps=pilot_steps,
    )


def read_nll_curve(metrics: Path, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, NLL per pixel and channel) of the training rows of a run's metrics.jsonl (a cut-off last line
    is skipped; evaluation rows, which carry a test-split NLL, are not part of the pilot's curve)."""
    from emorl_cli.training.run_logs import training_rows

    rows = [r for r in training_rows(metrics) if isinstance(r.get("nll"), (int, float))]  # null: not finite
    return np.array([r["step"] for r in rows]), np.array([r["nll"] / pixels for r in rows], dtype=np.float64)


def plot_curve(steps: np.ndarray, nll: np.ndarray, proposal: GecoProposal, path: Path) -> Path:
    """A PNG of the raw and smoothed NLL per pixel-channel with the background level and the proposal."""
    width, height, pad = 720, 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    smooth = ema(nll)
    low = min(float(nll.min()), proposal.target)
    high = float(np.percentile(nll, 99))
    span = max(high - low, 1e-9)
    x_max = max(int(steps[-1]), 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * step / x_max
        y = height - pad - (height - 2 * pad) * (min(value, high) - low) / span
        return x, y

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    draw.line([xy(s, v) for s, v in zip(steps, nll, strict=True)], fill=(180, 180, 220), width=1)
    draw.line([xy(s, v) for s, v in zip(steps, smooth, strict=True)], fill=(30, 60, 200), width=2)
    for value, colour, label in (
        (proposal.target, (200, 30, 30), f"proposed target {proposal.target:.4f}"),
        (proposal.background, (30, 150, 30), f"background level {proposal.background:.4f}"),
    ):
        y = xy(0, value)[1]
        draw.line([(pad, y), (width - pad, y)], fill=colour, width=1)
        draw.text((pad + 6, y - 12), label, fill=colour, font=font)
    draw.text((pad, 20), "NLL per pixel and channel (pilot without GECO); blue: EMA", fill="black", font=font)
    draw.text((pad, height - pad + 8), "step 0", fill="black", font=font)
    draw.text((width - pad - 60, height - pad + 8), f"step {x_max}", fill="black", font=font)
    draw.text((6, pad), f"{high:.3f}", fill="black", font=font)
    draw.text((6, height - pad - 10), f"{low:.3f}", fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def tune_geco(
    cfg: Config,
    out_dir: Path,
    *,
    data_dir: Optional[Path] = None,
    pilot_steps: Optional[int] = None,
    write_config: Optional[Path] = None,
    progress: Optional[TrainingProgress] = None,
) -> tuple[GecoProposal, dict[str, Path]]:
    """Run (or resume) the pilot in OUT/pilot, propose a target, write proposal.json, nll_curve.png and,
    with `write_config`, a copy of the config with GECO on and the target set."""
    from emorl_cli.training.loop import train
    from emorl_cli.training.rundir import RunDir

    steps = pilot_steps if pilot_steps is not None else default_pilot_steps(cfg)
    pilot = pilot_config(cfg, steps)
    ensure_writable_folder(out_dir, "--out folder")  # before minutes of pilot training
    if write_config is not None:
        ensure_writable_file(write_config, "--write-config file")
    run_dir = RunDir(Path(out_dir) / "pilot")
    resume = run_dir.latest_checkpoint() is not None
    train(pilot, run_dir.root, data_dir=data_dir, resume=resume, progress=progress)
    pixels = int(np.prod(cfg.model.input_size))
    curve_steps, nll = read_nll_curve(run_dir.metrics, pixels)
    proposal = propose_target(curve_steps, nll, pixels, steps)
    paths = {
        "proposal": Path(out_dir) / "proposal.json",
        "curve": plot_curve(curve_steps, nll, proposal, Path(out_dir) / "nll_curve.png"),
        "pilot": run_dir.root,
    }
    atomic_write_json(paths["proposal"], asdict(proposal))
    if write_config is not None:
        raw = config_to_dict(cfg)
        raw["geco"].update(enabled=True, target=proposal.target)
        tuned = config_from_dict(raw, source="tuned config")
        atomic_write_text(write_config, yaml.safe_dump(config_to_dict(tuned), sort_keys=False))
        paths["config"] = Path(write_config)
    return proposal, paths
