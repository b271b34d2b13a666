"""Closed forms against independent computations (issue 3).  Each tolerance is stated and derived
from the independent computation it is compared with."""

import math

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from theorems import predictions as P
from theorems.ensembles import Ensemble, Pruning, sample_weights
from theorems.experiments import squared_norms_with_mean_square
from theorems.spectral import lyapunov_qr
from theorems.stats import compare, mean_estimate


# --- closed form 1: the edge ----------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 2, 3, 5, 10, 50, 100])
def test_edge_is_fuss_catalan_at_p1(L):
    assert P.masked_product_edge(L, 1.0, 1.0) == pytest.approx(P.fuss_catalan_edge(L), rel=1e-12)
    assert P.masked_product_edge(L, 1.0, 3.0) == pytest.approx(P.fuss_catalan_edge(L) * 3.0**L, rel=1e-12)


def moment_series(L, p, terms):
    """Moments m_1..m_K of J J^T from the functional equation psi = x (1 + psi) (p + psi)^L
    (the inverse of chi(z) = z S(z) / (1 + z), S = (p + z)^-L, sigma2 = 1), solved as a power series."""
    psi = np.zeros(terms + 1)
    for _ in range(terms):
        one_plus = psi.copy()
        one_plus[0] += 1.0
        p_plus = psi.copy()
        p_plus[0] += p
        prod = one_plus
        for _ in range(L):
            prod = np.convolve(prod, p_plus)[: terms + 1]
        new = np.zeros(terms + 1)
        new[1:] = prod[:terms]
        psi = new
    return psi[1:]


@pytest.mark.parametrize("L,p", [(1, 0.5), (2, 0.5), (3, 0.25), (5, 0.5), (8, 0.75), (4, 1.0)])
def test_edge_matches_moment_growth(L, p):
    """lambda_max = lim m_{k+1}/m_k; the ratio behaves like lambda (1 - 3/(2k) + c/k^2 + ...) at a square-root
    edge, so a polynomial fit in 1/k extrapolates it.  Tolerance: 10x the change between fits of degree 3 and 4."""
    m = moment_series(L, p, 160)
    k = np.arange(1, len(m))
    ratio = m[1:] / m[:-1]
    sel = k >= 60
    x = 1.0 / k[sel]
    lam3 = np.polyfit(x, ratio[sel], 3)[-1]
    lam4 = np.polyfit(x, ratio[sel], 4)[-1]
    tol = 10 * abs(lam4 - lam3) + 1e-10 * lam4
    assert abs(P.masked_product_edge(L, p, 1.0) - lam4) <= tol
    # first two moments, closed form 4
    m1, m2 = P.gated_moments(L, p, 1.0)
    assert m[0] == pytest.approx(m1, rel=1e-12) and m[1] == pytest.approx(m2, rel=1e-12)


def test_edge_is_the_critical_value_of_chi():
    """1/lambda_max = max_z chi(z), found by a bounded scalar optimisation."""
    for L, p, s2 in [(2, 0.5, 2.0), (7, 0.3, 1.0), (30, 0.5, 2.0)]:
        res = optimize.minimize_scalar(lambda z, L=L, p=p, s2=s2: -z / ((1 + z) * (s2 * (p + z)) ** L), bounds=(1e-9, 10),
                                       method="bounded", options=dict(xatol=1e-12))
        assert 1 / -res.fun == pytest.approx(P.masked_product_edge(L, p, s2), rel=1e-8)


@pytest.mark.parametrize("gates", ["bernoulli", "relu"])
def test_first_moment_is_exact_at_finite_width(gates, rng, verdict):
    """E tr(J J^T)/n = E||J||_F²/n = (sigma2 p)^L holds at every finite n (each layer multiplies E|v|^2 by sigma2 p;
    ReLU gates halve it by the sign symmetry of the pre-activations): the control variate of the free edge."""
    L, n, p, s2 = 4, 32, 0.5, 2.0
    _, mean_squares = squared_norms_with_mean_square(Ensemble(n, L, sigma2=s2, keep_prob=p, gates=gates, batch=400), rng)
    verdict.check(compare("tr(JJ^T)/n", mean_estimate(mean_squares), P.gated_moments(L, p, s2)[0],
                          sizes=dict(n=n, L=L, B=400, gates=gates)))


