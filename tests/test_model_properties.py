"""Properties of the models that the golden data cannot show: shapes for every configuration, any batch
size, no_grad inference, channels-last inputs, slot symmetry, batch independence, the loss weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from emorl_cli.config import ModelConfig
from emorl_cli.errors import DataError
from emorl_cli.model import EfficientMORL, Objective, SlotAttention, build_model
from emorl_cli.model.decoder import SpatialBroadcastDecoder
from emorl_cli.model.distributions import DiagonalGaussian

SMALL = dict(K=3, z_size=8, input_size=(3, 12, 12), log_scale=-1.2, image_decoder="small")


def small_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SMALL, **overrides}))


def images(b: int = 2, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Recorder:
    """Noise function that records its draws, or replays them permuted along the slots."""

    def __init__(self, k: int, seed: int = 0, replay=None, perm=None):
        self.generator = torch.Generator().manual_seed(seed)
        self.k, self.draws, self.replay, self.perm = k, [], list(replay or []), perm

    def __call__(self, shape):
        if self.replay:
            eps = self.replay.pop(0)
            if self.perm is not None:
                n, d = eps.shape
                eps = eps.view(n // self.k, self.k, d)[:, self.perm].reshape(n, d)
            return eps
        eps = torch.randn(tuple(shape), generator=self.generator)
        self.draws.append(eps)
        return eps


def fixed_noise(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(tuple(shape), generator=generator)


# ---------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "overrides,iters",
    [
        ({}, 2),
        ({"stochastic_layers": 0}, 2),
        ({"stochastic_layers": 1}, 0),
        ({"image_likelihood": "gmm", "use_dual_gru": False}, 1),
        ({"bottom_up_prior": True, "reverse_prior_plusplus": False}, 1),
        ({"image_decoder": "iodine"}, 1),
    ],
)
def test_emorl_output_shapes_and_trace(overrides, iters):
    model = small_model(**overrides)
    cfg = model.cfg
    k, d = cfg.K, cfg.z_size
    for b in (1, 3):
        out = model(images(b), Objective.elbo(), refinement_iters=iters, record=True)
        assert out.loss.shape == () and torch.isfinite(out.loss)
        assert out.nll.shape == out.kl.shape == out.mse.shape == out.loss_per_image.shape == (b,)
        assert out.means.shape == (b, k, 3, 12, 12) and out.masks.shape == (b, k, 1, 12, 12)
        assert torch.allclose(out.masks.sum(1), torch.ones(b, 1, 12, 12), atol=1e-5)
        assert out.reconstruction.shape == (b, 3, 12, 12)
        assert out.posterior_loc.shape == out.posterior_scale.shape == out.samples.shape == (b, k, d)
        assert out.deltas.shape == (iters,)
        layers = cfg.stochastic_layers
        assert len(out.trace) == max(layers, 1) + iters
        assert [r.kind for r in out.trace[max(layers, 1) :]] == ["refinement"] * iters
        for record in out.trace:
            assert record.means.shape == (b, k, 3, 12, 12) and record.masks.shape == (b, k, 1, 12, 12)
            has_attention = record.kind == "layer"
            assert (record.attention is not None) == has_attention
            if has_attention:
                assert record.attention.shape == (b, k, 1, 12, 12)
        assert torch.equal(out.trace[-1].means, out.means.detach())
        out.loss.backward()


def test_big_decoder_shape():
    model = small_model(input_size=(3, 96, 96), image_decoder="big", K=2)
    with torch.no_grad():
        out = model(images(1, 96), refinement_iters=1)
    assert out.means.shape == (1, 2, 3, 96, 96)


def test_slot_attention_outputs():
    model = small_model(kind="slot_attention")
    assert isinstance(model, SlotAttention)
    x = images(3)
    out = model(x, record=True)
    assert out.nll is None and out.kl is None and out.posterior_scale is None
    assert out.posterior_loc.shape == (3, 3, 8) and len(out.trace) == 3
    assert all(r.attention.shape == (3, 3, 1, 12, 12) for r in out.trace)
    expected = (((x + 1) / 2 - out.reconstruction) ** 2).sum((1, 2, 3)).mean()
    assert torch.allclose(out.loss, expected)
    out.loss.backward()


def test_decode_any_number_of_latents():
    model = small_model()
    rgb, logits = model.decode(torch.randn(5, 8))
    assert rgb.shape == (5, 3, 12, 12) and logits.shape == (5, 12, 12)
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_wrong_image_size_is_a_data_error():
    with pytest.raises(DataError, match=r"model.input_size"):
        small_model()(images(2, 16))


def test_upsample_decoder_shapes_and_emorl_step():
    model = small_model(input_size=(3, 16, 16), image_decoder="upsample", K=2)
    decoder = model.hvae_networks.image_decoder
    assert tuple(decoder.grid.shape[:2]) == (4, 4)  # a quarter of each side
    x = images(2, 16)
    out = model(x, refinement_iters=1)
    assert out.means.shape == (2, 2, 3, 16, 16) and out.mask_logprobs.shape[-2:] == (16, 16)
    out.loss.backward()
    assert all(p.grad is not None for p in decoder.parameters())


@pytest.mark.parametrize(("kind", "size"), [("small", 12), ("iodine", 12), ("big", 96), ("upsample", 16)])
def test_hidden_elements_is_the_largest_activation_a_decode_makes(kind, size):
    decoder = SpatialBroadcastDecoder(kind, 6, size, size, channels=8)
    seen: list[int] = []
    for layer in decoder.decode[:-1]:  # the hidden layers; the last one writes the 4 output channels
        layer.register_forward_hook(lambda module, args, output: seen.append(output[0].numel()))
    decoder.use_broadcast_conv = False  # run the first layer as a plain convolution so its hook sees it
    with torch.no_grad():
        decoder(torch.randn(1, 6))
    assert decoder.hidden_elements() == max(seen)


def test_the_decoder_position_octaves_are_sines_and_cosines_of_the_ramps():
    """Oracle: numpy's sin and cos of 2^k·π·u for the row ramp u = i/(H−1) and the column ramp j/(W−1); F = 0 is
    the paper's four ramps, and the paper's decoder keeps its 4-input position projection."""
    from emorl_cli.model.position import fourier_position_grid, position_grid

    assert torch.equal(fourier_position_grid(5, 7, 0), position_grid(5, 7))
    grid = fourier_position_grid(5, 7, 3).numpy()  # [5, 7, 4 + 12]
    rows, cols = np.meshgrid(np.arange(5) / 4, np.arange(7) / 6, indexing="ij")  # [5, 7] each
    angles = [np.pi * 2.0**k * u for u in (rows, cols) for k in range(3)]
    expected = np.stack([*map(np.sin, angles), *map(np.cos, angles)], axis=-1)  # [5, 7, 12]
    np.testing.assert_allclose(grid[..., :4], position_grid(5, 7).numpy())
    np.testing.assert_allclose(grid[..., 4:], expected, atol=1e-6)
    assert SpatialBroadcastDecoder("iodine", 6, 12, 12).pos_embed_projection.in_features == 4
    assert SpatialBroadcastDecoder("iodine", 6, 12, 12, position_frequencies=3).pos_embed_projection.in_features == 16


def test_upsample_decoder_needs_sides_divisible_by_four():
    with pytest.raises(ValueError, match=r"'upsample' needs image sides divisible by 4.*\[3, 18, 18\]"):
        ModelConfig(**{**SMALL, "input_size": (3, 18, 18), "image_decoder": "upsample"})


@pytest.mark.parametrize(
    ("kind", "size", "frequencies"), [("small", 12, 0), ("iodine", 12, 0), ("upsample", 16, 0), ("iodine", 12, 3)]
)
def test_broadcast_first_conv_matches_tiling(kind, size, frequencies):
    torch.manual_seed(1)
    decoder = SpatialBroadcastDecoder(kind, 6, size, size, position_frequencies=frequencies)
    for p in decoder.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    z = torch.randn(4, 6, requires_grad=True)
    fast = decoder(z)
    grads_fast = torch.autograd.grad(fast[0].sum() + fast[1].pow(2).sum(), [z, *decoder.parameters()])
    decoder.use_broadcast_conv = False
    slow = decoder(z)
    grads_slow = torch.autograd.grad(slow[0].sum() + slow[1].pow(2).sum(), [z, *decoder.parameters()])
    for a, b in zip(fast + grads_fast, slow + grads_slow, strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


# ---------------------------------------------------------------------------------------- semantics


def test_loss_weights_at_zero_refinement_steps():
    """I = 0: the only stage has weight (0+3−0)/(0+1) = 3."""
    model = small_model()
    out = model(images(2), Objective.elbo(kl_beta=0.5), refinement_iters=0)
    assert torch.allclose(out.loss_per_image, 3 * (out.nll + 0.5 * out.kl))
    assert torch.allclose(out.loss, out.loss_per_image.mean())


def test_geco_objective_value_and_gradient():
    nll = torch.tensor([10.0, 20.0], requires_grad=True)
    kl = torch.tensor([1.0, 3.0], requires_grad=True)
    objective = Objective.geco(1.3, c_ema=-7.0, kl_beta=0.5)
    weight = torch.nn.functional.softplus(torch.tensor(1.3)).item()
    per_image = objective.per_image(nll, kl)
    assert torch.allclose(per_image, 0.5 * kl - weight * -7.0)
    per_image.mean().backward()
    assert torch.allclose(nll.grad, torch.full((2,), weight / 2))
    assert torch.allclose(kl.grad, torch.full((2,), 0.25))


def test_no_grad_inference_matches_grad_mode_and_is_detached():
    model = small_model().eval()
    x = images(2)
    with torch.no_grad():
        inferred = model(x, refinement_iters=2, noise=fixed_noise(3), record=True)
    trained = model(x, refinement_iters=2, noise=fixed_noise(3))
    assert not inferred.loss.requires_grad and not inferred.means.requires_grad
    assert all(not r.means.requires_grad for r in inferred.trace)
    for name in ("loss", "nll", "kl", "means", "masks", "posterior_loc", "deltas"):
        assert torch.allclose(getattr(inferred, name), getattr(trained, name).detach(), rtol=1e-5, atol=1e-5), name


def test_frozen_parameters_still_refine():
    model = small_model()
    model.requires_grad_(False)
    out = model(images(1), refinement_iters=2)
    assert out.deltas.shape == (2,) and torch.all(out.deltas > 0)


def test_plain_gru_update_follows_the_gru_equations():
    """use_dual_gru false (the original's use_DualGRU False, the demo's setting): the attention update [B, K, D] is
    projected to 2D and fed to one GRU whose hidden state is λ = [μ, s]; checked against the GRU equations
    written out, with the original's parameter names."""
    model = small_model(use_dual_gru=False)
    net = model.hvae_networks
    names = {n for n, _ in net.named_parameters()}
    assert {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0"} <= names
    assert {"project_update.weight", "project_update.bias"} <= names
    b, k, d = 2, SMALL["K"], SMALL["z_size"]
    generator = torch.Generator().manual_seed(3)
    updates = torch.randn(b, k, d, generator=generator)  # [B, K, D]
    lamda = torch.randn(b * k, 2 * d, generator=generator)  # [N, 2D]
    with torch.no_grad():
        got = net._recurrent_update(updates, lamda)  # [N, 2D]
        x = net.project_update(updates).reshape(b * k, 2 * d)  # [N, 2D]
        gi = x @ net.gru.weight_ih_l0.T + net.gru.bias_ih_l0  # [N, 6D]: reset, update, new
        gh = lamda @ net.gru.weight_hh_l0.T + net.gru.bias_hh_l0
        (i_r, i_z, i_n), (h_r, h_z, h_n) = gi.chunk(3, dim=1), gh.chunk(3, dim=1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        want = (1 - z) * n + z * lamda
    assert got.shape == (b * k, 2 * d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_images_are_independent_of_the_batch():
    """With the per-image refinement gradient an image's results do not depend on its batch mates."""
    model = small_model()
    x = images(3)
    k, d = model.K, model.z_size
    alone_noise, batch_noise = Recorder(k, seed=5), None
    with torch.no_grad():
        alone = model(x[:1], refinement_iters=2, noise=alone_noise)
        # the same noise for image 0, fresh noise for the others
        draws = [torch.cat([eps, torch.randn(2 * k, d)]) for eps in alone_noise.draws]
        batch_noise = Recorder(k, replay=draws)
        together = model(x, refinement_iters=2, noise=batch_noise)
    for name in ("nll", "kl", "loss_per_image", "means", "posterior_loc"):
        assert torch.allclose(getattr(together, name)[:1], getattr(alone, name), rtol=1e-4, atol=1e-4), name


@pytest.mark.parametrize("kind", ["emorl", "slot_attention"])
def test_slot_permutation_permutes_outputs(kind):
    model = small_model(kind=kind)
    x = images(2)
    perm = torch.tensor([2, 0, 1])
    first = Recorder(model.K, seed=7)
    with torch.no_grad():
        base = model(x, refinement_iters=2, noise=first)
        permuted = model(x, refinement_iters=2, noise=Recorder(model.K, replay=first.draws, perm=perm))
    for name in ("means", "masks", "posterior_loc", "samples"):
        assert torch.allclose(getattr(permuted, name), getattr(base, name)[:, perm], rtol=1e-4, atol=1e-5), name
    for name in ("loss_per_image", "mse") + (("nll", "kl") if kind == "emorl" else ()):
        assert torch.allclose(getattr(permuted, name), getattr(base, name), rtol=1e-4, atol=1e-4), name


@pytest.mark.parametrize("kind", ["emorl", "slot_attention"])
def test_channels_last_input_gives_same_result_and_trains(kind):
    model = small_model(kind=kind)
    x = images(2)
    plain = model(x, refinement_iters=1, noise=fixed_noise(1))
    last = model(x.contiguous(memory_format=torch.channels_last), refinement_iters=1, noise=fixed_noise(1))
    assert torch.allclose(plain.loss, last.loss, rtol=1e-5)
    assert torch.allclose(plain.means, last.means, atol=1e-5)
    last.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_every_parameter_gets_a_gradient():
    model = small_model()
    model(images(2), refinement_iters=2).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_build_model_kinds():
    assert isinstance(small_model(), EfficientMORL)
    assert isinstance(small_model(kind="slot_attention"), SlotAttention)


@pytest.mark.parametrize("overrides", [{}, {"image_likelihood": "gmm", "stochastic_layers": 0}])
def test_decoder_gradient_reuse_gives_the_same_loss_and_gradients(overrides):
    model = small_model(**overrides)
    x = images(3)
    objective = Objective.geco(1.0, c_ema=5.0, kl_beta=0.7)
    results = []
    for reuse in (True, False):
        model.reuse_decoder_gradients = reuse
        model.zero_grad()
        out = model(x, objective, refinement_iters=3, noise=fixed_noise(1))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (fast, fast_grads), (plain, plain_grads) = results
    assert torch.allclose(fast.loss, plain.loss) and torch.allclose(fast.nll, plain.nll)
    assert fast_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert (fast_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-8, name


def test_decoder_gradient_reuse_under_bf16_autocast_matches_the_plain_backward():
    model = small_model()
    x = images(3)
    results = []
    for reuse in (True, False):
        model.reuse_decoder_gradients = reuse
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, Objective.elbo(), refinement_iters=2, noise=fixed_noise(1))
        out.loss.backward()
        results.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    fast, plain = results
    assert fast.keys() == plain.keys()
    decoder = [n for n in plain if "image_decoder" in n]
    assert decoder
    for name in decoder:  # bf16 rounds to ~3 significant digits; a wrong gradient is off by far more
        assert (fast[name] - plain[name]).abs().max() <= 0.05 * plain[name].abs().max() + 1e-6, name


def test_fp16_autocast_turns_gradient_reuse_off():
    from emorl_cli.model.emorl import reuse_is_safe

    assert reuse_is_safe("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert reuse_is_safe("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        assert not reuse_is_safe("cpu")


def test_refinement_gradient_scales():
    per_image = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert Objective.elbo().refinement_target(per_image) == 10.0
    assert Objective.elbo(refinement_grad="batch_mean").refinement_target(per_image) == 2.5
    global_mean = Objective.elbo(refinement_grad="batch_mean", global_batch_size=8)
    assert global_mean.refinement_target(per_image) == 1.25


@pytest.mark.parametrize("kind", ["emorl", "slot_attention"])
def test_init_gain_scales_the_xavier_layers_and_nothing_else(kind):
    paper = dict(small_model(kind=kind).named_parameters())
    wide = dict(small_model(kind=kind, init_gain=1.0).named_parameters())
    scaled = [n for n in paper if not torch.equal(paper[n], wide[n])]
    assert any("image_decoder.decode" in n for n in scaled)
    for name in scaled:  # same random draws, 50 times larger
        assert torch.allclose(wide[name], 50 * paper[name], rtol=1e-5, atol=1e-7), name
    unchanged = [n for n in paper if n not in scaled]
    assert any("gru" in n for n in unchanged) and any("pos_embed_projection" in n for n in unchanged)


def test_the_paper_init_hides_the_image_from_the_slots():
    """At gain 0.02 four tiny convolutions leave the keys (almost) independent of the image: the slow start
    `model.init_gain` exists for. At gain 1 the slots see it."""
    x = images(4)
    spread = {}
    for gain in (0.02, 1.0):
        model = small_model(init_gain=gain)
        with torch.no_grad():
            keys, _ = model.hvae_networks.encode(x)  # [B, H*W, D]
        spread[gain] = keys.std(dim=0).mean().item()  # over images, per pixel and channel
    assert spread[0.02] < 1e-8 < 1e-3 < spread[1.0]


# ---------------------------------------------------------------------------------------- demo-only options


@pytest.mark.parametrize("kind", ["emorl", "slot_attention"])
def test_encoder_and_decoder_widths_change_only_those_layers(kind):
    paper, narrow = small_model(kind=kind), small_model(kind=kind, encoder_width=16, decoder_width=8)
    shapes = {name: tuple(p.shape) for name, p in paper.named_parameters()}
    changed = {name for name, p in narrow.named_parameters() if tuple(p.shape) != shapes[name]}
    assert set(dict(narrow.named_parameters())) == set(shapes)  # same names: same checkpoint layout
    assert changed and all(
        "encoder" in n or "decode." in n or "to_k" in n or "to_v" in n or "pos_embed" in n for n in changed
    )
    encoder = narrow.hvae_networks if kind == "emorl" else narrow
    assert encoder.encoder_pt_1[0].out_channels == 16 and encoder.image_decoder.decode[0].out_channels == 8
    out = narrow(images(2), refinement_iters=1) if kind == "emorl" else narrow(images(2))
    assert out.means.shape == (2, 3, 3, 12, 12) and torch.isfinite(out.loss)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in paper.parameters())


def test_per_slot_initialisation_tells_the_slots_apart_before_any_noise():
    shared, per_slot = small_model(), small_model(slot_init="per_slot")
    assert shared.hvae_networks.init_posterior.shape == (1, 16)
    assert per_slot.hvae_networks.init_posterior.shape == (3, 16)
    zero = lambda shape: torch.zeros(tuple(shape))  # noqa: E731  (no noise: slots differ only by λ⁰)
    with torch.no_grad():
        same = shared(images(2), refinement_iters=0, noise=zero).posterior_loc  # [B, K, D]
        apart = per_slot(images(2), refinement_iters=0, noise=zero).posterior_loc
    assert torch.allclose(same[:, 0], same[:, 1]) and torch.allclose(same[:, 1], same[:, 2])
    assert (apart[:, 0] - apart[:, 1]).abs().max() > 1e-3 and (apart[:, 1] - apart[:, 2]).abs().max() > 1e-3
    # every image's slot k starts from row k, whatever the batch size
    with torch.no_grad():
        one = per_slot(images(1), refinement_iters=0, noise=zero).posterior_loc
    torch.testing.assert_close(one[0], apart[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="per_slot"):
        ModelConfig(**SMALL, kind="slot_attention", slot_init="per_slot")


@pytest.mark.parametrize("kind", ["emorl", "slot_attention"])
def test_attention_temperature_divides_the_logits(kind):
    # gain 1: at the paper's 0.02 the attention is exactly uniform at any temperature (see the test above)
    paper = small_model(kind=kind, init_gain=1.0)
    sharp = small_model(kind=kind, init_gain=1.0, attention_temperature=0.25)
    assert sharp.load_state_dict(paper.state_dict()) is not None  # same weights, only T differs
    net = (lambda m: m.hvae_networks) if kind == "emorl" else (lambda m: m)
    assert net(sharp).scale == pytest.approx(4 * net(paper).scale) == pytest.approx(4 * 8**-0.5)
    noise = Recorder(3, seed=1)
    with torch.no_grad():
        flat = paper(images(2), noise=noise, record=True).trace[0].attention
        peaked = sharp(images(2), noise=Recorder(3, replay=noise.draws), record=True).trace[0].attention
    entropy = lambda a: -(a * a.log()).sum(1).mean()  # noqa: E731  (over slots, per pixel)
    assert entropy(peaked) < entropy(flat)


def test_position_scale_shrinks_only_the_encoders_position_projection():
    paper, muted = small_model(init_gain=1.0), small_model(init_gain=1.0, position_scale=0.1)
    theirs, ours = paper.state_dict(), muted.state_dict()
    name = "hvae_networks.pos_embed_projection.weight"
    torch.testing.assert_close(ours[name], 0.1 * theirs[name], rtol=0, atol=0)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k != name)  # the same draws everywhere else
    # the pixels' position then moves the attention keys less, across an image with no content
    flat = torch.zeros(1, 3, 12, 12)
    with torch.no_grad():
        keys = [m.hvae_networks.encode(flat)[0][0] for m in (paper, muted)]  # [H*W, D] each
    assert keys[1].var(dim=0).sum() < 0.5 * keys[0].var(dim=0).sum()


@pytest.mark.parametrize("layer_noise", ["fresh", "shared"])
def test_layer_noise_decides_what_the_second_layer_queries_see(layer_noise):
    """Same z⁰, different later draws: 'fresh' (the paper) moves layer 2's attention with them; 'shared'
    reuses z⁰'s ε (z¹ = μ¹ + σ¹·ε⁰), so layer 2 does not depend on them."""
    model = small_model(init_gain=1.0, layer_noise=layer_noise)
    net = model.hvae_networks

    def draws_after_the_first(seed):
        calls = []

        def draw(shape):
            calls.append(shape)
            generator = torch.Generator().manual_seed(0 if len(calls) == 1 else seed)
            return torch.randn(tuple(shape), generator=generator)

        return draw

    keys, values = net.encode(images(2))
    with torch.no_grad():
        runs = [net.bottom_up(keys, values, draws_after_the_first(s)) for s in (1, 2)]
    first, second = (run.attention[1] for run in runs)  # layer 2's attention [B, K, H*W]
    assert torch.equal(runs[0].attention[0], runs[1].attention[0])  # layer 1: the same z⁰
    assert torch.equal(first, second) if layer_noise == "shared" else not torch.allclose(first, second)
    eps0 = draws_after_the_first(1)(runs[0].samples[0].shape)  # the first draw, again
    z1, q1 = runs[0].samples[0], runs[0].posteriors[0]
    shared = q1.loc + q1.std * eps0
    assert torch.allclose(z1, shared) if layer_noise == "shared" else not torch.allclose(z1, shared)


# ---------------------------------------------------------------------------------------- hierarchical KL


@pytest.mark.parametrize("bottom_up", [False, True])
def test_hierarchical_kl_wires_the_layers_as_the_original(bottom_up):
    """The stage-0 KL against torch.distributions, layer by layer, as the original's two_stage_inference
    wires it: reversed prior — the top layer against N(0, I), layer l against p(z^l | z^(l+1)); bottom-up
    prior — the first layer against N(0, I), layer l against p(z^l | z^(l-1)). With zero noise every
    conditioning sample is its posterior's mean."""
    model = small_model(bottom_up_prior=bottom_up, reverse_prior_plusplus=not bottom_up)
    batch, k, d, layers = 2, model.K, model.cfg.z_size, model.cfg.stochastic_layers
    generator = torch.Generator().manual_seed(3)
    locs = [torch.randn(batch * k, d, generator=generator) for _ in range(layers)]
    stds = [torch.rand(batch * k, d, generator=generator) + 0.2 for _ in range(layers)]
    posteriors = [DiagonalGaussian(loc, std) for loc, std in zip(locs, stds, strict=True)]
    zero_noise = lambda shape: torch.zeros(shape)  # noqa: E731

    with torch.no_grad():
        kl, refinement_prior = model._stage0_kl(posteriors, torch.zeros(batch, 1), zero_noise)
        expected = torch.zeros(batch)
        for layer in range(layers):
            neighbour = layer - 1 if bottom_up else layer + 1
            if neighbour in (-1, layers):
                prior = Normal(torch.zeros(batch * k, d), torch.ones(batch * k, d))
            else:
                conditional = model.hvae_networks.indep_prior(locs[neighbour])
                prior = Normal(conditional.loc, conditional.std)
            per_slot = kl_divergence(Normal(locs[layer], stds[layer]), prior).sum(-1)  # [B*K]
            expected += per_slot.view(batch, k).sum(1)
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
    if bottom_up:  # refinement steps are scored against N(0, I) without reversed prior++
        assert refinement_prior is None
    else:  # with reversed prior++ against p(z^1 | z^2), the last prior of the reversed pass
        torch.testing.assert_close(refinement_prior.loc, model.hvae_networks.indep_prior(locs[1]).loc)


@pytest.mark.parametrize(
    ("likelihood", "decoder_kind"), [("gaussian", "small"), ("gmm", "small"), ("gaussian", "upsample")]
)
def test_decoder_chunks_give_the_same_outputs_and_gradients_as_the_plain_backward(likelihood, decoder_kind):
    """The chunked in-forward decoder backward (one image per chunk) against one chunk and against the
    plain path (no shortcut): forward values and every parameter's gradient to float tolerance."""
    model = small_model(image_likelihood=likelihood, image_decoder=decoder_kind)
    decoder = model.hvae_networks.image_decoder
    calls: list[int] = []
    decoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    x = images(3)
    results = {}
    for label, reuse, chunk in [("chunks", True, 1), ("one chunk", True, None), ("plain", False, None)]:
        model.reuse_decoder_gradients, model.decoder_chunk_bytes = reuse, chunk
        model.zero_grad()
        calls.clear()
        out = model(x, Objective.elbo(), refinement_iters=2, noise=fixed_noise(1))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[label] = (out, grads, list(calls))
    chunks, one, plain = results["chunks"], results["one chunk"], results["plain"]
    assert chunks[2] == [model.K] * 9  # 3 stages × 3 images, one image's K slots per decode
    assert one[2] == [3 * model.K] * 3
    # Chunks add each image's weight gradient separately: float32 summation order moves the first decoder
    # layer's gradient (a sum with much cancellation) by up to ~6e-4 of its largest entry; a chunk lost or
    # counted twice moves it by a third.
    for (out, grads, _), tolerance in ((chunks, 2e-3), (one, 1e-4)):
        for name in ("loss", "nll", "kl", "mse", "means", "mask_logprobs", "reconstruction"):
            assert torch.allclose(getattr(out, name), getattr(plain[0], name), rtol=1e-5, atol=1e-5), name
        assert grads.keys() == plain[1].keys()
        for name, grad in plain[1].items():
            assert (grads[name] - grad).abs().max() <= tolerance * grad.abs().max() + 1e-8, name


def test_decoder_chunks_are_sized_by_bytes_and_off_on_request():
    model = small_model()
    z = torch.zeros(4 * model.K, model.z_size)
    per_image = model.K * model.hvae_networks.image_decoder.hidden_elements() * 4  # float32 bytes
    model.decoder_chunk_bytes = 3 * per_image
    assert model._images_per_chunk(z) == 3
    model.decoder_chunk_bytes = 1
    assert model._images_per_chunk(z) == 1  # never less than one image
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.decoder_chunk_bytes = 3 * per_image
        assert model._images_per_chunk(z) == 6  # bf16 activations take half the bytes
    model.decoder_chunk_bytes = None
    assert model._images_per_chunk(z) is None
