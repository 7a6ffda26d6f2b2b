"""How long a decode-sized CPU step takes right after a pause: the cost of waking the
compute threads (and the vCPU) that live runs pay and back-to-back profiles do not.

    .venv/bin/python scripts/bench_pause.py                          # this process's defaults
    GOMP_SPINCOUNT=100000000 .venv/bin/python scripts/bench_pause.py # threads spin longer
    OMP_WAIT_POLICY=ACTIVE .venv/bin/python scripts/bench_pause.py   # threads always spin

The step is synthetic: 30 pairs of bf16 matrix-vector products of SmolLM2-135M's MLP shapes
(576 x 1536 and back), on `--threads` intra-op threads. OpenMP's settings are read when torch
loads libgomp, so they must be in the environment before the process starts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pauses-ms", default="0,2,5,10,20,50,100")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per pause")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    up = [torch.randn(576, 1536, dtype=torch.bfloat16) for _ in range(30)]
    down = [torch.randn(1536, 576, dtype=torch.bfloat16) for _ in range(30)]
    x = torch.randn(1, 576, dtype=torch.bfloat16)

    def step() -> torch.Tensor:
        y = x
        for a, b in zip(up, down):
            y = (y @ a) @ b
        return y

    for _ in range(50):
        step()
    for pause_ms in (float(p) for p in args.pauses_ms.split(",")):
        times = []
        for _ in range(args.steps):
            if pause_ms:
                time.sleep(pause_ms / 1000)
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        print(f"pause {pause_ms:5.0f} ms: step median {statistics.median(times):.2f} ms, "
              f"p90 {times[int(0.9 * len(times))]:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
