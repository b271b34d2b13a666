"""The reporting plugin: per-check records -> ``reports/<run>/verdicts.json`` and ``summary.md``.

How it works (after Hypothesis' own conftest): each check records its comparisons through the
``verdict`` fixture into ``item.user_properties``; pytest ships those with every test report,
including from xdist workers to the controller, so only the controller (or a run without
xdist) gathers them in ``pytest_runtest_logreport`` and writes the files in
``pytest_sessionfinish``.  Nothing depends on which worker ran what.

Schema ``verdicts.json`` (``SCHEMA_VERSION``) is documented in the README.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import pytest
from scipy import stats as _stats

from . import __version__
from .claims import MAIN, PINNED_VERSIONS, Claim, Statement, claim_from_dict, registered_claims
from .seeding import canonical_nodeid
from .budget import ASSERTION_SLOTS, PER_ASSERTION_RATE, budget_summary
from .stats import FALSE_FAIL_RATE, Comparison, assert_consistent, assert_rejects

__all__ = ["SCHEMA_VERSION", "Verdict", "ReportPlugin", "compare_with_baseline", "merge_reports"]

SCHEMA_VERSION = "1.3"


def validate_options(config):
    """Every path-valued option is checked when the run starts (before any network is sampled): a usage error that
    names the option and the problem, never a traceback at the end of the run."""
    from importlib.util import find_spec

    from .plugin import option

    base = option(config, "compare-baseline")
    if base:
        path = Path(base)
        if not path.is_file():
            raise pytest.UsageError(f"--theorems-compare-baseline={base}: no such file")
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise pytest.UsageError(f"--theorems-compare-baseline={base}: not a baseline (unreadable JSON: {exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("statistics"), dict):
            raise pytest.UsageError(f"--theorems-compare-baseline={base}: not a baseline (no 'statistics' object; write "
                                    "one with --theorems-write-baseline)")
    for name in ("report-dir", "write-baseline"):
        value = option(config, name)
        if not value:
            continue
        target = Path(value) if name == "report-dir" else Path(value).parent
        problem = _unwritable(target)
        if problem:
            raise pytest.UsageError(f"--theorems-{name}={value}: {problem}")
        if name == "write-baseline" and Path(value).is_dir():
            raise pytest.UsageError(f"--theorems-{name}={value}: is a directory, not a file")
    if option(config, "figures") and find_spec("matplotlib") is None:
        raise pytest.UsageError("--theorems-figures needs matplotlib, which is not installed: pip install "
                                "'theorems[figures]'")


def _unwritable(directory: Path) -> str | None:
    """Why files cannot be written in ``directory`` (created if missing), or None."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def write_atomically(path: Path, text: str):
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Verdict:
    """Per-check recorder handed to checks as the ``verdict`` fixture.

    ``check`` asserts a comparison is consistent, ``reject`` asserts a negative control is
    rejected, ``record`` stores a measured quantity without asserting; all three write the
    comparison into the test report, with the test's claim ids and seed.  State the sizes once with
    ``verdict.sizes.update(n=..., L=...)``: every comparison that gives no ``sizes=`` of its own carries them.

    Each record is a JSON text in ``item.user_properties`` under the name ``theorems``, so ``--junitxml`` carries
    it as a ``<property>`` (with and without xdist) for CI dashboards.
    """

    def __init__(self, item, seed: int, sizes: dict | None = None):
        self._item = item
        self.seed = seed
        self.sizes = dict(sizes or {})

    def _store(self, cmp: Comparison, role: str):
        if not cmp.claim:
            cmp.claim = ", ".join(m.args[0] for m in self._item.iter_markers("claim"))
        if cmp.seed is None:
            cmp.seed = self.seed
        if not cmp.sizes:
            cmp.sizes = dict(self.sizes)
        record = cmp.to_record(role)
        if role == "check" and self._item.get_closest_marker("xfail") is not None:
            # a printed statement expected to be refuted: its spurious failure is a miss (an xpass), like a control's
            record["miss_probability"] = cmp.miss_probability
            record["expected_to_fail"] = True
        self._item.user_properties.append(("theorems", json.dumps(_jsonable(record))))

    def check(self, cmp: Comparison) -> Comparison:
        __tracebackhide__ = True
        self._store(cmp, "check")
        return assert_consistent(cmp)

    def reject(self, cmp: Comparison) -> Comparison:
        __tracebackhide__ = True
        self._store(cmp, "negative-control")
        return assert_rejects(cmp)

    def record(self, cmp: Comparison) -> Comparison:
        self._store(cmp, "measurement")
        return cmp

    def note(self, **values):
        """Attach extra named figures (numbers, short strings) to the report."""
        self._item.user_properties.append(("theorems_note", json.dumps(_jsonable(values))))


