"""`emorl bench`: the figures it prints are measured, consistent with each other, and the FLOP count is right."""

import json
import os

import pytest
import torch
from helpers import TINY, set_options

from emorl_cli.bench import count_flops


def test_flop_count_of_a_convolution_matches_the_formula():
    conv = torch.nn.Conv2d(8, 16, 5, padding=1)
    x = torch.randn(3, 8, 12, 12, requires_grad=True)
    forward = 2 * 3 * 16 * 10 * 10 * 8 * 5 * 5  # 2 · N · C_out · H_out · W_out · C_in · k²

    assert count_flops(lambda: conv(x)) == forward
    # backward: the input gradient and the weight gradient cost one forward each
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_train_bench_json(cli):
    result = cli("bench", "demo", "--mode", "train", "--batch-size", "2", "--steps", "2", "--json", *set_options(*TINY))
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["mode"] == "train" and figures["batch_size"] == 2
    seconds = figures["seconds_per_step"]
    assert seconds > 0
    assert figures["images_per_second"] == pytest.approx(2 / seconds)
    q1, q3 = figures["spread"]
    assert q1 <= seconds <= q3
    assert figures["peak_memory_mb"] > 50  # the interpreter and torch alone take more
    extra = figures["extra"]
    assert extra["gflop_per_step"] > 0
    assert extra["achieved_gflop_per_second"] == pytest.approx(extra["gflop_per_step"] / seconds)
    assert extra["matmul_gflop_per_second"] > 0
    # the process's CPU seconds per timed step: some work, at most every core busy for the whole step
    assert 0 < extra["cpu_seconds_per_step"] <= 1.1 * seconds * (os.cpu_count() or 1) + 0.05
    assert figures["mixed_precision"] == "no"
    assert set(figures["versions"]) == {"emorl", "torch", "python"}


def test_eval_bench_times_batched_and_one_at_a_time(cli):
    result = cli(
        "bench", "demo", "--mode", "eval", "--batch-size", "4", "--num-images", "8", "--json",
        *set_options(*TINY, "eval.refinement_iters=1"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    extra = json.loads(result.output)["extra"]
    assert extra["num_images"] == 8 and extra["refinement_iters"] == 1
    assert extra["speedup"] == pytest.approx(extra["one_at_a_time_seconds"] / extra["batched_seconds"])


def test_data_bench_table(cli):
    result = cli("bench", "demo", "--mode", "data", "--batch-size", "8", "--steps", "1")
    assert result.exit_code == 0, result.output
    assert "images per second" in result.output


def test_unknown_mode_is_refused(cli):
    result = cli("bench", "demo", "--mode", "fly")
    assert result.exit_code == 1
    assert "train, eval or data" in result.output