def test_printed_semicircular_limit_matches_only_without_gates():
    """||s_1...s_L||^2 (variance 1/2 factors) equals the edge at p = 1 (sigma2 = 1/2) but not at p = 1/2."""
    for L in (1, 3, 10):
        assert P.free_semicircular_product_norm2(L, 0.5) == pytest.approx(P.masked_product_edge(L, 1.0, 0.5))
        assert P.masked_product_edge(L, 0.5, 1.0) / P.free_semicircular_product_norm2(L, 0.5) > 1.4


# --- closed form 2: Lyapunov exponents ----------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 16, 64, 256])
def test_lyapunov_is_newman_at_p1(n):
    k = min(n, 8)
    i = np.arange(1, k + 1)
    newman = 0.5 * (np.log(2 * 1.7 / n) + special.digamma((n - i + 1) / 2))
    np.testing.assert_allclose(P.lyapunov_exponents(n, 1.0, 1.7, k), newman, rtol=0, atol=1e-14)


def test_sum_of_all_exponents_is_log_det_rate():
    n = 12
    assert P.lyapunov_exponents(n, 1.0, 2.0, n).sum() == pytest.approx(P.log_det_rate(n, 2.0), abs=1e-12)


def test_lyapunov_large_width_limit():
    g = P.lyapunov_exponents(4096, 0.5, 3.0, 1)[0]
    assert g == pytest.approx(P.free_log_rate(3.0, 0.5), abs=2e-3)  # gamma_1 = ½log(σ²p) - O(1/n)


def test_lyapunov_refuses_unresolvable_k():
    with pytest.raises(ValueError, match="P\\(m < 4\\)"):
        P.lyapunov_exponents(24, 0.25, 2.0, 4)
    assert P.lyapunov_exponents(24, 0.25, 2.0, 4, max_dropout=1.0).shape == (4,)


@pytest.mark.parametrize("p", [0.5, 0.25])
def test_lyapunov_matches_monte_carlo_qr(p, rng, verdict):
    """QR increments are unbiased for gamma_i at every depth, so the check has no model error."""
    n, L, B, k = 128, 16, 48, 3
    est = lyapunov_qr(Ensemble(n, L, sigma2=1.0, keep_prob=p, batch=B).factors(rng), k, rng).exponents
    pred = P.lyapunov_exponents(n, p, 1.0, k)
    for i in range(k):
        verdict.check(compare(f"QR gamma_{i + 1} (p={p})", mean_estimate(est[:, i]), pred[i],
                              sizes=dict(n=n, L=L, B=B)))


@pytest.mark.statistical(1)  # 5 standard errors: 6e-7, below the per-assertion rate
def test_volume_gap_is_the_expected_log_overlap(seed):
    """E[-½ log det(Q^T V V^T Q)] for Haar Q (Monte Carlo, 4000 draws, 5 standard errors)."""
    rng = np.random.default_rng(seed)
    n, k = 10, 3
    vals = []
    for _ in range(4000):
        q, _ = np.linalg.qr(rng.standard_normal((n, k)))
        vals.append(-0.5 * np.log(np.linalg.det(q[:k].T @ q[:k])))
    vals = np.array(vals)
    assert abs(vals.mean() - P.volume_gap(n, k)) < 5 * vals.std() / math.sqrt(len(vals))


@pytest.mark.parametrize("n", [2, 7, 16, 64])
def test_finite_depth_constants_telescope_to_the_volume_gap(n):
    """d_0 = 0, d_j = -volume_gap(n, j) (so d_n = 0: the full volume is the determinant), and b_1 = d_0 - d_1 =
    ½[digamma(n/2) - digamma(1/2)]: the expected -log|<v_1, q>| of two independent uniform unit vectors."""
    d = P.finite_depth_constants(n, n)
    assert d[0] == 0.0 and d[-1] == 0.0 and (d[1:-1] < 0).all()
    b = P.finite_depth_correction(n, n)
    np.testing.assert_allclose(np.cumsum(b), [P.volume_gap(n, j) for j in range(1, n + 1)], rtol=0, atol=1e-12)
    assert b[0] == pytest.approx(0.5 * (special.digamma(n / 2) - special.digamma(0.5)), abs=1e-12)


