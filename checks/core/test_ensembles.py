"""The ReLU ensembles' Jacobian factors are the Jacobian of the network they sample: the product of the factors
equals autograd's input-output Jacobian of the MLP ``Y_0 = x, Y_k = W_k relu(Y_{k-1})`` (full eq. (1)).  Exact
(float64 round-off), so it catches a gate taken from the wrong unit or the wrong layer, which the spectral checks
cannot see (a misplaced gate is still a fair coin, and the exponents' law does not change)."""

import math

import numpy as np
import pytest
import torch

from checks.core.autograd_reference import autograd_gradient_descent
from theorems.ensembles import Ensemble, Pruning
from theorems.predictions import lyapunov_exponents
from theorems.seeding import generator
from theorems.spectral import jacobian_product
from theorems.training import mlp_factors


def mlp(weights, x):
    """Y_L of one network for input x (n,): Y_0 = x, Y_k = W_k relu(Y_{k-1})."""
    y = x
    for w in weights:
        y = w @ torch.relu(y)
    return y


def autograd_jacobians(weights, x):
    return torch.stack([torch.func.jacrev(lambda v, b=b: mlp([w[b] for w in weights], v))(x)
                        for b in range(weights[0].shape[0])])


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_relu_ensemble_factors_are_the_autograd_jacobian(depth):
    n, batch = 12, 4
    x = torch.randn(n, generator=generator(depth, "cpu"), dtype=torch.float64)
    factors = list(Ensemble(n, depth, gates="relu", batch=batch, inputs=x).factors(generator(7, "cpu")))
    weights = [f.weight for f in factors]
    torch.testing.assert_close(jacobian_product(factors).dense(), autograd_jacobians(weights, x), rtol=1e-10, atol=1e-12)


def test_training_factors_are_the_autograd_jacobian():
    """:func:`theorems.training.mlp_factors` (the factors of a trained MLP at its reference input) likewise."""
    n, batch, depth = 12, 3, 4
    gen = generator(11, "cpu")
    weights = [torch.randn(batch, n, n, generator=gen, dtype=torch.float64) * (2 / n) ** 0.5 for _ in range(depth)]
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    product = jacobian_product(mlp_factors(weights, x.expand(batch, n))).dense()
    torch.testing.assert_close(product, autograd_jacobians(weights, x), rtol=1e-10, atol=1e-12)


def test_fused_gd_steps_are_autograds_gradient_descent():
    """:func:`theorems.training.train_mlp` backpropagates by hand and fuses each update into one ``baddbmm``: its
    weights and losses are those of plain GD on autograd's gradient of :func:`theorems.training.mlp_losses`
    (per-network rates, several samples, a pruning mask), to rounding."""
    from theorems.training import mlp_losses, train_mlp
    n, depth, batch, samples, steps = 10, 5, 3, 4, 12
    gen = generator(12, "cpu")
    weights = [torch.randn(batch, n, n, generator=gen, dtype=torch.float64) * (2 / n) ** 0.5 for _ in range(depth)]
    mask = (torch.rand(batch, n, n, generator=gen, dtype=torch.float64) > 0.3).to(torch.float64)
    weights[1] = weights[1] * mask
    x, z = (torch.randn(batch, samples, n, generator=gen, dtype=torch.float64) for _ in range(2))
    lr = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)
    masks = [None, mask, None, None, None]
    run = train_mlp(weights, x, z, lr, steps, record_every=1, record_norms=False, masks=masks)
    losses, ws = autograd_gradient_descent(weights, lambda ws: mlp_losses(ws, x, z), lr, steps, grad_masks=masks)
    np.testing.assert_allclose(run.loss, losses.numpy(), rtol=1e-12)
    for w, w_ref in zip(run.weights, ws):
        torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-14)
    assert torch.equal(run.weights[1] * (1 - mask), torch.zeros_like(mask))  # pruned entries never move


