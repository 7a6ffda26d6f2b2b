"""Where a long run's resident memory goes: the engine alone (no HTTP), soak-like traffic.

    .venv/bin/python scripts/bench_memory.py --seconds 180 --out M.json

SmolLM2 under `slice` (the profile in docs/bench as latency model), a closed loop of
`--concurrency` requests (prompts of 16-96 words, 16-64 tokens, temperature 0.7) for
`--seconds`; the process's resident memory (VmRSS) every 10 s; at the end VmRSS, then
`malloc_trim(0)` (glibc: free heap pages back to the OS) and VmRSS again: what trim gives
back was free memory kept by malloc, what it does not is live. Run it with different
environments side by side (MALLOC_ARENA_MAX, ONEDNN_PRIMITIVE_CACHE_CAPACITY) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import time
from pathlib import Path

from sliceserve.engine.async_engine import AsyncEngine
from sliceserve.engine.build import build_engine
from sliceserve.engine.config import EngineConfig
from sliceserve.request import SamplingParams
from sliceserve.server import memory

REPO = Path(__file__).resolve().parents[1]
WORDS = ("robot arm moves left then right sensor reads distance camera sees a red box "
         "battery level is fine path ahead is clear").split()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    t0 = time.monotonic()
    samples = [(0.0, rss_mib())]
    live = build_engine(EngineConfig(
        policy="slice", latency_model=str(REPO / "docs/bench/profile_smollm2.json")))
    samples.append((time.monotonic() - t0, rss_mib()))
    rng = random.Random(0)
    done = [0]

    async def run() -> None:
        async with AsyncEngine(live) as engine:
            start = time.monotonic()

            async def worker() -> None:
                while time.monotonic() - start < a.seconds:
                    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(16, 96)))
                    sampling = SamplingParams(max_tokens=rng.randint(16, 64), temperature=0.7)
                    async for _ in engine.generate(text, sampling):
                        pass
                    done[0] += 1

            async def sample() -> None:
                while time.monotonic() - start < a.seconds:
                    await asyncio.sleep(10)
                    samples.append((time.monotonic() - t0, rss_mib()))
            await asyncio.gather(sample(), *(worker() for _ in range(a.concurrency)))
    asyncio.run(run())
    gc.collect()
    end = rss_mib()
    memory.trim()
    result = {"kind": "memory", "requests": done[0], "seconds": a.seconds,
              "env": {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX",
                                                      "ONEDNN_PRIMITIVE_CACHE_CAPACITY")},
              "rss_mib_after_load": samples[1][1], "rss_mib_end": end,
              "rss_mib_after_trim": rss_mib(), "rss_samples": samples}
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
