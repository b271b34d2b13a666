"""The pytest plugin (entry point ``pytest11: theorems``): installing the package gives any project

- options, all prefixed ``--theorems-`` (``pytest --help`` lists them under "theorems"): ``profile``, ``device``,
  ``seed``, ``report-dir``, ``figures``, ``compare-baseline``, ``write-baseline``, ``claims-coverage``;
- fixtures ``seed`` (this test's, from the master seed and its node id), ``rng`` (a ``torch.Generator`` on the test
  device seeded with it), ``device``, ``profile`` and ``verdict`` (records comparisons: :class:`theorems.reporting.Verdict`);
- markers ``claim(id, statement=None)``, ``printed``, ``erratum``, ``statistical(k)`` (registered: ``--strict-markers``
  works);
- the report writer: ``<report-dir>/<run>/verdicts.json`` and ``summary.md`` per run, a verdict per registered claim
  (:func:`theorems.register_claim`).

Importing this module is cheap: torch is imported when a fixture first needs it (or when ``--theorems-device cuda`` is
asked for), and Hypothesis settings are left to the project.  After pytest-randomly's and Hypothesis' plugins.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from .claims import MAIN, registered_claims
from .profiles import Profile
from .seeding import canonical_nodeid, derive_seed, generator

__all__ = ["option", "seed_for", "DEFAULT_SEED"]

#: The master seed when none is given.
DEFAULT_SEED = 20261123

#: Option name (without the ``--theorems-`` prefix) -> ``addoption`` keywords.  A project may add short aliases with
#: :func:`add_aliases` (this suite's conftest.py keeps ``--profile``, ``--seed`` ...).
OPTIONS = {
    "profile": dict(choices=("quick", "full"), default="quick",
                    help="quick (default): sized for a 2-core CPU; full: the papers' sizes (GPU)"),
    "device": dict(choices=("auto", "cpu", "cuda"), default="auto",
                   help="where networks are sampled: auto picks cuda when available"),
    "seed": dict(type=int, default=DEFAULT_SEED,
                 help="master seed; each test's seed is derived from it and the test's node id"),
    "report-dir": dict(default="reports", metavar="DIR",
                       help="where <DIR>/<run>/ is written (write a path as --theorems-report-dir=DIR: pytest reads a "
                            "separate path argument as a test path when it guesses the rootdir)"),
    "figures": dict(action="store_true", help="also write the figures (PNG) to the report (needs matplotlib)"),
    "compare-baseline": dict(default=None, metavar="FILE",
                             help="fail if a statistic moved beyond sampling error since this baseline (write it as "
                                  "--theorems-compare-baseline=FILE)"),
    "write-baseline": dict(default=None, metavar="FILE",
                           help="write this run's statistics as a baseline (write it as --theorems-write-baseline=FILE)"),
    "claims-coverage": dict(action="store_true",
                            help="after collection, list checks per claim id and fail if a registered claim has none"),
}

#: Internal (reporting.registered_checks): a collection run writes node id -> [[claim, statement], ...] to this file.
CLAIMS_MAP_ENV = "THEOREMS_CLAIMS_MAP"


def dest(name: str) -> str:
    return "theorems_" + name.replace("-", "_")


def option(config, name: str):
    """The value of the plugin's option ``name`` (e.g. ``option(config, "profile")``), whichever alias set it."""
    return config.getoption(dest(name))


def add_aliases(parser, **aliases: str):
    """Short names for the plugin's options in one project: ``add_aliases(parser, profile="--profile")``.  An alias
    shares the option's destination, choices and default."""
    group = parser.getgroup("theorems")
    for name, alias in aliases.items():
        if name not in OPTIONS:
            raise ValueError(f"no theorems option {name!r}; options: {sorted(OPTIONS)}")
        spec = {**OPTIONS[name], "help": f"alias of --theorems-{name}"}
        group.addoption(alias, dest=dest(name), **spec)


class Hooks:
    """Hooks the plugin calls in a project's conftest.py."""

    @pytest.hookspec
    def pytest_theorems_figures(self, config, directory: Path):
        """With ``--theorems-figures``: write the project's figures into ``directory`` (``<report-dir>/<run>/figures``)
        after the report, on the controller.  This suite's conftest.py draws the papers' figures."""


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(Hooks)


def pytest_addoption(parser):
    group = parser.getgroup("theorems", "Jacobian theorem verification (theorems plugin)")
    for name, spec in OPTIONS.items():
        group.addoption(f"--theorems-{name}", dest=dest(name), **spec)


