"""The report plugin: verdict logic, files written, and the numeric regression baseline (issue 7)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from theorems.budget import PER_ASSERTION_RATE
from theorems.reporting import SCHEMA_VERSION, claim_table, claim_verdict, compare_with_baseline

ROOT = Path(__file__).resolve().parents[2]
SELECTION = ["checks/claims/test_lyapunov.py::test_log_image_norm_is_exactly_L_gamma1[3-bernoulli]",
             "checks/claims/test_gates.py::test_printed_gates_independent_of_weights"]


@pytest.mark.parametrize("args, options, filtered", [
    ([], {}, False), (["checks"], {}, False), (["checks/claims"], {}, False), (["checks/claims", "checks/core"], {}, False),
    (["checks/claims/test_gates.py"], {}, True), (["checks/core"], {}, True),
    (["checks/claims/test_gates.py::test_relu_gates_are_iid_fair_coins_independent_of_weights"], {}, True),
    ([], {"keyword": "gates"}, True), (["checks"], {"markexpr": "printed"}, True),
])
def test_a_run_is_filtered_only_when_it_leaves_out_some_of_the_test_paths(args, options, filtered):
    """The suite's test path is ``checks/claims``: ``pytest checks`` (the suite and the library's tests) holds every
    registered check, so its verdicts are not partial; a file, a node id, another directory or -k/-m narrow it."""
    from types import SimpleNamespace

    from theorems.reporting import run_selection

    config = SimpleNamespace(rootpath=ROOT, args=args, invocation_params=SimpleNamespace(dir=ROOT),
                             getini=lambda name: ["checks/claims"] if name == "testpaths" else None,
                             getoption=lambda name, default=None: options.get(name, default))
    assert run_selection(config)["filtered"] is filtered

def test_claim_verdicts():
    ok = {"outcome": "passed", "printed": False}
    assert claim_verdict([ok, ok]) == "confirmed"
    assert claim_verdict([ok, {"outcome": "xfailed", "printed": True}]) == "refuted_as_printed"
    assert claim_verdict([ok, {"outcome": "failed", "printed": False}]) == "inconclusive"
    assert claim_verdict([ok, {"outcome": "skipped", "printed": False}]) == "inconclusive"
    assert claim_verdict([]) == "inconclusive"
    # an erratum (a sentence the paper's own derivation contradicts) leaves the claim confirmed
    assert claim_verdict([ok, {"outcome": "xfailed", "printed": False, "erratum": True}]) == "confirmed"


def test_claim_table_has_statement_verdicts_and_errata():
    tests = [{"nodeid": "a::main", "claims": ["approx-gates"], "statements": [["approx-gates", "main"]],
              "outcome": "passed", "printed": False},
             {"nodeid": "a::remark", "claims": ["approx-gates"], "statements": [["approx-gates", "finite-n-remarks"]],
              "outcome": "xfailed", "printed": True},
             {"nodeid": "b::erratum", "claims": ["toy-descent"], "statements": [["toy-descent", "main"]],
              "outcome": "xfailed", "printed": False, "erratum": True}]
    table = claim_table(tests)
    gates = table["approx-gates"]
    assert gates["verdict"] == "confirmed" and gates["statements"]["main"]["checks"] == ["a::main"]
    assert gates["statements"]["finite-n-remarks"]["verdict"] == "refuted_as_printed"
    assert "App. G.1" in gates["statements"]["finite-n-remarks"]["source"]
    toy = table["toy-descent"]
    assert toy["verdict"] == "confirmed" and toy["errata"] and toy["erratum_checks"] == {"b::erratum": "xfailed"}
    assert table["lyapunov"]["verdict"] == "inconclusive"  # no check ran
    registered = {"a::main": [["approx-gates", "main"]], "a::other": [["approx-gates", "main"]]}
    cut = tests[:1] + [{"nodeid": "a::other", "claims": ["approx-gates"], "statements": [["approx-gates", "main"]],
                        "outcome": "incomplete", "printed": False}]
    partial = claim_table(cut, registered)["approx-gates"]
    assert partial["verdict"] == "partial" and partial["checks_ran"] == "1 of 2"  # an interrupted check did not run


def _tests(estimate, stderr=0.01):
    return [{"nodeid": "a::b", "records": [{"statistic": "s", "role": "check", "estimate": estimate, "stderr": stderr}]}]


def test_baseline_comparison_flags_only_real_shifts():
    base = {"statistics": {"a::b|s|check": {"estimate": 1.0, "stderr": 0.01}}}
    assert compare_with_baseline(_tests(1.02), base) == []  # 1.4 combined s.e.
    assert compare_with_baseline(_tests(1.2), base)  # 14 combined s.e.
    assert compare_with_baseline(_tests("-inf"), base)
    det = {"statistics": {"a::b|s|check": {"estimate": 1.0, "stderr": 0.0}}}
    assert compare_with_baseline(_tests(1.0, 0.0), det) == []
    assert compare_with_baseline(_tests(1.0 + 1e-6, 0.0), det)


def _pytest(tmp, *args):
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "--report-dir", str(tmp / "reports"), *SELECTION, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_baseline_round_trip(tmp_path):
    """A baseline written with one seed passes with another seed and fails once a statistic is shifted."""
    base = tmp_path / "baseline.json"
    res = _pytest(tmp_path, "--seed", "1", "--write-baseline", str(base))
    assert res.returncode == 0, res.stdout[-2000:]
    doc = json.loads((tmp_path / "reports" / "latest" / "verdicts.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    # a selection: lyapunov's other checks did not run, so it is partial, not confirmed
    assert doc["selection"]["filtered"] and not doc["interrupted"] and doc["checks_registered"] > 50
    assert doc["claims"]["lyapunov"]["verdict"] == "partial"
    ran, total = doc["claims"]["lyapunov"]["checks_ran"].split(" of ")
    assert ran == "1" and int(total) > 5
    assert "Filtered run" in (tmp_path / "reports" / "latest" / "summary.md").read_text()
    assert doc["claims"]["approx-gates"]["statements"]["finite-n-remarks"]["verdict"] == "partial"  # 1 of its 2 checks
    assert doc["budget"]["slots_used"] > 0 and doc["budget"]["per_assertion_rate"] == PER_ASSERTION_RATE
    assert (tmp_path / "reports" / "latest" / "summary.md").read_text().startswith("# Verdicts")
    assert _pytest(tmp_path, "--seed", "2", "--compare-baseline", str(base)).returncode == 0
    stats = json.loads(base.read_text())
    key = next(k for k in stats["statistics"] if k.endswith("E log||Ju|||check"))
    se = float(stats["statistics"][key]["stderr"])
    stats["statistics"][key]["estimate"] += 10 * se  # a statistic shifted by 10 standard errors
    base.write_text(json.dumps(stats))
    res = _pytest(tmp_path, "--seed", "2", "--compare-baseline", str(base))
    assert res.returncode != 0 and "BASELINE SHIFT" in res.stdout, res.stdout[-2000:]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a subprocess")
def test_an_interrupted_run_says_so_and_confirms_nothing(tmp_path):
    """Ctrl-C during a run (SIGINT while the second of two lyapunov/alignment checks trains its networks): the report is
    still written, says the run was interrupted (verdicts.json and summary.md), records the check that was cut as
    incomplete, and calls neither claim confirmed."""
    import signal
    import time

    fast = "checks/claims/test_lyapunov.py::test_qr_exponents_match_closed_form[n32-p1.0-s1.0-none]"
    slow = "checks/claims/test_lyapunov.py::test_alignment_persists_after_training[gated]"
    cmd = [sys.executable, "-m", "pytest", "-v", "-n", "0", "-p", "no:cacheprovider", "--device=cpu",  # CPU: slow enough
           f"--report-dir={tmp_path / 'reports'}", fast, slow]
    # A shell's background job (`cmd &`, e.g. a CI runner's) ignores SIGINT and its children inherit that, so Python
    # would never raise KeyboardInterrupt: the child restores the default disposition before it starts.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:  # wait until the fast check has reported and the slow one is training
        seen.append(line)
        if "PASSED" in line or "FAILED" in line:
            break
    time.sleep(3)  # the slow check is now training (it takes about a minute)
    proc.send_signal(signal.SIGINT)
    seen.append(proc.communicate(timeout=120)[0])
    out = "".join(seen)
    doc = json.loads((tmp_path / "reports" / "latest" / "verdicts.json").read_text())
    assert doc["interrupted"], out[-2000:]
    outcomes = {t["nodeid"]: t["outcome"] for t in doc["tests"]}
    assert outcomes[fast] == "passed" and outcomes.get(slow, "incomplete") == "incomplete", outcomes
    assert doc["claims"]["lyapunov"]["verdict"] == "partial" and doc["claims"]["lyapunov"]["checks_ran"].startswith("1 of")
    assert doc["claims"]["alignment"]["verdict"] != "confirmed"
    assert "This run was interrupted" in (tmp_path / "reports" / "latest" / "summary.md").read_text()


BAD_OPTIONS = [  # the plugin's names and this repository's short aliases alike; the message names the option
    ("--theorems-compare-baseline={tmp}/missing.json", "compare-baseline=", "no such file"),
    ("--compare-baseline={tmp}/corrupt.json", "compare-baseline=", "not a baseline"),
    ("--theorems-report-dir={tmp}/file/reports", "report-dir=", "is not a directory"),
    ("--write-baseline={tmp}/file/base.json", "write-baseline=", "is not a directory"),
    ("--theorems-figures", "--theorems-figures", "needs matplotlib"),
]


@pytest.mark.parametrize("option, name, problem", BAD_OPTIONS, ids=["missing-baseline", "corrupt-baseline",
                                                                     "report-dir", "write-baseline", "figures-extra"])
def test_bad_options_are_usage_errors_before_any_work(tmp_path, option, name, problem):
    (tmp_path / "corrupt.json").write_text("{not json")
    (tmp_path / "file").write_text("a file, not a directory")
    # matplotlib made absent (sys.modules[name] = None is how Python marks a module that cannot be imported)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", option.format(tmp=tmp_path), SELECTION[0]]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 4, res.stdout[-1000:] + res.stderr[-1000:]  # pytest's usage-error status
    assert name in res.stderr and problem in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_summary_key_figures_of_a_claim_are_its_own_statements():
    """A named statement's records appear in its own row, not among the claim's key figures (the main row)."""
    from theorems.reporting import render_summary

    def test(nodeid, statement, statistic):
        return {"nodeid": nodeid, "claims": ["approx-gates"], "statements": [["approx-gates", statement]],
                "outcome": "passed", "printed": False, "duration": 0.1, "seed": 1, "message": "", "notes": {},
                "records": [{"statistic": statistic, "role": "check", "estimate": 1.0, "prediction": 1.0, "ci_low": 0.9,
                             "ci_high": 1.1, "model_error": 0.0, "min_discrepancy": 0.1, "n": 2, "sizes": {}}]}

    tests = [test("a::main", "main", "main statistic"), test("a::remark", "finite-n-remarks", "remark statistic")]
    doc = {"run": "r", "profile": "quick", "device": "cpu", "master_seed": 1, "torch": "x", "duration_s": 1.0,
           "tests": tests, "claims": claim_table(tests)}
    row = next(line for line in render_summary(doc).splitlines() if line.startswith("| `approx-gates` |"))
    assert "main statistic" in row and "remark statistic" not in row


def _check(nodeid, claim, outcome="passed", level=1 - PER_ASSERTION_RATE):
    return {"nodeid": nodeid, "claims": [claim], "statements": [[claim, "main"]], "outcome": outcome, "printed": False,
            "duration": 1.0, "seed": 1, "message": "", "notes": {},
            "records": [{"role": "check", "statistic": "s", "level": level, "estimate": 0.0, "stderr": 0.1,
                         "prediction": 0.0, "ci_low": -0.5, "ci_high": 0.5, "model_error": 0.0, "min_discrepancy": 0.5,
                         "n": 10, "sizes": {"n": 4}}]}


def _part(run, tests, **meta):
    return {"schema_version": SCHEMA_VERSION, "profile": "full", "master_seed": 7, "false_fail_rate": 1e-3, "run": run,
            "device": "cuda:0", "duration_s": 100.0, "torch": "2.11", "commit": "c0ffee", "interrupted": False,
            "claims": claim_table(tests), "tests": tests, **meta}


def test_merged_parts_make_one_report_with_the_missing_checks_partial():
    """A reference run in parts (theorems.reference): the parts' finished checks make one report, a check a part left
    unfinished counts as not run, the budget and durations add up, and merging is independent of the parts' order."""
    from theorems.reporting import merge_reports, render_summary

    registered = {"l::a": [["lyapunov", "main"]], "l::b": [["lyapunov", "main"]], "g::c": [["approx-gates", "main"]]}
    first = _part("20261201T000000Z", [_check("l::a", "lyapunov"), _check("l::b", "lyapunov", "incomplete")],
                  interrupted=True)
    second = _part("20261202T000000Z", [_check("g::c", "approx-gates")], device="cuda:1", duration_s=50.0)
    doc = merge_reports([first, second], {k: v for k, v in registered.items() if k != "l::b"})
    assert [t["nodeid"] for t in doc["tests"]] == ["g::c", "l::a"] and doc["missing"] == []
    assert doc["claims"]["lyapunov"]["verdict"] == "confirmed" and doc["claims"]["approx-gates"]["verdict"] == "confirmed"
    assert doc["duration_s"] == 150.0 and doc["device"] == "cuda:0, cuda:1" and doc["budget"]["slots_used"] == 2
    assert [p["checks"] for p in doc["parts"]] == [["l::a"], ["g::c"]] and doc["run"] == second["run"]
    assert merge_reports([second, first], {k: v for k, v in registered.items() if k != "l::b"}) == doc
    partial = merge_reports([first, second], registered)  # l::b was cut off: not run
    assert partial["missing"] == ["l::b"] and partial["claims"]["lyapunov"]["verdict"] == "partial"
    assert partial["claims"]["lyapunov"]["checks_ran"] == "1 of 2" and partial["selection"]["filtered"]
    summary = render_summary(partial)
    assert "Assembled from 2 part(s)" in summary and "**Not yet run**: 1 of 3" in summary and "`l::b`" in summary


