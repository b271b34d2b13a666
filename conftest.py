"""Suite-wide pytest configuration: options, seeds, devices, markers and the report plugin."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from theorems.claims import CLAIMS, MAIN
from theorems.profiles import Profile
from theorems.reporting import ReportPlugin, Verdict, validate_options
from theorems.seeding import canonical_nodeid, derive_seed, generator

# Deterministic Hypothesis (after scipy's conftest): no deadlines on numeric code, no example
# database, derandomised so every run explores the same examples.
settings.register_profile("theorems", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("theorems")


def pytest_addoption(parser):
    group = parser.getgroup("theorems", "Jacobian theorem verification suite")
    group.addoption("--profile", choices=("quick", "full"), default="quick",
                    help="quick (default): sized for a 2-core CPU; full: the papers' sizes (GPU)")
    group.addoption("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where networks are sampled: auto picks cuda when available")
    group.addoption("--seed", type=int, default=20261123,
                    help="master seed; each test's seed is derived from it and the test's node id")
    group.addoption("--report-dir", default="reports", help="where reports/<run>/ is written")
    group.addoption("--figures", action="store_true", help="also write the papers' figures (PNG) to the report")
    group.addoption("--compare-baseline", default=None, metavar="FILE",
                    help="fail if a statistic moved beyond sampling error since this baseline")
    group.addoption("--write-baseline", default=None, metavar="FILE", help="write this run's statistics as a baseline")
    group.addoption("--claims-map", default=None, metavar="FILE", help=argparse_suppress())
    group.addoption("--claims-coverage", action="store_true",
                    help="after collection, list checks per claim id and fail if a registered claim has none")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS  # internal: the report's collection of every registered check (reporting.registered_checks)


def _device(config) -> str:
    choice = config.getoption("--device")
    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: no CUDA device is available")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def pytest_configure(config):
    config.addinivalue_line("markers", "claim(id, statement=None): the claim id (theorems.claims) this check verifies, and "
                            "which of its named statements (default: the claim's own)")
    config.addinivalue_line("markers", "printed: tests a statement exactly as printed (strict xfail when refuted)")
    config.addinivalue_line("markers", "erratum: shows a sentence the paper's own derivation contradicts (strict xfail); "
                            "recorded with the claim's errata, it does not refute the claim")
    config.addinivalue_line("markers", "slow: long-running (full profile sizes)")
    config.addinivalue_line("markers", "statistical(k): the test asserts k random outcomes outside the verdict recorder, "
                            "each at the suite's per-assertion rate (theorems.budget)")
    validate_options(config)
    config._theorems_device = _device(config)
    if config._theorems_device == "cuda":
        # TF32 changes float32 GEMMs; nothing that feeds a verdict may use it.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # Limit intra-op threads per xdist worker so -n N does not oversubscribe the cores.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    config.pluginmanager.register(ReportPlugin(config), "theorems-report")


def pytest_report_header(config):
    if config.getoption("--profile") == "full" and config._theorems_device == "cpu":
        return [full_profile_on_cpu_estimate()]
    return None


def full_profile_on_cpu_estimate() -> str:
    """The header line of ``--profile full`` on a CPU: the hours it will take here, from the check modules' cost
    models at the full sizes (``work(profile)`` next to each size table, theorems.profiles) over this machine's
    measured GEMM rate times the fraction of it the suite achieves."""
    import importlib
    import pkgutil

    import checks.claims
    from theorems.profiles import ACHIEVED_FRACTION, gemm_rate

    modules = [importlib.import_module(f"checks.claims.{m.name}") for m in pkgutil.iter_modules(checks.claims.__path__)]
    full, quick = (sum(m.work(Profile(p)) for m in modules if hasattr(m, "work")) for p in ("full", "quick"))
    rate = gemm_rate()
    hours = full / (ACHIEVED_FRACTION * rate) / 3600
    return (f"theorems: --profile full on the CPU: about {hours:.0f} h here ({full:.1e} float64 operations by the size "
            f"tables' cost model, {full / quick:.0f}x the quick profile, at {ACHIEVED_FRACTION:.0%} of this machine's "
            f"{rate / 1e9:.0f} GFLOP/s GEMM rate); the full profile is sized for one GPU; going on")


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        for mark in item.iter_markers("claim"):
            if not mark.args or mark.args[0] not in CLAIMS:
                raise pytest.UsageError(f"{item.nodeid}: unknown claim id {mark.args!r}; known: {sorted(CLAIMS)}")
            statement = mark.kwargs.get("statement")
            if statement is not None and statement not in CLAIMS[mark.args[0]].statements:
                raise pytest.UsageError(f"{item.nodeid}: claim {mark.args[0]!r} has no statement {statement!r}; known: "
                                        f"{sorted(CLAIMS[mark.args[0]].statements)}")
    claims_map = config.getoption("--claims-map")
    if claims_map:
        Path(claims_map).write_text(json.dumps({canonical_nodeid(item.nodeid): [
            [m.args[0], m.kwargs.get("statement") or MAIN] for m in item.iter_markers("claim")] for item in items}))
    if config.getoption("--claims-coverage"):
        covered = {cid: [] for cid in CLAIMS}
        for item in items:
            for mark in item.iter_markers("claim"):
                covered[mark.args[0]].append(item.nodeid)
        missing = [cid for cid, ids in covered.items() if not ids]
        lines = [f"{cid}: {len(ids)} check(s)" for cid, ids in covered.items()]
        sys.stdout.write("\nclaims coverage\n" + "\n".join(lines) + "\n")
        if missing:
            sys.stdout.write(f"claims without a check: {missing}\n")
            session.config._theorems_missing = missing


def pytest_collection_finish(session):
    if getattr(session.config, "_theorems_missing", None):
        raise pytest.UsageError(f"claims without a check: {session.config._theorems_missing}")
    _warn_if_groups_ignored(session)


def _warn_if_groups_ignored(session):
    """Checks that share a module-scoped measurement carry ``xdist_group`` so that one worker computes it
    once.  pytest-xdist marks grouped items by appending ``@group`` to their node ids; pytest >= 9.2 ignores
    that (pytest-dev/pytest-xdist#1386), and the groups are silently dropped: every worker then repeats the
    shared measurement (same numbers, seeds come from names, but up to twice the time).  Say so."""
    if not hasattr(session.config, "workerinput") or not getattr(session.config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and canonical_nodeid(item.nodeid) == item.nodeid]
    if lost:
        warnings.warn(pytest.PytestConfigWarning(
            f"--dist loadgroup is not in effect ({len(lost)} grouped checks, e.g. {lost[0]}, have no '@group' suffix: "
            f"pytest {pytest.__version__} with this pytest-xdist, see pytest-dev/pytest-xdist#1386); shared measurements "
            "are recomputed on each worker: same numbers, more time. pip install 'pytest<9.2' restores the grouping."),
            stacklevel=1)


@pytest.fixture(autouse=True)
def _tag_claims(request, seed):
    item = request.node
    item.user_properties.append(("claims", [m.args[0] for m in item.iter_markers("claim")]))
    item.user_properties.append(("statements", [[m.args[0], m.kwargs.get("statement") or MAIN]
                                                for m in item.iter_markers("claim")]))
    item.user_properties.append(("printed", item.get_closest_marker("printed") is not None))
    item.user_properties.append(("erratum", item.get_closest_marker("erratum") is not None))
    item.user_properties.append(("seed", seed))
    mark = item.get_closest_marker("statistical")
    if mark is not None:
        item.user_properties.append(("statistical_slots", int(mark.args[0])))


@pytest.fixture(scope="session")
def profile(request) -> Profile:
    return Profile(request.config.getoption("--profile"))


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config._theorems_device


@pytest.fixture(scope="session")
def dtype(device) -> torch.dtype:
    """float64 everywhere a verdict is computed (TF32 is off on CUDA)."""
    return torch.float64


@pytest.fixture
def seed(request) -> int:
    """This test's seed: derived from --seed and the node id only."""
    return derive_seed(request.config.getoption("--seed"), canonical_nodeid(request.node.nodeid))


@pytest.fixture
def rng(seed, device) -> torch.Generator:
    """A torch.Generator on the test device seeded with this test's seed."""
    return generator(seed, device)


@pytest.fixture
def verdict(request, seed) -> Verdict:
    return Verdict(request.node, seed)


def pytest_ignore_collect(collection_path, config):
    """Benchmarks run only when asked for (``pytest checks/bench --benchmark-only -p no:xdist``)."""
    if "bench" in collection_path.parts and not config.getoption("benchmark_only", False):
        return True
    return None
