"""The calibration command (python -m theorems.calibrate): bookkeeping, the local and the Ray path, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from theorems.budget import PER_ASSERTION_RATE
from theorems import calibrate
from theorems.calibrate import summarize, xdist_workers

ROOT = Path(__file__).resolve().parents[2]
SELECTION = ["checks/claims/test_lyapunov.py::test_log_image_norm_is_exactly_L_gamma1[1-bernoulli]",
             "checks/core/test_determinism.py::test_fingerprint", "-n", "0"]


def _calibrate(tmp_path, *args, out="cal.json"):
    cmd = [sys.executable, "-m", "theorems.calibrate", f"--out={tmp_path / out}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _run(seed, failed=(), status=None):
    return {"seed": seed, "exit_status": (1 if failed else 0) if status is None else status, "duration_s": 1.0,
            "failed": list(failed), "fingerprint": "x", "slots_used": 2.0, "check_slots": {"a::t": 2.0, "a::u": 1.0}}


def test_summary_counts_failures_and_flags_improbable_ones():
    runs = [_run(1), _run(2, ["a::t"]), _run(3, ["a::t", "a::u"]), _run(4)]
    doc = summarize(runs)
    assert doc["seeds"] == [1, 2, 3, 4] and doc["suite_failures"] == [2, 3] and doc["failure_rate"] == 0.5
    assert doc["failures_per_check"] == {"a::t": 2, "a::u": 1}
    lo, hi = doc["failure_rate_ci95"]
    assert lo < 0.5 < hi and 0 < lo and hi < 1
    # 2 failures in 4 seeds at a share of 2 slots x 4e-5 is improbable: flagged; so is 1 in 4 at one slot
    flagged = {f["nodeid"]: f for f in doc["flagged"]}
    assert flagged["a::t"]["share"] == pytest.approx(2 * PER_ASSERTION_RATE) and flagged["a::t"]["pvalue"] < 1e-6
    assert "check_slots" not in doc["runs"][0]
    assert summarize([_run(s) for s in range(20)])["flagged"] == []


def test_closest_calls_are_kept_per_check_over_seeds():
    """Per seed, the smallest headroom of a test's checks and the largest miss probability of its controls; the
    summary keeps, per node id, the closest call over all seeds and which seed made it."""
    from theorems.calibrate import margins, render_markdown

    def rec(role, statistic, headroom=None, miss=None):
        return {"role": role, "statistic": statistic, "headroom": headroom, "miss_probability": miss}

    tests = [{"nodeid": "a::t", "records": [rec("check", "x", 1.5), rec("check", "y", 0.7),
                                            rec("negative-control", "c", miss=1e-3), rec("measurement", "m", 0.1)]},
             {"nodeid": "a::x", "records": [{**rec("check", "printed", -5.0), "expected_to_fail": True}]}]
    m = margins(tests)
    nan = float("nan")
    assert {k: m[k] for k in ("headroom", "control_miss")} == {"headroom": {"a::t": [0.7, "y"]},
                                                                "control_miss": {"a::t": [1e-3, "c"]}}
    assert set(m["estimates"]) == {"a::t"} and set(m["estimates"]["a::t"]) == {"x", "y", "c"}  # not the measurement
    later = {"headroom": {"a::t": [0.2, "x"]}, "control_miss": {"a::t": [1e-6, "c"]},
             "estimates": {"a::t": {"x": [1.0, 0.5], "y": [nan, 1.0]}}}
    first = {**m, "estimates": {"a::t": {"x": [2.0, 0.5], "y": [3.0, 1.0]}}}
    doc = summarize([{**_run(1), **first}, {**_run(2), **later}])
    assert doc["tightest_checks"]["a::t"] == {"headroom": 0.2, "statistic": "x", "seed": 2}
    assert doc["weakest_controls"]["a::t"] == {"miss_probability": 1e-3, "statistic": "c", "seed": 1}
    assert "headroom" not in doc["runs"][0] and "estimates" not in doc["runs"][0]
    # the spread over seeds against the stated errors: sd of (2, 1) is 0.707 against 0.5; a NaN seed is left out
    spread = doc["estimate_spread"]["a::t"]
    assert spread["x"] == pytest.approx({"seeds": 2, "mean": 1.5, "sd": 0.5 ** 0.5, "mean_stderr": 0.5,
                                         "sd_over_stderr": 2 ** 0.5})
    assert "y" not in spread
    from theorems.calibrate import spread_pvalue
    exact = summarize([{**_run(1), **m, "estimates": {"a::t": {"z": [1.0, 0.0]}}},
                       {**_run(2), **m, "estimates": {"a::t": {"z": [1.0 + 1e-16, 0.0]}}}])["estimate_spread"]["a::t"]["z"]
    assert exact["sd_over_stderr"] is None and spread_pvalue(exact) == 1.0  # no stated error: nothing to audit
    honest = {"seeds": 20, "sd_over_stderr": 1.0}
    assert 0.3 < spread_pvalue(honest) < 0.7 and spread_pvalue({**honest, "sd_over_stderr": 2.0}) < 1e-6
    narrow = {**doc, "pytest_args": [], "estimate_spread": {"a::t": {"x": {**spread["x"], **honest, "sd_over_stderr": 2.0}}}}
    assert "| `a::t` | x | 20 |" in render_markdown(narrow)
    assert "too narrow" not in render_markdown({**doc, "pytest_args": []})
    text = render_markdown({**doc, "pytest_args": []})
    assert "| `a::t` | x | 0.20 | 2 |" in text and "| `a::t` | c | 0.001 | 1 |" in text


def test_xdist_workers_of_a_run():
    assert xdist_workers([]) == 1
    assert xdist_workers(["-n", "3", "-k", "x"]) == 3
    assert xdist_workers(["-n4"]) == 4 and xdist_workers(["--numprocesses=2"]) == 2


def test_seeds_side_by_side_share_the_cores_threads(monkeypatch, tmp_path):
    """The local path gives each run's processes cores / (seeds at once x xdist workers) intra-op threads
    (OMP_NUM_THREADS, unless the caller set it): two single-process runs of 2 threads each on 2 cores ran 3x slower
    per run than one."""
    seen = []

    def fake_run(cmd, cwd, capture_output, text, env):
        seen.append(env.get("OMP_NUM_THREADS"))
        return subprocess.CompletedProcess(cmd, 5, "", "")

    monkeypatch.setattr(calibrate.subprocess, "run", fake_run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(calibrate.os, "cpu_count", lambda: 8)
    calibrate.run_local([1, 2], ["-n", "2"], str(tmp_path), workers=2)
    assert seen == ["2", "2"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    seen.clear()
    calibrate.run_local([1], [], str(tmp_path), workers=4)
    assert seen == ["3"]


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess pytest")
def test_local_and_ray_paths_give_the_same_runs(tmp_path):
    """Two seeds of a tiny selection through the local path and the second of them through a local Ray instance:
    the same exit status, failures and fingerprint of every recorded number (seeds depend only on master seed and
    node id; the local path's two seeds show that the fingerprint sees the seed)."""
    pytest.importorskip("ray", reason="the 'distributed' extra is not installed")
    local = _calibrate(tmp_path, "--seeds", "2", "--start", "5", "--workers", "2", "--", *SELECTION, out="local.json")
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    assert "[2/2] seed" in local.stdout  # one progress line per finished seed
    ray = _calibrate(tmp_path, "--seeds", "1", "--start", "6", "--ray", "auto", "--", *SELECTION, out="ray.json")
    assert ray.returncode == 0, ray.stdout[-2000:] + ray.stderr[-2000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "ray.json"))
    assert a["complete"] and b["complete"] and a["seeds"] == [5, 6] and b["seeds"] == [6]
    strip = lambda doc: [(r["seed"], r["exit_status"], r["failed"], r["fingerprint"]) for r in doc["runs"]]  # noqa: E731
    assert strip(a)[1:] == strip(b)
    assert all(r["fingerprint"] for r in a["runs"]) and a["runs"][0]["fingerprint"] != a["runs"][1]["fingerprint"]
    assert a["suite_failures"] == [] and a["failure_rate"] == 0.0
    assert (tmp_path / "local.md").read_text().startswith("# Calibration: 2 master seeds")


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--seeds", "2", "--workers", "0"], "--workers must be >= 1"),
    (["--seeds", "2", "--", "--no-such-option"], "PYTEST_ARGS rejected by pytest"),
    (["--seeds", "2", "--", "--seed=3"], "must not set --theorems-seed"),
    (["--seeds", "2", "--ray", "127.0.0.1:9", "--", *SELECTION], "no Ray cluster answers there"),
])
def test_bad_input_fails_before_any_run_and_writes_nothing(tmp_path, args, message, capsys):
    """In process (the command's ``main``; a subprocess would only add the interpreter's start): status 2 and a
    one-line reason naming the argument, no run, no file."""
    from theorems.calibrate import main

    if "--ray" in args:
        pytest.importorskip("ray", reason="the 'distributed' extra is not installed")
    try:
        status = main([f"--out={tmp_path / 'cal.json'}", *args])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and message in err, err
    assert not (tmp_path / "cal.json").exists()


