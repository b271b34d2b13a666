"""Measure the suite's false-fail rate: run it at many master seeds and count the failures.

    python -m theorems.calibrate --seeds N [--start S] [--workers W] [--ray ADDRESS|auto] [--out=FILE]
                                 [-- PYTEST_ARGS...]
    python -m theorems.calibrate --pool FILE [FILE ...] [--out=FILE]

Each seed is one ``python -m pytest --seed S`` run of the suite (or of the selection PYTEST_ARGS make) in its own
process, writing its report to a temporary directory; the command gathers, per seed, the exit status, the duration,
the failed checks and a fingerprint of every recorded number, and writes ``FILE`` (JSON, default
``reports/calibration/<time>.json``) and a markdown table next to it (same name, ``.md``):

* ``runs``: per seed ``{seed, exit_status, duration_s, failed: [node ids], fingerprint, slots_used,
  estimated_false_fail}`` (the design's estimated P(spurious failure) from that run's report);
* ``failures_per_check``: node id -> number of seeds at which it failed;
* ``suite_failures``: seeds whose run failed; ``failure_rate`` with its exact (Clopper-Pearson) interval at 95%;
* ``tightest_checks`` / ``weakest_controls``: per node id the closest call over all seeds: the smallest headroom of
  its checks (``Comparison.headroom``) and the largest estimated miss probability of its negative controls, with the
  statistic and the seed (a calibration that passes still shows which checks run near their level);
* ``estimate_spread``: per node id and statistic (its checks and controls), the estimate's spread over the seeds
  against the standard error each run stated: ``{seeds, mean, sd, mean_stderr, sd_over_stderr}`` (near 1 when the
  stated errors are honest; a ratio well above 1 means intervals too narrow, one well below intervals too wide);
* ``flagged``: checks whose failure count is improbable (binomial test, p < 0.01) under their share of the
  budget (the assertion slots they use times ``theorems.budget.PER_ASSERTION_RATE``).

Where the seeds run: by default as parallel local processes (``--workers``, default the cores divided by the
xdist workers of one run).  With ``--ray auto`` (a local Ray instance) or ``--ray ADDRESS`` (an existing cluster,
``host:port``) each seed is one Ray task (``num_gpus=1`` when the cluster has GPUs, so Ray sets
``CUDA_VISIBLE_DEVICES``; for a remote cluster the repository travels as the job's working directory, and its
nodes need the suite's dependencies).  The numbers are identical on both paths: a run's numbers depend only on
its master seed and the node ids.  Ray is the optional extra ``distributed`` and is imported only when asked for.

``--pool`` adds up calibrations made at different times (the 100 seeds a 1% rate needs, gathered over sessions on a
2-core machine): same pytest arguments, no seed twice; failures, intervals, closest calls and the estimates' spread
(means and variances combined exactly from each file's per-statistic summaries) are those of one calibration over
all the seeds, and ``pooled_from`` lists each file with its seeds, place and commit.  Whether the code was the same
is the caller's to show (e.g. the default seed's records unchanged between the commits); the commits are recorded.

Everything is validated before the first seed runs: the counts, the Ray extra and address, and the pytest
arguments (one ``--collect-only`` pass).  A run interrupted with Ctrl-C (or SIGTERM) writes what it has
with ``"complete": false``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from scipy import stats

from .budget import PER_ASSERTION_RATE, SUITE_FALSE_FAIL_RATE
from .reporting import record_number, source_commit

__all__ = ["main", "run_seed", "summarize", "pool", "parse_args", "FLAG_LEVEL"]

ROOT = Path(__file__).resolve().parents[1]
#: A check is flagged when its failure count has a binomial p-value below this under its share of the budget.
FLAG_LEVEL = 0.01
FAILED = ("failed", "error", "xpassed", "incomplete")
#: Rows of the markdown's closest-call tables.
TABLE_ROWS = 12


class CalibrationError(Exception):
    """A usage error, reported as one line before any seed runs."""


def split_pytest_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """A command's own arguments and, after ``--``, pytest's (this command and :mod:`theorems.reference`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_args(argv: list[str]) -> argparse.Namespace:
    own, pytest_args = split_pytest_args(argv)
    p = argparse.ArgumentParser(prog="python -m theorems.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=None, help="number of master seeds (>= 1)")
    p.add_argument("--pool", nargs="+", default=None, metavar="FILE",
                   help="add up these calibration files (same pytest arguments, no seed twice) instead of running")
    p.add_argument("--start", type=int, default=1, help="first master seed (>= 0; default 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="seeds run at once on this machine (>= 1; default: cores / xdist workers per run)")
    p.add_argument("--ray", default=None, metavar="ADDRESS|auto",
                   help="run each seed as a Ray task: 'auto' starts a local Ray instance, host:port joins a cluster")
    p.add_argument("--out", default=None, metavar="FILE", help="JSON output (default reports/calibration/<time>.json)")
    p.add_argument("--cwd", default=str(ROOT), help=argparse.SUPPRESS)
    args = p.parse_args(own)
    args.pytest_args = pytest_args
    if args.pool is not None:
        if args.seeds is not None or args.ray or args.workers is not None or pytest_args:
            p.error("--pool adds up existing files: it takes no --seeds, --workers, --ray or PYTEST_ARGS")
        return args
    if args.seeds is None:
        p.error("--seeds is required (or --pool FILE ... to add up calibrations)")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1; got {args.seeds}")
    if args.start < 0:
        p.error(f"--start must be >= 0; got {args.start}")
    if args.workers is not None and args.workers < 1:
        p.error(f"--workers must be >= 1; got {args.workers}")
    if any(a.split("=")[0] in ("--seed", "--theorems-seed", "--report-dir", "--theorems-report-dir") for a in pytest_args):
        p.error("PYTEST_ARGS must not set --theorems-seed or --theorems-report-dir (or their short aliases): the "
                "command sets both for every run")
    return args


def xdist_workers(pytest_args: list[str]) -> int:
    """The xdist workers one run uses (``-n N``, ``-n auto``, ``-nN``, ``--numprocesses=N``; 1 without)."""
    value = None
    for i, a in enumerate(pytest_args):
        if a in ("-n", "--numprocesses") and i + 1 < len(pytest_args):
            value = pytest_args[i + 1]
        elif a.startswith("--numprocesses="):
            value = a.split("=", 1)[1]
        elif a.startswith("-n") and len(a) > 2:
            value = a[2:]
    if value is None:
        return 1
    if value in ("auto", "logical"):
        return os.cpu_count() or 1
    return max(int(value), 1)


def _pytest_command(seed: int, report_dir: str, pytest_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--theorems-seed={seed}",
            f"--theorems-report-dir={report_dir}", *pytest_args]


def fingerprint(doc: dict) -> str:
    """A digest of every recorded number of a run (node id, statistic, role, estimate, stderr, prediction)."""
    rows = sorted((t["nodeid"], r["statistic"], r["role"], str(r["estimate"]), str(r["stderr"]), str(r["prediction"]))
                  for t in doc["tests"] for r in t["records"])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def run_seed(seed: int, pytest_args: list[str], cwd: str, threads: int | None = None) -> dict:
    """One run of the suite at master seed ``seed`` (a subprocess); what the calibration keeps of it.  ``threads``:
    the intra-op threads each of its processes may use (``OMP_NUM_THREADS``, unless the caller set it), so that
    seeds running side by side do not oversubscribe the cores (two runs of 2 threads each on 2 cores took 3x as long
    per run as one)."""
    env = dict(os.environ)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    with tempfile.TemporaryDirectory(prefix=f"calibrate-{seed}-") as tmp:
        t0 = time.time()
        res = subprocess.run(_pytest_command(seed, tmp, pytest_args), cwd=cwd, capture_output=True, text=True,
                             env=env)
        duration = time.time() - t0
        latest = Path(tmp) / "latest" / "verdicts.json"
        if not latest.exists():
            return {"seed": seed, "exit_status": res.returncode, "duration_s": round(duration, 2), "failed": [],
                    "fingerprint": None, "slots_used": 0,
                    "error": (res.stdout[-1500:] + res.stderr[-1500:]).strip() or "no report written"}
        doc = json.loads(latest.read_text())
    tests = doc["tests"]
    failed = sorted(t["nodeid"] for t in tests if t["outcome"] in FAILED)
    extra = {}
    if res.returncode != 0 and not failed:  # a non-zero exit the report does not explain: keep the output's tail
        extra["error"] = (res.stdout[-1500:] + res.stderr[-1500:]).strip()
    return {**extra,
        "seed": seed, "exit_status": res.returncode, "duration_s": round(duration, 2),
        "failed": failed,
        "fingerprint": fingerprint(doc),
        "slots_used": doc.get("budget", {}).get("slots_used", 0),
        "estimated_false_fail": doc.get("budget", {}).get("estimated_false_fail_probability"),
        "check_slots": {t["nodeid"]: _slots(t) for t in tests},
        **margins(tests),
    }


def margins(tests: list[dict]) -> dict:
    """How close each test came to failing at this seed: per node id the smallest ``headroom`` of its checks
    (log10 of the rate at which it would fail over the rate it runs at; < 0: failed) and the largest estimated miss
    probability of its negative controls (and power shortfall of its ``below`` checks), each with its statistic; and
    the estimate and stated standard error of each of its checks and controls (``estimates``: statistic -> [estimate,
    stderr])."""
    headroom, miss, estimates = {}, {}, {}
    for t in tests:
        for r in t["records"]:
            if r.get("expected_to_fail"):  # a strict xfail's comparisons are meant to fail (its risk is an xpass)
                continue
            if r["role"] != "measurement":
                estimates.setdefault(t["nodeid"], {})[r["statistic"]] = [record_number(r.get("estimate")),
                                                                         record_number(r.get("stderr"))]
            if r["role"] == "check" and r.get("headroom") is not None:
                h = float(r["headroom"])
                if t["nodeid"] not in headroom or h < headroom[t["nodeid"]][0]:
                    headroom[t["nodeid"]] = [round(h, 3), r["statistic"]]
            if r["role"] != "measurement" and r.get("miss_probability") is not None:
                m = float(r["miss_probability"])
                if t["nodeid"] not in miss or m > miss[t["nodeid"]][0]:
                    miss[t["nodeid"]] = [float(f"{m:.3g}"), r["statistic"]]
    return {"headroom": headroom, "control_miss": miss, "estimates": estimates}


def estimate_spread(runs: list[dict]) -> dict:
    """Per node id and statistic: the estimate's standard deviation over the seeds against the mean standard error
    the runs stated (finite values only; statistics seen at fewer than two seeds are left out).  A statistic stated
    with no standard error (an exact comparison whose tolerance is its model error, or a sample without spread, e.g.
    every network at accuracy 1) has no interval to audit: its ratio is None."""
    values: dict = {}
    for r in runs:
        for nid, stats_ in r.get("estimates", {}).items():
            for stat, (est, err) in stats_.items():
                if math.isfinite(est) and math.isfinite(err):
                    values.setdefault(nid, {}).setdefault(stat, []).append((est, err))
    out = {}
    for nid, per_stat in values.items():
        for stat, pairs in per_stat.items():
            if len(pairs) < 2:
                continue
            est = np.array([p[0] for p in pairs])
            mean_err = float(np.mean([p[1] for p in pairs]))
            sd = float(est.std(ddof=1))
            out.setdefault(nid, {})[stat] = {
                "seeds": len(pairs), "mean": float(est.mean()), "sd": sd, "mean_stderr": mean_err,
                "sd_over_stderr": sd / mean_err if mean_err > 0 else None}  # None: no stated error to audit
    return out


def _slots(test: dict) -> float:
    return test.get("statistical_slots", 0) + sum(float(r.get("slots", 1.0)) for r in test["records"]
                                                  if r["role"] != "measurement")


def summarize(runs: list[dict], *, complete: bool = True, meta: dict | None = None) -> dict:
    """The calibration document from per-seed runs (see the module docstring)."""
    runs = sorted(runs, key=lambda r: r["seed"])
    n = len(runs)
    failed_runs = [r for r in runs if r["exit_status"] != 0]
    per_check = Counter(nid for r in runs for nid in r["failed"])
    slots = {}
    for r in runs:
        for nid, s in r.get("check_slots", {}).items():
            slots[nid] = max(slots.get(nid, 0.0), s)
    flagged = []
    for nid, count in sorted(per_check.items()):
        share = max(slots.get(nid, 1.0), 1.0) * PER_ASSERTION_RATE
        p = float(stats.binom.sf(count - 1, n, share))
        if p < FLAG_LEVEL:
            flagged.append({"nodeid": nid, "failures": count, "share": share, "pvalue": p})
    tightest, weakest = closest_calls(
        ((nid, {"headroom": h, "statistic": stat, "seed": r["seed"]}) for r in runs
         for nid, (h, stat) in r.get("headroom", {}).items()),
        ((nid, {"miss_probability": m, "statistic": stat, "seed": r["seed"]}) for r in runs
         for nid, (m, stat) in r.get("control_miss", {}).items()))
    k = len(failed_runs)
    ci = stats.binomtest(k, n, SUITE_FALSE_FAIL_RATE).proportion_ci(0.95, method="exact") if n else None
    return {
        **(meta or {}),
        "complete": complete,
        "seeds": [r["seed"] for r in runs],
        "runs": [{key: v for key, v in r.items() if key not in ("check_slots", "headroom", "control_miss", "estimates")}
                 for r in runs],
        "failures_per_check": dict(sorted(per_check.items())),
        "suite_failures": [r["seed"] for r in failed_runs],
        "failure_rate": k / n if n else None,
        "failure_rate_ci95": [ci.low, ci.high] if ci else None,
        "budget": SUITE_FALSE_FAIL_RATE,
        "budget_pvalue": float(stats.binom.sf(k - 1, n, SUITE_FALSE_FAIL_RATE)) if n else None,
        "flagged": flagged,
        "mean_duration_s": round(sum(r["duration_s"] for r in runs) / n, 1) if n else None,
        "tightest_checks": tightest,
        "weakest_controls": weakest,
        "estimate_spread": estimate_spread(runs),
    }


def closest_calls(tight, weak) -> tuple[dict, dict]:
    """Per node id the closest call among candidate ``(node id, entry)`` pairs: the entry with the smallest
    ``headroom`` of ``tight`` and the one with the largest ``miss_probability`` of ``weak`` (the first on a tie),
    each table sorted closest first (a calibration's ``tightest_checks`` and ``weakest_controls``)."""
    tightest, weakest = {}, {}
    for nid, v in tight:
        if nid not in tightest or v["headroom"] < tightest[nid]["headroom"]:
            tightest[nid] = v
    for nid, v in weak:
        if nid not in weakest or v["miss_probability"] > weakest[nid]["miss_probability"]:
            weakest[nid] = v
    return (dict(sorted(tightest.items(), key=lambda kv: kv[1]["headroom"])),
            dict(sorted(weakest.items(), key=lambda kv: -kv[1]["miss_probability"])))


def pooled_spread(parts: list[dict]) -> dict:
    """:func:`estimate_spread` of all the seeds from each calibration's own: counts add, means are weighted, and the
    variance is the within-file sums of squares plus the between-file ones (exact, as from the runs themselves)."""
    grouped: dict = {}
    for part in parts:
        for nid, per in part.items():
            for stat, v in per.items():
                grouped.setdefault(nid, {}).setdefault(stat, []).append(v)
    out = {}
    for nid, per in grouped.items():
        for stat, vs in per.items():
            k = sum(v["seeds"] for v in vs)
            mean = sum(v["seeds"] * v["mean"] for v in vs) / k
            squares = sum((v["seeds"] - 1) * v["sd"] ** 2 + v["seeds"] * (v["mean"] - mean) ** 2 for v in vs)
            mean_err = sum(v["seeds"] * v["mean_stderr"] for v in vs) / k
            sd = math.sqrt(squares / (k - 1))
            out.setdefault(nid, {})[stat] = {"seeds": k, "mean": mean, "sd": sd, "mean_stderr": mean_err,
                                             "sd_over_stderr": sd / mean_err if mean_err > 0 else None}
    return out


def pool(docs: list[dict], sources: list[str]) -> dict:
    """One calibration from several (``--pool``; see the module docstring).  Raises :class:`CalibrationError` for
    files with different pytest arguments or a seed in two files."""
    arguments = {json.dumps(d.get("pytest_args", [])) for d in docs}
    if len(arguments) > 1:
        raise CalibrationError(f"--pool: the files ran different pytest arguments ({sorted(arguments)}): a pooled rate "
                               "is that of one selection")
    seen = Counter(seed for d in docs for seed in d["seeds"])
    twice = sorted(seed for seed, c in seen.items() if c > 1)
    if twice:
        raise CalibrationError(f"--pool: seeds {twice} are in more than one file: each seed counts once")
    runs = [dict(r) for d in docs for r in d["runs"]]
    flagged_share = {f["nodeid"]: f["share"] for d in docs for f in d.get("flagged", [])}
    for r in runs:  # a failed check's share of the budget, where its file flagged it (else one slot: conservative)
        r.setdefault("check_slots", {nid: flagged_share[nid] / PER_ASSERTION_RATE for nid in r["failed"]
                                     if nid in flagged_share})
    meta = {"pytest_args": docs[0].get("pytest_args", []), "where": "pooled",
            "xdist_workers_per_run": docs[0].get("xdist_workers_per_run"),
            "started": min(str(d.get("started", "")) for d in docs),
            "pooled_from": [{"file": src, "seeds": len(d["seeds"]), "first_seed": min(d["seeds"]),
                             "last_seed": max(d["seeds"]), "where": d.get("where"), "commit": d.get("commit"),
                             "complete": d.get("complete", True)} for src, d in zip(sources, docs)]}
    doc = summarize(runs, complete=all(d.get("complete", True) for d in docs), meta=meta)
    # a stored run keeps no per-check margins or estimates: combine the files' own tables instead
    doc["tightest_checks"], doc["weakest_controls"] = closest_calls(
        (item for d in docs for item in d.get("tightest_checks", {}).items()),
        (item for d in docs for item in d.get("weakest_controls", {}).items()))
    doc["estimate_spread"] = pooled_spread([d.get("estimate_spread", {}) for d in docs])
    return doc


def render_markdown(doc: dict) -> str:
    lines = [f"# Calibration: {len(doc['seeds'])} master seeds" + ("" if doc["complete"] else " (INCOMPLETE)"), "",
             f"pytest arguments: `{' '.join(doc.get('pytest_args', [])) or '(whole suite)'}` · where: "
             f"{doc.get('where', '?')} · mean duration {doc['mean_duration_s']} s", ""]
    if doc.get("pooled_from"):
        lines += ["Pooled from: " + "; ".join(f"`{p['file']}` (seeds {p['first_seed']}-{p['last_seed']}, {p['seeds']} "
                                               f"runs, commit {p['commit'] or 'not recorded'})"
                                               for p in doc["pooled_from"]), ""]
    if doc["failure_rate"] is not None:
        lo, hi = doc["failure_rate_ci95"]
        lines += [f"**Runs with a failure: {len(doc['suite_failures'])} of {len(doc['seeds'])}** "
                  f"(rate {doc['failure_rate']:.3g}, 95% interval [{lo:.3g}, {hi:.3g}]; budget {doc['budget']:g}, "
                  f"binomial p = {doc['budget_pvalue']:.3g})", ""]
    lines += ["| seed | exit | duration (s) | failed checks |", "|---|---|---|---|"]
    for r in doc["runs"]:
        failed = "<br>".join(f"`{f}`" for f in r["failed"]) or ("(no report: see JSON)" if r.get("error") else "")
        lines.append(f"| {r['seed']} | {r['exit_status']} | {r['duration_s']} | {failed} |")
    if doc["failures_per_check"]:
        lines += ["", "| check | failures | flagged (improbable under its share of the budget) |", "|---|---|---|"]
        flagged = {f["nodeid"]: f for f in doc["flagged"]}
        for nid, c in doc["failures_per_check"].items():
            f = flagged.get(nid)
            lines.append(f"| `{nid}` | {c} | {'p = %.2g' % f['pvalue'] if f else ''} |")
    tight = list(doc.get("tightest_checks", {}).items())[:TABLE_ROWS]
    if tight:
        lines += ["", f"Closest calls over all seeds (headroom: log10 of the rate at which the check would fail over "
                  f"the rate it runs at; below 0 it fails), the {len(tight)} tightest:", "",
                  "| check | statistic | headroom | seed |", "|---|---|---|---|"]
        lines += [f"| `{nid}` | {v['statistic']} | {v['headroom']:.2f} | {v['seed']} |" for nid, v in tight]
    weak = [(nid, v) for nid, v in doc.get("weakest_controls", {}).items()
            if v["miss_probability"] > PER_ASSERTION_RATE][:TABLE_ROWS]
    if weak:
        lines += ["", f"Negative controls (and effects asserted present) whose estimated miss probability exceeded the "
                  f"per-assertion rate {PER_ASSERTION_RATE:g} at some seed (largest over seeds):", "",
                  "| check | statistic | miss probability | seed |", "|---|---|---|---|"]
        lines += [f"| `{nid}` | {v['statistic']} | {v['miss_probability']:.3g} | {v['seed']} |" for nid, v in weak]
    wide = [(nid, stat, v) for nid, per in doc.get("estimate_spread", {}).items() for stat, v in per.items()
            if spread_pvalue(v) < SPREAD_FLAG_LEVEL]
    if wide:
        lines += ["", f"Estimates that scatter over the seeds more than their stated standard errors allow (chi-square "
                  f"test of sd² / stderr², p < {SPREAD_FLAG_LEVEL:g}: the intervals are too narrow):", "",
                  "| check | statistic | seeds | sd over seeds | mean stated stderr | ratio |", "|---|---|---|---|---|---|"]
        lines += [f"| `{nid}` | {stat} | {v['seeds']} | {v['sd']:.3g} | {v['mean_stderr']:.3g} | "
                  f"{v['sd_over_stderr']:.2f} |" for nid, stat, v in sorted(wide, key=lambda w: -w[2]["sd_over_stderr"])]
    return "\n".join(lines) + "\n"


#: An estimate whose spread over the seeds is improbable at this level under its stated standard errors is listed in
#: the markdown table (many statistics are compared: a table to look at, not an assertion).
SPREAD_FLAG_LEVEL = 1e-3


def spread_pvalue(spread: dict) -> float:
    """P(an sd over ``seeds`` seeds at least this large | the stated standard error is the true one): chi-square with
    seeds - 1 degrees of freedom of ``(seeds - 1) (sd / stderr)²`` (normal estimates); 1 where no error was stated."""
    k, ratio = spread["seeds"], spread["sd_over_stderr"]
    if ratio is None or not math.isfinite(ratio):  # no stated error (None; inf in files written before that rule)
        return 1.0
    return float(stats.chi2.sf((k - 1) * ratio ** 2, k - 1))


def _write(doc: dict, out: Path):
    """JSON and markdown, each written to a temporary file and renamed (never half-written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, json.dumps(doc, indent=1)), (out.with_suffix(".md"), render_markdown(doc))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def check_pytest_args(pytest_args: list[str], cwd: str):
    """One ``--collect-only`` pass: unknown options or a selection with no test are usage errors."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *[a for a in pytest_args if not _is_xdist_arg(a, pytest_args)]],
                         cwd=cwd, capture_output=True, text=True)
    if res.returncode == 4:
        lines = [line.strip() for line in res.stderr.splitlines() if line.strip()]
        msg = next((line for line in reversed(lines) if "error" in line.lower()), res.stderr.strip()[-300:])
        raise CalibrationError(f"PYTEST_ARGS rejected by pytest: {msg}")
    if res.returncode == 5:
        raise CalibrationError(f"PYTEST_ARGS select no test: {' '.join(pytest_args)}")
    if res.returncode != 0:
        raise CalibrationError(f"collecting with PYTEST_ARGS failed (exit {res.returncode}): {res.stdout[-300:]}")


def _is_xdist_arg(a: str, args: list[str]) -> bool:
    i = args.index(a)
    return a in ("-n", "--numprocesses") or a.startswith("-n") and len(a) > 2 or a.startswith("--numprocesses=") or \
        (i > 0 and args[i - 1] in ("-n", "--numprocesses"))


def _ray_module():
    try:
        import ray
    except ImportError:
        raise CalibrationError("--ray needs Ray: pip install -e \".[distributed]\" (or pip install 'ray>=2.9')") from None
    return ray


def _check_address(address: str):
    host, _, port = address.rpartition(":")
    if host.startswith("ray://"):
        host = host[len("ray://"):]
    if not host or not port.isdigit():
        raise CalibrationError(f"--ray must be 'auto' or host:port; got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise CalibrationError(f"--ray {address}: no Ray cluster answers there ({exc})") from None


def _progress(r: dict, done: int, total: int):
    status = "ok" if r["exit_status"] == 0 else f"FAILED (exit {r['exit_status']}): {', '.join(r['failed']) or r.get('error', '')[:200]}"
    print(f"[{done}/{total}] seed {r['seed']}: {r['duration_s']:.0f} s, {status}", flush=True)


def run_local(seeds, pytest_args, cwd, workers):
    """Each seed a subprocess, ``workers`` at a time (a thread pool only waits on them), each of its processes with
    an equal share of the cores' threads."""
    runs = []
    pool = ThreadPoolExecutor(max_workers=workers)
    threads = (os.cpu_count() or 1) // (workers * xdist_workers(pytest_args))
    futures = [pool.submit(run_seed, s, pytest_args, cwd, threads) for s in seeds]
    try:
        for fut in as_completed(futures):
            runs.append(fut.result())
            _progress(runs[-1], len(runs), len(seeds))
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # seeds already running finish on their own
        raise _Interrupted(runs) from None
    pool.shutdown()
    return runs


def run_ray(seeds, pytest_args, cwd, address, per_run_cpus):
    ray = _ray_module()
    if address == "auto":
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        remote_cwd = cwd
    else:
        ray.init(address=address if address.startswith("ray://") else address, log_to_driver=False,
                 runtime_env={"working_dir": cwd, "excludes": [".git", ".venv", "reports", "*.egg-info", ".hypothesis"]})
        remote_cwd = None  # the job's working directory on each node
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_cpus=per_run_cpus, num_gpus=1 if gpus else 0)(
            lambda s: run_seed(s, pytest_args, remote_cwd or os.getcwd()))
        pending = [task.remote(s) for s in seeds]
        runs = []
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                runs.append(ray.get(done[0]))
                _progress(runs[-1], len(runs), len(seeds))
        except KeyboardInterrupt:
            raise _Interrupted(runs) from None
        return runs
    finally:
        ray.shutdown()


def _raise_keyboard_interrupt(*_):
    raise KeyboardInterrupt


class _Interrupted(Exception):
    def __init__(self, runs):
        super().__init__("interrupted")
        self.runs = runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.pool is not None:
        return main_pool(args)
    seeds = list(range(args.start, args.start + args.seeds))
    per_run = xdist_workers(args.pytest_args)
    workers = args.workers or max(1, (os.cpu_count() or 1) // per_run)
    out = Path(args.out) if args.out else Path(args.cwd) / "reports" / "calibration" / (
        _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")
    try:
        if args.ray:
            _ray_module()
            if args.ray != "auto":
                _check_address(args.ray)
        check_pytest_args(args.pytest_args, args.cwd)
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = f"ray {args.ray}" if args.ray else f"local, {workers} at once"
    meta = {"pytest_args": args.pytest_args, "where": where, "xdist_workers_per_run": per_run,
            "commit": source_commit(args.cwd), "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    # a background job ignores Ctrl-C's SIGINT: let SIGTERM stop it the same way (finished seeds are written)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    print(f"calibrating: seeds {seeds[0]}..{seeds[-1]} ({where}); pytest {' '.join(args.pytest_args) or '(whole suite)'}",
          flush=True)
    try:
        runs = (run_ray(seeds, args.pytest_args, args.cwd, args.ray, per_run) if args.ray
                else run_local(seeds, args.pytest_args, args.cwd, workers))
        complete = True
    except _Interrupted as stop:
        runs, complete = stop.runs, False
    doc = summarize(runs, complete=complete, meta=meta)
    _write(doc, out)
    lo, hi = doc["failure_rate_ci95"] or (float("nan"), float("nan"))
    print(f"{len(doc['suite_failures'])} of {len(runs)} runs failed (95% interval [{lo:.3g}, {hi:.3g}]; budget "
          f"{SUITE_FALSE_FAIL_RATE:g}); flagged: {[f['nodeid'] for f in doc['flagged']] or 'none'}; wrote {out}"
          + ("" if complete else " (INCOMPLETE: interrupted)"), flush=True)
    return 0 if complete else 130


def main_pool(args) -> int:
    out = Path(args.out) if args.out else Path(args.cwd) / "reports" / "calibration" / (
        _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-pooled.json")
    try:
        docs = [json.loads(Path(f).read_text()) for f in args.pool]
        doc = pool(docs, [str(f) for f in args.pool])
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: --pool: {exc}", file=sys.stderr)
        return 2
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _write(doc, out)
    lo, hi = doc["failure_rate_ci95"]
    print(f"pooled {len(docs)} files: {len(doc['suite_failures'])} of {len(doc['seeds'])} runs failed (95% interval "
          f"[{lo:.3g}, {hi:.3g}]); wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
