"""`emorl bench`: seconds per step, images per second and peak memory of training, evaluation and loading.

Timings are medians over `steps` timed repetitions after warm-up repetitions; the spread is the
interquartile range. Peak memory is the process's peak resident set size on the CPU (it includes the
Python interpreter and libraries, as `/usr/bin/time` would report) or the CUDA allocator's peak on a GPU.
"""

from __future__ import annotations

import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from emorl_cli import __version__
from emorl_cli.config import Config
from emorl_cli.data import synth
from emorl_cli.data.dataset import measure_loader_throughput


@dataclass
class BenchResult:
    """One benchmark's figures."""

    mode: str
    config: str
    batch_size: int
    seconds_per_step: float
    spread: tuple[float, float]
    images_per_second: float
    peak_memory_mb: float
    memory_kind: str
    device: str
    mixed_precision: str
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _versions() -> dict[str, str]:
    return {"emorl": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu peak RSS"


def _time(
    fn: Callable[[], Any],
    steps: int,
    warmup: int,
    device: torch.device,
    seconds: Optional[float] = None,
    warmup_times: Optional[list[float]] = None,
    cpu_times: Optional[list[float]] = None,
) -> list[float]:
    """Seconds of `steps` timed calls after `warmup` untimed ones (appended to `warmup_times` when given;
    the process's CPU seconds of each timed call to `cpu_times`).

    With `seconds`, timing stops once that much time has been spent on timed calls (at least 3 calls,
    at most `steps`): a time budget for slow devices and a step count for fast ones.
    """

    cpu_spent: list[float] = []

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cpu_spent.append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    for _ in range(warmup):
        spent = timed()
        if warmup_times is not None:
            warmup_times.append(spent)
    times: list[float] = []
    while len(times) < steps and (seconds is None or len(times) < 3 or sum(times) < seconds):
        times.append(timed())
    if cpu_times is not None:
        cpu_times.extend(cpu_spent[warmup:])
    return times


def _test_images(cfg: Config, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n images (and masks) of the config's dataset: synthetic where emorl can make them, else noise."""
    c, h, w = cfg.model.input_size
    if cfg.data.dataset in ("tetrominoes", "multi_dsprites"):
        arrays = synth.generate(cfg.data.dataset, n, seed=seed, split="test")
        imgs = torch.from_numpy(arrays["imgs"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        masks = torch.from_numpy(arrays["masks"]).permute(0, 1, 4, 2, 3).float()
        return {"imgs": imgs.contiguous(), "masks": masks, "index": torch.arange(n)}
    generator = torch.Generator().manual_seed(seed)
    imgs = torch.rand((n, c, h, w), generator=generator) * 2 - 1
    labels = torch.randint(0, cfg.model.K, (n, h, w), generator=generator)
    masks = (torch.nn.functional.one_hot(labels, cfg.model.K).permute(0, 3, 1, 2)[:, :, None] * 255).float()
    return {"imgs": imgs, "masks": masks, "index": torch.arange(n)}


def bench_train(
    cfg: Config,
    name: str,
    *,
    batch_size: int,
    steps: int,
    warmup: int = 2,
    cpu: bool = False,
    seconds: Optional[float] = None,
    count: bool = True,
):
    """Seconds per training step (forward, backward, all-reduce, clipping, Adam, GECO) at a batch size.

    The first warm-up step's time is reported as `first_step_seconds` (with training.compile it includes
    compiling). `seconds` caps the time spent on timed steps (see `_time`); `count=False` skips the FLOP
    count and the matrix-product reference (always skipped with training.compile: the arithmetic is the
    same, and counting under torch's dispatch mode would compile again).
    """
    from emorl_cli.accelerator import make_accelerator
    from emorl_cli.training.memory import check_training_memory
    from emorl_cli.training.precision import check_supported
    from emorl_cli.training.step import StepRunner

    cfg = cfg.model_copy(deep=True)
    cfg.training.batch_size = batch_size
    accelerator = make_accelerator(cfg.training.mixed_precision, cpu=cpu)
    check_supported(cfg.training.mixed_precision, accelerator.device)
    check_training_memory(cfg, accelerator.device, batch_size)
    runner = StepRunner(cfg, accelerator)
    images = _test_images(cfg, batch_size)["imgs"].to(runner.device)
    step_at = max(cfg.geco.warm_start + 1, 0)  # GECO active, as for most of a run
    counter = iter(range(step_at, step_at + steps + warmup))
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
    warmup_times: list[float] = []
    cpu_times: list[float] = []
    step = lambda: runner(next(counter), images)  # noqa: E731
    times = _time(step, steps, warmup, runner.device, seconds, warmup_times, cpu_times)
    # peak memory is read here, before the FLOP count's extra step and the matrix product below
    extra: dict[str, Any] = {"refinement_iters": _train_iters(cfg), "timed_steps": len(times)}
    if runner.device.type == "cpu":  # CPU seconds of the process: on a shared machine, the work without the waits
        extra["cpu_seconds_per_step"] = float(np.median(cpu_times))
    if warmup_times:
        extra["first_step_seconds"] = warmup_times[0]
    if cfg.training.compile:
        extra["compile"] = True
    result = _result("train", cfg, name, batch_size, times, runner.device, extra)
    if not count or cfg.training.compile:
        return result
    flops = count_flops(lambda: runner(step_at, images))  # one more, untimed step
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.training.mixed_precision, torch.float32)
    result.extra.update(
        gflop_per_step=flops / 1e9,
        achieved_gflop_per_second=flops / 1e9 / result.seconds_per_step,
        matmul_gflop_per_second=matmul_speed(runner.device, dtype),
    )
    return result


def matmul_speed(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of a large square matrix product on this device and dtype: the ceiling a step bound by
    convolutions and matrix products can approach."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = _time(lambda: a @ b, repeats, 1, device)
    return 2 * size**3 / float(np.median(times)) / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of fn, as torch's FlopCounterMode counts them (matrix products
    and convolutions, forward and backward; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _train_iters(cfg: Config) -> Optional[int]:
    return cfg.training.refinement_iters_at(cfg.geco.warm_start + 1) if cfg.model.kind == "emorl" else None


def bench_eval(
    cfg: Config,
    name: str,
    *,
    batch_size: int,
    num_images: int = 320,
    refinement_iters: Optional[int] = None,
    one_at_a_time: bool = True,
    cpu: bool = False,
):
    """Seconds to evaluate `num_images` test images (FG-ARI, ARI, MSE, KL), batched and one at a time."""
    from emorl_cli.evaluate.runner import evaluate_ari
    from emorl_cli.model import Objective, build_model
    from emorl_cli.training.memory import check_inference_memory

    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    batch_size = min(batch_size, num_images)  # a batch never holds more than the images evaluated
    check_inference_memory(cfg, batch_size, device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    objective = Objective.geco({"beta": 0.55, "C_ema": 0.0}) if cfg.geco.enabled else Objective.elbo()
    iters = refinement_iters if refinement_iters is not None else cfg.test_refinement_iters()
    data = _test_images(cfg, num_images)

    def run(bs: int) -> float:
        batches = ({k: v[i : i + bs] for k, v in data.items()} for i in range(0, num_images, bs))
        start = time.perf_counter()
        evaluate_ari(model, objective, batches, refinement_iters=iters)
        return time.perf_counter() - start

    run(batch_size)  # warm-up
    batched = run(batch_size)
    extra: dict[str, Any] = {"num_images": num_images, "refinement_iters": iters, "batched_seconds": batched}
    if one_at_a_time:
        single = run(1)
        extra.update(one_at_a_time_seconds=single, speedup=single / batched)
    return _result("eval", cfg, name, batch_size, [batched / (num_images / batch_size)], device, extra)


def bench_data(cfg: Config, name: str, *, batch_size: int, steps: int):
    """Images per second the training loader delivers from a synthetic file of the config's dataset."""
    if cfg.data.dataset not in ("tetrominoes", "multi_dsprites"):
        from emorl_cli.errors import EmorlError

        raise EmorlError(f"bench --mode data needs a dataset emorl can synthesise, got {cfg.data.dataset!r}")
    with tempfile.TemporaryDirectory() as folder:
        files = synth.synthesize(cfg.data.dataset, Path(folder), max(4 * batch_size, 2048), 0)
        path = next(f.path for f in files if f.split == "train")
        start = time.perf_counter()
        rate = measure_loader_throughput(path, "train", batch_size, steps, load_masks=False)
        seconds = time.perf_counter() - start
    per_step = batch_size / rate
    return _result("data", cfg, name, batch_size, [per_step], torch.device("cpu"), {"wall_seconds": seconds})


def _result(mode, cfg, name, batch_size, times, device, extra) -> BenchResult:
    median = float(np.median(times))
    q1, q3 = (float(v) for v in np.percentile(times, [25, 75]))
    peak, kind = _peak_memory(device)
    return BenchResult(
        mode=mode,
        config=name,
        batch_size=batch_size,
        seconds_per_step=median,
        spread=(q1, q3),
        images_per_second=batch_size / median,
        peak_memory_mb=peak,
        memory_kind=kind,
        device=_device_name(device),
        mixed_precision=cfg.training.mixed_precision,
        extra=extra,
        versions=_versions(),
    )
