"""Build a live engine: a real model, its tokenizer, the scheduler and a policy, on a wall clock.

    live = build_engine(EngineConfig(model="smollm2-135m", policy="slice"))
    live.engine.step()  # the same Engine the simulator runs, with a ModelRunner as executor

`LLM` (offline) and `AsyncEngine` (streams, for the server) are both built on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sliceserve.clock import Clock, WallClock
from sliceserve.config import SchedulerConfig
from sliceserve.core.scheduler import Scheduler
from sliceserve.engine.config import EngineConfig
from sliceserve.engine.engine import Engine
from sliceserve.latency_model import LatencyModel
from sliceserve.policies.registry import make_policy
from sliceserve.request import DEFAULT_SLO  # noqa: F401 - re-exported for the engine's users


class PromptError(ValueError):
    """A prompt the engine cannot take (empty, ids outside the vocabulary, too long)."""


@dataclass
class LiveEngine:
    """Everything a front end needs around the core engine."""

    engine: Engine  # scheduler + policy + model runner, on a wall clock
    runner: Any  # sliceserve.model.runner.ModelRunner
    tokenizer: Any  # a transformers tokenizer
    latency_model: LatencyModel
    model_name: str
    model_folder: Path
    engine_config: EngineConfig  # what it was built from

    @property
    def config(self) -> SchedulerConfig:
        return self.engine.scheduler.config

    @property
    def vocab_size(self) -> int:
        return int(self.runner.model_config.vocab_size)

    def encode(self, prompt: str) -> list[int]:
        from sliceserve.model.tokenizer import encode_prompt

        return list(encode_prompt(self.tokenizer, prompt))

    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        from sliceserve.model.tokenizer import encode_chat

        return list(encode_chat(self.tokenizer, messages))

    def check_token_ids(self, token_ids: Sequence[int], where: str) -> None:
        """Raise PromptError unless `token_ids` is a non-empty list of ids of this model."""
        if len(token_ids) == 0:
            raise PromptError(f"{where} is empty: a prompt needs at least one token")
        vocab = self.vocab_size
        bad = [t for t in token_ids if not isinstance(t, int) or isinstance(t, bool)
               or not 0 <= t < vocab]
        if bad:
            raise PromptError(f"{where} has token ids outside the vocabulary [0, {vocab}): "
                              f"{bad[:5]}")

    def check_fits(self, num_prompt_tokens: int, max_tokens: int, where: str) -> None:
        """Raise PromptError when prompt + max_tokens can never run (the scheduler would
        reject it): past the context length or the whole KV cache."""
        total = num_prompt_tokens + max_tokens
        cfg = self.config
        if total > cfg.max_model_len:
            raise PromptError(f"{where}: {num_prompt_tokens} prompt tokens + max_tokens "
                              f"{max_tokens} = {total} exceeds max_model_len {cfg.max_model_len}")
        if total > cfg.kv_capacity_tokens:
            raise PromptError(f"{where}: {num_prompt_tokens} prompt tokens + max_tokens "
                              f"{max_tokens} = {total} exceeds the KV cache "
                              f"({cfg.kv_capacity_tokens} tokens)")


@dataclass
class LoadedModel:
    """A model ready to run, before a policy and an engine are put around it: `build_engine`
    puts its own; `sliceserve run` puts a fresh one per run (bench/live.py)."""

    runner: Any  # the executor: a sliceserve.model.runner.ModelRunner or a LlamaCppExecutor
    tokenizer: Any  # a transformers tokenizer
    limits: SchedulerConfig  # the EngineConfig's limits and the runner's cache
    model_name: str
    folder: Path  # the Hugging Face folder, or the GGUF file llama.cpp runs
    profile_id: str | None = None  # keys the cached profile; None: the folder's content id

    def device_latency_model(self) -> LatencyModel:
        """This device's latency model for the model: the cached profile, or a quick
        calibration now (stored for the next start)."""
        from sliceserve.model.loader import model_id
        from sliceserve.model.profile_cache import latency_model_for

        return latency_model_for(self.runner, self.profile_id or model_id(self.folder))


def load_model(config: EngineConfig) -> LoadedModel:
    """Load `config.model` (None: the embedded default) on the executor `config.backend`
    names, with its tokenizer and the scheduler limits that fit its KV cache."""
    from sliceserve.engine.backends import resolve_backend
    from sliceserve.model.loader import DEFAULT_MODEL, resolve_model
    from sliceserve.model.tokenizer import eos_token_ids, load_tokenizer

    model_name = DEFAULT_MODEL if config.model is None else config.model
    if resolve_backend(config.backend, config.model) == "llamacpp":
        from sliceserve.llamacpp.loading import load_gguf

        gguf = load_gguf(config.model, config.llamacpp_config(), **config.scheduler_limits())
        return LoadedModel(gguf.executor, gguf.tokenizer, gguf.scheduler_config, model_name,
                           gguf.gguf_path, gguf.model_id)
    folder = Path(resolve_model(config.model))
    runner = make_runner(config, folder)
    tokenizer = load_tokenizer(folder)
    limits = runner.scheduler_config(
        **config.scheduler_limits(),
        eos_token_ids=tuple(eos_token_ids(tokenizer, runner.model_config)))
    runner.sampler.eos_token_ids = limits.eos_token_ids  # min_tokens masks what stops
    return LoadedModel(runner, tokenizer, limits, model_name, folder)


def build_engine(config: EngineConfig | None = None, *, clock: Clock | None = None,
                 warm_up: bool = True) -> LiveEngine:
    """Load `config.model` (None: the embedded default) and put it under `config.policy`.
    The config was validated when it was made (engine/config.py), so a bad policy, option or
    latency model has failed before any model loads.

    `clock`: the engine's clock (default: a `WallClock`). `warm_up` runs a few untimed
    iterations first: the first forwards pay one-time set-up, several times a warm
    iteration's cost (docs/BENCHMARKS.md, "Figures behind the code"), which would otherwise
    land in the first requests' metrics.

    With `config.online_latency` (on by default) the policy corrects the latency model from
    the iterations it measures (sliceserve/latency_online.py); the correction is
    `engine.scheduler.policy.latency_source.snapshot()`."""
    config = config if config is not None else EngineConfig()
    latency_model = config.load_latency_model()
    loaded = load_model(config)
    if latency_model is None:
        latency_model = loaded.device_latency_model()
    if warm_up:
        from sliceserve.model.profiler import warm_up as warm_up_runner

        warm_up_runner(loaded.runner)
    reset = getattr(loaded.runner, "reset", None)  # llama.cpp: warm-up's placeholder sequences
    if reset is not None:
        reset()
    policy = make_policy(config.policy, latency_model, loaded.limits,
                         dict(config.policy_options), online_latency=config.online_latency)
    scheduler = Scheduler(loaded.limits, policy)
    engine = Engine(scheduler, loaded.runner, clock if clock is not None else WallClock())
    return LiveEngine(engine, loaded.runner, loaded.tokenizer, latency_model,
                      loaded.model_name, loaded.folder, config)


def make_runner(config: EngineConfig, folder: Path) -> Any:
    """The PyTorch executor over the model in `folder` (backend "torch"; load_model makes the
    llama.cpp one, which runs the GGUF itself, not a folder)."""
    from sliceserve.model.runner import ModelRunner, RunnerConfig

    return ModelRunner(folder, RunnerConfig(
        dtype=config.dtype, quantization=config.quantization, device=config.device,
        kv_cache_memory_gb=config.kv_cache_memory_gb, max_model_len=config.max_model_len,
        num_threads=config.num_threads))
