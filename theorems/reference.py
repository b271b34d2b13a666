"""A reference run assembled from parts: the whole suite at one profile and master seed, run by time-limited commands
that each finish what they can and leave the rest to the next one (issue 15: the full profile on a GPU machine whose
commands stop after 10 minutes and whose lease lasts 15).

    python -m theorems.reference status DIR [--profile P]
    python -m theorems.reference run DIR [--profile P] [--device D] [--time-limit S] [--export OUT] [-- PYTEST_ARGS]
    python -m theorems.reference merge DIR [--profile P]

``DIR`` (e.g. ``reports/reference/full-h100``) holds one folder per part, ``DIR/parts/<run>/`` with the part's
``verdicts.json``, ``summary.md`` and ``pytest.log``, and the merged ``DIR/verdicts.json`` and ``DIR/summary.md``
(:func:`theorems.reporting.merge_reports`), with ``DIR/baseline.json`` for ``--compare-baseline`` (a later run, whole
or a selection, is compared on the statistics it shares with the reference).

* ``status``: the suite's checks at the profile (one ``--collect-only`` pass), which parts ran which, and the ones no
  part has finished yet (exit status 1 while any is missing).
* ``run``: ``python -m pytest`` on the missing checks only (the parts' finished checks are never rerun: at one master
  seed they would give the same numbers), with PYTEST_ARGS added (``-n 4``, ``-v``, ``--figures``, ``-k`` to narrow
  it).  After ``--time-limit`` seconds the run gets SIGINT, as Ctrl-C: pytest writes the report of what finished and
  the rest stays missing.  The part is stored in ``DIR/parts`` (and copied to ``--export``, a device machine's
  ``$OUT``), then ``DIR`` is merged again.  A check that never finishes inside one command's limit is a kernel to
  speed up, not a check to shrink (issue 15).
* ``merge``: ``DIR/verdicts.json`` and ``summary.md`` from the parts, the missing checks listed.

A part records its code's commit (``verdicts.json``'s ``commit``; :data:`theorems.reporting.SOURCE_COMMIT_ENV` where
the copy has no git metadata): parts run at different commits are merged as they are and the summary lists each
part's commit.  Failed checks count as finished (a result at that seed); remove the part to run them again.  This is
a selection of what is left, not a scheduler: pytest (and xdist) run each part.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .calibrate import split_pytest_args
from .reporting import collect_registered_checks, make_baseline, merge_reports, render_summary, write_atomically

__all__ = ["main", "part_reports", "missing_checks", "run_part", "write_merged"]

#: Seconds a part gets to write its report after SIGINT before it is killed (its finished checks are then lost).
GRACE_S = 120


def part_reports(directory: Path) -> list[dict]:
    """The parts' reports, ``DIR/parts/*/verdicts.json``, oldest first."""
    files = sorted((Path(directory) / "parts").glob("*/verdicts.json"))
    return sorted((json.loads(f.read_text()) for f in files), key=lambda d: d["run"])


def finished_checks(docs: list[dict]) -> set[str]:
    """Node ids some part finished (any outcome but ``incomplete``)."""
    return {t["nodeid"] for d in docs for t in d["tests"] if t["outcome"] != "incomplete"}


def missing_checks(registered: dict, docs: list[dict]) -> list[str]:
    """The registered checks (node id -> claims) that no part finished, in the collection's order."""
    done = finished_checks(docs)
    return [n for n in registered if n not in done]


def suite_checks(profile: str, root: Path) -> dict:
    """node id -> [[claim, statement], ...] of the project's claim checks at ``profile`` (one collection pass)."""
    found = collect_registered_checks(root, profile, xdist=_has_xdist())
    if found is None:
        raise SystemExit(f"theorems.reference: pytest --collect-only --theorems-profile={profile} failed in {root}: run it "
                         "to see why")
    return found


def _has_xdist() -> bool:
    import importlib.util

    return importlib.util.find_spec("xdist") is not None


def write_merged(directory: Path, registered_checks: dict) -> dict | None:
    """Merge ``DIR/parts`` into ``DIR/verdicts.json`` and ``DIR/summary.md``; None if there is no part yet."""
    docs = part_reports(directory)
    if not docs:
        return None
    doc = merge_reports(docs, registered_checks)
    write_atomically(Path(directory) / "verdicts.json", json.dumps(doc, indent=1))
    write_atomically(Path(directory) / "summary.md", render_summary(doc))
    write_atomically(Path(directory) / "baseline.json", json.dumps(make_baseline(doc), indent=1))
    return doc


