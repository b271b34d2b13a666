"""Power audit: plant small semantic bugs in a copy of the library and check that the quick suite catches each.

    python -m theorems.audit [--only NAME ...] [--workers W] [--out=FILE] [--list]

Each mutation replaces one exact piece of library code (it must occur exactly once) in a fresh copy of the
repository's tracked files and runs the checks expected to catch it (``selection``: pytest arguments, quick
profile, one process each) at the default master seed.  A mutation is *killed* when a check's assertion fails
(AssertionError, or a strict xfail passes); a run that fails with another exception *crashed* (the mutation broke
the code, which says nothing about the checks' power: fix the mutation or the code); a surviving one is a check to
strengthen or a stated limit of the suite.  Writes JSON and a markdown table (default
``reports/audit/<time>.json|.md``).  Mutations run as parallel local processes (``--workers``, default the cores
divided by 2: each run uses two xdist workers).  This is run on demand, not in CI: a full audit takes about
25 x 30-60 s of 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Mutation", "MUTATIONS", "apply_mutation", "main"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    file: str
    old: str
    new: str
    selection: tuple


QR = "checks/claims/test_lyapunov.py::test_qr_exponents_match_closed_form"
INIT = "checks/claims/test_initialization.py"
PRUNING = "checks/claims/test_pruning.py"

MUTATIONS = [
    Mutation("bartlett-dof", "Bartlett's degrees of freedom off by one in closed form 2", "theorems/predictions.py",
             "special.digamma((m[ok] - i + 1 + dof_offset) / 2)", "special.digamma((m[ok] - i + 2 + dof_offset) / 2)",
             (QR,)),
    Mutation("variance-n-plus-1", "closed form 2 with the weight variance σ²/(n+1)", "theorems/predictions.py",
             "0.5 * (math.log(2 * s2 / n) +", "0.5 * (math.log(2 * s2 / (n + 1)) +", (QR,)),
    Mutation("sampler-variance-2pct", "the sampler's weight variance 2% too large", "theorems/ensembles.py",
             "std = math.sqrt(sigma2 / width)", "std = math.sqrt(1.02 * sigma2 / width)", (QR,)),
    Mutation("random-pruning-scale-2pct", "the random-pruning scale (1-s)^-1/2 off by 2%", "theorems/predictions.py",
             "return (1.0 - check_sparsity(sparsity)) ** -0.5", "return 1.02 * (1.0 - check_sparsity(sparsity)) ** -0.5",
             (PRUNING, "-k", "rate or scale or gap")),
    Mutation("magnitude-scale-2pct", "the magnitude-pruning scale t_n off by 2%", "theorems/predictions.py",
             "return (head + middle) ** -0.5", "return 1.02 * (head + middle) ** -0.5",
             (PRUNING, "-k", "scale or gap")),
    Mutation("frobenius-norm", "the Frobenius norm instead of the spectral norm", "theorems/spectral.py",
             "    return log_singular_values(prod, 1)[:, 0]",
             "    return torch.log(torch.linalg.matrix_norm(prod.matrix)) + prod.log_scale", (INIT,)),
    Mutation("relu-gate-misaligned", "ReLU gates taken from the wrong units (rolled by one)", "theorems/ensembles.py",
             "gate = (pre > 0).to(dtype)", "gate = (torch.roll(pre, 1, dims=-1) > 0).to(dtype)",
             ("checks/core/test_ensembles.py", "checks/claims/test_lyapunov.py", "-k",
              "autograd or image_norm or qr_exponents")),
    Mutation("relu-gate-wrong-layer", "ReLU gates of layer l taken from the next layer's pre-activations",
             "theorems/ensembles.py",
             '                pre, _ = normalised(torch.einsum("bij,bj->bi", w, torch.relu(pre)))\n            yield Factor(w, gate)',
             '                pre, _ = normalised(torch.einsum("bij,bj->bi", w, torch.relu(pre)))\n'
             "                gate = (pre > 0).to(dtype) if gate is not None else None\n            yield Factor(w, gate)",
             ("checks/core/test_ensembles.py", "checks/claims/test_lyapunov.py", "-k",
              "autograd or image_norm or qr_exponents")),
    Mutation("gate-keep-prob-2pct", "Bernoulli gates open 2% too often", "theorems/ensembles.py",
             "gate = (u < self.keep_prob).to(dtype)", "gate = (u < 1.02 * self.keep_prob).to(dtype)", (QR,)),
    Mutation("edge-exponent", "closed form 1 with (p + z)^(L-1) instead of (p + z)^L", "theorems/predictions.py",
             "math.log1p(z) + L * math.log(p + z)", "math.log1p(z) + (L - 1) * math.log(p + z)",
             (INIT, "-k", "free_edge or linearly")),
    Mutation("correlation-from-eta", "corr = eta / (1 + eta²) instead of eta² / (1 + eta²)", "theorems/predictions.py",
             "return e * e / (1 + e * e)", "return e / (1 + e * e)",
             ("checks/claims/test_correlation.py", "checks/core/test_ensembles.py", "-k", "scales_like or correlation_law")),
    Mutation("shared-shift-unscaled", "the correlated weights' shared w without its 1/sqrt(n) scale",
             "theorems/ensembles.py", "return w + (eta * math.sqrt(sigma2 / w.shape[-1])) * g", "return w + eta * g",
             ("checks/core/test_ensembles.py", PRUNING, "-k", "weak-correlation or correlation_law")),
    Mutation("random-mask-keeps-2pct-more", "random pruning keeps 2% more weights than 1-s", "theorems/ensembles.py",
             "        keep = 1.0 - pruning.sparsity\n", "        keep = 1.02 * (1.0 - pruning.sparsity)\n",
             (PRUNING, "-k", "rate or gap or gain")),
    Mutation("qr-log-of-square", "QR increments log|R_ii| doubled (log R_ii²)", "theorems/spectral.py",
             "    return torch.log(torch.abs(torch.diagonal(r, dim1=-2, dim2=-1)))",
             "    return 2 * torch.log(torch.abs(torch.diagonal(r, dim1=-2, dim2=-1)))", (QR,)),
    Mutation("renormalisation-drops-scale", "the renormalised product forgets its log scale", "theorems/spectral.py",
             "    return matrix, log_scale + torch.log(norm[:, 0, 0])",
             "    return matrix, log_scale", (INIT, "-k", "gamma1 or linearly")),
    Mutation("free-rate-sigma", "½ log(σ² p) written as log(σ² p)", "theorems/predictions.py",
             "return 0.5 * math.log(check_sigma2(sigma2) * check_keep_prob(keep_prob))",
             "return math.log(check_sigma2(sigma2) * check_keep_prob(keep_prob))",
             (INIT, "-k", "printed_rate")),  # invisible at criticality (σ² p = 1): only off-critical uses can see it
    Mutation("volume-gap-without-half", "the volume gap as E[-log det(Q^T V V^T Q)], without the ½ of |det|",
             "theorems/predictions.py",
             "return float(0.5 * np.sum(special.digamma((n - i + 1) / 2) - special.digamma((k - i + 1) / 2)))",
             "return float(np.sum(special.digamma((n - i + 1) / 2) - special.digamma((k - i + 1) / 2)))",
             ("checks/claims/test_lyapunov.py", "-k", "finite_depth")),
    Mutation("balanced-law-power", "Prop. 4.5's law with the power 2 - 1/L instead of 2 - 2/L", "theorems/predictions.py",
             "power = 2.0 - 2.0 / L if exponent is None", "power = 2.0 - 1.0 / L if exponent is None",
             ("checks/claims/test_training.py", "-k", "deep_linear_law")),
    Mutation("modewise-coefficient-one-sided", "the decoupled law's coefficient sum_l s_k(A_l)² (the B_l factor dropped)",
             "theorems/training.py",
             "    return sum(torch.linalg.svdvals(a)[..., :k] ** 2 * torch.linalg.svdvals(b)[..., :k] ** 2\n",
             "    return sum(torch.linalg.svdvals(a)[..., :k] ** 2 + 0 * torch.linalg.svdvals(b)[..., :k] ** 2\n",
             ("checks/claims/test_training.py", "-k", "decouple")),
    Mutation("frobenius-control-mean-2pct", "the control variate's exact mean E||J||_F²/n = (σ²p)^L 2% too large",
             "theorems/predictions.py", "    m1 = (s2 * p) ** L", "    m1 = 1.02 * (s2 * p) ** L",
             ("checks/core/test_predictions.py", INIT, "-k", "free_edge or first_moment")),
    Mutation("closed-form-gradient-untransposed", "the masked linear gradient A_l^T G B_l instead of A_l^T G B_l^T",
             "theorems/training.py", "torch.matmul(g, before[l].mT, out=out[l])", "torch.matmul(g, before[l], out=out[l])",
             ("checks/claims/test_lyapunov.py", "-k", "rank_r_target or after_training")),
    Mutation("target-rank-off-by-one", "the synthetic targets of rank r + 1 instead of r", "theorems/training.py",
             "        a = torch.randn(batch, n, r, generator=rng, device=device, dtype=torch.float64) @ \\\n"
             "            torch.randn(batch, r, n,",
             "        a = torch.randn(batch, n, r + 1, generator=rng, device=device, dtype=torch.float64) @ \\\n"
             "            torch.randn(batch, r + 1, n,",
             ("checks/claims/test_lyapunov.py", "-k", "rank_r_target")),
    Mutation("product-svd-backward-untransposed", "the product SVD's backward sweep through F_l instead of F_l^T",
             "theorems/spectral.py", "            q, _ = qr_log_diagonal(apply_factor_transpose(factor, q), qr)",
             "            q, _ = qr_log_diagonal(apply_factor(factor, q), qr)",
             ("checks/claims/test_lyapunov.py", "-k", "finite_depth")),
    Mutation("pruned-variant-scale-dropped", "the trainability variants' pruning scale (1-s)^-1/2 not applied",
             "theorems/training.py", "            w = w * by_sparsity[v.pruning.sparsity] * v.pruning.scale",
             "            w = w * by_sparsity[v.pruning.sparsity]", ("checks/claims/test_trainability.py",)),
    Mutation("pruning-mask-not-kept", "pruned weights updated during training (the mask not applied after the update)",
             "theorems/training.py", "                if mask is not None:\n                    w.mul_(mask)",
             "                if False:\n                    w.mul_(mask)",
             ("checks/claims/test_trainability.py", "checks/core/test_ensembles.py", "-k",
              "scale_restores_trainability or keep_their_masks")),
]


def apply_mutation(root: Path, m: Mutation):
    """Apply ``m`` to the copy at ``root``; the replaced text must occur exactly once."""
    path = root / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise ValueError(f"mutation {m.name}: expected exactly one occurrence in {m.file}, found {text.count(m.old)}")
    path.write_text(text.replace(m.old, m.new))


def _copy_tracked(dst: Path):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def run_mutation(m: Mutation) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"audit-{m.name}-") as tmp:
        root = Path(tmp)
        _copy_tracked(root)
        apply_mutation(root, m)
        # the mutated copy, not the installed package; a wide terminal, or pytest drops the reason (" - AssertionError")
        # from a summary line whose node id fills the default 80 columns, and every kill would read as a crash
        env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="1000")
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "2", "-p", "no:cacheprovider",
                              f"--theorems-report-dir={root / 'reports'}", *m.selection], cwd=root, env=env,
                             capture_output=True, text=True)
        lines = [line for line in res.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        failed = [line.split(" ")[1] for line in lines]
        # killed: a check's assertion failed (or a strict xfail passed); any other exception means the mutation broke
        # the code rather than the statistics, which says nothing about the checks' power
        # (a bare ``assert`` of a library test shows as " - assert <expr>" in the summary, not " - AssertionError")
        assertion = [line for line in lines
                     if " - AssertionError" in line or " - assert " in line or "[XPASS(strict)]" in line]
        crashed = [line for line in lines if line not in assertion]
        return {**asdict(m), "killed": bool(assertion) and not crashed, "crashed": bool(crashed),
                "exit_status": res.returncode, "duration_s": round(time.time() - t0, 1), "failed": failed,
                "tail": "" if assertion and not crashed else res.stdout[-600:]}


def render(results: list[dict]) -> str:
    killed = sum(r["killed"] for r in results)
    lines = [f"# Power audit: {killed} of {len(results)} planted bugs killed", "",
             "| bug | what | checks run | killed by |", "|---|---|---|---|"]
    for r in results:
        names = "<br>".join(f"`{f.split('::')[-1]}`" for f in r["failed"])
        by = (names or f"exit {r['exit_status']}") if r["killed"] else (
            f"**crashed** (not a kill): {names}" if r.get("crashed") else "**survived**")
        lines.append(f"| `{r['name']}` | {r['what']} | `{' '.join(r['selection'])}` | {by} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m theorems.audit", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="mutation names (default: all)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="mutations at once (>= 1)")
    p.add_argument("--out", default=None, metavar="FILE", help="JSON output (default reports/audit/<time>.json)")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = p.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.what} ({m.file}; checks: {' '.join(m.selection)})")
        return 0
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        p.error(f"--only: unknown mutations {unknown}; known: {sorted(known)}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1; got {args.workers}")
    chosen = [known[n] for n in args.only] if args.only else MUTATIONS
    for m in chosen:  # every mutation must still apply to the current code, before any run
        text = (ROOT / m.file).read_text()
        if text.count(m.old) != 1:
            p.error(f"mutation {m.name} no longer applies: {m.file} has {text.count(m.old)} occurrences of its text")
    out = Path(args.out) if args.out else ROOT / "reports" / "audit" / (
        _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")
    results = []
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for fut in as_completed([pool.submit(run_mutation, m) for m in chosen]):
            r = fut.result()
            results.append(r)
            status = "killed" if r["killed"] else ("CRASHED" if r.get("crashed") else "SURVIVED")
            print(f"[{len(results)}/{len(chosen)}] {r['name']}: {status} "
                  f"({r['duration_s']:.0f} s) {', '.join(f.split('::')[-1] for f in r['failed'])}", flush=True)
    results.sort(key=lambda r: [m.name for m in chosen].index(r["name"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(render(results))
    print(f"{sum(r['killed'] for r in results)} of {len(results)} killed; wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
