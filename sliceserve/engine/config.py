"""EngineConfig: everything that decides what a live engine is, in one frozen, validated value.

    config = EngineConfig(model="x.gguf", policy="slice", dtype="float32", max_num_seqs=8)
    config = EngineConfig.from_dict({"policy": "vllm", "max_num_batched_tokens": 512})
    live = build_engine(config)          # LLM, AsyncEngine.from_config, `serve` and `run` too

Every setting is checked on construction, without loading anything heavy (no torch, no model):
numbers and choices, the policy's name and options (against the registry), the latency model
file or preset. A key that is not a field is rejected by name, with the valid ones listed.

The engine's limits live here once: `max_num_batched_tokens` and `max_num_seqs` go into the
scheduler's `SchedulerConfig`; the runner's KV cache then fixes its block size, number of
blocks and context length (`ModelRunner.scheduler_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sliceserve.latency_model import LatencyModel
from sliceserve.latency_online import OnlineLatencyOptions
from sliceserve.policies.registry import make_options

# The executors that can run a model. "torch": sliceserve.model.runner.ModelRunner (PyTorch,
# CPU or CUDA). Other executors are added here, and in build_engine's choice.
# "llamacpp": sliceserve.llamacpp.LlamaCppExecutor (a GGUF on llama.cpp's kernels, the
# `llamacpp` extra); "auto": engine/backends.py decides.
BACKENDS = ("torch", "llamacpp", "auto")
# sliceserve.model.precision's DTYPE_CHOICES and QUANTIZATIONS, without importing torch
# (tests/test_engine_config.py checks that they agree).
DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("none", "int8")


@dataclass(frozen=True)
class EngineConfig:
    """What `build_engine` builds: the model and its executor, the number format and memory,
    the scheduler's limits, the policy and how it predicts latency."""

    # --- the model and what runs it ---
    model: str | None = None  # a name ("smollm2-135m"), an HF folder or a .gguf; None: embedded
    backend: str = "torch"  # the executor, one of BACKENDS
    dtype: str = "auto"  # the format measured fastest on the device (model/precision.py)
    quantization: str = "none"  # or "int8": weight-only int8 linear layers (CPU)
    device: str = "cpu"  # a torch device: cpu, cuda, cuda:1, ...
    num_threads: int | None = None  # CPU threads; None leaves the executor's choice
    kv_cache_memory_gb: float | None = None  # KV budget; None: the runner's default
    max_model_len: int | None = None  # None: the model's positions, capped by the cache
    # backend "llamacpp": sliceserve.llamacpp.LlamaCppConfig's fields (context_tokens,
    # max_num_seqs, batch_tokens, n_gpu_layers, ...); num_threads and max_model_len above are
    # its threads and context when it does not set them.
    llamacpp: Mapping[str, Any] = field(default_factory=dict)
    # --- the scheduler's hard limits (the KV cache fixes the others) ---
    max_num_batched_tokens: int = 2048  # token budget of one iteration
    max_num_seqs: int = 256  # requests in one iteration
    # --- the policy ---
    policy: str = "slice"  # a registered name (`sliceserve policies`)
    policy_options: Mapping[str, Any] = field(default_factory=dict)  # the policy's Options
    # None: this device's cached profile of the model (or a quick calibration at start); a
    # latency model file, a preset name, or a LatencyModel.
    latency_model: str | Path | LatencyModel | None = None
    # The policy corrects the latency model from measured iterations (latency_online.py);
    # None (or False) freezes it. True means the default options.
    online_latency: OnlineLatencyOptions | None = field(default_factory=OnlineLatencyOptions)

    def __post_init__(self) -> None:
        if self.model is not None and not isinstance(self.model, str):
            if not isinstance(self.model, Path):
                raise ValueError(f"model must be a name or a path, got {self.model!r}")
            object.__setattr__(self, "model", str(self.model))
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("quantization", self.quantization, QUANTIZATIONS)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a torch device name, got {self.device!r}")
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            _check_positive_int(name, getattr(self, name))
        for name in ("num_threads", "max_model_len"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        gb = self.kv_cache_memory_gb
        if gb is not None and (isinstance(gb, bool) or not isinstance(gb, (int, float))
                               or not gb > 0):
            raise ValueError(f"kv_cache_memory_gb must be > 0, got {gb!r}")
        if not isinstance(self.policy_options, Mapping):
            raise ValueError(f"policy_options must be a mapping of option names to values, "
                             f"got {type(self.policy_options).__name__}")
        object.__setattr__(self, "policy_options", MappingProxyType(dict(self.policy_options)))
        if not isinstance(self.llamacpp, Mapping):
            raise ValueError(f"llamacpp must be a mapping of LlamaCppConfig fields, got "
                             f"{type(self.llamacpp).__name__}")
        object.__setattr__(self, "llamacpp", MappingProxyType(dict(self.llamacpp)))
        self.llamacpp_config()  # a bad llama.cpp option fails here
        if self.online_latency is True:
            object.__setattr__(self, "online_latency", OnlineLatencyOptions())
        elif self.online_latency is False:
            object.__setattr__(self, "online_latency", None)
        elif not isinstance(self.online_latency, (OnlineLatencyOptions, type(None))):
            raise ValueError(f"online_latency must be OnlineLatencyOptions, True, False or "
                             f"None, got {self.online_latency!r}")
        if isinstance(self.latency_model, Path):
            object.__setattr__(self, "latency_model", str(self.latency_model))
        self.load_latency_model()  # a missing or malformed file fails here
        # A misspelt policy or option fails here, not after a model load (no policy is built).
        make_options(self.policy, dict(self.policy_options))

    # --- building one ---
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], *, where: str = "EngineConfig",
                  ) -> EngineConfig:
        """The config with `settings` (JSON-like: names are the fields); an unknown key is a
        ValueError that names it (and the closest field) and lists the valid ones."""
        check_keys(settings, where)
        return cls(**settings)

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with `changes` (checked like `from_dict`)."""
        check_keys(changes, "EngineConfig.replace")
        return dataclasses.replace(self, **changes)

    # --- what it decides ---
    def load_latency_model(self) -> LatencyModel | None:
        """The latency model asked for, or None for this device's profile of the model."""
        lm = self.latency_model
        if lm is None or isinstance(lm, LatencyModel):
            return lm
        if not isinstance(lm, str):
            raise ValueError(f"latency_model must be a file, a preset name or a LatencyModel, "
                             f"got {lm!r}")
        return LatencyModel.load(lm)

    def llamacpp_config(self) -> Any:
        """The sliceserve.llamacpp.LlamaCppConfig of backend "llamacpp"."""
        from sliceserve.llamacpp.config import LlamaCppConfig

        given = {"num_threads": self.num_threads, "context_tokens": self.max_model_len}
        settings = {**{k: v for k, v in given.items() if v is not None}, **self.llamacpp}
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(LlamaCppConfig)})
        if unknown:
            raise ValueError(f"llamacpp: unknown option(s) {', '.join(unknown)}")
        return LlamaCppConfig(**settings)

    def scheduler_limits(self) -> dict[str, int]:
        """The scheduler limits this config sets (ModelRunner.scheduler_config adds the
        cache's)."""
        return {"max_num_batched_tokens": self.max_num_batched_tokens,
                "max_num_seqs": self.max_num_seqs}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the latency model by name when it is an object)."""
        out = {f: getattr(self, f) for f in self.field_names()}
        out["policy_options"] = dict(self.policy_options)
        out["llamacpp"] = dict(self.llamacpp)
        if isinstance(self.latency_model, LatencyModel):
            out["latency_model"] = self.latency_model.name
        if self.online_latency is not None:
            out["online_latency"] = dataclasses.asdict(self.online_latency)
        return out


def check_keys(settings: Mapping[str, Any], where: str) -> None:
    """ValueError naming every key of `settings` that is not an EngineConfig field."""
    valid = EngineConfig.field_names()
    unknown = [key for key in settings if key not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{where}: unknown setting(s) {', '.join(hints)}; valid: "
                     f"{', '.join(valid)}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
