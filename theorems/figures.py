"""The papers' figures with the theory drawn in (``pytest --figures``; or ``python -m theorems.figures DIR``).

Each figure is computed from the library (samplers, spectral core, predictions), independently of the
checks, with its sizes and seed in the caption.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from .ensembles import Ensemble, Pruning
from .experiments import (alignment_profile, finite_depth_offsets, log_norms_at, log_singular_values_at,
                          prefix_log_singular_values, qr_exponents)
from .predictions import (
    edge_of_stability_density,
    magnitude_pruning_scale,
    masked_product_edge,
    random_pruning_scale,
)
from .profiles import Sizes
from .seeding import derive_seed, generator
from .training import (appendix_g_variants, low_rank_regression_path, trainability_at_one_rate, trainability_of_variants,
                       trained_fixed_gates_network)

__all__ = ["write_figures"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _caption(fig, text):
    fig.text(0.01, 0.005, text, fontsize=7, va="bottom", ha="left", wrap=True)


def _save(fig, path, bottom: float = 0.04):
    """Lay out above the caption (``bottom``: its height as a fraction of the figure), write the PNG, free it."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _slope_line(ax, x, samples, slope, color, anchor=3):
    """A dashed line of the predicted slope through the measured mean at x[anchor], drawn over the depths
    where every network is finite (a collapse ends it)."""
    finite = [bool(np.isfinite(v).all()) for v in samples]
    last = finite.index(False) if False in finite else len(x)
    anchor = min(anchor, last - 1)
    if anchor < 0:
        return
    y0 = float(np.mean(samples[anchor]))
    ax.plot(x[:last], [y0 + slope * (v - x[anchor]) for v in x[:last]], "--", color=color, lw=0.8)


def _band(ax, x, samples, label, **kw):
    m = np.array([np.mean(s[np.isfinite(s)]) if np.isfinite(s).any() else np.nan for s in samples])
    sd = np.array([np.std(s[np.isfinite(s)]) if np.isfinite(s).any() else np.nan for s in samples])
    line, = ax.plot(x, m, label=label, **kw)
    ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.2)
    return line