def _outcome(report) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else ("xpassed" if report.passed else "failed")
    return report.outcome


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def claim_verdict(tests: list[dict], registered: int | None = None) -> str:
    """confirmed: every check passed (an ``erratum`` check, a strict xfail showing a sentence that the paper's own
    derivation contradicts, leaves the verdict confirmed and is recorded with the claim's errata);
    refuted_as_printed: a printed statement is a strict xfail that failed as expected (its corrected reading
    passed); partial: what ran would be one of those, but fewer than the ``registered`` checks ran (a selection, an
    interrupted run); inconclusive: anything failed, errored or was skipped, or no check ran."""
    if not tests or any(t["outcome"] in ("failed", "error", "skipped", "xpassed") for t in tests):
        return "inconclusive"
    if registered is not None and len(tests) < registered:
        return "partial"
    if any(t["outcome"] == "xfailed" and t["printed"] and not t.get("erratum") for t in tests):
        return "refuted_as_printed"
    return "confirmed"


def claim_table(tests: list[dict], registered: dict | None = None, claims: dict | None = None) -> dict:
    """``registered``: node id -> [[claim, statement], ...] of every check of the suite (:func:`registered_checks`);
    None when every registered check reported in this run.  ``claims``: id -> :class:`~theorems.claims.Claim`, the
    claims to report (default: those registered in this process).
    Per claim: the verdict of its own (``main``) statement, its errata (with the checks that show them), and per statement
    (the claim's own, ``main``, and its named ones) the source, the printed sentence, the reading and a verdict."""
    by_claim, by_statement = defaultdict(list), defaultdict(list)
    for t in tests:
        if t["outcome"] == "incomplete":  # set up but never reported its call (an interrupted run): it did not run
            continue
        for c in t["claims"]:
            by_claim[c].append(t)
        for c, name in t.get("statements") or [[c, MAIN] for c in t["claims"]]:
            by_statement[c, name].append(t)
    expected = None
    if registered is not None:
        expected = defaultdict(set)
        for nodeid, pairs in registered.items():
            for c, name in pairs:
                expected[c, name].add(nodeid)
                expected[c, None].add(nodeid)

    def count(cid, name):
        """Registered checks of a statement (name None: of the whole claim), the ones that ran included."""
        ran = by_claim.get(cid, []) if name is None else by_statement.get((cid, name), [])
        if expected is None:
            return None if name is not None else len(ran)
        return len(expected[cid, name] | {t["nodeid"] for t in ran})

    table = {}
    for cid, c in (registered_claims() if claims is None else claims).items():
        statements = {MAIN: (c.source, c.printed, c.reading), **{k: (s.source, s.printed, s.reading)
                                                                  for k, s in c.statements.items()}}
        table[cid] = {  # the claim's verdict is its own statement's; named statements carry their own
            "verdict": claim_verdict(by_statement.get((cid, MAIN), []), count(cid, MAIN)), "source": c.source,
            "version": c.version,
            "checks_ran": f"{len(by_claim.get(cid, []))} of {count(cid, None)}",
            "printed": c.printed, "reading": c.reading, "checks": [t["nodeid"] for t in by_claim.get(cid, [])],
            "errata": list(c.errata),
            "erratum_checks": {t["nodeid"]: t["outcome"] for t in by_claim.get(cid, []) if t.get("erratum")},
            "statements": {name: {"source": src, "printed": printed, "reading": reading,
                                  "verdict": claim_verdict(by_statement.get((cid, name), []), count(cid, name)),
                                  "checks": [t["nodeid"] for t in by_statement.get((cid, name), [])]}
                           for name, (src, printed, reading) in statements.items()},
        }
    return table


