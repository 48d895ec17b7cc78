"""Two CPU processes over gloo train exactly what one process trains with the same global batch.

Started with torchrun (with this accelerate version `accelerate launch --cpu --num_processes 2` starts only
one process); the Accelerator is forced to the CPU by `emorl train --cpu`, giving MULTI_CPU over gloo.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, free_port, set_options, subprocess_env, tiny_config, two_process_command

from emorl_cli.checkpoint import load_checkpoint
from emorl_cli.data.synth import synthesize
from emorl_cli.training.loop import train

STEPS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    synthesize("tetrominoes", root / "data", 64, 8, seed=5)
    overrides = TINY + [f"training.iters={STEPS}"]
    command = two_process_command(
        "train", "demo", "--cpu", "--record-ranks", "--data-dir", str(root / "data"), "--out", str(root / "two"),
    ) + set_options(*overrides)  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one = train(
        tiny_config(f"training.iters={STEPS}"),
        root / "one",
        data_dir=root / "data",
        show_progress=False,
        record_ranks=True,
    )
    return root, one


def test_two_processes_equal_one_process(runs):
    root, one = runs
    single = load_checkpoint(one.last_checkpoint)
    double = load_checkpoint(root / "two" / "checkpoints" / f"step_{STEPS:07d}.pt")
    assert double["step"] == single["step"] == STEPS
    for name, tensor in single["model"].items():
        torch.testing.assert_close(double["model"][name], tensor, rtol=0, atol=1e-5, msg=name)


def _samples(path: Path) -> dict[int, list[int]]:
    rows = (line.split() for line in path.read_text().splitlines())
    return {int(step): [int(i) for i in rest] for step, *rest in rows}


def test_processes_read_disjoint_samples_covering_the_global_batch(runs):
    root, _ = runs
    rank0, rank1 = (_samples(root / "two" / f"samples_rank{r}.txt") for r in (0, 1))
    single = _samples(root / "one" / "samples_rank0.txt")
    assert sorted(rank0) == sorted(rank1) == list(range(STEPS))
    for step in range(STEPS):
        assert len(rank0[step]) == len(rank1[step]) == 1
        assert set(rank0[step]).isdisjoint(rank1[step])
        assert rank0[step] + rank1[step] == single[step]


def test_geco_state_is_identical_on_both_ranks_and_equals_one_process(runs):
    root, _ = runs
    states = [json.loads((root / "two" / f"geco_rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((root / "one" / "geco_rank0.json").read_text())
    assert states[0] == states[1]
    assert states[0] == pytest.approx(single, rel=1e-5)
    assert states[0]["C_ema"] != 0.0  # the warm start happened and the EMA moved


@pytest.mark.parametrize("entry", ["module", "console_script", "no_python"])
def test_accelerate_launch_runs_train(tmp_path, runs, entry):
    """`-m emorl_cli`, `$(which emorl)` and `--no_python emorl` (what the README shows first) all work."""
    root, _ = runs
    script = str(Path(sys.executable).parent / "emorl")
    target = {"module": ["-m", "emorl_cli"], "console_script": [script], "no_python": ["--no_python", script]}[entry]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *target,
        "train",
        "demo",
        "--data-dir",
        str(root / "data"),
        "--out",
        str(tmp_path / "r"),
    ] + set_options(*TINY, "training.iters=1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "r" / "checkpoints" / "step_0000001.pt").exists()
