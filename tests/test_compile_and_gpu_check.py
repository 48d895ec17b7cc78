"""`training.compile` and `emorl bench --suite gpu`.

On the CPU the compile tests use torch.compile's "aot_eager" backend (the same graph capture and autograd
split as the default "inductor", without its minutes of code generation on two cores); the CUDA test uses
inductor. The GPU suite runs here as a dry run and in miniature (tiny model, one step per item).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, set_options, tiny_config

from emorl_cli import gpu_check
from emorl_cli.accelerator import make_accelerator
from emorl_cli.checkpoint import load_checkpoint
from emorl_cli.data.synth import synthesize
from emorl_cli.model import build_model
from emorl_cli.training import compile as compile_module
from emorl_cli.training.step import StepRunner


@pytest.fixture
def quick_compiler(monkeypatch):
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_networks_train_like_eager_ones_and_keep_their_names(quick_compiler):
    images = torch.rand(2, 3, 35, 35) * 2 - 1
    weights = []
    for compiled in (False, True):
        runner = StepRunner(tiny_config(f"training.compile={compiled}"), make_accelerator("no", cpu=True))
        for step in range(3):  # ELBO, GECO warm start, GECO; refinement I = 1
            runner(step, images)
        weights.append(runner.model.state_dict())
    eager, compiled_weights = weights
    assert list(compiled_weights) == list(eager)  # no `_orig_mod.` prefixes: checkpoints are unchanged
    for name, value in eager.items():
        torch.testing.assert_close(compiled_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    model = build_model(tiny_config().model)
    assert set(compile_module.compile_networks(model)) == {
        "hvae_networks.encoder_pt_1",
        "hvae_networks.encoder_pt_2",
        "hvae_networks.image_decoder",
        "refinenet",
    }


def test_a_failing_compiler_is_one_line_naming_the_setting(cli, tmp_path, monkeypatch):
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compile_module, "BACKEND", broken)
    torch._dynamo.reset()
    synthesize("tetrominoes", tmp_path / "data", 16, 4, seed=1)
    args = ["train", "demo", "--data-dir", tmp_path / "data", "--out", tmp_path / "run"]
    result = cli(*args, *set_options(*TINY, "training.iters=1", "training.compile=true"))
    torch._dynamo.reset()
    assert result.exit_code == 1
    assert "training.compile=true: torch.compile failed" in result.output
    assert "no C++ compiler found" in result.output and "training.compile=false" in result.output
    assert "Traceback" not in result.output


@pytest.mark.cuda
def test_inductor_compiles_the_networks_on_a_gpu(tmp_path):
    from emorl_cli.training.loop import train

    torch._dynamo.reset()
    synthesize("tetrominoes", tmp_path / "data", 32, 4, seed=1)
    result = train(
        tiny_config("training.iters=3", "training.compile=true", "training.mixed_precision=bf16"),
        tmp_path / "run",
        data_dir=tmp_path / "data",
        show_progress=False,
    )
    assert all(torch.isfinite(t).all() for t in load_checkpoint(result.last_checkpoint)["model"].values())


# ------------------------------------------------------------------------------------------------ GPU suite


def test_gpu_suite_dry_run_prints_the_plan_and_writes_it(cli, tmp_path):
    out = tmp_path / "plan.json"
    result = cli("bench", "--suite", "gpu", "--dry-run", "--out", out)
    assert result.exit_code == 0, result.output
    assert "nothing measured" in result.output and "total" in result.output
    plan = json.loads(out.read_text())
    names = [item["name"] for item in plan["items"]]
    for config in ("tetrominoes", "clevr6"):
        for precision in ("fp32", "bf16", "fp16", "bf16+compile"):
            assert f"train {config} {precision}" in names
            assert f"train {config} {precision}" in result.output
        assert f"eval {config}" in names
    for config in ("multi_dsprites", "clevrtex"):  # the paper's larger images: training steps
        for precision in ("fp32", "bf16"):
            assert f"train {config} {precision}" in names and f"train {config} {precision}" in result.output
    assert "training run" in names and "host waits per step" in names
    assert plan["dry_run"] is True and all(item["status"] == "planned" for item in plan["items"])
    assert plan["planned_seconds"] == pytest.approx(
        gpu_check.STARTUP_SECONDS + sum(item["planned_seconds"] for item in plan["items"])
    )
    assert plan["planned_seconds"] < 8 * 60
    run = next(item for item in plan["items"] if item["name"] == "training run")
    assert run["planned_seconds"] >= 180


def test_gpu_suite_runs_in_miniature_and_keeps_going_past_a_failure(quick_compiler, tmp_path):
    out = tmp_path / "suite.json"
    items = gpu_check.plan(configs=("tetrominoes",), large_configs=())
    seen = []
    report = gpu_check.run_suite(items, out=out, smoke=True, on_item=lambda i, item: seen.append((i, item.status)))
    status = {item.name: item.status for item in report.items}
    cuda = torch.cuda.is_available()
    assert status["train tetrominoes fp32"] == status["train tetrominoes bf16"] == "done"
    assert status["train tetrominoes fp16"] == ("done" if cuda else "failed")  # refused on a CPU ...
    assert status["train tetrominoes bf16+compile"] == status["eval tetrominoes"] == status["training run"] == "done"
    assert status["host waits per step"] == ("done" if cuda else "skipped")
    by_name = {item.name: item for item in report.items}
    if not cuda:
        assert "fp16 is for GPUs" in by_name["train tetrominoes fp16"].error  # ... and the suite went on
    train_fp32 = by_name["train tetrominoes fp32"].result
    assert train_fp32["images_per_second"] == pytest.approx(2 / train_fp32["seconds_per_step"])
    assert by_name["train tetrominoes bf16+compile"].result["extra"]["compile"] is True
    run = by_name["training run"].result
    assert run["steps"] >= 1 and -1.0 <= run["fg_ari"]["mean"] <= 1.0
    written = json.loads(out.read_text())
    assert written["dry_run"] is False and [i["status"] for i in written["items"]] == list(status.values())
    assert {row["item"] for row in written["summary"]["train"]} >= {"train tetrominoes fp32", "train tetrominoes bf16"}
    assert [s for _, s in seen].count("planned") == len(items)  # announced before each item


def test_bench_suite_options_are_checked(cli):
    assert "--suite must be gpu" in cli("bench", "--suite", "tpu").output
    result = cli("bench", "demo", "--dry-run")
    assert result.exit_code == 1 and "--suite gpu" in result.output


def test_compile_items_run_in_a_child_process_bounded_by_the_time_left():
    overrides = [*TINY, "training.compile=false"]
    figures = gpu_check.bench_in_subprocess("demo", overrides, batch_size=2, steps=2, timeout=120)
    assert figures["mode"] == "train" and figures["batch_size"] == 2 and figures["extra"]["timed_steps"] == 2
    with pytest.raises(gpu_check.EmorlError, match="did not finish in 1 s; measure it alone: emorl bench demo"):
        gpu_check.bench_in_subprocess("demo", overrides, batch_size=2, steps=2, timeout=1)