def fig_norm_vs_depth(out, sizes, seed, device):
    plt = _plt()
    n, depths, b = sizes["n"], sizes["depths"], sizes["B"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    g = generator(derive_seed(seed, "fig_norm_vs_depth"), device)
    for s2 in (0.5, 2.0, 4.0):
        ens = Ensemble(n, depths[-1], sigma2=s2, gates="relu", batch=b)
        ln = log_norms_at(ens, depths, g, device)
        line = _band(ax[0], depths, [ln[L] for L in depths], f"σ²={s2} (ReLU MLP)")
        g1 = ens.lyapunov_exponents(1)[0]
        ax[0].plot(depths, [0.5 * math.log(masked_product_edge(L, 0.5, s2)) for L in depths], ":", color=line.get_color())
        ax[0].plot(depths, [L * g1 for L in depths], "--", color=line.get_color(), lw=0.8)
        if s2 == 2.0:
            _band(ax[1], depths, [ln[L] for L in depths], "measured (mean ± sd)")
            ax[1].plot(depths, [0.5 * math.log(masked_product_edge(L, 0.5, 2.0)) for L in depths], ":",
                       label="free-limit edge ½ log λ_max(L, ½, 2) (n→∞)")
            ax[1].plot(depths, [L * g1 for L in depths], "--", label=f"L γ₁(n={n}) (lower bracket)")
            ax[1].plot(depths, [L * g1 + 0.5 * (math.log(n / 2) + 1.96) for L in depths], "-.", lw=0.8,
                       label="L γ₁ + Δ_n (upper bracket)")
    ax[0].set(xlabel="depth L", ylabel="log ||J||", title="Jacobian norm vs depth (dashed: L γ₁, dotted: free edge)")
    ax[1].set(xlabel="depth L", ylabel="log ||J||", title="critical initialisation σ² = 2")
    for a in ax:
        a.legend(fontsize=7)
    _caption(fig, f"ReLU MLP, width n={n}, {b} networks per point, Gaussian input; seed {seed}. Printed rate L(σ²/2)^L "
                  "is that of ||J||²; ||J|| grows like (σ²/2)^(L/2).")
    _save(fig, out / "norm_vs_depth.png", bottom=0.04)


def fig_random_pruning(out, sizes, seed, device):
    plt = _plt()
    n, depths, b = sizes["n"], sizes["depths"], sizes["B"]
    g = generator(derive_seed(seed, "fig_random_pruning"), device)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    g1 = Ensemble(n, depths[-1], gates="relu", batch=b).lyapunov_exponents(1)[0]  # the unpruned model's
    for s in (0.0, 0.5, 0.9, 0.99):
        for a, scaled in zip(ax, (False, True)):
            pr = None if s == 0 else Pruning("random", s, random_pruning_scale(s) if scaled else 1.0)
            ln = log_norms_at(Ensemble(n, depths[-1], gates="relu", batch=b, pruning=pr), depths, g, device)
            line = _band(a, depths, [ln[L] for L in depths], f"s={s}")
            if not scaled and s:
                _slope_line(a, depths, [ln[L] for L in depths], 0.5 * math.log(1 - s) + g1, line.get_color())
    ax[0].set(xlabel="depth L", ylabel="log ||J||", title="random pruning, unscaled (dashed: slope ½log(1-s)+γ₁)")
    ax[1].set(xlabel="depth L", ylabel="log ||J||", title="scaled by (1-s)^(-1/2)")
    for a in ax:
        a.legend(fontsize=7)
    _caption(fig, f"ReLU MLP, width n={n}, {b} networks per point, σ²=2; seed {seed}. s=0.99 ((1-s)n = {0.01 * n:.1f}) is "
                  "below the edge of stability: networks collapse (J = 0, log = -inf, not drawn) within a few layers.")
    _save(fig, out / "random_pruning.png", bottom=0.04)


def fig_magnitude_pruning(out, sizes, seed, device):
    plt = _plt()
    n, depths, b = sizes["n"], sizes["depths"], sizes["B"]
    g = generator(derive_seed(seed, "fig_magnitude_pruning"), device)
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    titles = ("no scaling", "scale (1-s)^(-1/2)", "scale t_n (Thm 6)")
    unpruned = Ensemble(n, depths[-1], gates="relu", batch=b)
    for a, title, kind in zip(ax.flat[:3], titles, ("one", "random", "magnitude")):
        for s in (0.5, 0.8, 0.9):
            t = magnitude_pruning_scale(n, s)
            c = {"one": 1.0, "random": random_pruning_scale(s), "magnitude": t}[kind]
            ln = log_norms_at(unpruned.with_(pruning=Pruning("magnitude", s, c)), depths, g, device)
            line = _band(a, depths, [ln[L] for L in depths], f"s={s}")
            _slope_line(a, depths, [ln[L] for L in depths], math.log(c / t) + unpruned.lyapunov_exponents(1)[0],
                        line.get_color())
        a.set(xlabel="depth L", ylabel="log ||J||", title=f"magnitude pruning, {title}")
        a.legend(fontsize=7)
    sp = np.linspace(0.0, 0.99, 60)
    ax[1, 1].plot(sp, [random_pruning_scale(s) for s in sp], label="(1-s)^(-1/2) (random pruning)")
    ax[1, 1].plot(sp, [magnitude_pruning_scale(n, s) for s in sp], label=f"t_n exact (n={n})")
    ax[1, 1].plot(sp, [magnitude_pruning_scale(n, s, exact=False) for s in sp], ":", label="t_∞ limit")
    ax[1, 1].set(xlabel="sparsity s", ylabel="scale factor", yscale="log", title="scale factors")
    ax[1, 1].legend(fontsize=7)
    _caption(fig, f"ReLU MLP, width n={n}, {b} networks per point, σ²=2; dashed: predicted slope γ₁ + log(c/t_n); seed {seed}.")
    _save(fig, out / "magnitude_pruning.png", bottom=0.03)


def fig_correlation(out, sizes, seed, device):
    plt = _plt()
    n, depths, b = sizes["n"], sizes["depths"], sizes["B"]
    g = generator(derive_seed(seed, "fig_correlation"), device)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for a, gates in zip(ax, ("relu", "bernoulli")):
        for eta in (0.0, 2**-8, 2**-7, 2**-4, 2**-2):
            ln = log_norms_at(Ensemble(n, depths[-1], gates=gates, batch=b, eta=eta), depths, g, device)
            _band(a, depths, [ln[L] for L in depths], f"η={eta:g} (η√n={eta * math.sqrt(n):.2g})")
        a.set(xlabel="depth L", ylabel="log ||J||", title=f"correlated weights W_ind + η w ({gates})")
        a.legend(fontsize=7)
    _caption(fig, f"width n={n}, {b} networks per point, σ²=2; Thm 8's regime corr=η² << 1/(n log³n) = "
                  f"{1 / (n * math.log(n) ** 3):.1e}; seed {seed}.")
    _save(fig, out / "correlation.png", bottom=0.04)


def fig_edge_of_stability(out, sizes, seed, device):
    plt = _plt()
    widths, b, l1, l2 = sizes["edge_widths"], sizes["B"], 5, 45
    degrees = (1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.3, 16.0)
    g = generator(derive_seed(seed, "fig_edge"), device)
    from .experiments import STABILITY_THRESHOLD, crossing, pruning_departure_sweep
    from .predictions import EDGE_DENSITY_VACUOUS_BELOW

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    stars = []
    for n in widths:
        reference, samples, _ = pruning_departure_sweep(n, b, l1, l2, [d / n for d in degrees], g, device)
        dev = [np.median(s) - np.median(reference) for s in samples]
        stars.append(crossing(list(reversed(degrees)), list(reversed(dev)), STABILITY_THRESHOLD) / n)
        dev = np.maximum(np.abs(np.array(dev)), 1e-4)
        ax[0].plot(degrees, np.where(np.isfinite(dev), dev, 10.0), "o-", label=f"n={n}")
    ax[0].axhline(STABILITY_THRESHOLD, color="k", ls=":", label=f"threshold {STABILITY_THRESHOLD} per layer")
    ax[0].set_xscale("log")
    ax[0].xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax[0].xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    ax[0].set_xticks([1.4, 2, 4, 8, 16])
    ax[0].set(yscale="log", xlabel="(1-s) n (expected kept weights per row)",
              ylabel="|Δ per-layer rate| (collapse drawn at 10)", title="scaled random pruning: departure from iid")
    ax[0].legend(fontsize=7)
    ns = np.geomspace(16, 4096, 50)
    ax[1].plot(ns, [edge_of_stability_density(int(v)) for v in ns], label="log(n)^5/n (Thm 5, sufficient)")
    ax[1].plot(widths, stars, "o", label=f"measured transition ρ*(n) (left panel, threshold {STABILITY_THRESHOLD})")
    ax[1].plot(ns, np.exp(np.mean(np.log(np.array(stars) * np.array(widths)))) / ns, ":", label="c/n through the points")
    ax[1].axhline(1.0, color="k", ls=":", lw=0.8)
    ax[1].set(xscale="log", yscale="log", xlabel="width n", ylabel="density 1-s", title="edge of stability")
    ax[1].legend(fontsize=7)
    _caption(fig, f"gated model p=½, σ²=2, {b} networks, slope over depths {l1}-{l2}; seed {seed}. "
                  f"log(n)^5/n exceeds 1 (allows no pruning) for every n below {EDGE_DENSITY_VACUOUS_BELOW:,}.")
    _save(fig, out / "edge_of_stability.png", bottom=0.04)


def fig_lyapunov(out, sizes, seed, device):
    plt = _plt()
    g = generator(derive_seed(seed, "fig_lyapunov"), device)
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    n, k = 64, 32
    for p, gates in ((1.0, "none"), (0.5, "bernoulli"), (0.5, "relu")):
        kk = k if p == 1 else 16
        ens = Ensemble(n, 100, sigma2=2.0, gates=gates, batch=16)
        est = qr_exponents(ens, kk, g, device)
        ax[0].plot(range(1, kk + 1), est.mean(0), "o", ms=3, label=f"QR, {gates} (p={p})")
        ax[0].plot(range(1, kk + 1), ens.lyapunov_exponents(kk, max_dropout=1.0), "-", lw=0.8)
    ax[0].set(xlabel="k", ylabel="γ_k", title=f"Lyapunov exponents, n={n}, σ²=2 (lines: closed form)")
    ax[0].legend(fontsize=7)
    n2 = 12
    depths = [6, 12, 24, 48, 96, 192]
    ens = Ensemble(n2, depths[-1], sigma2=2.0, gates="none", batch=64)
    at = log_singular_values_at(ens, depths, 3, g, device)
    gam, corr = ens.lyapunov_exponents(3), ens.finite_depth_correction(3)
    fine = np.geomspace(depths[0], depths[-1], 60)
    for i in range(3):
        line, = ax[1].plot(depths, [np.mean(at[L][:, i]) / L for L in depths], "o", label=f"(1/L) E log s_{i + 1}")
        ax[1].axhline(gam[i], color=line.get_color(), ls="--", lw=0.8)
        ax[1].plot(fine, gam[i] + corr[i] / fine, ":", color=line.get_color(), lw=1.0)
    ax[1].set(xscale="log", xlabel="depth L", ylabel="(1/L) log s_k",
              title=f"γ_k (dashed), γ_k + (d_k-1 - d_k)/L (dotted); n={n2}, p=1")
    ax[1].legend(fontsize=7)
    # Fig. 3: the finite-depth residual times L against k, every k (the product SVD below the explicit floor), and
    # the derived constants d_k-1 - d_k (antisymmetric: b_n+1-k = -b_k)
    for n3, p, gates, depth, kk in ((16, 1.0, "none", 128, 16), (32, 1.0, "none", 256, 32),
                                    (64, 0.5, "bernoulli", 256, 4)):
        ens = Ensemble(n3, depth, sigma2=2.0, keep_prob=p, gates=gates, batch=32)
        off = finite_depth_offsets(ens, kk, 8, g, device)["offset"]
        line = ax[2].errorbar(range(1, kk + 1), off.mean(0), yerr=2 * off.std(0) / math.sqrt(len(off)), fmt="o", ms=3,
                              capsize=2, label=f"E log s_k - L γ_k, n={n3}, p={p}, L={depth}")
        ax[2].plot(range(1, kk + 1), ens.finite_depth_correction(kk), "_", ms=9, color=line[0].get_color())
    ax[2].axhline(0.0, color="k", ls=":", lw=0.8)
    ax[2].set(xlabel="k", ylabel="L ((1/L) log s_k - γ_k)",
              title="finite-depth constants (bars: d_k-1 - d_k, derived)")
    ax[2].legend(fontsize=7)
    _caption(fig, f"16-64 networks (32 per constant, 8 frames each, ±2 standard errors); seed {seed}.")
    _save(fig, out / "lyapunov.png", bottom=0.04)


def fig_alignment(out, sizes, seed, device):
    plt = _plt()
    g = generator(derive_seed(seed, "fig_alignment"), device)
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4.2))
    for n, gates in ((8, "none"), (48, "bernoulli"), (48, "relu")):
        L = 100
        lengths = list(range(5, 96, 10))
        ens = Ensemble(n, L, sigma2=2.0, gates=gates, batch=64, input_gate=gates != "bernoulli")
        log_sin, _ = alignment_profile(ens.factors(g, device=device, jacobian_only=True), lengths, 1)
        vals = [float(np.mean(log_sin[l])) for l in lengths]
        line, = ax.plot(lengths, vals, "o-", label=f"{gates}, n={n}")
        gm = ens.lyapunov_exponents(2)
        ax.plot(lengths, [vals[2] - (l - lengths[2]) * (gm[0] - gm[1]) for l in lengths], "--", color=line.get_color(), lw=0.8)
    ax.set(xlabel="shared length l (factors at the output end)", ylabel="E log sin θ(u₁(J), u₁(A_l))",
           title="at init (dashed: slope -(γ₁-γ₂))")
    ax.legend(fontsize=7)
    depth, batch, steps, samples = sizes["align_train"]
    lengths = list(range(5, depth - 29, 5))
    initial, trained, ratio = trained_fixed_gates_network(depth, batch, steps, samples, g, device)
    for label, factors in (("init", initial), ("trained", trained)):
        for k, style in ((1, ":"), (10, "o-")):
            log_sin, _ = alignment_profile(factors, lengths, k)
            bx.plot(lengths, [float(np.mean(log_sin[l])) for l in lengths], style, label=f"{label}, top-{k} subspace",
                    color="C0" if label == "init" else "C1")
    bx.set(xlabel="shared length l", ylabel="E log ||sin Θ_k(J, A_l)||",
           title="fixed-gates network, digits (Haas Fig. 5)")
    bx.legend(fontsize=7)
    # Haas Fig. 4: the top log singular values of the input-side intermediate Jacobians B_l, init and trained
    ls = list(range(5, depth + 1, 5))
    k = 10
    colours = plt.cm.viridis(np.linspace(0.9, 0.1, k))
    for label, factors, style in (("init", initial, ":"), ("trained", trained, "-")):
        at = prefix_log_singular_values(factors, ls, k)
        for i in range(k):
            cx.plot(ls, [float(np.mean(at[l][:, i])) for l in ls], style, color=colours[i], lw=1.0,
                    label=label if i == 0 else None)
    cx.set(xlabel="l (factors from the input end)", ylabel="E log s_k(B_l)",
           title="top 10 of B_l, init (dotted) and trained (Haas Fig. 4)")
    cx.legend(fontsize=7)
    _caption(fig, f"left: depth 100, 64 networks, σ²=2. middle, right: width 64, p=1/2, depth {depth}, {batch} networks, "
                  f"{steps} GD steps on {samples} digits, final/initial loss {float(ratio.mean()):.2f}; seed {seed}.")
    _save(fig, out / "alignment.png", bottom=0.05)