def run_part(directory: Path, checks: list[str], *, profile: str, device: str, time_limit: float,
             pytest_args: list[str], root: Path) -> Path | None:
    """Run ``checks`` (node ids) with pytest for at most ``time_limit`` seconds (then SIGINT: the report of what
    finished is written) and store the report as ``DIR/parts/<run>/``; None if pytest wrote no report."""
    with tempfile.TemporaryDirectory() as tmp:
        reports, log = Path(tmp) / "reports", Path(tmp) / "pytest.log"
        cmd = [sys.executable, "-m", "pytest", f"--theorems-profile={profile}", f"--theorems-device={device}",
               f"--theorems-report-dir={reports}", *pytest_args, *checks]
        print(f"theorems.reference: {len(checks)} checks, at most {time_limit:g} s: {' '.join(cmd[:8])} ...", flush=True)
        with open(log, "w") as out:
            # a background job ignores SIGINT and its children inherit that: restore Ctrl-C's default in the child
            proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            echo = threading.Thread(target=_tee, args=(proc.stdout, out), daemon=True)
            echo.start()
            try:
                proc.wait(timeout=time_limit)
            except subprocess.TimeoutExpired:
                print(f"theorems.reference: time limit {time_limit:g} s reached: SIGINT (the finished checks are "
                      "reported)", flush=True)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            echo.join(timeout=30)
        latest = reports / "latest"
        if not (latest / "verdicts.json").exists():
            return None
        part = Path(directory) / "parts" / latest.resolve().name
        part.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(latest.resolve(), part)
        shutil.copy(log, part / "pytest.log")
        return part


def _tee(stream, out):
    """Echo the child's output and log it."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        out.write(line)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m theorems.reference", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("status", "run", "merge"))
    p.add_argument("directory", type=Path, help="the reference's folder, e.g. reports/reference/full-h100")
    p.add_argument("--profile", default="full", choices=("quick", "full"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--time-limit", type=float, default=480.0, help="seconds before the part is interrupted (default 480)")
    p.add_argument("--export", type=Path, help="also copy the new part here (a device machine's $OUT)")
    p.add_argument("--root", type=Path, default=Path.cwd(), help=argparse.SUPPRESS)
    ours, rest = split_pytest_args(argv)
    args = p.parse_args(ours)
    if not args.time_limit > 0:
        p.error(f"--time-limit must be > 0 seconds; got {args.time_limit:g}")
    args.pytest_args = rest
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    directory = args.directory
    checks = suite_checks(args.profile, args.root)
    if args.action in ("status", "run"):
        docs = part_reports(directory)
        missing = missing_checks(checks, docs)
    if args.action == "status":
        for d in docs:
            ran = sum(t["outcome"] != "incomplete" for t in d["tests"])
            print(f"part {d['run']}: {ran} checks on {d.get('device')} in {d.get('duration_s')} s, commit {d.get('commit')}")
        print(f"{len(checks) - len(missing)} of {len(checks)} checks finished ({args.profile} profile); missing:")
        print("\n".join(f"  {m}" for m in missing) or "  none")
        return 1 if missing else 0
    if args.action == "run":
        if not missing:
            print("theorems.reference: every check has a part; nothing to run")
        else:
            part = run_part(directory, missing, profile=args.profile, device=args.device, time_limit=args.time_limit,
                            pytest_args=args.pytest_args, root=args.root)
            if part is None:
                print(f"theorems.reference: no check finished, so pytest wrote no report (within --time-limit "
                      f"{args.time_limit:g} s, or PYTEST_ARGS {args.pytest_args} left none of the {len(missing)} missing "
                      "checks; see the log above)", file=sys.stderr)
                return 2
            if args.export:
                shutil.copytree(part, Path(args.export) / part.name, dirs_exist_ok=True)
            print(f"theorems.reference: part stored in {part}")
    try:
        doc = write_merged(directory, checks)
    except ValueError as exc:  # parts that are not one run (merge_reports says which)
        print(f"theorems.reference: cannot merge {directory}/parts: {exc}", file=sys.stderr)
        return 2
    if doc is None:
        print(f"theorems.reference: no part in {directory}/parts yet")
        return 1
    left = len(doc["missing"])
    print(f"theorems.reference: {directory}/verdicts.json merged from {len(doc['parts'])} part(s); "
          f"{len(checks) - left} of {len(checks)} checks finished, {left} missing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
