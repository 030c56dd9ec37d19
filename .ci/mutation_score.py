"""The mutation score of the last `mutmut run` (make mutation): killed / all mutants, per module and overall.

A mutant counts as killed when a test failed on it, or when the tests timed out or crashed on it (they noticed the
change). Every other mutant counts as surviving, including those no test reached ("no tests"), skipped or never
run. Exits 1 below the goal; every survivor must be listed as equivalent, with the reason, in the README.

    python .ci/mutation_score.py [--goal 0.95] [--diffs]
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import subprocess
import sys
from pathlib import Path

# mutmut 3's exit-code classes (mutmut.stats.status_by_exit_code), repeated so that this runs without importing it
KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", 37: "caught by type check"}  # fmt: skip
SURVIVING = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked"}


def classify(exit_code) -> tuple[bool, str]:
    if exit_code in KILLED:
        return True, KILLED[exit_code]
    return False, SURVIVING.get(exit_code, "suspicious")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goal", type=float, default=0.95, help="least share of killed mutants (default 0.95)")
    parser.add_argument("--mutants", default="mutants", help="mutmut's working directory")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff (mutmut show)")
    args = parser.parse_args()

    metas = sorted(Path(args.mutants).rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {args.mutants}/ (run `make mutation`)", file=sys.stderr)
        return 1
    per_module: dict[str, collections.Counter] = {}
    survivors: list[tuple[str, str]] = []
    for meta in metas:
        module = str(meta.relative_to(args.mutants)).removesuffix(".meta")
        counts = per_module.setdefault(module, collections.Counter())
        for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            killed, status = classify(exit_code)
            counts["_killed" if killed else "_surviving"] += 1
            counts[status] += 1
            if not killed:
                survivors.append((name, status))
    total = collections.Counter()
    print(f"{'module':40} {'mutants':>8} {'killed':>8} {'surviving':>10}  score")
    for module, counts in per_module.items():
        total.update(counts)
        n = counts["_killed"] + counts["_surviving"]
        print(f"{module:40} {n:8} {counts['_killed']:8} {counts['_surviving']:10}  {counts['_killed'] / max(n, 1):.1%}")
    n = total["_killed"] + total["_surviving"]
    score = total["_killed"] / max(n, 1)
    detail = ", ".join(f"{status} {total[status]}" for status in ("timeout", "no tests", "skipped") if total[status])
    print(
        f"{'all':40} {n:8} {total['_killed']:8} {total['_surviving']:10}  {score:.1%}"
        + (f" ({detail})" if detail else "")
    )
    for name, status in survivors:
        print(f"  {status}: {name}")
        if args.diffs:
            diff = subprocess.run(["mutmut", "show", name], capture_output=True, text=True).stdout
            print("\n".join(f"      {line}" for line in diff.splitlines() if line[:2] in ("- ", "+ ")))
    verdict = "reaches" if score >= args.goal else "is below"
    print(f"mutation score {score:.1%} ({total['_killed']}/{n}) {verdict} the goal {args.goal:.0%}")
    return 0 if score >= args.goal else 1


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly
    sys.exit(main())