def claims_of_report(doc: dict) -> dict:
    """id -> :class:`~theorems.claims.Claim` as a report's claim table states them (a merge needs no registry)."""
    return {cid: Claim(cid, c["source"], c.get("version", ""), c["printed"], c["reading"],
                       errata=tuple(c.get("errata", ())),
                       statements={name: Statement(st["source"], st["printed"], st["reading"])
                                   for name, st in (c.get("statements") or {}).items() if name != MAIN})
            for cid, c in doc["claims"].items()}


#: What every part of a merged report must share.
MERGE_KEYS = ("schema_version", "profile", "master_seed", "false_fail_rate")


def merge_reports(docs: list[dict], registered: dict | None = None) -> dict:
    """One report from the reports of runs that each ran a part of the suite at one profile and master seed: a
    reference run assembled from time-limited commands (:mod:`theorems.reference`; issue 15's full profile on a GPU
    whose commands stop after 10 minutes).  The numbers are those of one run: a check's numbers depend only on the
    master seed and its node id.

    A check that two parts finished is an error (remove the stale part); a check a part left unfinished (interrupted:
    ``incomplete``) counts as not run.  ``registered``: node id -> [[claim, statement], ...] of the suite's checks
    (:func:`collect_registered_checks`): the registered checks no part finished are listed under ``missing`` and
    make their claims ``partial``.  The budget is recomputed over every merged assertion (the per-assertion level is
    the suite's, whatever the selection); ``duration_s`` is the sum of the parts'; ``parts`` gives each part's run,
    device, torch, commit, duration and checks.  Merging the same parts gives the same document."""
    if not docs:
        raise ValueError("merge_reports needs at least one report")
    docs = sorted(docs, key=lambda d: d["run"])
    for key in MERGE_KEYS:
        values = {json.dumps(d.get(key)) for d in docs}
        if len(values) > 1:
            raise ValueError(f"the parts disagree on {key}: {sorted(values)} (a merged report is one profile at one "
                             "master seed)")
    tests, owner = {}, {}
    for d in docs:
        for t in d["tests"]:
            if t["outcome"] == "incomplete":
                continue
            if t["nodeid"] in tests:
                raise ValueError(f"{t['nodeid']} was run by two parts, {owner[t['nodeid']]} and {d['run']}: remove "
                                 "the stale part")
            tests[t["nodeid"]], owner[t["nodeid"]] = t, d["run"]
    tests = [tests[k] for k in sorted(tests)]
    claims = {}
    for d in docs:  # the latest part's texts
        claims.update(claims_of_report(d))
    missing = sorted(set(registered or {}) - {t["nodeid"] for t in tests})
    parts = [{"run": d["run"], "device": d.get("device"), "torch": d.get("torch"), "commit": d.get("commit"),
              "duration_s": d.get("duration_s"), "workers": d.get("workers"), "interrupted": d.get("interrupted"),
              "checks": sorted(n for n, r in owner.items() if r == d["run"])} for d in docs]

    def joined(key):
        return ", ".join(dict.fromkeys(str(d.get(key)) for d in docs))

    first = docs[0]
    meta = {
        **{key: first.get(key) for key in MERGE_KEYS}, "suite_version": docs[-1].get("suite_version"),
        "run": docs[-1]["run"], "device": joined("device"), "commit": joined("commit"),
        "budget": run_budget(tests), "duration_s": round(sum(float(d.get("duration_s") or 0) for d in docs), 2),
        "python": joined("python"), "torch": joined("torch"), "pinned_versions": docs[-1].get("pinned_versions"),
        "workers": joined("workers"), "interrupted": False,
        "selection": {"args": [], "keyword": "", "markexpr": "", "deselect": [], "filtered": bool(missing)},
        "checks_registered": len(registered) if registered is not None else None,
        "baseline": None, "parts": parts, "missing": missing,
    }
    return _jsonable({**meta, "claims": claim_table(tests, registered, claims), "tests": tests})


