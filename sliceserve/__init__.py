"""sliceserve: SLO-aware LLM serving for edge devices.

    from sliceserve import LLM, SamplingParams, SLO

`SamplingParams` and `SLO` are plain dataclasses; `LLM` and `RequestOutput` are imported on
first use (module `__getattr__`), so `import sliceserve` stays light: the scheduler, policies
and simulator import and run where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sliceserve.request import SLO, SamplingParams

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("sliceserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from sliceserve.engine.async_engine import AsyncEngine
    from sliceserve.engine.build import build_engine
    from sliceserve.engine.config import EngineConfig
    from sliceserve.engine.llm import LLM
    from sliceserve.engine.outputs import RequestOutput

__all__ = ["LLM", "SLO", "AsyncEngine", "EngineConfig", "RequestOutput", "SamplingParams",
           "build_engine"]

_LAZY = {
    "LLM": "sliceserve.engine.llm",
    "RequestOutput": "sliceserve.engine.outputs",
    "AsyncEngine": "sliceserve.engine.async_engine",
    "build_engine": "sliceserve.engine.build",
    "EngineConfig": "sliceserve.engine.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sliceserve' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