def test_a_diverging_network_is_flagged_frozen_and_leaves_the_others_alone():
    """:func:`theorems.training.train_mlp`: a network whose GD overflows is an unbounded change (log||J|| = +inf from
    then on, never NaN, weights frozen finite), and the networks beside it train exactly as they would alone."""
    from theorems.training import train_mlp
    n, depth, steps = 8, 6, 30
    gen = generator(5, "cpu")
    weights = [torch.randn(2, n, n, generator=gen, dtype=torch.float64) * (2 / n) ** 0.5 for _ in range(depth)]
    x, z = (torch.randn(2, 1, n, generator=gen, dtype=torch.float64) for _ in range(2))
    lr = torch.tensor([1e-2, 1e100], dtype=torch.float64)  # the second network overflows at its first step
    run = train_mlp(weights, x, z, lr, steps, record_every=5)
    assert run.diverged.tolist() == [False, True]
    assert np.isposinf(run.log_norm[1:, 1]).all() and np.isposinf(run.loss[1:, 1]).all()
    assert not (np.isnan(run.log_norm).any() or np.isnan(run.loss).any())
    assert all(bool(torch.isfinite(w).all()) for w in run.weights)
    alone = train_mlp([w[:1] for w in weights], x[:1], z[:1], 1e-2, steps, record_every=5)
    np.testing.assert_array_equal(run.log_norm[:, 0], alone.log_norm[:, 0])
    assert not alone.diverged.any()
    quiet = train_mlp(weights, x, z, lr, steps, record_every=5, record_norms=False)  # the same run, no SVDs
    assert quiet.log_norm is None
    np.testing.assert_array_equal(quiet.loss, run.loss)
    assert all(bool(torch.equal(a, b)) for a, b in zip(quiet.weights, run.weights))


