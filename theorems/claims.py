"""The claim registry.  :data:`CLAIMS` holds this suite's claims: every claim id with its source, the statement as
printed (quoted from the pinned version), the reading the suite tests, its named further statements and errata.
``docs/claims.md`` is generated from it (``python -m theorems.docs``) and a test keeps the two equal.

A run knows the claims registered in it: this suite's ``conftest.py`` registers :data:`CLAIMS`
(:func:`register_claims`); a project using the plugin registers its own with :func:`register_claim`.  A check declares
its claim with ``@pytest.mark.claim("id")`` (an unregistered id fails at collection); ``pytest
--theorems-claims-coverage`` (and ``checks/core/test_registry.py``) fails when a registered claim has no check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Claim", "Statement", "CLAIMS", "PINNED_VERSIONS", "MAIN", "register_claim", "register_claims",
           "registered_claims"]

#: The statement a check tests when its ``claim`` marker names none: the claim's own printed sentence.
MAIN = "main"

#: The texts each ``version`` key refers to (cited by authors and title; the suite pins these versions).
PINNED_VERSIONS = {
    "full": "Anonymous, 'A theoretical study of the Jacobian matrix in deep neural networks', ICLR submission under "
    "double-blind review, full text with appendices A-G - the version this suite pins",
    "summary": "B. Dadoun, S. Hayou, H. Salam, M. E. A. Seddik, P. Youssef, 'On the Stability of the Jacobian Matrix in "
    "Deep Neural Networks' (the later version of the same work; its summary and abstract)",
    "haas": "N. Haas, F. Gatine, A. M. Cosse, Z. Bouraoui, 'Why Deep Jacobian Spectra Separate: Depth-Induced Scaling "
    "and Singular-Vector Alignment' (its summary, abstract and key results)",
}


@dataclass(frozen=True)
class Statement:
    """A further sentence of a claim that a check tests on its own (``@pytest.mark.claim(id, statement=name)``),
    attributed to the text that prints it: e.g. an n -> inf approximation and the finite-n remark beside it, or the
    theorem and a summary's paraphrase of it.  Each gets its own verdict in the report."""

    source: str
    printed: str
    reading: str


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    version: str
    printed: str
    reading: str
    #: Sentences of the paper contradicted by the paper's own derivation (a typo-level slip, not a false theorem):
    #: recorded with the verdict, shown by a strict xfail check marked ``erratum``; they do not refute the claim.
    errata: tuple = ()
    #: Named further statements (:class:`Statement`), each with its own checks and verdict.
    statements: dict = field(default_factory=dict)


CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in [
        Claim("critical-init", "full Thm 1", "full",
              "||J_1|| ≈ Θ_L(L (σ_w²/2)^L); in particular σ_w² = 2 guarantees stability.",
              "Per-layer slope of E log||J|| in L equals gamma_1(n, 1/2, σ²) (-> ½ log(σ²/2) as n -> inf); at σ² = 2 "
              "the depth prefactor: E||J||² grows like L (||J|| like √L). As printed, the rate (σ²/2)^L is tested against "
              "½ log(σ²/2) per layer and Θ(L) for ||J|| against the measured exponent of E||J||².",
              statements={
                  "trainability": Statement(
                      "full App. G.5, Fig. 15 (left)",
                      "The critical initialization σ_w² = 2 guarantees trainability up to depth 100 (MLP of width 256 "
                      "on MNIST, SGD with learning rate 0.001, 70 epochs), where σ_w² = 1 and σ_w² = 4 are not "
                      "trainable at depth.",
                      "On the shipped 8x8 digits (MNIST cannot be downloaded here): ReLU MLPs of width 64 at σ² = 1, 2 "
                      "and 4 sharing their weights' directions (W = sqrt(σ²/2) W_2) and their 16 training digits, "
                      "full-batch GD for 500 steps with one learning rate per triple, 1/λ_max of the critical "
                      "network's loss Hessian re-estimated every 100 steps (the paper's one rate for all σ²): at "
                      "depth 16 the critical network's training accuracy is significantly above both others'; at "
                      "depth 1 all three train (control)."),
                  "trainability-cnn": Statement(
                      "full App. G.6, Figs 16-17",
                      "The critical initialization given by σ_w² = 2 guarantees trainability up to depth L = 35 (VGG "
                      "with circular padding on CIFAR10, weights N(0, σ_w²/(c k²)), SGD); large values of the Jacobian "
                      "norm lead to numerical instability which makes the network untrainable (Fig. 17 left: σ_w² "
                      "varied between 1 and 3).",
                      "On the shipped 8x8 digits (CIFAR10 cannot be downloaded here): circular ReLU CNNs (8 maps of "
                      "8x8, 3x3 kernels N(0, σ²/(9c)), stride 1, no pooling and no dense head, so that every layer is "
                      "a square factor of the spectral core; the class read from the first 10 outputs) at σ² = 1, 2 "
                      "and 4 sharing their kernels' directions and 16 training digits, full-batch GD for 300 steps "
                      "with one learning rate per triple (1/λ_max of the critical network's loss Hessian, re-estimated "
                      "every 50 steps): at depth 12 the critical network's training accuracy is significantly above "
                      "both others'; at depth 3 all three train (control). Full profile only (its cost)."),
              }),
        Claim("free-limit", "full App. A (proof of Thm 7)", "full",
              "Thm 7 is proved by comparing ||J_k^pruned|| and ||J_k|| with the norm of their common free-probability "
              "limit (Brailovskaya & van Handel, Thm 2.16, under 2E[HH*] = Id); the theorem itself states only "
              "lim ||J_k^pruned|| - ||J_k|| = 0.",
              "||J||² -> lambda_max(L, p, σ²) (closed form 1), by extrapolation in n.",
              statements={
                  "semicircular-limit": Statement(
                      "summary (its one-paragraph account of the stability theorem; full Thm 7 states only "
                      "||J^pruned|| - ||J|| -> 0)",
                      "||J_k^B|| converges to the norm of a product of semicircular elements ||s_k ··· s_L||.",
                      "The printed limit under the theorem's normalisation (2E[HH*] = Id: semicirculars of variance 1/2)."),
              }),
        Claim("stability-theorem", "full Thm 7", "full",
              "Under (i)-(iii), lim_{n->inf} ||J_k^pruned|| - ||J_k|| = 0.",
              "For instances meeting (i)-(iii) (scaled random and magnitude pruning, bounded non-binary masks, weak "
              "correlation) the gap E log||J^B|| - E log||J|| extrapolates to 0 as n grows."),
        Claim("random-pruning-scaling", "full Thm 5", "full",
              "Scaling by (1-s_n)^(-1/2) gives lim ||J~^pruned|| - ||J^iid|| ≈ 0; unscaled ||J^pruned|| ∝ "
              "Θ~_L((1-s_n)^((L-1)/2)).",
              "Scaled: gap -> 0 in n; unscaled: per-layer slope ½ log(1-s) + gamma_1.",
              statements={
                  "trainability": Statement(
                      "full App. G.4, Figs 13-14",
                      "The normalization procedure significantly improves the trainability of the network after "
                      "pruning. The edge of stability can also be observed in terms of trainability as predicted in "
                      "Theorem 5 (MLP of width 256 on Fashion-MNIST, learning rate 0.01).",
                      "On the shipped 8x8 digits: ReLU MLPs of width 64 randomly pruned at init (mask kept during "
                      "training) at s = 3/4, with and without the (1-s)^-1/2 scale, and scaled at the edge (1-s) n = 2, "
                      "all built from one critical network per index and trained on its 16 digits by full-batch GD at "
                      "one rate per index (1/λ_max of the unpruned critical network's loss Hessian, re-estimated every "
                      "100 steps): at depth 8 the scaled network's training accuracy is significantly above the "
                      "unscaled one's, and the edge network's significantly below the scaled one's at s = 3/4."),
              }),
        Claim("edge-of-stability", "full §5.1 (after Thm 5), Fig. 3", "full",
              "When 1-s_n ~ 1/n up to a logarithmic factor the stability result no longer holds; 1-s_n >> log(n)^5/n is "
              "a sufficient condition, and 'it is highly likely that phase transition occurs at a smaller threshold'.",
              "The transition density rho*(n) scales like n^-1 up to logs (exponent with CI). The sufficient condition "
              "log(n)^5/n is vacuous (>= 1) for n < 3.3e5, so it is reported as a measurement (its ratio to the measured "
              "rho* per width: how conservative it is), not tested; exactly zero Jacobians are a reported outcome."),
        Claim("magnitude-pruning-scaling", "full Thm 6, App. E", "full",
              "With t_n^-2 = n^-2 Σ_{j<=r} E Φ^-1(1-B_n^(j)), lim ||t_n^L J^pruned|| - ||J^ind|| ≈ 0; "
              "(1-s_n)^(-1/2) does not restore stability.",
              "t_n from the exact sum, its limit and the empirical retained energy agree; scaled gap -> 0; the wrong "
              "scale c drifts at log(c/t) per layer."),
        Claim("correlated-weights", "full Thm 8, App. F", "full",
              "corr(W^ij, W^ml) = o(n^-1 log(n)^-3) gives lim ||J_1|| - ||J_1^iid|| ≈ 0.",
              "Gap small inside the regime; the empirical threshold eta*(n) and its exponent in n, MLP and gated model; "
              "the paper's Fig. 5 (eta in {2^-8, 2^-7} at n = 256 keeps log||J|| within sampling error of iid for L <= 40).",
              statements={
                  "trainability": Statement(
                      "full App. G.5, Fig. 15 (right)",
                      "When the correlation is low, the network remains trainable for large depths, which is not the "
                      "case for high correlation levels (MLP of width 256 on Fashion-MNIST, SGD with learning rate "
                      "0.001, 70 epochs).",
                      "On the shipped 8x8 digits, in the same runs as random-pruning-scaling's trainability: the "
                      "correlated network W_2 + eta w at eta sqrt(n) = 4 (correlation 0.2, far outside Thm 8's regime) "
                      "against the iid critical network it is built from (eta = 0): at depth 8 its training accuracy "
                      "is significantly lower."),
              }),
        Claim("approx-gates", "full Approx. 1", "full",
              "In the infinite-width limit the diagonal entries of D_k behave as iid Bernoulli(1/2), independent of W.",
              "Binomial test of P(d=1)=1/2; chi-square independence p-values ~ Uniform; D_l independent of W_{l+1}; the "
              "correlation of (T_W(l), T_D(l)) vanishes as n grows (fitted rate); the same tests reject at eta = 0.9.",
              statements={
                  "finite-n-remarks": Statement(
                      "full App. G.1 (n = 100)",
                      "Fig. 7: no clear correlation between T_W = frac(W_l > 0) and T_D = frac(D_l = 1) at n = 100; with "
                      "weak correlation (eta = 0.1) Approximation 1 is still a good approximation.",
                      "The Pearson test of (T_W(l), T_D(l)) and the gate tests at eta = 0.1, at the paper's n = 100, N = 1000."),
              }),
        Claim("approx-trained-gates", "full Approx. 2, App. G.2", "full",
              "Given t, the diagonal entries of D_k^t' behave as iid Bernoulli(1/2) for t' <= t, independent of W^t'.",
              "Approx. 2 as the n -> inf statement it is (fixed t, lr = c/n as the paper's justification says): the shift "
              "of P(d=1) at the training input over t steps vanishes as n grows (exponent in n significantly negative); "
              "at a fixed lr it does not (control).",
              statements={
                  "finite-n-remarks": Statement(
                      "full App. G.2 (n = 100, t = 4000, lr = 1e-4)",
                      "Fig. 10: with the trained weights at iteration t = 4000 and lr 1e-4, 'it appears that Approximation "
                      "2 is still a good approximation'.",
                      "The gates at the training input are fair coins after training at the paper's n and lr t = 0.4 "
                      "(binomial test of P(d=1) = 1/2)."),
              }),
        Claim("training-stability", "full Thm 2", "full",
              "If γ = O(n^-1 L^-3), lim ||J_1^t|| - ||J_1^iid|| ≈ Θ~_L(1).",
              "Change of log||J|| over training at lr = c/(n L^3) grows at most like a log factor in L (the printed "
              "absolute change is recorded: inconclusive at finite n)."),
        Claim("stagnation-phase", "full Thm 3", "full",
              "γ < n^-1 log(n)^-3/2 and t = O(n^-1 log(n)^-3/2 γ^-1): lim ||J_1^t|| - ||J_1^iid|| ≈ 0.",
              "Change of log||J|| over the horizon shrinks as n grows; a feature-learning lr moves it."),
        Claim("toy-descent", "full Thm 4, App. D", "full",
              "J_1^t Γ_1^t = x̄² A_t Σ_l' [Π_{l≠l'} w_l^t]²; E A_0 = 1; 'on average (J_1^1)² is smaller than (J_1^0)²' "
              "(App. D: the Jacobian decreases after a step).",
              "The identity against autograd; E A_0 = 1; the sign and first-order size of E[(J^1)² - (J^0)²] by Monte "
              "Carlo.",
              errata=("Main text after Thm 4: 'on average (J_1^t)² is larger than (J_0^t)² for t = 1' is ill-formed (J_0 is "
                      "not defined) and contradicted by the paper's own derivation in App. D ('smaller') and by the descent "
                      "it explains; the Monte Carlo sign agrees with App. D.",)),
        Claim("descent-convergence", "full §4.3, Fig. 2", "full",
              "With a tuned learning rate the Jacobian norm decreases significantly at early training, then converges.",
              "On synthetic data and a small shipped data set: early drop, then relative change over the last half "
              "below a stated level."),
        Claim("lyapunov", "Haas Thm 5.3, Figs 2-3", "haas",
              "(1/L) log s_{k,L} -> gamma_k; closed forms in the masked model; first-order correction O(1/L).",
              "Closed form 2 vs QR estimates (p = 1, 1/2, 1/4; ReLU MLP too); E log||Ju|| = L gamma_1 exactly; "
              "L times the error of the mean of (1/L) log s_k stays bounded.",
              statements={
                  "finite-depth-constants": Statement(
                      "Haas Figs 2-3 (the corrected prediction)",
                      "(1/L) log s_{k,L} compared to gamma_k + (d_{k-1} - d_k)/L.",
                      "d_j = E log|det(V_j^T Q)| = -volume_gap(n, j) (derived: the QR volume of a Haar frame grows like "
                      "L sum gamma_i exactly, and differs from sum log s_i by the frame's overlap with J's right singular "
                      "frame once the spectrum has separated); E log s_k - L gamma_k against d_{k-1} - d_k for every k "
                      "at n = 16, p = 1 (L = 128; s_k from the product SVD below the explicit product's float64 floor) "
                      "and k <= 4 at n = 64, p = 1/2 (the gate dropout caps k); the full profile adds the paper's top "
                      "64 at n = 64, p = 1 (L = 512), k <= 24 at n = 128, p = 1/2, the top 64 at n = 256, p = 1/2 "
                      "(L = 1024), and the ReLU MLP."),
              }),
        Claim("spectral-separation", "Haas Def. 4.7, Fig. 4", "haas",
              "Ordered log singular values separate linearly in depth.",
              "log(s_k/s_{k+1}) grows like L (gamma_k - gamma_{k+1}).",
              statements={
                  "low-rank-emergence": Statement(
                      "Haas Fig. 1 (caption) and abstract ('a mechanistic basis for emergent low-rank Jacobian "
                      "structure')",
                      "Training a fixed-gates linear network (depth 10, width 64) on a synthetic rank-10 regression task "
                      "(Gaussian inputs, targets from a fixed random linear map of rank 10) separates the top 10 "
                      "Jacobian singular values from the rest.",
                      "GD with each network at half its own edge of stability (lr = 1/λ_max of its loss Hessian, "
                      "re-estimated every 100 steps; the rule is fixed before training): log s_r - log s_r+1 grows "
                      "over training, and grows more than the mean gap inside the top r and the mean gap of the four "
                      "below; with a full-rank target the gap at r does not grow (control)."),
                  "separation-after-training": Statement(
                      "Haas Fig. 4 (right) and abstract ('experiments in fixed-gates settings validate the predicted "
                      "scaling')",
                      "The top log singular values of the intermediate Jacobians B_l, as l varies, at initialisation "
                      "and trained in the MNIST setting (p = 1/2): the depth scaling and separation persist after "
                      "training.",
                      "Shipped digits, the fixed-gates network of the trained alignment check (width 64, p = 1/2, "
                      "σ² = 2, depth 100; 400 full-batch GD steps at 0.9 of each network's stability bound): over "
                      "l in [60, 100] the pooled gap of modes 3..10 of B_l grows at the initialisation's rate "
                      "(gamma_3 - gamma_10)/7 (controls: 0 and twice the rate rejected), while training changes the "
                      "top gap's slope (it evens out the learned modes near the output). Full profile only."),
              }),
        Claim("alignment", "Haas §5", "haas",
              "Sufficiently strong separation forces singular-vector alignment in matrix products.",
              "Lemma ||sin Θ(U_k(AB), U_k(A))|| <= (s_{k+1}(A)/s_k(A)) cond(B); intermediate Jacobians' top singular "
              "vectors align with J's at the separation rate, at init and after training on digits (gated and ReLU)."),
        Claim("balanced-dynamics", "Haas Prop. 4.5", "haas",
              "Balancing of M_l = D_l W_l D_{l-1} is preserved by gradient flow.",
              "M_{l+1}^T M_{l+1} - M_l M_l^T is conserved under gradient flow: its drift under GD is O(lr^2) per step.",
              statements={
                  "singular-value-dynamics": Statement(
                      "Haas Prop. 4.5 (its dynamics half; the summary's text breaks off at 'Let J(t) = sum_k s_k(t)')",
                      "Under the balancing condition, J(t) = sum_k s_k(t) u_k v_k^T with ds_k/dt = -L s_k^(2-2/L) "
                      "u_k^T ∇L(J) v_k, the balanced deep linear law, for the masked factors M_l.",
                      "From exactly balanced masked factors (M_l = U_l Σ U_{l-1}^T inside the gates) the gradient-flow "
                      "velocity of each top singular value equals the law to float64 precision; along small-step GD "
                      "the finite differences of s_k follow it with an error of order 1 in lr; the law with power 2 "
                      "(no 1/L) is rejected by both."),
                  "modewise-dynamics": Statement(
                      "Haas abstract and §5 (the approximation regime the alignment results motivate)",
                      "Spectral separation forces an approximately shared singular basis for the intermediate Jacobians, "
                      "so singular-value dynamics become effectively decoupled, mirroring balanced deep-linear analyses "
                      "without requiring balancing.",
                      "Gaussian (unbalanced) masked networks: the exact gradient-flow velocity of s_1 approaches the "
                      "decoupled law -c_1 u_1^T ∇L v_1 with c_1 = sum_l s_1(A_l)² s_1(B_l)² as L (gamma_1 - gamma_2) "
                      "grows (its error at the deepest depth is significantly below the one at a separation of about "
                      "1); the law with the neighbouring mode's projection does not improve. The balanced "
                      "coefficient L s_1^(2-2/L) is recorded: it does not hold without balancing."),
              }),
    ]
}