def test_pooled_calibrations_equal_one_calibration_over_all_their_seeds(tmp_path):
    """``--pool``: counts, closest calls and the estimates' spread of two calibration files are those of one
    calibration over all their seeds (the spread's mean and variance combined exactly from the files' summaries);
    files with different pytest arguments or a shared seed are refused."""
    import random

    from theorems.calibrate import main, pool

    rnd = random.Random(3)

    def seeded(seed, failed=()):
        est = {"a::t": {"x": [rnd.gauss(1.0, 0.3), 0.25 + 0.1 * rnd.random()], "y": [rnd.gauss(0, 2), 1.0]}}
        return {**_run(seed, failed), "headroom": {"a::t": [1.0 + rnd.random(), "x"]},
                "control_miss": {"a::t": [rnd.random() * 1e-4, "c"]}, "estimates": est}

    runs = [seeded(s, ["a::t"] if s == 4 else ()) for s in range(1, 12)]
    whole = summarize(runs)
    first, second = ({**summarize(part), "pytest_args": ["-k", "t"]} for part in (runs[:5], runs[5:]))
    pooled = pool([first, second], ["one.json", "two.json"])
    assert pooled["seeds"] == whole["seeds"] and pooled["suite_failures"] == [4]
    assert pooled["failure_rate_ci95"] == whole["failure_rate_ci95"]
    assert pooled["failures_per_check"] == whole["failures_per_check"] == {"a::t": 1}
    assert pooled["tightest_checks"] == whole["tightest_checks"] and pooled["weakest_controls"] == whole["weakest_controls"]
    for stat in ("x", "y"):
        assert pooled["estimate_spread"]["a::t"][stat] == pytest.approx(whole["estimate_spread"]["a::t"][stat], rel=1e-12)
    assert [p["seeds"] for p in pooled["pooled_from"]] == [5, 6] and pooled["pytest_args"] == ["-k", "t"]
    with pytest.raises(calibrate.CalibrationError, match="seeds \\[5\\]"):
        pool([first, {**second, "seeds": [5, *second["seeds"]]}], ["one.json", "two.json"])
    with pytest.raises(calibrate.CalibrationError, match="different pytest arguments"):
        pool([first, {**second, "pytest_args": []}], ["one.json", "two.json"])
    files = []
    for name, doc in (("one.json", first), ("two.json", second)):
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps(doc))
    out = tmp_path / "pooled.json"
    assert main(["--pool", *map(str, files), f"--out={out}"]) == 0
    assert json.loads(out.read_text())["seeds"] == list(range(1, 12)) and "Pooled from" in out.with_suffix(".md").read_text()
    assert main(["--pool", str(files[0]), str(files[0]), f"--out={out}"]) == 2  # the same file twice: every seed twice
    with pytest.raises(SystemExit):
        calibrate.parse_args(["--pool", str(files[0]), "--seeds", "3"])
    with pytest.raises(SystemExit):
        calibrate.parse_args([])