def test_descend_names_what_it_needs_before_any_work():
    """:func:`theorems.training.descend`: recording log||J|| needs the reference inputs; masks come one per layer."""
    from theorems.training import RELU_MLP, descend
    gen = generator(7, "cpu")
    weights = [torch.randn(1, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    x = torch.randn(1, 2, 4, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="x_ref"):
        descend(RELU_MLP, weights, x, x, 0.1, 3)
    with pytest.raises(ValueError, match="masks"):
        descend(RELU_MLP, weights, x, x, 0.1, 3, record_norms=False, masks=[None])
    with pytest.raises(ValueError, match="lr"):
        descend(RELU_MLP, weights, x, x, -0.1, 3, record_norms=False)


def test_each_network_trains_at_the_largest_rate_at_which_it_stays_stable():
    """:func:`theorems.training.train_at_largest_stable_rate`: a network that diverges at a rate is rerun from its
    initial weights at the next one, a dead network (input 0: every gate closed) has no stable rate (NaN), and each
    network's run is the one it trains alone at its rate."""
    from theorems.training import train_at_largest_stable_rate, train_mlp
    n, depth, steps = 8, 6, 30
    gen = generator(6, "cpu")
    weights = [torch.randn(3, n, n, generator=gen, dtype=torch.float64) * (2 / n) ** 0.5 for _ in range(depth)]
    x, z = (torch.randn(3, 1, n, generator=gen, dtype=torch.float64) for _ in range(2))
    x[0] *= 1e-6  # the loss's curvature scales like |x|^2: stable at lr = 1e6
    x[2] = 0.0  # dead at any rate
    run, rate = train_at_largest_stable_rate(weights, x, z, (1e-2, 1e6), steps, record_every=5)
    np.testing.assert_array_equal(rate, [1e6, 1e-2, np.nan])
    for b, lr in ((0, 1e6), (1, 1e-2)):
        alone = train_mlp([w[b:b + 1] for w in weights], x[b:b + 1], z[b:b + 1], lr, steps, record_every=5)
        np.testing.assert_array_equal(run.log_norm[:, b], alone.log_norm[:, 0])
        np.testing.assert_array_equal(run.loss[:, b], alone.loss[:, 0])
        assert all(bool(torch.equal(w[b], w_alone[0])) for w, w_alone in zip(run.weights, alone.weights))
    assert np.isneginf(run.log_norm[:, 2]).all()
    for bad in ((), (0.1, -1.0)):
        with pytest.raises(ValueError, match="rates"):
            train_at_largest_stable_rate(weights, x, z, bad, steps)

@pytest.mark.statistical(2)
@pytest.mark.parametrize("path", ["sample_weights", "perturbed"])
def test_correlated_weights_have_the_correlation_law(path):
    """App. F: entries of ``W_ind + eta w`` have variance sigma2/n (1 + eta^2) and correlation eta^2/(1 + eta^2).
    Statistic: Fisher's z of the correlation of two entries over B networks; prediction atanh(corr(eta)); no model
    error (exact law).  Detects a correlation error of about 0.05 at eta = 1/2 (corr 0.2)."""
    from theorems.experiments import perturbed
    from theorems.predictions import correlation_from_eta
    from theorems.ensembles import Factor, sample_weights
    from theorems.stats import Estimate, assert_consistent, compare

    n, batch, eta, sigma2 = 8, 6000, 0.5, 2.0
    gen = generator(3, "cpu")
    if path == "sample_weights":
        w = sample_weights(batch, n, sigma2, gen, eta=eta)
    else:
        base = sample_weights(batch, n, sigma2, gen)
        w = next(perturbed([Factor(base, None)], gen, eta=eta, sigma2=sigma2)).weight
    a, b = w[:, 0, 0].numpy(), w[:, 3, 5].numpy()
    r = float(np.corrcoef(a, b)[0, 1])
    z = Estimate(math.atanh(r), 1 / math.sqrt(batch - 3), math.inf, batch)
    assert_consistent(compare("Fisher z of the entry correlation", z,
                              math.atanh(correlation_from_eta(eta))))


@pytest.mark.statistical(3)
def test_sparse_random_pruning_is_sampled_with_its_law(rng):
    """:func:`theorems.ensembles.sample_weights` with random pruning at sparsity >= 1/2 draws the mask, then normals for
    the kept entries only.  Its law: entries iid scale * Bernoulli(1-s) * N(0, σ²/n).  Statistics: the kept fraction
    (binomial, prediction 1-s) and the mean of w² / (scale² σ²/n) over kept entries (each χ²_1: prediction 1), no
    model error; power: a 2% larger variance is rejected (about 9 standard errors)."""
    from theorems.ensembles import Pruning, sample_weights
    from theorems.stats import Estimate, assert_consistent, assert_rejects, compare, mean_estimate

    n, batch, sigma2, pruning = 32, 4000, 2.0, Pruning("random", 0.9, 10 ** 0.5)
    w = sample_weights(batch, n, sigma2, rng, pruning=pruning)
    kept = (w != 0).flatten().numpy()
    p, total = 1 - pruning.sparsity, kept.size
    assert_consistent(compare("kept fraction", Estimate(kept.mean(), math.sqrt(p * (1 - p) / total), math.inf, total), p))
    ratio = mean_estimate((w.flatten().numpy()[kept] ** 2) / (pruning.scale**2 * sigma2 / n))
    assert_consistent(compare("E w² / (scale² σ²/n) over kept entries", ratio, 1.0))
    assert_rejects(compare("the same vs a 2% larger variance (control)", ratio, 1.02))

@pytest.mark.statistical(4)
@pytest.mark.parametrize("gates", ["relu", "bernoulli"])
def test_jacobian_only_factors_draw_the_open_columns_with_their_law(gates, rng):
    """:meth:`Ensemble.factors` with ``jacobian_only``: the columns of W_l that a closed gate multiplies by 0 are 0
    (not drawn), and the open ones are iid N(0, σ²/n): the law of every product W_l diag(d_{l-1}) is kept.
    Statistics: the mean of w² / (σ²/n) over open entries (each χ²_1: prediction 1, no model error; a 2% larger
    variance is rejected by about 30 standard errors) and the open fraction of gates (ReLU and Bernoulli(1/2) alike:
    1/2 per gate, binomial; the ReLU gates of one network are exchangeable but not independent, so its error is
    the spread over networks)."""
    from theorems.stats import assert_consistent, assert_rejects, compare, mean_estimate

    n, depth, batch = 32, 6, 2000
    factors = list(Ensemble(n, depth, gates=gates, batch=batch).factors(rng, jacobian_only=True))
    open_entries, open_share = [], []
    for f in factors[1:]:
        closed = f.gate == 0
        assert bool((f.weight.masked_select(closed[:, None, :].expand_as(f.weight)) == 0).all())
        open_entries.append(f.weight.masked_select(~closed[:, None, :].expand_as(f.weight)))
        open_share.append(f.gate.mean(-1))
    ratio = mean_estimate((torch.cat(open_entries) ** 2 / (2.0 / n)).numpy())
    assert_consistent(compare("E w² / (σ²/n) over open columns", ratio, 1.0))
    assert_rejects(compare("the same vs a 2% larger variance (control)", ratio, 1.02))
    assert_consistent(compare("open share of the gates", mean_estimate(torch.stack(open_share).mean(0).numpy()), 0.5))


def test_jacobian_only_is_ignored_by_magnitude_pruning_and_refused_by_its_sampler(rng):
    """Magnitude pruning's mask depends on every entry of W_l, so ``jacobian_only`` draws W_l in full there (the same
    numbers as without it), and :func:`sample_weights` refuses ``columns`` with it."""
    from theorems.ensembles import Pruning, sample_weights

    ens = Ensemble(16, 3, batch=4, pruning=Pruning("magnitude", 0.5, 1.3))
    lean = ens.factors(generator(9, "cpu"), jacobian_only=True)
    for a, b in zip(lean, ens.factors(generator(9, "cpu"))):
        assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="columns"):
        sample_weights(2, 4, 2.0, rng, pruning=Pruning("magnitude", 0.5), columns=torch.ones(2, 4))

@pytest.mark.statistical(3)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_gaussian_image_has_the_law_of_a_drawn_layer(eta, rng):
    """:func:`theorems.ensembles.gaussian_image`: W h for W = W_ind + eta sqrt(σ²/n) g (iid N(0, σ²/n) entries plus
    the shared shift of :func:`correlated`) is Gaussian given h with variance v = σ²||h||²/n + c per coordinate and
    covariance c = eta² σ² (Σ_j h_j)²/n between coordinates.  Statistics: the means of y_1² / v and of y_1 y_2 / v
    over networks (inputs of norms spread over a factor 100, so a ||h|| for ||h||² slip shows): predictions 1 and
    c / v per network (averaged), no model error.  Power: a variance 2% larger is rejected (about 9 standard errors)."""
    from theorems.ensembles import gaussian_image
    from theorems.stats import assert_consistent, assert_rejects, compare, mean_estimate

    n, batch, sigma2 = 16, 400000, 2.0
    h = torch.randn(batch, n, generator=rng, dtype=torch.float64).abs()  # >= 0 like a ReLU output, never all 0
    h *= torch.logspace(-1, 1, batch, dtype=torch.float64)[:, None]
    y = gaussian_image(h, sigma2, rng, eta=eta)
    shared = eta**2 * sigma2 * h.sum(-1) ** 2 / n
    v = sigma2 * (h**2).sum(-1) / n + shared
    variance = mean_estimate((y[:, 0] ** 2 / v).numpy())
    assert_consistent(compare("E y_1² / v", variance, 1.0))
    assert_consistent(compare("E y_1 y_2 / v", mean_estimate((y[:, 0] * y[:, 1] / v).numpy()),
                              float((shared / v).mean())))
    assert_rejects(compare("E y_1² / v vs a 2% larger variance (control)", variance, 1.02))


@pytest.mark.statistical(2)
def test_image_norm_rate_is_gamma1_for_gaussian_weights_and_offset_by_pruning(rng):
    """(1/L) E log||J u|| is gamma_1 exactly with Gaussian weights (no model error: a two-sided interval at the
    suite's level), and random pruning at finite n lowers it (the offset that pruned_slope_model_error bounds):
    at n = 48, p = 1/2, s = 0.9 it is significantly below gamma_1 (by about 0.075; the second-order estimate
    (9/4)(s/(1-s))/(pn)² = 0.035 is only its order of magnitude there)."""
    from theorems.ensembles import Pruning
    from theorems.experiments import image_norm_rate
    from theorems.predictions import lyapunov_exponents
    from theorems.stats import compare, compare_below

    n, depth, batch = 48, 40, 2000
    g1 = lyapunov_exponents(n, 0.5, 2.0, 1)[0]
    gaussian = image_norm_rate(Ensemble(n, depth, batch=batch), rng)
    check = compare("image-norm rate, Gaussian", gaussian, g1)  # at the per-assertion level
    assert check.consistent, check.message()
    pruned = image_norm_rate(Ensemble(n, depth, batch=batch, pruning=Pruning("random", 0.9, 10 ** 0.5)), rng)
    below = compare_below("image-norm rate, pruned (s = 0.9)", pruned, g1)
    assert below.consistent, below.message("significantly below gamma_1")
    assert -0.2 < pruned.value - g1 < 0, pruned


def test_the_ensemble_states_its_model_once_for_the_closed_forms():
    """Ensemble.lyapunov_exponents / free_log_rate are closed form 2 and ½ log(σ² p) at the model's own (n, p, σ²),
    p = 1/2 for ReLU, 1 without gates; pruned or correlated weights have no such closed form: an error that says so."""
    for gates, keep, p in (("bernoulli", 0.25, 0.25), ("relu", 0.5, 0.5), ("none", 0.5, 1.0)):
        ens = Ensemble(160, 3, sigma2=1.5, gates=gates, keep_prob=keep)
        assert np.array_equal(ens.lyapunov_exponents(3), lyapunov_exponents(160, p, 1.5, 3))
        assert ens.free_log_rate() == 0.5 * math.log(1.5 * p)
    with pytest.raises(ValueError, match="pruned"):
        Ensemble(48, 3, pruning=Pruning("random", 0.5, 1.0)).lyapunov_exponents()
    with pytest.raises(ValueError, match="correlated"):
        Ensemble(48, 3, eta=0.1).free_log_rate()
    assert Ensemble(48, 3, eta=0.1).with_(eta=0.0).free_log_rate() == 0.5 * math.log(1.0)


def test_balanced_masked_network_is_exactly_balanced_and_has_the_stated_spectrum(rng):
    """:func:`theorems.training.balanced_masked_network`: M_{l+1}^T M_{l+1} = M_l M_l^T to rounding, closed gates hide
    nothing (W_l = D_l W_l D_{l-1}), and J's top r singular values are e^(c_k) with c_k within 0.1 of the equally spaced
    values from 1.2 down to -1.2 (the rest 0)."""
    from theorems.training import _masked_product, balance_defects, balanced_masked_network

    ws, gates = balanced_masked_network(3, 12, 5, 4, rng)
    assert max(float(torch.linalg.matrix_norm(c).max()) for c in balance_defects(ws, gates)) < 1e-13
    for w, d_in, d_out in zip(ws[1:-1], gates[:-1], gates[1:]):
        assert torch.equal(w, d_out.unsqueeze(-1) * w * d_in.unsqueeze(-2))
    s = torch.linalg.svdvals(_masked_product(ws, gates))
    c = torch.log(s[:, :4]) - torch.linspace(1.2, -1.2, 4, dtype=torch.float64)
    assert float(c.abs().max()) <= 0.1 + 1e-12 and float(s[:, 4:].max()) < 1e-12


def test_gradient_flow_velocity_is_the_derivative_of_the_singular_values_along_gd(rng):
    """:func:`theorems.training.gradient_flow_singular_value_velocity` for unbalanced Gaussian masked factors (it
    assumes no balancing): one GD step of size h moves s_k by h times it up to O(h²), so the finite difference's
    relative error is small and halves with h."""
    from theorems.training import masked_linear_gd_path

    factors = list(Ensemble(10, 3, gates="bernoulli", batch=4, input_gate=False, sigma2=2.0).factors(rng))
    ws, gates = [f.weight for f in factors], [f.gate for f in factors[1:]]
    x = torch.randn(4, 10, 20, generator=rng, dtype=torch.float64) / math.sqrt(20)
    y = torch.randn(4, 10, 20, generator=rng, dtype=torch.float64)
    errors = []
    for h in (1e-4, 5e-5):
        path = masked_linear_gd_path(ws, gates, x, y, h, 1, 3)
        fd = (path["s"][1] - path["s"][0]) / h
        errors.append(np.abs(fd - path["exact_velocity"]).max() / np.abs(path["exact_velocity"]).max())
    assert errors[0] < 1e-3 and 1.8 < errors[0] / errors[1] < 2.2, errors


def test_loss_sharpness_is_the_top_hessian_eigenvalue_of_each_network(rng):
    """:func:`theorems.training.loss_sharpness` on per-network quadratics ½ pᵀ H_b p with known spectra (the largest
    |eigenvalue|, negative ones included), and on the depth-1 masked linear loss (2n)^-1 ||W X - Y||², whose Hessian
    is (X Xᵀ / n) ⊗ I: its top eigenvalue ||X Xᵀ|| / n (computed by eigvalsh)."""
    from theorems.training import loss_sharpness, masked_linear_sharpness

    spectra = torch.tensor([[3.0, 1.0, 0.5, 0.1], [-5.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    frames = torch.linalg.qr(torch.randn(2, 4, 4, generator=rng, dtype=torch.float64)).Q
    hessians = frames @ torch.diag_embed(spectra) @ frames.mT

    def quadratic(ps):
        p = ps[0]
        return 0.5 * torch.einsum("bi,bij,bj->b", p, hessians, p)

    got = loss_sharpness(quadratic, [torch.randn(2, 4, generator=rng, dtype=torch.float64)], rng, iters=60)
    assert torch.allclose(got, torch.tensor([3.0, 5.0], dtype=torch.float64), rtol=1e-8)
    w = torch.randn(3, 6, 6, generator=rng, dtype=torch.float64)
    x = torch.randn(3, 6, 9, generator=rng, dtype=torch.float64)
    x[:, 0] *= 4  # a dominant input direction: power iteration converges in a few dozen steps
    y = torch.randn(3, 6, 9, generator=rng, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(x @ x.mT)[:, -1] / 6
    assert torch.allclose(masked_linear_sharpness([w], [], x, y, rng, iters=60), exact, rtol=1e-8)
    with pytest.raises(ValueError, match="iters"):
        loss_sharpness(quadratic, [torch.zeros(2, 4, dtype=torch.float64)], rng, iters=0)


def test_training_at_half_the_edge_of_stability_uses_each_networks_own_rate(rng):
    """:func:`theorems.training.train_masked_linear_at_half_edge`: the rate in force at step 0 is 1/λ of each
    network's loss Hessian at init, the loss falls for every network, and the recorded spectrum starts at J's."""
    from theorems.training import (_masked_product, masked_linear_loss, masked_linear_sharpness,
                                   train_masked_linear_at_half_edge)

    factors = list(Ensemble(12, 4, gates="bernoulli", batch=3, input_gate=False, sigma2=2.0).factors(rng))
    ws, gates = [f.weight for f in factors], [f.gate for f in factors[1:]]
    x = torch.randn(3, 12, 24, generator=rng, dtype=torch.float64) / math.sqrt(24)
    y = torch.randn(3, 12, 3, generator=rng, dtype=torch.float64) @ torch.randn(3, 3, 24, generator=rng,
                                                                            dtype=torch.float64) / math.sqrt(24)
    lam = masked_linear_sharpness(ws, gates, x, y, torch.Generator().manual_seed(5), iters=20)
    path = train_masked_linear_at_half_edge(ws, gates, x, y, 40, torch.Generator().manual_seed(5), every=20,
                                            record_every=20, k=5)
    assert np.allclose(path.rates[0], (1 / lam).numpy(), rtol=1e-12)
    assert list(path.steps) == [0, 20, 40] and path.log_s.shape == (3, 3, 5)
    s0 = torch.log(torch.linalg.svdvals(_masked_product(ws, gates))[:, :5])
    assert np.allclose(path.log_s[0], s0.numpy(), rtol=1e-12)
    assert bool((masked_linear_loss(path.weights, gates, x, y) < masked_linear_loss(ws, gates, x, y)).all())


def test_closed_form_gradients_of_the_masked_linear_loss_are_autograds(rng):
    """:func:`theorems.training.masked_linear_gradients` against autograd on the same loss: the per-network losses
    and every layer's gradient agree to rounding (closed gates included)."""
    from theorems.training import masked_linear_gradients, masked_linear_loss

    factors = list(Ensemble(9, 5, gates="bernoulli", batch=3, input_gate=False, sigma2=2.0).factors(rng))
    ws, gates = [f.weight for f in factors], [f.gate for f in factors[1:]]
    x = torch.randn(3, 9, 14, generator=rng, dtype=torch.float64)
    y = torch.randn(3, 9, 14, generator=rng, dtype=torch.float64)
    losses, grads = masked_linear_gradients(ws, gates, x, y)
    params = [w.clone().requires_grad_(True) for w in ws]
    from theorems.training import _masked_linear_losses

    expected = torch.autograd.grad(_masked_linear_losses(params, gates, x, y).sum(), params)
    assert torch.allclose(losses, masked_linear_loss(ws, gates, x, y), rtol=1e-13)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-11, atol=1e-13 * float(want.abs().max()))


def test_trainability_runs_share_directions_data_and_one_rate_per_tuple(rng):
    """:func:`theorems.training.trainability_at_one_rate`: one accuracy in [0, 1] per network and σ², one rate per
    tuple and re-estimate (positive, finite), and networks that share their directions at σ² = 2 and 2.0000001 end
    at the same accuracy (the same digits, the same rate, nearly the same weights)."""
    from theorems.training import trainability_at_one_rate

    out = trainability_at_one_rate(3, (2.0, 2.0000001), 3, 16, 20, rng, every=10)
    assert out.rates.shape == (2, 3) and np.isfinite(out.rates).all() and (out.rates > 0).all()
    for s in (2.0, 2.0000001):
        assert out.accuracy[s].shape == (3,) and ((0 <= out.accuracy[s]) & (out.accuracy[s] <= 1)).all()
    assert np.array_equal(out.accuracy[2.0], out.accuracy[2.0000001])
    with pytest.raises(ValueError, match="reference"):
        trainability_at_one_rate(3, (1.0, 4.0), 2, 8, 10, rng, every=10)
    with pytest.raises(ValueError, match="multiple of every"):
        trainability_at_one_rate(3, (2.0,), 2, 8, 15, rng, every=10)


def test_pruned_and_correlated_variants_share_the_critical_weights_and_keep_their_masks(rng):
    """:func:`theorems.training.trainability_of_variants`: variants of one index are built from the same critical
    weights (a pruned variant is the critical one times its mask and scale; the scaled and unscaled variants at one
    sparsity share the mask; a correlated one is W_2 + eta w with w shared), and training keeps pruned weights at 0."""
    from theorems.ensembles import Pruning
    from theorems.training import WeightVariant, _variant_layer, train_mlp, trainability_of_variants

    s = 0.75
    variants = [WeightVariant(), WeightVariant(pruning=Pruning("random", s)),
                WeightVariant(pruning=Pruning("random", s, (1 - s) ** -0.5)), WeightVariant(eta=0.5),
                WeightVariant(sigma2=1.0)]
    w2 = torch.randn(3, 8, 8, generator=rng, dtype=torch.float64) * 0.5
    w, mask = _variant_layer(w2, variants, rng)
    crit, unscaled, scaled, corr, half = w.split(3)
    keep = mask[3:6]
    assert torch.equal(mask[:3], torch.ones_like(w2)) and torch.equal(mask[6:9], keep)
    assert torch.equal(unscaled, w2 * keep) and torch.allclose(scaled, w2 * keep * 2.0)
    shift = corr - crit  # one number per network, the same in every entry
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift)) and (shift[:, 0, 0] != 0).all()
    assert torch.allclose(half, crit / 2 ** 0.5, rtol=1e-15, atol=0)
    x = torch.randn(15, 4, 8, generator=rng, dtype=torch.float64)
    z = torch.randn(15, 4, 8, generator=rng, dtype=torch.float64)
    run = train_mlp([w, w.clone()], x, z, 1e-2, 5, record_norms=False, masks=[mask, None])
    assert torch.equal(run.weights[0][mask == 0], torch.zeros_like(run.weights[0][mask == 0]))
    assert not torch.equal(run.weights[0][mask == 1], w[mask == 1])
    out = trainability_of_variants(3, {"critical": variants[0], "pruned": variants[2]}, 2, 8, 10, rng,
                                   reference="critical", every=10)
    assert set(out.accuracy) == {"critical", "pruned"} and out.rates.shape == (1, 2)
    with pytest.raises(ValueError, match="reference"):
        trainability_of_variants(3, {"a": variants[0]}, 2, 8, 10, rng, reference="b", every=10)
    with pytest.raises(ValueError, match="pruning must be random"):
        WeightVariant(pruning=Pruning("magnitude", 0.5))
    with pytest.raises(ValueError, match="masks must give one mask"):
        train_mlp([w], x, z, 1e-2, 1, masks=[mask, None])
