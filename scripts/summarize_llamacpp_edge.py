"""Summarize the live `edge` runs on the llama.cpp executor (docs/bench/llamacpp/edge_*):
per seed and policy the SLO attainment, the real-time classes' (control, navigation), and
SLICE / vllm; then the median and range over the seeds found. Where a run's iterations were
written (edge_*.iterations.jsonl), also how many of its multi-row iterations ran over more than
one run of consecutive KV streams (llama.cpp: one ubatch per run at least).

    python3 scripts/summarize_llamacpp_edge.py docs/bench/llamacpp
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

REALTIME = ("control", "navigation")


def split_share(path: Path) -> str:
    """', multi-row iterations over > 1 stream run: X% (mean runs M)', or '' without a file."""
    if not path.exists():
        return ""
    runs = [it["stream_runs"] for it in map(json.loads, path.read_text().splitlines())
            if it.get("stream_runs") is not None and it["rows"] > 1]
    if not runs:
        return ""
    split = sum(r > 1 for r in runs) / len(runs)
    return (f", {len(runs)} multi-row iterations, {split:.0%} over > 1 stream run "
            f"(mean {statistics.fmean(runs):.2f} runs)")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench/llamacpp")
    ratios, by_policy = [], {"slice": [], "vllm": []}
    rt = {p: {c: [] for c in REALTIME} for p in by_policy}
    for seed in range(100):
        runs = {p: folder / f"edge_{p}_seed{seed}.json" for p in by_policy}
        if not all(f.exists() for f in runs.values()):
            continue
        got = {p: json.loads(f.read_text()) for p, f in runs.items()}
        line = [f"seed {seed}:"]
        for p, d in got.items():
            s = d["summary"]
            by_policy[p].append(s["slo_attainment"])
            cls = []
            for c in REALTIME:
                a = d["classes"][c]["slo_attainment"]
                rt[p][c].append(a)
                cls.append(f"{c} {a:.1%} (n={d['classes'][c]['n']})")
            line.append(f"{p} {s['slo_attainment']:.1%} [{', '.join(cls)}] "
                        f"rate {d['rate_rps']:.3g}/s n={s['n']} {d['duration_s']:.0f}s"
                        f"{split_share(folder / f'edge_{p}_seed{seed}.iterations.jsonl')};")
        a, b = got["slice"]["summary"]["slo_attainment"], got["vllm"]["summary"]["slo_attainment"]
        ratios.append(a / b if b else float("inf"))
        line.append(f"ratio {ratios[-1]:.2f}x")
        print(" ".join(line))
    if not ratios:
        return
    def med(xs):  # noqa: E306
        return f"median {statistics.median(xs):.3g} (range {min(xs):.3g}-{max(xs):.3g})"
    for p, xs in by_policy.items():
        print(f"{p}: attainment {med(xs)}; " + "; ".join(
            f"{c} {med(v)}" for c, v in rt[p].items()))
    print(f"slice / vllm: {med(ratios)}")


if __name__ == "__main__":
    main()
