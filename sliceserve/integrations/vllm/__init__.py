"""SLICE (and every registered sliceserve policy) as a vLLM scheduler plug-in.

    vllm serve MODEL --scheduler-cls sliceserve.integrations.vllm.SliceScheduler
    SLICESERVE_POLICY=slice vllm serve ...   # or --additional-config '{"sliceserve": {...}}'

See docs/VLLM.md. Importing this package does not import vLLM; the scheduler classes are
loaded on first use, after a check that this vLLM is one the plug-in supports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sliceserve.integrations.vllm.compat import SUPPORTED_RANGE, VllmVersionError, check_version

if TYPE_CHECKING:
    from sliceserve.integrations.vllm.scheduler import SliceAsyncScheduler, SliceScheduler

__all__ = ["SUPPORTED_RANGE", "SliceAsyncScheduler", "SliceScheduler", "VllmVersionError",
           "check_version"]


def __getattr__(name: str) -> Any:
    if name in ("SliceScheduler", "SliceAsyncScheduler"):
        try:
            from sliceserve.integrations.vllm import scheduler
        except ModuleNotFoundError as e:
            if e.name is not None and e.name.split(".")[0] == "vllm":
                raise ImportError(f"sliceserve.integrations.vllm.{name} needs vLLM "
                                  f"{SUPPORTED_RANGE} installed (pip install "
                                  f"'vllm{SUPPORTED_RANGE}')") from e
            raise
        return getattr(scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
