"""The comparison's ordering claims, checked on result files (the CI's short comparison and
scripts/compare.py's report use the same checks).

At an overload, SLICE must beat a baseline on the same arrivals by a margin: overall SLO
attainment and utility attainment higher by at least `margin` (absolute, e.g. 0.10 = ten
points), and the real-time classes (utility >= `REALTIME_UTILITY`, e.g. control) at least as
well served. Each failed claim is returned as one line, so a report can print all of them.
"""

from __future__ import annotations

from typing import Any

from sliceserve.request import REALTIME_UTILITY

Run = dict[str, Any]


def realtime_classes(run: Run) -> list[str]:
    """Classes whose requests carry real-time utility (from the per-request rows)."""
    names = {row["class"] for row in run.get("requests") or ()
             if row["target"]["utility"] >= REALTIME_UTILITY}
    return [c for c in run["classes"] if c in names]


def ordering_failures(ours: Run, baseline: Run, margin: float = 0.10) -> list[str]:
    """What fails of the claims above (an empty list: they all hold)."""
    if ours["summary"]["n"] != baseline["summary"]["n"] or ours["seed"] != baseline["seed"]:
        return ["the two runs did not serve the same arrivals (n or seed differ)"]
    failures = []
    for metric in ("slo_attainment", "utility_attainment"):
        a, b = ours["summary"][metric], baseline["summary"][metric]
        if a is None or b is None or a < b + margin:
            failures.append(f"{metric}: {a} is not >= {b} + {margin}")
    for name in realtime_classes(ours):
        a = ours["classes"][name]["slo_attainment"]
        b = baseline["classes"].get(name, {}).get("slo_attainment")
        if a is None or b is None or a < b:
            failures.append(f"class {name}: attainment {a} is below the baseline's {b}")
    return failures
