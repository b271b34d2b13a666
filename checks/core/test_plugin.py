"""The pytest plugin in a project of its own (issue 17): the example under ``examples/`` runs against the installed
plugin with pytester, registers its claim, gets the fixtures and writes its report; JUnit carries the records."""

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "linear_image_norm"


@pytest.fixture
def example(pytester):
    for f in EXAMPLE.glob("*.py"):
        shutil.copy(f, pytester.path / f.name)
    return pytester


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_example_project_gets_fixtures_verdicts_and_junit_properties(example, xdist):
    result = example.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers", "--junitxml=junit.xml",
                                          "--theorems-seed=7", *xdist)
    result.assert_outcomes(passed=2)
    doc = json.loads((example.path / "reports" / "latest" / "verdicts.json").read_text())
    assert list(doc["claims"]) == ["linear-image-norm"], list(doc["claims"])  # the user's claim only, not the suite's
    assert doc["claims"]["linear-image-norm"]["verdict"] == "confirmed" and doc["master_seed"] == 7
    records = [r for t in doc["tests"] for r in t["records"]]
    assert [r["role"] for r in records].count("negative-control") == 4
    assert all(r["claim"] == "linear-image-norm" and r["sizes"]["L"] == 10 for r in records), records
    properties = [json.loads(p.get("value")) for p in ET.parse(example.path / "junit.xml").iter("property")
                  if p.get("name") == "theorems"]
    assert len(properties) == len(records) == 6
    assert {"claim", "statistic", "estimate", "prediction", "ci_low", "ci_high", "role"} <= set(properties[0])


@pytest.mark.parametrize("args", [[], ["-k", "image"]], ids=["bare", "filtered"])
def test_a_project_without_xdist_or_testpaths_runs_unfiltered_and_collects_when_filtered(example, args, monkeypatch):
    """A user project need not have pytest-xdist or testpaths: a bare `pytest` there runs its invocation directory
    (not 'filtered'), and a `-k` run, which asks a collection subprocess which checks did not run, must not pass
    that subprocess xdist's `-n` (PYTEST_ADDOPTS keeps xdist out of the subprocess too)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:xdist")
    result = example.runpytest_subprocess("-p", "no:cacheprovider", "--theorems-seed=7", *args)
    result.assert_outcomes(passed=2)
    doc = json.loads((example.path / "reports" / "latest" / "verdicts.json").read_text())
    assert doc["selection"]["filtered"] is bool(args), doc["selection"]
    assert "could not collect" not in result.stdout.str() + result.stderr.str()


def test_help_lists_the_prefixed_options(pytester):
    out = pytester.runpytest_subprocess("--help").stdout.str()
    for name in ("--theorems-profile", "--theorems-device", "--theorems-seed", "--theorems-report-dir",
                 "--theorems-figures", "--theorems-compare-baseline", "--theorems-claims-coverage"):
        assert name in out, name
    assert "--theorems-report-dir=DIR" in out and "SUPPRESS" not in out


def test_an_unregistered_claim_fails_at_collection(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.claim("no-such-claim")
        def test_x(verdict):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown claim id" in result.stderr.str() and "register_claim" in result.stderr.str()


def test_register_claim_checks_its_arguments():
    from theorems import register_claim

    with pytest.raises(ValueError, match="claim_id"):
        register_claim("has spaces", source="s", printed="p", reading="r")
    with pytest.raises(ValueError, match="printed"):
        register_claim("x-claim", source="s", printed="", reading="r")
    with pytest.raises(ValueError, match="already registered"):
        register_claim("lyapunov", source="elsewhere", printed="p", reading="r")


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, theorems.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_xdist_workers_are_pinned_round_robin_to_the_gpus_the_caller_allowed():
    from theorems.plugin import gpu_for_worker, visible_gpus

    assert [gpu_for_worker(f"gw{i}", None, 2) for i in range(5)] == ["0", "1", "0", "1", "0"]
    assert [gpu_for_worker(f"gw{i}", "3,5,7", 8) for i in range(4)] == ["3", "5", "7", "3"]  # the caller's choice
    assert gpu_for_worker("gw0", None, 0) is None and gpu_for_worker("gw1", "", 4) is None  # none: stay on the CPU
    assert visible_gpus(" 2, 4 ", 8) == ["2", "4"]
    with pytest.raises(ValueError, match="gw<N>"):
        gpu_for_worker("master", None, 1)
