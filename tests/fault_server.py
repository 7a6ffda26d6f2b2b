"""`sliceserve serve` with a fault injected into its executor, for tests/test_server_lifecycle.py.

An iteration that computes a request with the poison seed raises, as a broken device would.
With SLICESERVE_TEST_FAULT=sticky, every iteration after that first failure raises too (the
engine then gives up). Test code only: the product has no fault switch.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from sliceserve.cli import main
from sliceserve.server import runtime

POISON_SEED = 666


class Faulty:
    def __init__(self, executor: Any, sticky: bool) -> None:
        self.executor = executor
        self.sticky = sticky
        self.broken = False

    def execute(self, plan: Any) -> Any:
        poisoned = any(c.request.sampling.seed == POISON_SEED for c in plan.chunks)
        if poisoned or self.broken:
            self.broken = self.sticky
            raise RuntimeError("injected fault: the device failed")
        return self.executor.execute(plan)


_build = runtime.Runtime._build


def _faulty_build(self: Any) -> Any:
    live = _build(self)
    live.engine.executor = Faulty(live.engine.executor,
                                  os.environ.get("SLICESERVE_TEST_FAULT") == "sticky")
    return live


runtime.Runtime._build = _faulty_build  # type: ignore[method-assign]

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