# --- the run's registry: the claims that checks may name ----------------------------------------------------------

_REGISTRY: dict[str, Claim] = {}


def register_claims(*claims: Claim) -> None:
    """Register :class:`Claim` objects (this suite's ``conftest.py`` registers :data:`CLAIMS` this way).  The same claim
    registered twice is harmless; another claim under a registered id is an error."""
    for c in claims:
        if not isinstance(c, Claim):
            raise TypeError(f"claims must be theorems.claims.Claim objects; got {type(c).__name__}")
        known = _REGISTRY.get(c.id)
        if known is not None and known != c:
            raise ValueError(f"claim id {c.id!r} is already registered with another text ({known.source})")
        _REGISTRY[c.id] = c


def register_claim(claim_id: str, *, source: str, printed: str, reading: str, version: str = "",
                   errata: tuple = (), statements: dict | None = None) -> Claim:
    """Register a claim of your own so that checks can say ``@pytest.mark.claim(claim_id)`` and the report gives it a
    verdict.  ``source``: where it is printed ("Smith et al. 2025, Thm 2"); ``printed``: the sentence as printed;
    ``reading``: what the checks test; ``statements``: further sentences (name -> :class:`Statement`) with their own
    checks (``@pytest.mark.claim(claim_id, statement=name)``) and verdicts; ``errata``: sentences the source's own
    derivation contradicts.  Call it from ``conftest.py`` (it is imported on the xdist controller too)."""
    if not isinstance(claim_id, str) or not claim_id or claim_id != claim_id.strip() or " " in claim_id:
        raise ValueError(f"claim_id must be a non-empty string without spaces; got {claim_id!r}")
    for name, value in (("source", source), ("printed", printed), ("reading", reading)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string; got {value!r}")
    statements = dict(statements or {})
    for name, st in statements.items():
        if name == MAIN or not isinstance(st, Statement):
            raise ValueError(f"statements must map names other than {MAIN!r} to theorems.claims.Statement; got "
                             f"{name!r}: {type(st).__name__}")
    claim = Claim(claim_id, source, version, printed, reading, errata=tuple(errata), statements=statements)
    register_claims(claim)
    return claim


def registered_claims() -> dict[str, Claim]:
    """The claims registered in this process, in registration order."""
    return dict(_REGISTRY)


def claim_from_dict(d: dict) -> Claim:
    """The inverse of ``dataclasses.asdict`` for a :class:`Claim` (claims travel from xdist workers as dicts)."""
    return Claim(d["id"], d["source"], d.get("version", ""), d["printed"], d["reading"], errata=tuple(d.get("errata", ())),
                 statements={k: Statement(**v) for k, v in (d.get("statements") or {}).items()})
