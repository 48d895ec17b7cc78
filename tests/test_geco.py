"""GECO as the original's lib/geco.py + train.py use it."""

from __future__ import annotations

import pytest
import torch

from emorl_cli.config import load_config
from emorl_cli.errors import CheckpointError
from emorl_cli.geco import GECO, training_objective
from emorl_cli.model import Objective


def make(**kw) -> GECO:
    args = dict(ema_alpha=0.99, beta_step_size=1e-3, step_size_acceleration=1.0, warm_start=5)
    args.update(kw)
    return GECO(-100.0, **args)


def test_initial_state_and_nothing_before_warm_start():
    geco = make()
    for step in range(5):
        geco.update(step, -50.0)
    assert float(geco.C_ema) == 0.0 and float(geco.beta) == pytest.approx(0.55)
    assert geco.C_ema.dtype == geco.beta.dtype == torch.float32


def test_ema_initialised_at_warm_start_then_updated():
    geco = make()
    geco.update(5, -80.0)  # C − NLL = −100 + 80
    assert float(geco.C_ema) == pytest.approx(-20.0)
    assert float(geco.beta) == pytest.approx(0.55)  # beta does not move at the warm-start step
    geco.update(6, -90.0)
    expected_ema = 0.99 * -20.0 + 0.01 * -10.0
    assert float(geco.C_ema) == pytest.approx(expected_ema, rel=1e-6)
    assert float(geco.beta) == pytest.approx(0.55 - 1e-3 * expected_ema, rel=1e-6)


def test_float32_arithmetic_matches_the_original_sequence():
    """The original keeps C_ema and beta as float32 parameters; replay its formulas step by step."""
    geco = make(beta_step_size=1e-6)
    c_ema, beta = torch.tensor(0.0), torch.tensor(0.55)
    nlls = torch.linspace(-50.0, -150.0, 40)
    for step, nll in enumerate(nlls):
        geco.update(step, nll)
        if step == 5:
            c_ema = -100.0 - nll
        elif step > 5:
            c_ema = (c_ema * 0.99) + ((-100.0 - nll) * (1.0 - 0.99))
            beta = torch.max(torch.tensor(0.55), beta - 1e-6 * c_ema)
    assert torch.equal(geco.C_ema, c_ema.float()) and torch.equal(geco.beta, beta.float())


def test_beta_grows_while_constraint_violated_and_has_a_floor():
    geco = make()
    geco.update(5, 0.0)  # NLL far above the target: C − NLL = −100
    for step in range(6, 50):
        geco.update(step, 0.0)
    assert float(geco.beta) > 0.55
    for step in range(50, 400):
        geco.update(step, -1000.0)  # constraint met: beta falls back to the floor
    assert float(geco.beta) == pytest.approx(0.55)


def test_step_size_acceleration_only_when_constraint_met():
    slow, fast = make(), make(step_size_acceleration=10.0)
    for geco in (slow, fast):
        geco.beta = torch.tensor(5.0)
        geco.update(5, -200.0)  # C − NLL = +100 > 0
        geco.update(6, -200.0)
    assert 5.0 - float(fast.beta) == pytest.approx(10 * (5.0 - float(slow.beta)), rel=1e-4)
    slow, fast = make(), make(step_size_acceleration=10.0)
    for geco in (slow, fast):
        geco.update(5, 0.0)  # violated: no acceleration
        geco.update(6, 0.0)
    assert float(fast.beta) == float(slow.beta)


def test_identical_across_processes():
    a, b = make(), make()
    for step in range(30):
        nll = torch.tensor(-90.0 - step * 0.37)
        a.update(step, nll)
        b.update(step, float(nll))
    assert torch.equal(a.C_ema, b.C_ema) and torch.equal(a.beta, b.beta)


def test_state_dict_round_trip_and_errors():
    geco = make()
    geco.update(5, -70.0)
    geco.update(6, -75.0)
    other = make()
    other.load_state_dict(geco.state_dict())
    assert torch.equal(other.C_ema, geco.C_ema) and torch.equal(other.beta, geco.beta)
    with pytest.raises(CheckpointError, match="missing"):
        other.load_state_dict({"beta": torch.tensor(1.0)})


def test_from_config_scales_target_and_gives_objective():
    cfg = load_config("tetrominoes")
    geco = GECO.from_config(cfg)
    assert geco.target == pytest.approx(cfg.geco.target * 3 * 35 * 35)
    assert geco.warm_start == cfg.geco.warm_start
    assert geco.objective(cfg.geco.warm_start - 1).kind == "elbo"
    objective = geco.objective(cfg.geco.warm_start)
    assert objective.kind == "geco" and objective.geco_beta == pytest.approx(0.55)
    assert objective.nll_weight == pytest.approx(geco.nll_weight)
    assert Objective.geco(geco.state_dict()).geco_c_ema == float(geco.C_ema)


def test_training_step_rule():
    class State:
        warm_start, beta, C_ema = 10, torch.tensor(2.0), torch.tensor(5.0)

    assert training_objective(9, State()).kind == "elbo"
    assert training_objective(10, State()).kind == "geco"
    assert training_objective(10, State(), kl_beta=0).kind == "elbo"
    assert training_objective(10, None).kind == "elbo"
    geco = training_objective(11, State(), kl_beta=2.0)
    assert (geco.geco_beta, geco.geco_c_ema, geco.kl_beta) == (2.0, 5.0, 2.0)
    batch_mean = training_objective(0, None, refinement_grad="batch_mean", global_batch_size=8)
    assert (batch_mean.kind, batch_mean.refinement_grad, batch_mean.global_batch_size) == ("elbo", "batch_mean", 8)