def test_merging_refuses_parts_that_are_not_one_run():
    """Two parts that both finished a check (a stale part), or parts at different master seeds or profiles, cannot
    be one reference run: the error names the check or the field."""
    from theorems.reporting import merge_reports

    one = _part("20261201T000000Z", [_check("l::a", "lyapunov")])
    with pytest.raises(ValueError, match="l::a was run by two parts"):
        merge_reports([one, _part("20261202T000000Z", [_check("l::a", "lyapunov", "failed")])])
    with pytest.raises(ValueError, match="master_seed"):
        merge_reports([one, _part("20261202T000000Z", [_check("l::b", "lyapunov")], master_seed=8)])
    with pytest.raises(ValueError, match="profile"):
        merge_reports([one, _part("20261202T000000Z", [_check("l::b", "lyapunov")], profile="quick")])
    with pytest.raises(ValueError, match="at least one"):
        merge_reports([])


def test_reference_run_resumes_where_the_last_part_stopped(tmp_path):
    """``python -m theorems.reference run``: each part runs only what no earlier part finished, is stored under
    DIR/parts with its commit, and DIR/verdicts.json is the merge; ``status`` lists what is left (exit 1)."""
    first, second = SELECTION
    ref = tmp_path / "ref"

    def reference(*args):
        cmd = [sys.executable, "-m", "theorems.reference", *args[:1], str(ref), "--profile", "quick", "--device", "cpu",
               *args[1:]]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

    res = reference("run", "--", "-n", "0", "-q", "-k", "test_log_image_norm_is_exactly_L_gamma1 and 3-bernoulli")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = reference("run", "--", "-n", "0", "-q", "-k", "test_log_image_norm_is_exactly_L_gamma1 and 3-bernoulli or "
                    "test_printed_gates_independent_of_weights")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    parts = sorted((ref / "parts").iterdir())
    ran = [[t["nodeid"] for t in json.loads((p / "verdicts.json").read_text())["tests"]] for p in parts]
    assert ran == [[first], [second]]  # the second part did not rerun the first check
    assert all((p / "pytest.log").exists() for p in parts)
    doc = json.loads((ref / "verdicts.json").read_text())
    assert sorted(t["nodeid"] for t in doc["tests"]) == sorted(SELECTION) and len(doc["parts"]) == 2
    assert doc["missing"] and first not in doc["missing"] and doc["claims"]["lyapunov"]["verdict"] == "partial"
    assert doc["parts"][0]["commit"]  # a git checkout: the commit the part ran
    baseline = json.loads((ref / "baseline.json").read_text())  # for --compare-baseline against the reference
    assert {k.split("|")[0] for k in baseline["statistics"]} == set(SELECTION)
    status = reference("status")
    assert status.returncode == 1 and f"{2} of {doc['checks_registered']} checks finished" in status.stdout


def test_reference_rejects_a_time_limit_that_is_not_positive():
    from theorems.reference import parse_args

    with pytest.raises(SystemExit):
        parse_args(["run", "ref", "--time-limit", "0"])
    assert parse_args(["run", "ref", "--", "-n", "4"]).pytest_args == ["-n", "4"]
