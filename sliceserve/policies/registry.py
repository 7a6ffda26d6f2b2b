"""Policies by name. Each policy module registers its class; options come as a dict."""

from __future__ import annotations

import dataclasses
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.latency_model import LatencyModel
from sliceserve.latency_online import OnlineLatencyModel, OnlineLatencyOptions
from sliceserve.policies.base import Policy, PolicyOptions

_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    if cls.name in _REGISTRY:
        raise ValueError(f"policy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    _load_builtins()
    return list(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(_REGISTRY)}") from None


def policy_option_names(name: str) -> tuple[str, ...]:
    """The options policy `name` takes (its Options' fields): what a script asks before
    setting one, instead of guessing from the name."""
    return tuple(f.name for f in dataclasses.fields(policy_class(name).Options))


def make_policy(name: str, latency_model: LatencyModel, config: SchedulerConfig,
                options: dict[str, Any] | None = None, *,
                online_latency: OnlineLatencyOptions | None = None) -> Policy:
    """The policy `name` with `options` (validated). With `online_latency`, it predicts
    with `latency_model` corrected online from the iterations it is told of
    (`Policy.observe_iteration`); without, with `latency_model` as it is."""
    opts = make_options(name, options)
    source = (latency_model if online_latency is None
              else OnlineLatencyModel(latency_model, online_latency))
    return policy_class(name)(opts, source, config)


def make_options(name: str, options: dict[str, Any] | None = None) -> PolicyOptions:
    """Policy `name`'s Options from `options`, validated (no policy is built): ValueError
    for an unknown policy, an unknown option (listing the valid ones) or a bad value."""
    cls = policy_class(name)
    valid = set(policy_option_names(name))
    unknown = set(options or {}) - valid
    if unknown:
        raise ValueError(f"policy {name!r} has no option(s) {sorted(unknown)}; "
                         f"valid: {', '.join(sorted(valid)) or 'none'}")
    try:
        return cls.Options(**(options or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"policy {name!r}: bad option: {e}") from None


def _load_builtins() -> None:
    # Importing a policy module registers it; done lazily to keep imports one-way.
    # Registration order is listing order: the original policies, then the SLO-aware
    # baselines added later.
    import importlib

    for module in ("edf", "fastserve", "orca", "slice", "slice_paper", "vllm", "andes",
                   "scorpio", "sglang"):
        importlib.import_module(f"sliceserve.policies.{module}")