def fig_training(out, sizes, seed, device):
    from .ensembles import sample_weights
    from .training import train_mlp

    plt = _plt()
    g = generator(derive_seed(seed, "fig_training"), device)
    n, L, b, steps = sizes["train"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ws = [sample_weights(b, n, 2.0, g, device=device) for _ in range(L)]
    x = torch.randn(b, 64, n, generator=g, device=device, dtype=torch.float64)
    z = x @ (torch.randn(b, n, n, generator=g, device=device, dtype=torch.float64) / math.sqrt(n)).mT
    for lr in (0.3, 0.1, 0.01, 1 / (n * math.log(n) ** 1.5)):
        run = train_mlp(ws, x, z, lr, steps, record_every=max(1, steps // 50))
        m = run.log_norm.mean(1)
        se = run.log_norm.std(1) / math.sqrt(b)
        line, = ax.plot(run.steps, m, label=f"lr={lr:.3g}")
        ax.fill_between(run.steps, m - se, m + se, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="GD step", ylabel="log ||J|| (reference input), mean ± s.e.", title="Jacobian norm along training")
    ax.legend(fontsize=7)
    _caption(fig, f"ReLU MLP n={n}, L={L}, {b} networks, 64 samples, linear targets; smallest lr = 1/(n log^1.5 n); seed {seed}.")
    _save(fig, out / "training.png", bottom=0.05)


def fig_low_rank(out, sizes, seed, device):
    """Haas Fig. 1: the top-15 log singular values of J along training on a rank-10 target, and on a full-rank one."""
    plt = _plt()
    g = generator(derive_seed(seed, "fig_low_rank"), device)
    n, L, r, b, steps = sizes["low_rank"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    path = low_rank_regression_path(n, L, [r] * b + [n] * b, 4 * n, steps, g, device, k=15,
                                    record_every=max(1, steps // 60))
    for ax, rank, part in zip(axes, (r, n), (slice(0, b), slice(b, 2 * b))):
        mean = path.log_s[:, part].mean(axis=1)
        colors = plt.cm.viridis(np.linspace(1, 0, mean.shape[1]))  # brighter = larger, as in the paper
        for k in range(mean.shape[1]):
            ax.plot(path.steps, mean[:, k], color=colors[k], lw=1.6 if k == r - 1 else 0.9)
        ax.set(xlabel="GD step (lr = 1/λ_max of each network's loss Hessian)",
               title=f"target of rank {rank}" + (" (full)" if rank == n else ""))
    axes[0].set_ylabel(f"log s_k, k = 1..15 (mean over {b} networks)")
    _caption(fig, f"Fixed-gates linear network n={n}, L={L}, p=1/2, σ²=2, {4 * n} Gaussian inputs, targets G H x / n of "
                  f"rank {r} (left) or full (right); the thick line is s_{r}; seed {seed}.")
    _save(fig, out / "low_rank_emergence.png", bottom=0.06)


def fig_trainability(out, sizes, seed, device):
    """Full App. G.4-G.6 (Figs 13, 15, 17 left) on the digits: training accuracy after a fixed budget at one rate
    per index against log||J|| at init over a grid of σ² (left), and against depth for the pruned (with and without
    the scale, and at the edge) and correlated variants of the critical network (right)."""
    plt = _plt()
    g = generator(derive_seed(seed, "fig_trainability"), device)
    depth, b, samples, steps, sigma2s = sizes["trainability"]
    res = trainability_at_one_rate(depth, sigma2s, b, samples, steps, g, device)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sigma2s)))
    for s2, color in zip(sigma2s, colors):
        ax[0].scatter(res.log_norm0[s2], res.accuracy[s2], color=color, label=f"σ² = {s2:g}", s=18)
    ax[0].axhline(0.1, color="grey", lw=0.8, ls=":")
    ax[0].set(xlabel="log ||J|| at init (first training digit)", ylabel=f"training accuracy after {steps} GD steps",
              title=f"Trainability at depth {depth} (ReLU MLP, digits)")
    ax[0].legend(fontsize=7)
    depths, vb, vsteps = sizes["trainability_variants"]
    variants = appendix_g_variants()  # the check's (test_trainability.py)
    runs = [trainability_of_variants(d, variants, vb, samples, vsteps, g, device, reference="critical") for d in depths]
    for name in variants:
        acc = np.array([r.accuracy[name] for r in runs])
        ax[1].errorbar(depths, acc.mean(1), yerr=2 * acc.std(1, ddof=1) / math.sqrt(vb), fmt="o-", ms=4, capsize=2,
                       label=name)
    ax[1].axhline(0.1, color="grey", lw=0.8, ls=":")
    ax[1].set(xlabel="depth L", ylabel=f"training accuracy after {vsteps} GD steps",
              title="Pruned (s = 3/4; edge: (1-s)n = 2) and correlated (η√n = 4) variants")
    ax[1].legend(fontsize=7)
    _caption(fig, f"Width 64, {samples} digits per network; left: {b} networks per σ² sharing directions; right: {vb} "
                  f"per variant and depth, built from one critical network each (±2 standard errors); one rate per "
                  f"index: 1/λ_max of the critical network's loss Hessian, re-estimated every 100 steps; diverged = "
                  f"chance (dotted); seed {seed}.")
    _save(fig, out / "trainability.png", bottom=0.06)


def fig_cnn_trainability(out, sizes, seed, device):
    """Full App. G.6 (Fig. 17 left) on the digits: the circular CNN's training accuracy after a fixed budget at one
    rate per index against log||J|| at init over a grid of σ² (the check's :class:`CNNOnDigits`, 8 maps)."""
    from .convolution import CNNOnDigits

    plt = _plt()
    g = generator(derive_seed(seed, "fig_cnn_trainability"), device)
    depth, b, samples, steps, sigma2s = sizes["cnn_trainability"]
    network = CNNOnDigits()  # the check's (test_initialization.py): 8 maps, 3x3 kernels
    res = trainability_at_one_rate(depth, sigma2s, b, samples, steps, g, device, network=network, every=50)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sigma2s)))
    for s2, color in zip(sigma2s, colors):
        ax.scatter(res.log_norm0[s2], res.accuracy[s2], color=color, label=f"σ² = {s2:g}", s=18)
    ax.axhline(0.1, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="log ||J|| at init (first training digit)", ylabel=f"training accuracy after {steps} GD steps",
           title=f"Trainability at depth {depth} (circular ReLU CNN, digits)")
    ax.legend(fontsize=7)
    _caption(fig, f"{network.channels} maps of 8x8, 3x3 kernels N(0, σ²/(9c)), no pooling; {samples} digits per "
                  f"network, {b} networks per σ² sharing directions; one rate per index: 1/λ_max of the critical "
                  f"network's loss Hessian, re-estimated every 50 steps (the check's rule); diverged = chance (dotted); "
                  f"seed {seed}.")
    _save(fig, out / "trainability_cnn.png", bottom=0.1)


