"""Bad input: a ValueError naming the parameter and the allowed range, before any work (issue 2)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from theorems import predictions as P
from theorems.ensembles import Ensemble, Pruning
from theorems.spectral import lyapunov_qr, products_at

BAD_ENSEMBLES = [
    (dict(width=0, depth=3), "width", "integer >= 1"),
    (dict(width=2.5, depth=3), "width", "integer >= 1"),
    (dict(width=8, depth=0), "depth", "integer >= 1"),
    (dict(width=8, depth=-4), "depth", "integer >= 1"),
    (dict(width=8, depth=3, sigma2=0.0), "sigma2", "(0, inf)"),
    (dict(width=8, depth=3, sigma2=-1.0), "sigma2", "(0, inf)"),
    (dict(width=8, depth=3, sigma2=math.nan), "sigma2", "finite"),
    (dict(width=8, depth=3, sigma2=math.inf), "sigma2", "finite"),
    (dict(width=8, depth=3, keep_prob=0.0), "keep_prob", "(0, 1]"),
    (dict(width=8, depth=3, keep_prob=1.5), "keep_prob", "(0, 1]"),
    (dict(width=8, depth=3, keep_prob=math.nan), "keep_prob", "finite"),
    (dict(width=8, depth=3, batch=0), "batch", "integer >= 1"),
    (dict(width=8, depth=3, eta=-0.1), "eta", "[0, inf)"),
    (dict(width=8, depth=3, gates="tanh"), "gates", "relu"),
]


@pytest.mark.parametrize("kwargs,name,allowed", BAD_ENSEMBLES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_ensemble_rejects_bad_input(kwargs, name, allowed):
    with pytest.raises(ValueError) as err:
        Ensemble(**kwargs)
    assert name in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.2, math.nan])
def test_pruning_rejects_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be a finite real number in \[0, 1\)"):
        Pruning("random", sparsity)


def test_pruning_rejects_bad_kind_and_scale():
    with pytest.raises(ValueError, match="pruning kind"):
        Pruning("snip", 0.5)
    with pytest.raises(ValueError, match="scale"):
        Pruning("random", 0.5, scale=0.0)


BAD_PREDICTIONS = [
    (P.masked_product_edge, (0, 0.5, 2.0), "depth"),
    (P.masked_product_edge, (3, 0.0, 2.0), "keep_prob"),
    (P.masked_product_edge, (3, 0.5, -2.0), "sigma2"),
    (P.lyapunov_exponents, (0, 0.5, 2.0, 1), "width"),
    (P.lyapunov_exponents, (16, 1.2, 2.0, 1), "keep_prob"),
    (P.lyapunov_exponents, (16, 0.5, math.nan, 1), "sigma2"),
    (P.lyapunov_exponents, (16, 0.5, 2.0, 17), "k"),
    (P.lyapunov_exponents, (16, 0.5, 2.0, 1), "P(m < 1)"),  # collapse probability 2^-16 is not tiny
    (P.magnitude_pruning_scale, (0, 0.5), "width"),
    (P.magnitude_pruning_scale, (16, 1.0), "sparsity"),
    (P.random_pruning_scale, (-0.5,), "sparsity"),
    (P.correlation_from_eta, (math.inf,), "eta"),
]


@pytest.mark.parametrize("fn,args,name", BAD_PREDICTIONS, ids=lambda v: getattr(v, "__name__", None))
def test_predictions_reject_bad_input(fn, args, name):
    with pytest.raises(ValueError) as err:
        fn(*args)
    assert name in str(err.value)


def test_spectral_rejects_bad_requests(rng):
    e = Ensemble(8, 3, batch=2)
    with pytest.raises(ValueError, match="k must be an integer"):
        lyapunov_qr(e.factors(rng), 9, rng)
    with pytest.raises(ValueError, match="exceed"):
        products_at(e.factors(rng), [5])


def test_validation_happens_before_work(monkeypatch):
    """No random numbers are drawn for an invalid ensemble: the error comes from the constructor."""
    calls = []
    monkeypatch.setattr(torch, "randn", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError):
        Ensemble(8, 3, sigma2=0)
    assert not calls


def test_training_helpers_reject_bad_input(rng):
    from theorems.experiments import alignment_profile
    from theorems.training import regression_data, stable_learning_rate, train_masked_linear

    with pytest.raises(ValueError, match="kind"):
        regression_data("mnist", 2, 4, 8, rng)
    with pytest.raises(ValueError, match="n must be 64"):
        regression_data("digits", 2, 4, 8, rng)
    factors = list(Ensemble(8, 4, gates="bernoulli", batch=2, input_gate=False).factors(rng))
    ws, gates = [f.weight for f in factors], [f.gate for f in factors[1:]]
    x = torch.randn(2, 8, 16, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="fraction"):
        stable_learning_rate(ws, gates, x, 1.5)
    with pytest.raises(ValueError, match="lr"):
        train_masked_linear(ws, gates, x, x, torch.tensor([0.1, -0.1]), 1)
    with pytest.raises(ValueError, match="lr"):
        train_masked_linear(ws, gates, x, x, math.nan, 1)
    with pytest.raises(ValueError, match="lengths"):
        alignment_profile(factors, [2, 4], 1)
    from theorems.experiments import mean_square_gain
    from theorems.training import balanced_masked_network, masked_linear_gd_path

    with pytest.raises(ValueError, match="rank"):
        balanced_masked_network(2, 8, 3, 5, rng)  # the gates open half of the 8 units
    with pytest.raises(ValueError, match="steps"):
        masked_linear_gd_path(ws, gates, x[..., :8], x[..., :8], 0.1, 0, 2)
    with pytest.raises(ValueError, match="probes"):
        mean_square_gain(Ensemble(8, 3, batch=2), rng, probes=9)


def test_alignment_model_errors_come_from_the_other_half_and_bound_their_noise():
    """:func:`alignment_rates` (claim alignment): the estimates use the first half of the networks and the model
    errors only the second, so moving the first half moves the estimates and leaves the model errors as they were;
    a model error is an upper confidence bound of the window change, so it is not 0 when the measured change is
    (the noise of the change is part of it), and it grows as the level tightens."""
    from theorems.experiments import alignment_rates

    lengths = (10, 20, 30)
    g = np.random.default_rng(0)
    log_sin = {l: -0.03 * l + g.normal(size=8) for l in lengths}
    log_gap = {l: 0.03 * l + g.normal(size=8) for l in lengths}
    shifted = {l: np.concatenate([v[:4] - 0.01 * l, v[4:]]) for l, v in log_sin.items()}
    rate = 1e-3
    before, after = (alignment_rates(log_sin, log_gap, lengths, level_rate=rate),
                     alignment_rates(shifted, log_gap, lengths, level_rate=rate))
    assert before["networks"] == (4, 4)
    assert after["align"].value == pytest.approx(before["align"].value - 0.01)
    for error in ("align_error", "sum_error", "span_error", "twice_span_error"):
        assert after[error] == before[error]
    # the second half's change of log sin θ has mean exactly 0 (its early and late slopes agree), not its bound
    flat = {l: np.concatenate([v[:4], np.full(4, -0.03 * l) + np.array([1.0, -1.0, 0.5, -0.5]) * (l == 20)])
            for l, v in log_sin.items()}
    rates = alignment_rates(flat, log_gap, lengths, level_rate=rate)
    second_change = np.array([-2.0, 2.0, -1.0, 1.0]) / 10  # (late - early) slopes per network of the second half
    bound = stats.t.isf(rate / 2, 3) * second_change.std(ddof=1) / 2
    r = rates["transient_ratio"]  # the transient's ratio between windows, at the second half's separation rate
    assert r == pytest.approx(math.exp(-10 * np.mean((log_gap[30][4:] - log_gap[10][4:]) / 20)))
    assert rates["align_error"] == pytest.approx(bound / (1 - r))
    assert rates["span_error"] == pytest.approx(bound * (1 + r) / (2 * (1 - r)))
    assert alignment_rates(flat, log_gap, lengths, level_rate=rate / 10)["align_error"] > rates["align_error"]
    with pytest.raises(ValueError, match="at least 4"):
        alignment_rates({l: v[:3] for l, v in log_sin.items()}, log_gap, lengths, level_rate=rate)
    with pytest.raises(ValueError, match="level_rate"):
        alignment_rates(log_sin, log_gap, lengths, level_rate=0.0)
    with pytest.raises(ValueError, match="positive separation"):
        alignment_rates(log_sin, {l: -v for l, v in log_gap.items()}, lengths, level_rate=rate)


def test_stable_learning_rate_keeps_gd_stable_and_is_not_vacuous(rng):
    """Each network's step from :func:`stable_learning_rate` decreases its loss; 1000x that step blows up
    some network: the bound is conservative (a norm bound: typically 10-100x below the true edge) but not
    vacuous."""
    from theorems.training import masked_linear_loss, regression_data, stable_learning_rate, train_masked_linear

    factors = list(Ensemble(16, 20, gates="bernoulli", batch=8, input_gate=False).factors(rng))
    ws, gates = [f.weight for f in factors], [f.gate for f in factors[1:]]
    x, z = regression_data("synthetic", 8, 32, 16, rng)
    x, z = x.mT / math.sqrt(32), z.mT / math.sqrt(32)
    lr = stable_learning_rate(ws, gates, x, 0.9)
    before = masked_linear_loss(ws, gates, x, z)
    assert bool((masked_linear_loss(train_masked_linear(ws, gates, x, z, lr, 50), gates, x, z) < before).all())
    blown = masked_linear_loss(train_masked_linear(ws, gates, x, z, 1000 * lr, 50), gates, x, z)
    assert not bool((blown < before).all())


def test_every_check_module_states_its_work_and_the_full_profile_on_a_cpu_gets_an_estimate(monkeypatch):
    """Each module of checks/claims has a cost model next to its size tables (``work(profile)``: float64 operations),
    larger at full size; the header line of --profile full on a CPU turns their sum into hours at this machine's
    measured GEMM rate (fixed here at 1e10 flop/s)."""
    import importlib
    import pkgutil
    import re

    import checks.claims
    import theorems.profiles
    from conftest import full_profile_on_cpu_estimate
    from theorems.profiles import ACHIEVED_FRACTION, Profile

    modules = [importlib.import_module(f"checks.claims.{m.name}") for m in pkgutil.iter_modules(checks.claims.__path__)]
    assert modules and all(hasattr(m, "work") for m in modules), [m.__name__ for m in modules if not hasattr(m, "work")]
    for m in modules:
        assert 0 < m.work(Profile("quick")) < m.work(Profile("full")), m.__name__
    monkeypatch.setattr(theorems.profiles, "gemm_rate", lambda: 1e10)
    line = full_profile_on_cpu_estimate()
    full = sum(m.work(Profile("full")) for m in modules)
    hours = float(re.search(r"about (\d+) h here", line).group(1))
    assert hours == pytest.approx(full / (ACHIEVED_FRACTION * 1e10) / 3600, abs=0.5), line
