"""The claim registry, its generated documentation (docs/claims.md), and every registered claim has a check."""

import re
import subprocess
import sys
from pathlib import Path

from theorems.claims import CLAIMS, PINNED_VERSIONS
from theorems.docs import DOC, render_claims_doc

ROOT = Path(__file__).resolve().parents[2]


def test_registry_entries_are_complete():
    for c in CLAIMS.values():
        assert c.printed and c.reading and c.version in PINNED_VERSIONS
        for st in c.statements.values():
            assert st.source and st.printed and st.reading


def test_claims_documentation_matches_the_registry():
    """docs/claims.md is what `python -m theorems.docs` renders from the registry and the closed forms' docstrings."""
    assert DOC.read_text() == render_claims_doc(), "docs/claims.md is stale: run `python -m theorems.docs`"
    text = DOC.read_text()
    assert all(f"`{cid}`" in text for cid in CLAIMS)


def test_every_registered_claim_has_a_check(tmp_path):
    """``pytest --collect-only --claims-coverage`` exits non-zero if any claim id has no check."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--claims-coverage",
                          "-n", "0", "--report-dir", str(tmp_path), str(ROOT / "checks")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for cid in CLAIMS:
        m = re.search(rf"^{re.escape(cid)}: (\d+) check", res.stdout, flags=re.M)
        assert m and int(m.group(1)) >= 1, cid


def test_power_audit_mutations_apply_to_the_current_code():
    """Every planted bug of `python -m theorems.audit` still matches exactly one place of the library (a mutation that
    no longer applies would silently audit nothing), and there are at least 15 of them."""
    from theorems.audit import MUTATIONS, apply_mutation

    assert len(MUTATIONS) >= 15 and len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    for m in MUTATIONS:
        assert (ROOT / m.file).read_text().count(m.old) == 1, m.name
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        m = MUTATIONS[0]
        (Path(tmp) / m.file).parent.mkdir(parents=True)
        shutil.copy2(ROOT / m.file, Path(tmp) / m.file)
        apply_mutation(Path(tmp), m)
        assert m.new in (Path(tmp) / m.file).read_text()
