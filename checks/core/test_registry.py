"""The claim registry covers claims.md, and every registered claim has a check (issue 3)."""

import re
import subprocess
import sys
from pathlib import Path

from theorems.claims import CLAIMS, PINNED_VERSIONS

ROOT = Path(__file__).resolve().parents[2]
CLAIMS_MD = ROOT.parent / "shared" / "claims.md"


def test_registry_lists_every_claim_of_claims_md():
    if CLAIMS_MD.exists():
        text = CLAIMS_MD.read_text()
        table = text[text.index("| id | source"):]
        ids = set(re.findall(r"^\| ([a-z][a-z0-9-]+) \|", table, flags=re.M)) - {"id"}
        assert ids == set(CLAIMS), ids ^ set(CLAIMS)
    for c in CLAIMS.values():
        assert c.printed and c.reading and c.version in PINNED_VERSIONS


def test_every_registered_claim_has_a_check(tmp_path):
    """``pytest --collect-only --claims-coverage`` exits non-zero if any claim id has no check."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--claims-coverage",
                          "-n", "0", "--report-dir", str(tmp_path), str(ROOT / "checks")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for cid in CLAIMS:
        m = re.search(rf"^{re.escape(cid)}: (\d+) check", res.stdout, flags=re.M)
        assert m and int(m.group(1)) >= 1, cid
