"""This suite's own pytest configuration.  Options, fixtures, markers and the report come from the ``theorems``
pytest plugin (:mod:`theorems.plugin`, installed with the package); here: the suite's claims, short aliases for the
plugin's options, the deterministic Hypothesis profile, the full-profile-on-CPU header, the papers' figures and the
benchmarks' opt-in."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, settings

from theorems.claims import CLAIMS, register_claims
from theorems.plugin import add_aliases, option
from theorems.profiles import Profile
from theorems.seeding import canonical_nodeid

register_claims(*CLAIMS.values())

# Deterministic Hypothesis (after scipy's conftest): no deadlines on numeric code, no example
# database, derandomised so every run explores the same examples.
settings.register_profile("theorems", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("theorems")


def pytest_addoption(parser):
    # the short names of this repository (the plugin's own are --theorems-*: pytest-profiling owns --profile)
    add_aliases(parser, profile="--profile", device="--device", seed="--seed", **{"report-dir": "--report-dir"},
                figures="--figures", **{"compare-baseline": "--compare-baseline", "write-baseline": "--write-baseline",
                                        "claims-coverage": "--claims-coverage"})


def pytest_report_header(config):
    if option(config, "profile") == "full" and config._theorems_device == "cpu":
        return [full_profile_on_cpu_estimate()]
    return None


def pytest_theorems_figures(config, directory):
    """``--figures``: the papers' figures from this suite's ensembles (theorems.figures)."""
    from theorems.figures import write_figures

    write_figures(directory, profile=option(config, "profile"), seed=option(config, "seed"),
                  device=config._theorems_device)


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


def pytest_collection_finish(session):
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


def pytest_ignore_collect(collection_path, config):
    """Benchmarks run only when asked for (``pytest checks/bench --benchmark-only -p no:xdist``)."""
    if "bench" in collection_path.parts and not config.getoption("benchmark_only", False):
        return True
    return None