# --- closed form 3: pruning scales ----------------------------------------------------------------

@pytest.mark.parametrize("n,s", [(4, 0.5), (8, 0.9), (16, 0.75), (32, 0.99)])
def test_magnitude_scale_matches_beta_order_statistics(n, s):
    """The one-integral form against the printed sum of r Beta expectations (quadrature, 1e-9 relative)."""
    N = n * n
    r = int(round((1 - s) * N))
    total = sum(integrate.quad(lambda b, j=j: stats.chi2.ppf(1 - b, 1) * stats.beta.pdf(b, j, N - j + 1), 0, 1,
                               limit=200, epsabs=1e-14)[0] for j in range(1, r + 1))
    assert P.magnitude_pruning_scale(n, s) == pytest.approx((total / N) ** -0.5, rel=1e-9)


@pytest.mark.parametrize("s", [0.1, 0.5, 0.9, 0.99])
def test_magnitude_scale_converges_to_its_limit(s):
    """|t_n - t_inf| shrinks as n grows (r rounded to an integer, so compare at exact densities)."""
    gaps = []
    for n in (16, 64, 256, 1024):
        r = max(1, round((1 - s) * n * n))
        s_exact = 1 - r / (n * n)
        gaps.append(abs(P.magnitude_pruning_scale(n, s_exact) - P.magnitude_pruning_scale(n, s_exact, exact=False)))
    assert all(b < a for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-4 * P.magnitude_pruning_scale(1024, s)


def test_magnitude_scale_covers_the_issue_range():
    for n in (64, 256, 1024, 4096):
        for s in (0.0, 0.3, 0.9, 0.99):
            t = P.magnitude_pruning_scale(n, s)
            assert 1.0 <= t <= P.random_pruning_scale(s) and math.isfinite(t)


@pytest.mark.parametrize("s", [0.5, 0.9])
def test_magnitude_scale_matches_retained_energy(s, rng, verdict):
    """Empirical t^-2 = ||B ⊙ W||_F^2 / (sigma2 n) over sampled layers; its mean is t_n^-2 exactly."""
    n = 64
    w = sample_weights(400, n, 2.0, rng, pruning=Pruning("magnitude", s))
    energy = (w**2).sum(dim=(-2, -1)) / (2.0 * n)
    verdict.check(compare("retained energy t^-2", mean_estimate(energy),
                          P.magnitude_pruning_scale(n, s) ** -2, sizes=dict(n=n, B=400)))
    verdict.reject(compare("retained energy vs random scale^-2 (negative control)",
                           mean_estimate(energy), P.random_pruning_scale(s) ** -2, sizes=dict(n=n, B=400)))


def test_random_scale_and_correlation():
    assert P.random_pruning_scale(0.75) == pytest.approx(2.0)
    assert P.correlation_from_eta(1.0) == pytest.approx(0.5)
    assert P.critical_sigma2(0.5) == 2.0
    assert P.edge_of_stability_density(256) == pytest.approx(math.log(256) ** 5 / 256)
    VACUOUS_BELOW = P.EDGE_DENSITY_VACUOUS_BELOW  # the sufficient density is >= 1 (vacuous) below it

    assert P.edge_of_stability_density(VACUOUS_BELOW - 1) > 1 > P.edge_of_stability_density(VACUOUS_BELOW + 1)


def test_bartlett_offset_is_the_neighbouring_formula():
    """dof_offset = 1 replaces chi^2_{m-i+1} by chi^2_{m-i+2} (p = 1: digamma((n-i+2)/2)); other offsets are refused."""
    n, s2 = 16, 1.0
    shifted = P.lyapunov_exponents(n, 1.0, s2, 2, dof_offset=1)
    i = np.arange(1, 3)
    assert shifted == pytest.approx(0.5 * (math.log(2 * s2 / n) + special.digamma((n - i + 2) / 2)))
    with pytest.raises(ValueError, match="dof_offset"):
        P.lyapunov_exponents(n, 1.0, s2, 2, dof_offset=-1)


def test_relaxation_late_share():
    """descent-convergence's 'settled': a relaxation's last half carries q/(1+q), q = e^(-T/2τ): 1/2 for T -> 0 (a
    linear drift), 0.1 at T = 2 ln 9 τ (SETTLED_SHARE), 1/(1+e) at T = 2τ (the negative control's rival)."""
    assert P.relaxation_late_share(1e-12) == pytest.approx(0.5)
    assert P.relaxation_late_share(2 * math.log(9)) == pytest.approx(0.1, rel=1e-12)
    assert P.relaxation_late_share(2.0) == pytest.approx(1 / (1 + math.e), rel=1e-12)
    t = np.linspace(0, 3.0, 3001)  # T = 3τ sampled: the share from the curve itself
    curve = np.exp(-t)
    assert (curve[-1] - curve[1500]) / (curve[-1] - curve[0]) == pytest.approx(P.relaxation_late_share(3.0), rel=1e-12)



# --- approx-gates: the gates' dependence on the sign balance of their own weights --------------------------------

def test_gate_sign_covariance_small_widths_and_limit():
    """n = 2 by hand: E Σ_j arcsin(h_j/||h||) = (3/4)(π/2) (both units open: the two angles add to π/2; one open: π/2;
    none: 0), so cov = 3/64.  Large n: the leading term (2 π^(3/2))^-1 n^(-3/2), approached at rate 1/n."""
    assert P.gate_sign_covariance(2) == pytest.approx(3 / 64, rel=1e-12)
    ratios = [P.gate_sign_covariance(n) * 2 * math.pi**1.5 * n**1.5 - 1 for n in (64, 128, 256, 512)]
    assert all(r > 0 for r in ratios) and all(r1 / r2 == pytest.approx(2, rel=0.05) for r1, r2 in zip(ratios, ratios[1:]))


def test_gate_sign_covariance_matches_monte_carlo_of_h(seed, verdict):
    """The law from its definition, E Σ_j arcsin(h_j/||h||) / (2π n²) with h = relu(g), g ~ N(0, I_n), averaged over
    100,000 draws of h (an independent computation that skips the binomial/latitude reduction); exact, no model error.
    Negative control: the leading term (2 π^(3/2))^-1 n^(-3/2), 4% below the law at n = 24, is rejected."""
    n = 24
    g = np.maximum(np.random.default_rng(seed).standard_normal((100_000, n)), 0.0)
    h = g[np.linalg.norm(g, axis=1) > 0]
    angles = np.arcsin(h / np.linalg.norm(h, axis=1, keepdims=True)).sum(axis=1) / (2 * math.pi * n**2)
    verdict.check(compare("E Σ arcsin(h_j/||h||) / (2π n²)", mean_estimate(angles), P.gate_sign_covariance(n),
                          sizes=dict(n=n, draws=h.shape[0])))
    verdict.reject(compare("vs the leading term (negative control)", mean_estimate(angles), 1 / (2 * math.pi**1.5 * n**1.5),
                           sizes=dict(n=n, draws=h.shape[0])))


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_gated_size_tables_ask_only_for_defined_exponents(profile):
    """The gated cases of the mode-wise and finite-depth size tables ask only for exponents that the closed form
    defines (P(a layer has fewer than k open gates) <= 1e-12): the full profile's mode-wise case at n = 16, p = 1/2
    did not, and raised ValueError the first time it ran (session 21).  Checked on both profiles, without running."""
    from checks.claims.test_lyapunov import FINITE_DEPTH_CASES
    from checks.claims.test_training import MODEWISE_SIZES

    for c in MODEWISE_SIZES.of(profile):
        assert len(P.lyapunov_exponents(c.n, c.p, 1.0, 2)) == 2, c
    for c in FINITE_DEPTH_CASES.of(profile):
        if c.gates == "bernoulli":
            assert P.resolvable_k(c.n, c.p, c.k + 1) == c.k + 1, c
