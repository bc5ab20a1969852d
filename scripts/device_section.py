"""Write ``devices_section.md`` for scripts/device_check.sh: one run's results as a section of docs/devices.md.

    python scripts/device_section.py WORK [--smoke]

``WORK`` is the script's working folder: ``steps.tsv`` (step, exit status, seconds),
``environment.txt``, ``tests.xml`` (JUnit), ``matrix/matrix.md`` and ``bench/spec_*.json``.
A missing piece is said to be missing, never left out silently. Standard library only: it runs
on the GPU machine's bare Python.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

_TIME_LIMIT = ("124", "137")  # timeout's statuses for a command it stopped
_MAX_LISTED = 20


def steps_table(work: Path) -> list[str]:
    rows = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines() if line]
    out = ["| step | exit status | seconds |", "|---|---:|---:|"]
    out += [f"| {name} | {rc}{' (time limit)' if rc in _TIME_LIMIT else ''} | {secs} |" for name, rc, secs in rows]
    return out


def tests_summary(junit: Path) -> list[str]:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as err:
        return [f"No JUnit report ({type(err).__name__}): the step did not finish; see device_check.log."]
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return ["The JUnit report holds no test suite; see device_check.log."]
    n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    secs = float(suite.get("time", 0))
    out = [f"{n} tests: {n - f - e - s} passed, {f} failed, {e} errors, {s} skipped, in {secs:.0f} s."]
    bad = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    out += [f"- failed: `{b}`" for b in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        out.append(f"- … and {len(bad) - _MAX_LISTED} more")
    return out


def matrix_rows(matrix_md: Path) -> list[str]:
    if not matrix_md.exists():
        return ["No matrix: see device_check.log."]
    return [line for line in matrix_md.read_text().splitlines() if line.startswith("|")]


def bench_table(bench: Path) -> list[str]:
    files = sorted(bench.glob("spec_*.json"))
    if not files:
        return ["No bench_spec.py results: see device_check.log."]
    out = [
        "| result file | config | batch | dtype | comparison | ratio (medians) | target |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for path in files:
        d = json.loads(path.read_text())
        for key, r in d.items():
            if isinstance(r, dict) and "ratio" in r:
                row = f"| {path.name} | {d['config']} | {d['batch']} | {d['dtype']} | {key} | {r['ratio']:.3f} |"
                out.append(f"{row} ≤ {r['target']} |")
    return out


def section(work: Path, smoke: bool) -> str:
    env = (work / "environment.txt").read_text().strip().splitlines()
    gpu = next((line.removeprefix("gpu ") for line in env if line.startswith("gpu ")), "no GPU")
    out = [f"## {datetime.now(UTC):%Y-%m-%d} — {gpu}", ""]
    if smoke:
        out += ["_Smoke run of scripts/device_check.sh on the CPU with tiny sizes: a test of the script, not figures._"]
        out.append("")
    out += ["Environment: " + "; ".join(env) + ".", "", *steps_table(work)]
    out += ["", "### Test suite", "", *tests_summary(work / "tests.xml")]
    out += ["", "### Conformance matrix (float32 and bfloat16 against the float64 spec)", ""]
    out += matrix_rows(work / "matrix" / "matrix.md")
    out += ["", "### bench_spec.py", "", *bench_table(work / "bench")]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--smoke", action="store_true", help="the run was device_check.sh --smoke (CPU)")
    args = ap.parse_args()
    (args.work / "devices_section.md").write_text(section(args.work, args.smoke), encoding="utf-8")


if __name__ == "__main__":
    main()