SIZES = Sizes(
    quick=dict(n=128, depths=[1, 5, 10, 20, 40, 60, 80, 100], B=8, edge_widths=(32, 64, 128), train=(32, 4, 8, 200),
               align_train=(70, 16, 150, 256), low_rank=(64, 10, 10, 4, 4000),
               trainability=(16, 6, 32, 600, (1.0, 1.4, 2.0, 2.8, 4.0)), trainability_variants=((1, 2, 4, 8), 6, 300),
               cnn_trainability=(12, 4, 16, 300, (1.0, 1.4, 2.0, 2.8, 4.0))),
    full=dict(n=256, depths=[1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], B=32, edge_widths=(64, 128, 256, 512),
              train=(256, 8, 8, 2000), align_train=(100, 32, 400, 512), low_rank=(64, 10, 10, 32, 12000),
              trainability=(48, 16, 256, 3000, (1.0, 1.4, 2.0, 2.8, 4.0)),
              trainability_variants=((1, 4, 8, 16, 32), 16, 2000),
              cnn_trainability=(12, 16, 16, 300, (1.0, 1.4, 2.0, 2.8, 4.0))),
)

FIGURES = [fig_norm_vs_depth, fig_random_pruning, fig_magnitude_pruning, fig_correlation, fig_edge_of_stability,
           fig_lyapunov, fig_alignment, fig_training, fig_low_rank, fig_trainability, fig_cnn_trainability]


def write_figures(out, profile: str = "quick", seed: int = 0, device: str = "cpu", progress=print):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for fig in FIGURES:
        progress(f"figure {fig.__name__[4:]} ...")
        fig(out, SIZES.of(profile), seed, device)
    return sorted(out.glob("*.png"))


if __name__ == "__main__":  # python -m theorems.figures DIR [quick|full]
    write_figures(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "quick")