def compare_with_baseline(current: list[dict], baseline: dict) -> list[str]:
    """Statistics that moved beyond sampling error since the baseline.

    Two independent runs estimate the same quantity, so ``|a - b| <= z sqrt(se_a^2 + se_b^2)``
    with z at ``FALSE_FAIL_RATE / (number of compared statistics)`` (a Bonferroni budget for the
    whole comparison); a deterministic statistic (se = 0 on both sides) must match to 1e-9 relative.
    """
    entries = baseline.get("statistics", {})
    keys = [(t["nodeid"], r["statistic"], r["role"]) for t in current for r in t["records"]]
    keys = [k for k in keys if "|".join(k) in entries]
    z = _stats.norm.isf(FALSE_FAIL_RATE / max(len(keys), 1) / 2)
    problems = []
    for t in current:
        for r in t["records"]:
            key = "|".join((t["nodeid"], r["statistic"], r["role"]))
            if key not in entries:
                continue
            b = entries[key]
            a_est, b_est = float(r["estimate"]), float(b["estimate"])  # non-finite ones are stored as 'inf', '-inf'
            a_se, b_se = float(r["stderr"]), float(b["stderr"])
            if not (math.isfinite(a_est) and math.isfinite(b_est)):
                if a_est != b_est:
                    problems.append(f"{key}: {b_est} -> {a_est}")
                continue
            tol = z * math.hypot(a_se, b_se) if (a_se or b_se) else 1e-9 * max(abs(b_est), 1e-300)
            if abs(a_est - b_est) > tol:
                problems.append(f"{key}: baseline {b_est:.6g} (se {b_se:.3g}) -> now {a_est:.6g} (se {a_se:.3g}); "
                                f"|diff| {abs(a_est - b_est):.3g} > {tol:.3g}")
    return problems