#: xdist workers per GPU with ``-n auto`` on a CUDA machine.  Not yet measured on a GPU (issue 15): 2 keeps one
#: worker's host-side work (sampling setup, numpy statistics) overlapping the other's kernels.
WORKERS_PER_GPU = 2


def visible_gpus(allowed: str | None, count: int) -> list[str]:
    """The GPUs a run may use: the caller's ``CUDA_VISIBLE_DEVICES`` entries when set (an empty value: none), else
    ``0 .. count-1``."""
    if allowed is not None:
        return [d.strip() for d in allowed.split(",") if d.strip()]
    return [str(i) for i in range(count)]


def gpu_for_worker(worker: str, allowed: str | None, count: int) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` an xdist worker ``gwN`` is pinned to: round-robin over :func:`visible_gpus`, so
    worker N gets GPU N mod (number of GPUs); None without GPUs.  Which GPU runs a check never changes a number
    (seeds come from node ids)."""
    gpus = visible_gpus(allowed, count)
    if not gpus:
        return None
    if not (worker.startswith("gw") and worker[2:].isdigit()):
        raise ValueError(f"worker must be an xdist worker id 'gw<N>'; got {worker!r}")
    return gpus[int(worker[2:]) % len(gpus)]


def _cuda_count() -> int:
    """GPUs present, without creating a CUDA context where torch can ask NVML (so a later pin still applies)."""
    import torch

    return torch.cuda.device_count() if torch.backends.cuda.is_built() else 0


def _pin_worker_to_gpu(config):
    """Before CUDA initialises in an xdist worker, restrict it to one GPU (:func:`gpu_for_worker`)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or option(config, "device") == "cpu":
        return
    allowed = os.environ.get("CUDA_VISIBLE_DEVICES")
    pin = gpu_for_worker(worker, allowed, 0 if allowed is not None else _cuda_count())
    if pin is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = pin
        config._theorems_gpu = pin


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` on a CUDA machine: WORKERS_PER_GPU workers per visible GPU (on a CPU: xdist's own choice)."""
    if option(config, "device") == "cpu":
        return None
    gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), _cuda_count())
    return WORKERS_PER_GPU * len(gpus) if gpus else None


def device_label(config) -> str:
    """Where this process samples, for the report: 'cpu', or 'cuda:<CUDA_VISIBLE_DEVICES> <name>'."""
    if config._theorems_device != "cuda":
        return "cpu"
    import torch

    return f"cuda:{os.environ.get('CUDA_VISIBLE_DEVICES', '0')} {torch.cuda.get_device_name()}"


def _device(config) -> str:
    """The device checks sample on; 'auto' is resolved without importing torch when CUDA cannot be there."""
    choice = option(config, "device")
    if choice == "cpu":
        return "cpu"
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--theorems-device=cuda: no CUDA device is available (allowed: auto, cpu, cuda)")
    return "cuda" if torch.cuda.is_available() else "cpu"


MARKERS = (
    "claim(id, statement=None): the claim id (theorems.register_claim) this check verifies, and which of its named "
    "statements (default: the claim's own)",
    "printed: tests a statement exactly as printed (strict xfail when refuted)",
    "erratum: shows a sentence the source's own derivation contradicts (strict xfail); recorded with the claim's "
    "errata, it does not refute the claim",
    "statistical(k): the test asserts k random outcomes outside the verdict recorder, each at the suite's "
    "per-assertion rate (theorems.budget)",
    "parametrize_by_profile(argnames, table, ids=None): parametrize by the run profile's rows of a "
    "theorems.profiles.Sizes table (ids: a list, or a function of a row)",
)


def pytest_configure(config):
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    from .reporting import ReportPlugin, validate_options

    validate_options(config)
    _pin_worker_to_gpu(config)
    config._theorems_device = _device(config)
    if config._theorems_device == "cuda":
        import torch

        # TF32 changes float32 GEMMs; nothing that feeds a verdict may use it.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    _threads_per_worker()
    config.pluginmanager.register(ReportPlugin(config), "theorems-report")


