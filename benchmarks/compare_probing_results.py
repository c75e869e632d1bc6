"""Compare the probing section of two ``results.json`` files: same units chosen, numbers within a tolerance.

Walks ``sections.probing`` of both files in step: every string, boolean and integer (chosen units,
concept names, counts) must be equal; every float may differ by at most ``--tolerance`` (absolute).
Prints the largest float difference per field name and every mismatch; exits 1 on any mismatch.

Run: ``python benchmarks/compare_probing_results.py BEFORE/results.json AFTER/results.json [--tolerance 1e-4]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Timings and the machine's load differ between any two runs; they are not results.
_IGNORED = {"seconds", "timings", "load_average"}


def walk(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Pairs of leaves at the same path in ``a`` and ``b``; a structural difference is one pair."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in _IGNORED:
                continue
            yield from walk(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield path + ".<length>", len(a), len(b)
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from walk(x, y, f"{path}[{i}]")
    else:
        yield path, a, b


def _field(path: str) -> str:
    """The field name of a leaf's path, without list positions (``comparisons[3].estimate`` -> ``estimate``)."""
    return path.rsplit(".", 1)[-1].split("[", 1)[0]


def compare(a: dict, b: dict, tolerance: float) -> tuple[dict[str, float], list[str]]:
    """Largest |difference| per float field, and the leaves that differ beyond the rules."""
    largest: dict[str, float] = {}
    mismatches = []
    for path, x, y in walk(a, b):
        both_float = isinstance(x, float) or isinstance(y, float)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))
        if both_float and numbers:
            if math.isnan(x) and math.isnan(y):
                continue
            difference = (
                abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
            )
            field = _field(path)
            largest[field] = max(largest.get(field, 0.0), difference)
            if difference > tolerance:
                mismatches.append(f"{path}: {x!r} vs {y!r}")
        elif x != y:
            mismatches.append(f"{path}: {x!r} vs {y!r}")
    return largest, mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--section", default="probing")
    args = parser.parse_args()
    a, b = (json.loads(p.read_text())["sections"][args.section] for p in (args.before, args.after))
    largest, mismatches = compare(a, b, args.tolerance)
    print(f"largest |difference| per float field of sections.{args.section}:")
    for field, value in sorted(largest.items(), key=lambda item: -item[1]):
        if value > 0:
            print(f"  {field}: {value:.3g}")
    if not any(value > 0 for value in largest.values()):
        print("  (all equal)")
    print(f"{len(mismatches)} mismatch(es) beyond {args.tolerance:g} or in non-float values")
    for line in mismatches[:50]:
        print("  " + line)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