class ReportPlugin:
    """Collects per-test records and writes the run's report on the controller."""

    def __init__(self, config):
        self.config = config
        self.tests: dict[str, dict] = {}
        self.started = time.time()
        self.baseline_problems: list[str] = []
        self.claim_texts: dict[str, dict] = {}  # the texts of the claims checks named, as the workers registered them
        self.keyboard_interrupt = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo):
        """Ctrl-C, noted before the terminal reporter formats it: that formatting can itself fail (pytest 9 on Python
        3.11 when the interrupt lands on an instruction without a line number, ``tb_lineno`` None: an internal
        error instead of exit status 2), and the report must still say the run was interrupted."""
        self.keyboard_interrupt = True

    def pytest_runtest_logreport(self, report):
        nodeid = canonical_nodeid(report.nodeid)
        entry = self.tests.setdefault(nodeid, {"nodeid": nodeid, "claims": [], "printed": False,
                                                      "records": [], "notes": {}, "outcome": "incomplete",
                                                      "duration": 0.0, "seed": None, "message": ""})
        entry["duration"] += report.duration
        for key, value in report.user_properties:
            if key == "claims":
                entry["claims"] = list(value)
            elif key == "printed":
                entry["printed"] = bool(value)
            elif key == "erratum":
                entry["erratum"] = bool(value)
            elif key == "statements":
                entry["statements"] = [list(v) for v in value]
            elif key == "claim_texts":
                for cid, text in value.items():
                    self.claim_texts.setdefault(cid, text)
            elif key == "seed":
                entry["seed"] = value
            elif key == "device":
                entry["device"] = value
            elif key == "statistical_slots":
                entry["statistical_slots"] = value
            elif key == "theorems" and report.when == "call":
                entry["records"].append(json.loads(value))
            elif key == "theorems_note" and report.when == "call":
                entry["notes"].update(json.loads(value))
        if report.when == "call" and self.config.option.verbose > 0 and not hasattr(self.config, "workerinput"):
            self._progress(report)
        outcome = _outcome(report)
        if report.when == "call" or outcome != "passed":
            if report.when != "call" and report.failed:
                outcome = "error"
            if report.when == "teardown" and outcome == "passed":
                return
            entry["outcome"] = outcome
            if outcome in ("failed", "error", "xfailed"):
                text = getattr(report, "wasxfail", "") or ""
                crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
                entry["message"] = (text + " | " if text else "") + (crash.message if crash else str(report.longrepr)[-500:])
            elif outcome == "skipped":
                entry["message"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""

    def _progress(self, report):
        """With -v: one line per check under pytest's own line, with its key figure and sizes."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        records = [r for r in (json.loads(v) for k, v in report.user_properties if k == "theorems") if r.get("role") == "check"]
        if tr is None or not records:
            return
        r = records[0]
        sizes = ", ".join(f"{k}={v}" for k, v in (r.get("sizes") or {}).items())
        tr.write_line(f"    {r['statistic']}: {_fmt(r['estimate'])} vs {_fmt(r['prediction'])} "
                      f"(±{_fmt(r['min_discrepancy'])}; {sizes}; {report.duration:.1f} s)")

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput"):
            return
        tests = sorted(self.tests.values(), key=lambda t: t["nodeid"])
        if not tests:
            return
        self.budget = run_budget(tests)
        if not self.budget["within_budget"]:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        from .plugin import option

        def opt(name):
            return option(self.config, name)

        base = opt("compare-baseline")
        if base:
            self.baseline_problems = compare_with_baseline(tests, json.loads(Path(base).read_text()))
            if self.baseline_problems:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        selection = run_selection(self.config)
        interrupted = (exitstatus == pytest.ExitCode.INTERRUPTED or self.keyboard_interrupt or bool(session.shouldstop)
                       or bool(session.shouldfail))
        registered = None
        if interrupted or selection["filtered"]:  # which checks did not report: ask a full collection
            registered = registered_checks(self.config)
        here = registered_claims()  # then any claim a worker registered that this process did not
        claims = claim_table(tests, registered, {**here, **{cid: claim_from_dict(text) for cid, text
                                                            in self.claim_texts.items() if cid not in here}})
        run = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        meta = {
            "schema_version": SCHEMA_VERSION, "suite_version": __version__, "run": run,
            "profile": opt("profile"), "device": self.config._theorems_device, "master_seed": opt("seed"),
            "false_fail_rate": FALSE_FAIL_RATE, "budget": self.budget, "duration_s": round(time.time() - self.started, 2),
            "python": platform.python_version(), "torch": _torch_version(), "pinned_versions": PINNED_VERSIONS,
            "workers": os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"), "commit": source_commit(self.config.rootpath),
            "interrupted": interrupted, "selection": selection,
            "checks_registered": None if registered is None else len(registered),
            "baseline": {"file": base, "problems": self.baseline_problems} if base else None,
        }
        doc = _jsonable({**meta, "claims": claims, "tests": tests})
        root = Path(opt("report-dir"))
        out = root / run
        n = 1
        while out.exists():
            out = root / f"{run}-{n}"
            n += 1
        out.mkdir(parents=True)
        write_atomically(out / "verdicts.json", json.dumps(doc, indent=1, sort_keys=False))
        write_atomically(out / "summary.md", render_summary(doc))
        _point_latest(root, out.name)
        wb = opt("write-baseline")
        if wb:
            write_atomically(Path(wb), json.dumps(make_baseline(doc), indent=1))
        self.report_dir = out
        if opt("figures"):
            if not self.config.hook.pytest_theorems_figures.get_hookimpls():
                import warnings

                warnings.warn("--theorems-figures: no conftest.py implements pytest_theorems_figures(config, directory): "
                              "no figures written", stacklevel=1)
            self.config.hook.pytest_theorems_figures(config=self.config, directory=out / "figures")

    def pytest_terminal_summary(self, terminalreporter):
        if hasattr(self.config, "workerinput") or not getattr(self, "report_dir", None):
            return
        tr = terminalreporter
        tr.section("theorems: verdicts")
        doc = json.loads((self.report_dir / "verdicts.json").read_text())
        for cid, c in doc["claims"].items():
            extra = " + erratum" if c.get("errata") and c["verdict"] == "confirmed" else ""
            ran = f"  [{c['checks_ran']} checks ran]" if c["verdict"] == "partial" else ""
            tr.write_line(f"{c['verdict'] + extra:>29}  {cid}  ({c['source']}){ran}")
            for name, st in c.get("statements", {}).items():
                if name != MAIN:
                    tr.write_line(f"{st['verdict']:>29}    {cid} / {name}  ({st['source'][:60]})")
        for p in self.baseline_problems:
            tr.write_line(f"BASELINE SHIFT: {p}", red=True)
        b = self.budget
        tr.write_line(f"false-fail budget: {b['slots_used']:g} of {b['assertion_slots']} assertion slots used at "
                      f"{b['per_assertion_rate']:.2g} each; estimated P(spurious failure) of this design "
                      f"{b['estimated_false_fail_probability']:.2g} (budget {b['suite_false_fail_rate']:g})",
                      red=not b["within_budget"])
        if not b["within_budget"]:
            tr.write_line(f"OVER BUDGET: this run made {b['slots_used']:g} statistical assertions but the budget is split "
                          f"over {ASSERTION_SLOTS} (theorems/budget.py): raise ASSERTION_SLOTS", red=True)
        tr.write_line(f"report: {self.report_dir}/summary.md")


def _point_latest(root: Path, name: str):
    """Switch ``root/latest`` to ``name`` atomically (a new link renamed over the old one)."""
    tmp = root / f".latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(name)
        os.replace(tmp, root / "latest")
    except OSError:  # pragma: no cover - filesystems without symlinks
        write_atomically(root / "LATEST", name)


def run_selection(config) -> dict:
    """What the run was asked to run: its path arguments, -k / -m expressions and --deselect; ``filtered`` when any of
    them narrows the suite's own test paths (path arguments that contain every test path, e.g. ``checks`` for the
    test path ``checks/claims``, do not: the run holds every registered check and more)."""
    testpaths = [str(p) for p in (config.getini("testpaths") or [])]
    args = [a for a in config.args if a]
    keyword, markexpr = config.getoption("keyword", ""), config.getoption("markexpr", "")
    deselect = config.getoption("deselect", None) or []
    last_failed = bool(config.getoption("lf", False) or config.getoption("last_failed_no_failures", None) == "none")
    # with no testpaths, pytest runs the invocation directory: a bare `pytest` in a user project is not narrowed
    default = [(config.rootpath / p).resolve() for p in testpaths] or [Path(config.invocation_params.dir).resolve()]
    given = [Path(config.invocation_params.dir, a).resolve() for a in args]
    narrowed = bool(args) and not all(any(p == a or a in p.parents for a in given) for p in default)
    return {"args": args, "keyword": keyword, "markexpr": markexpr, "deselect": list(deselect),
            "filtered": bool(narrowed or keyword or markexpr or deselect or last_failed)}


def registered_checks(config) -> dict:
    """node id -> [[claim, statement], ...] of every check of the suite's test paths in this profile, from a collection
    in a subprocess (a few seconds; only for filtered or interrupted runs).  The result is cached in the temporary
    directory under a key that hashes every file the collection reads (the test paths' and the package's Python
    files, ``conftest.py``, ``pyproject.toml``) and the profile, so repeated ``-k`` runs of unchanged code collect once."""
    import tempfile

    from .plugin import option

    cache = Path(tempfile.gettempdir()) / f"theorems-claims-map-{_collection_key(config)}.json"
    if cache.exists():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass  # a damaged cache entry: collect again
    found = collect_registered_checks(config.rootpath, option(config, "profile"), config.getini("testpaths") or [],
                                      xdist=config.pluginmanager.hasplugin("xdist"))
    if found is None:
        import warnings

        warnings.warn("theorems: could not collect the suite's registered checks: verdicts count only the checks that "
                      "ran", stacklevel=1)
        return {}
    try:
        write_atomically(cache, json.dumps(found))
    except OSError:
        pass  # no cache: the next filtered run collects again
    return found


def collect_registered_checks(root, profile: str, paths=(), *, xdist: bool = True) -> dict | None:
    """node id -> [[claim, statement], ...] of every claim check that ``pytest --collect-only`` finds under ``paths``
    (default: the project's test paths) in ``profile``, run in a subprocess in ``root``; None if the collection
    failed.  Shared by :func:`registered_checks` and :mod:`theorems.reference`."""
    import subprocess
    import sys
    import tempfile

    from .plugin import CLAIMS_MAP_ENV

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "claims.json"
        no_xdist = ["-n", "0"] if xdist else []  # a user project may lack xdist
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *no_xdist,
               f"--theorems-profile={profile}", *[str(p) for p in paths]]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
        env[CLAIMS_MAP_ENV] = str(out)
        subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=300)
        if not out.exists():
            return None
        return {k: v for k, v in json.loads(out.read_text()).items() if v}


def _collection_key(config) -> str:
    """A hash of what :func:`registered_checks` collects from: the files and the profile."""
    import hashlib

    root = Path(config.rootpath)
    files = [root / "conftest.py", root / "pyproject.toml"]
    for top in [*(config.getini("testpaths") or []), Path(__file__).parent]:
        files += sorted((root / top).rglob("*.py"))
    from .plugin import option

    h = hashlib.sha256(f"{root}|{option(config, 'profile')}".encode())
    for f in files:
        if f.is_file():
            h.update(str(f).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:24]


#: Overrides :func:`source_commit` where the source has no git metadata (a copy of a checkout on another machine).
SOURCE_COMMIT_ENV = "THEOREMS_SOURCE_COMMIT"


def source_commit(root) -> str | None:
    """The commit of the code a run ran (``verdicts.json``'s ``commit``): ``git rev-parse HEAD`` in ``root``, with
    ``+dirty`` when tracked files differ from it; :data:`SOURCE_COMMIT_ENV` when set; None outside a git checkout."""
    import subprocess

    if os.environ.get(SOURCE_COMMIT_ENV):
        return os.environ[SOURCE_COMMIT_ENV]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _torch_version():
    try:
        import torch

        return torch.__version__
    except ImportError:  # pragma: no cover
        return None


def record_number(x) -> float:
    """A number of a ``verdicts.json`` record as a float: NaN where it is missing or not a number (the report and the
    calibration command read records with it)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def run_budget(tests: list[dict]) -> dict:
    """The run's budget block (:func:`theorems.budget.budget_summary`): slots used by checks, negative controls and
    tests marked ``statistical(k)``; the estimated P(spurious failure) sums each check's level, each control's (and
    refuted printed statement's) estimated miss probability and each declared slot's rate (Bonferroni: an upper
    bound)."""
    slots, spurious = 0.0, 0.0
    for t in tests:
        slots += t.get("statistical_slots", 0)
        spurious += t.get("statistical_slots", 0) * PER_ASSERTION_RATE
        expected_to_fail = [r for r in t["records"] if r["role"] == "check" and r.get("expected_to_fail")]
        if expected_to_fail:  # a strict xfail spuriously fails only if every one of its checks passes (an xpass)
            slots += 1.0
            spurious += min(record_number(r["miss_probability"]) for r in expected_to_fail)
        for r in t["records"]:
            if r["role"] == "measurement" or r in expected_to_fail:
                continue
            slots += record_number(r.get("slots", 1.0))
            miss = r.get("miss_probability")
            spurious += record_number(miss) if miss is not None else 1 - record_number(r["level"])
    return budget_summary(slots, min(spurious, 1.0))


def make_baseline(doc: dict) -> dict:
    stats = {}
    for t in doc["tests"]:
        for r in t["records"]:
            stats["|".join((t["nodeid"], r["statistic"], r["role"]))] = {
                "estimate": r["estimate"], "stderr": r["stderr"], "prediction": r["prediction"]}
    return {"schema_version": SCHEMA_VERSION, "profile": doc["profile"], "master_seed": doc["master_seed"],
            "torch": doc["torch"], "statistics": stats}


def _fmt(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{x:.4g}"


def _cell(text: str) -> str:
    """A markdown table cell: pipes (norms ||J||) escaped, newlines removed."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _selection_lines(doc) -> list[str]:
    sel, lines = doc.get("selection") or {}, []
    if doc.get("parts") is not None:  # a merged report (merge_reports)
        lines.append(f"**Assembled from {len(doc['parts'])} part(s)** (`python -m theorems.reference`): " + "; ".join(
            f"{p['run']} on {p['device']} ({len(p['checks'])} checks, {p['duration_s']} s, commit {_short(p['commit'])})"
            for p in doc["parts"]) + ".")
        if doc.get("missing"):
            lines.append(f"**Not yet run**: {len(doc['missing'])} of {doc.get('checks_registered')} registered checks "
                         "(their claims are `partial`): " + ", ".join(f"`{m}`" for m in doc["missing"]))
        return [x for line in lines for x in (line, "")]
    if doc.get("interrupted"):
        lines.append("**This run was interrupted**: verdicts cover only the checks that reported.")
    if sel.get("filtered"):
        what = ", ".join(f"{k} {v!r}" for k, v in sel.items() if k != "filtered" and v)
        ran = sum(1 for t in doc["tests"] if t["claims"] and t["outcome"] != "incomplete")
        lines.append(f"**Filtered run** ({what}): {ran} of {doc.get('checks_registered')} registered claim checks "
                     "ran; a claim is `partial` when some of its checks did not run.")
    return [x for line in lines for x in (line, "")]


def _short(commit) -> str:
    """A commit as the summary shows it: 10 hex digits, ``+dirty`` kept."""
    if not commit:
        return str(commit)
    head, dirty, rest = str(commit).partition("+")
    return head[:10] + (dirty + rest if dirty else "")


def _budget_line(b) -> str:
    if not b:
        return ""
    return (f"False-fail budget {b['suite_false_fail_rate']:g} per run, split over {b['assertion_slots']} assertion "
            f"slots ({b['per_assertion_rate']:.2g} each); this run used {b['slots_used']:g}; estimated P(spurious "
            f"failure) of its design {b['estimated_false_fail_probability']:.2g}.")


def render_summary(doc: dict) -> str:
    lines = [
        f"# Verdicts ({doc['run']})", "",
        f"profile `{doc['profile']}` · device `{doc['device']}` · master seed {doc['master_seed']} · "
        f"torch {doc['torch']} · {doc['duration_s']} s", "",
        _budget_line(doc.get("budget")), "",
        *_selection_lines(doc),
        "| claim | source | printed statement | reading tested | verdict | key figures |",
        "|---|---|---|---|---|---|",
    ]
    tests_by_id = {t["nodeid"]: t for t in doc["tests"]}
    for cid, c in doc["claims"].items():
        figs = []  # the claim's own statement's figures: a named statement has its own row below
        for nid in c["statements"][MAIN]["checks"]:
            t = tests_by_id[nid]
            for r in [r for r in t["records"] if r["role"] == "check"][:1]:
                tag = (" (erratum)" if t.get("erratum") else " (printed, refuted)") if t["outcome"] == "xfailed" else ""
                figs.append(f"{r['statistic']}: {_fmt(r['estimate'])} vs {_fmt(r['prediction'])}{tag}")
        key = "<br>".join(figs[:4]) or "no check ran in this run"
        verdict = f"**{c['verdict']}**" + (" with erratum" if c.get("errata") and c["verdict"] == "confirmed" else "")
        if c.get("verdict") == "partial":
            verdict += f" ({c['checks_ran']} checks ran)"
        cells = [f"`{cid}`", c["source"], c["printed"], c["reading"], verdict, key]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
        for name, st in (c.get("statements") or {}).items():
            if name != MAIN:
                cells = [f"`{cid}` / {name}", st["source"], st["printed"], st["reading"], f"**{st['verdict']}**",
                         "<br>".join(f"`{n.split('::')[-1]}`" for n in st["checks"])]
                lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    errata = [(cid, e) for cid, c in doc["claims"].items() for e in c.get("errata", [])]
    if errata:
        lines += ["", "## Errata", "", "Sentences contradicted by the paper's own derivation (recorded; they do not refute "
                  "the claim):", ""]
        lines += [f"- `{cid}`: {e}" for cid, e in errata]
    lines += ["", "## Checks", ""]
    for t in doc["tests"]:
        lines.append(f"### `{t['nodeid']}` — {t['outcome']} ({t['duration']:.2f} s, seed {t['seed']})")
        if t["message"]:
            lines.append(f"> {t['message'].splitlines()[0][:400]}")
        for r in t["records"]:
            sizes = ", ".join(f"{k}={v}" for k, v in (r.get("sizes") or {}).items())
            power = (f", miss probability {_fmt(r['miss_probability'])}" if r.get("miss_probability") is not None
                     else "")
            lines.append(f"- *{r['role']}* {r['statistic']}: estimate {_fmt(r['estimate'])}, "
                         f"CI [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}], prediction {_fmt(r['prediction'])}, "
                         f"model error {_fmt(r['model_error'])}, detects |error| > {_fmt(r['min_discrepancy'])}{power}, "
                         f"n={r['n']} ({sizes})")
        for k, v in t["notes"].items():
            lines.append(f"- {k}: {_fmt(v) if isinstance(v, float) else v}")
        lines.append("")
    if doc.get("baseline"):
        lines += ["## Baseline comparison", "", f"baseline: `{doc['baseline']['file']}`", ""]
        lines += [f"- {p}" for p in doc["baseline"]["problems"]] or ["- no statistic moved beyond sampling error"]
    return "\n".join(lines) + "\n"