def _threads_per_worker():
    """Limit intra-op threads per xdist worker so ``-n N`` does not oversubscribe the cores (after scipy's conftest):
    torch reads OMP_NUM_THREADS when it is first imported; if it already is, tell it directly."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def pytest_generate_tests(metafunc):
    """``@pytest.mark.parametrize_by_profile(argnames, table, ids=None)``: the rows of ``table.of(profile)``."""
    for mark in metafunc.definition.iter_markers("parametrize_by_profile"):
        argnames, table = mark.args
        rows = list(table.of(option(metafunc.config, "profile")))
        ids = mark.kwargs.get("ids")
        metafunc.parametrize(argnames, rows, ids=[ids(r) for r in rows] if callable(ids) else ids)


def pytest_collection_modifyitems(session, config, items):
    known = registered_claims()
    for item in items:
        for mark in item.iter_markers("claim"):
            if not mark.args or mark.args[0] not in known:
                raise pytest.UsageError(f"{item.nodeid}: unknown claim id {mark.args!r}; registered: {sorted(known)} "
                                        "(register yours with theorems.register_claim in conftest.py)")
            statement = mark.kwargs.get("statement")
            if statement is not None and statement not in known[mark.args[0]].statements:
                raise pytest.UsageError(f"{item.nodeid}: claim {mark.args[0]!r} has no statement {statement!r}; known: "
                                        f"{sorted(known[mark.args[0]].statements)}")
    claims_map = os.environ.get(CLAIMS_MAP_ENV)
    if claims_map:
        Path(claims_map).write_text(json.dumps({canonical_nodeid(item.nodeid): [
            [m.args[0], m.kwargs.get("statement") or MAIN] for m in item.iter_markers("claim")] for item in items}))
    if option(config, "claims-coverage"):
        covered = {cid: [] for cid in known}
        for item in items:
            for mark in item.iter_markers("claim"):
                covered[mark.args[0]].append(item.nodeid)
        missing = [cid for cid, ids in covered.items() if not ids]
        lines = [f"{cid}: {len(ids)} check(s)" for cid, ids in covered.items()]
        sys.stdout.write("\nclaims coverage\n" + "\n".join(lines) + "\n")
        if missing:
            sys.stdout.write(f"claims without a check: {missing}\n")
            config._theorems_missing = missing


def pytest_collection_finish(session):
    if getattr(session.config, "_theorems_missing", None):
        raise pytest.UsageError(f"claims without a check: {session.config._theorems_missing}")


@pytest.fixture(autouse=True)
def _theorems_tag_claims(request, seed):
    """Ship what the report needs with the test's report (from xdist workers too): the claims and statements the test
    checks, with the claims' texts (so the controller need not have registered them), printed/erratum, the seed."""
    item = request.node
    marks = list(item.iter_markers("claim"))
    known = registered_claims()
    item.user_properties.append(("claims", [m.args[0] for m in marks]))
    item.user_properties.append(("statements", [[m.args[0], m.kwargs.get("statement") or MAIN] for m in marks]))
    item.user_properties.append(("claim_texts", {m.args[0]: asdict(known[m.args[0]]) for m in marks}))
    item.user_properties.append(("printed", item.get_closest_marker("printed") is not None))
    item.user_properties.append(("erratum", item.get_closest_marker("erratum") is not None))
    item.user_properties.append(("seed", seed))
    if request.config._theorems_device != "cpu":  # which GPU ran it (never changes a number)
        item.user_properties.append(("device", device_label(request.config)))
    mark = item.get_closest_marker("statistical")
    if mark is not None:
        item.user_properties.append(("statistical_slots", int(mark.args[0])))


def seed_for(request, suffix: str) -> int:
    """A seed derived from the master seed and the requesting node's id plus ``suffix``: for a measurement that
    several checks share (a module-scoped fixture: ``seed_for(request, "::edge_measurement")``, whose node is the
    module) or for one example of a property test (``seed_for(request, f"[{n},{x!r}]")``).  Never from the check
    that happens to ask first, so order, ``-n`` and workers do not change it."""
    return derive_seed(option(request.config, "seed"), canonical_nodeid(request.node.nodeid) + suffix)


@pytest.fixture(scope="session")
def profile(request) -> Profile:
    """The run's size profile (``--theorems-profile``): ``profile.pick(quick, full)``."""
    return Profile(option(request.config, "profile"))


@pytest.fixture(scope="session")
def device(request) -> str:
    """Where networks are sampled: 'cpu' or 'cuda' (``--theorems-device``; float64, TF32 off)."""
    return request.config._theorems_device


@pytest.fixture
def seed(request) -> int:
    """This test's seed: derived from the master seed (``--theorems-seed``) and the node id only."""
    return seed_for(request, "")


@pytest.fixture
def rng(seed, device):
    """A ``torch.Generator`` on the test device seeded with this test's seed."""
    return generator(seed, device)


@pytest.fixture
def verdict(request, seed):
    """Records the test's comparisons (``check`` asserts, ``reject`` asserts a negative control is rejected,
    ``record`` measures) into the run's report."""
    from .reporting import Verdict

    return Verdict(request.node, seed)
