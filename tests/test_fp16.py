"""fp16 training: loss scaling recovers gradients that underflow, a step with inf gradients is skipped, counted
and leaves Adam and GECO alone, the scale travels with the checkpoint, and `emorl train` refuses fp16 on a CPU.

The step-level tests run torch's fp16 autocast on the CPU with 8×8 images (its CPU float16 convolution
backward is ~100× slower than float32) and again on CUDA where a GPU is present.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, set_options, tiny_config

from emorl_cli.accelerator import make_accelerator
from emorl_cli.checkpoint import load_checkpoint, save_checkpoint
from emorl_cli.config import config_to_dict
from emorl_cli.training import precision as precision_module
from emorl_cli.training.precision import Precision, check_supported
from emorl_cli.training.step import StepRunner

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
SMALL_FP16 = [
    "data.image_size=8",
    "model.input_size=[3, 8, 8]",
    "training.refinement_curriculum=[[-1, 0]]",
    "geco.warm_start=0",
    "training.mixed_precision=fp16",
]


def fp16_runner(device: str, init_scale: float = 0.25) -> StepRunner:
    runner = StepRunner(tiny_config(*SMALL_FP16), make_accelerator("fp16", cpu=device == "cpu"))
    runner.precision.scaler = torch.amp.GradScaler(device, init_scale=init_scale)  # a scale that fits this model
    return runner


def images_on(device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1).to(device)


def snapshot(runner: StepRunner) -> dict[str, torch.Tensor]:
    state = {f"param.{n}": p.detach().clone() for n, p in runner.model.named_parameters()}
    for i, entry in enumerate(runner.optimizer.state.values()):
        state.update({f"adam.{i}.{k}": v.detach().clone() for k, v in entry.items()})
    state.update({f"geco.{k}": v for k, v in runner.geco.state_dict().items()})
    return state


@pytest.mark.parametrize("device", DEVICES)
def test_loss_scaling_recovers_gradients_that_underflow_in_fp16(device):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
    x = torch.randn(64, 16, device=device)

    def loss(fp16: bool) -> torch.Tensor:
        with torch.autocast(device, dtype=torch.float16, enabled=fp16):
            return 2.0**-24 * net(x).float().pow(2).sum()  # gradients near float16's smallest normal

    reference = torch.autograd.grad(loss(False), list(net.parameters()))  # float32: the oracle
    unscaled = torch.autograd.grad(loss(True), list(net.parameters()))
    precision = Precision("fp16", device)
    optimizer = precision.make_optimizer(net.parameters(), lr=1e-3)
    precision.backward(loss(True))
    precision.unscale_(optimizer)
    first_weight = 0
    assert (unscaled[first_weight] == 0).float().mean() > 0.5  # without scaling most of them vanish
    for ref, plain, param in zip(reference, unscaled, net.parameters(), strict=True):
        assert ((param.grad - ref).norm() / ref.norm()) < 0.01
        assert ((param.grad - ref).norm() / ref.norm()) < ((plain - ref).norm() / ref.norm())


@pytest.mark.parametrize("device", DEVICES)
def test_a_step_with_inf_gradients_is_skipped_counted_and_leaves_adam_and_geco_alone(device):
    runner, images = fp16_runner(device), images_on(device)
    for step in (0, 1):  # the warm start initialises GECO's EMA, step 1 moves beta
        runner.read(runner(step, images))
    before = snapshot(runner)

    runner.precision.scaler.update(new_scale=2.0**100)  # the scaled backward overflows float16
    skipped = runner.read(runner(2, images))
    assert skipped["skipped_steps"] == 1 and skipped["loss_scale"] == 2.0**99  # counted, scale halved
    after = snapshot(runner)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name

    runner.precision.scaler.update(new_scale=0.25)
    applied = runner.read(runner(3, images))
    assert applied["skipped_steps"] == 1
    moved = snapshot(runner)
    assert moved["geco.beta"] > before["geco.beta"]  # the constraint is violated: beta grows after a step
    assert any(not torch.equal(moved[n], before[n]) for n in before if n.startswith("param."))


def test_an_fp16_run_resumed_from_a_checkpoint_continues_exactly(tmp_path):
    images = images_on("cpu")
    straight = fp16_runner("cpu")
    for step in range(4):
        last = straight(step, images)
    interrupted = fp16_runner("cpu")
    for step in range(2):
        interrupted(step, images)
    state = interrupted.state_dict()
    path = save_checkpoint(tmp_path / "step_2.pt", config=config_to_dict(interrupted.cfg), step=2, **state)
    resumed = fp16_runner("cpu", init_scale=2.0**16)  # a fresh scaler: the checkpoint must restore its scale
    resumed.load_state_dict(load_checkpoint(path))
    assert resumed.precision.scaler.get_scale() == 0.25
    for step in (2, 3):
        resumed_last = resumed(step, images)
    assert resumed.read(resumed_last) == straight.read(last)
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert snapshot(straight).keys() == snapshot(resumed).keys()
    for name, value in snapshot(straight).items():
        assert torch.equal(snapshot(resumed)[name], value), name


def test_emorl_train_refuses_fp16_on_a_cpu(cli, tmp_path):
    result = cli("train", "demo", "--data-dir", tmp_path, "--out", tmp_path / "run", "--cpu",
                 *set_options(*TINY, "training.mixed_precision=fp16"))  # fmt: skip
    assert result.exit_code == 1
    assert "fp16 is for GPUs" in result.output and "bf16" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_that_only_emulates_it_is_noted(monkeypatch, caplog, native):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="emorl"):
        check_supported("bf16", torch.device("cpu"))
        check_supported("no", torch.device("cpu"))
    notes = [r.getMessage() for r in caplog.records if "bf16 is emulated" in r.getMessage()]
    assert len(notes) == (0 if native else 1)
    if notes:
        assert "training.mixed_precision=no" in notes[0]


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert precision_module.cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not precision_module.cpu_has_native_bf16(info)
    assert not precision_module.cpu_has_native_bf16(tmp_path / "missing")


@pytest.mark.cuda
def test_fp16_training_on_a_gpu_logs_skipped_steps_and_stays_finite(tmp_path):
    from emorl_cli.data.synth import synthesize
    from emorl_cli.training.loop import train

    synthesize("tetrominoes", tmp_path / "data", 64, 8, seed=3)
    result = train(
        tiny_config("training.iters=24", "training.mixed_precision=fp16"),
        tmp_path / "run",
        data_dir=tmp_path / "data",
        show_progress=False,
    )
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"skipped_steps", "loss_scale"} <= set(line) for line in lines)
    assert lines[-1]["skipped_steps"] < 24  # the scale settles and steps are applied
    saved = load_checkpoint(result.last_checkpoint)
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert saved["extra"]["loss_scaling"]["skipped_steps"] == lines[-1]["skipped_steps"]
