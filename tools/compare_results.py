"""Compare every results.json under two run folders (e.g. two `make demo` outputs) number by number.

Usage: python tools/compare_results.py BEFORE_DIR AFTER_DIR [--tol 1e-6]
Prints the largest absolute difference per file and every number that differs by more than --tol; timing
entries (``timing``, ``*_s``) are skipped. Exit status 1 when a number differs by more than --tol or a file
or key exists on one side only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _leaves(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "timing" or k.endswith("_s"):
                continue
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, float(obj)
    elif obj is None:
        yield path, math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--tol", type=float, default=1e-6)
    a = p.parse_args(argv)
    before, after = Path(a.before), Path(a.after)
    files = sorted(
        {f.relative_to(before) for f in before.rglob("results.json")}
        | {f.relative_to(after) for f in after.rglob("results.json")}
    )
    bad, overall = 0, 0.0
    for rel in files:
        fb, fa = before / rel, after / rel
        if not (fb.is_file() and fa.is_file()):
            print(f"{rel}: only in {'before' if fb.is_file() else 'after'}")
            bad += 1
            continue
        lb = dict(_leaves(json.loads(fb.read_text())))
        la = dict(_leaves(json.loads(fa.read_text())))
        worst = 0.0
        for k in sorted(set(lb) | set(la)):
            if k not in lb or k not in la:
                print(f"{rel}{k}: only in {'before' if k in lb else 'after'}")
                bad += 1
                continue
            x, y = lb[k], la[k]
            if math.isnan(x) and math.isnan(y):
                continue
            d = abs(x - y) if not (math.isinf(x) or math.isinf(y)) else (0.0 if x == y else math.inf)
            worst = max(worst, d)
            if d > a.tol:
                print(f"{rel}{k}: {x!r} -> {y!r} (diff {d:.3g})")
                bad += 1
        overall = max(overall, worst)
        print(f"{rel}: {len(lb)} numbers, max |diff| {worst:.3g}")
    print(f"{len(files)} files, max |diff| {overall:.3g}, {bad} above {a.tol:g} or unmatched")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
