"""The plug-in's settings, and the SLO of a vLLM request: plain Python, no vLLM needed.

Settings come from vLLM's `--additional-config '{"sliceserve": {...}}'` (per engine), else from
environment variables (inherited by vLLM's engine-core processes):

    key               env var                      meaning
    policy            SLICESERVE_POLICY            a registered policy name (default "slice")
    policy_options    SLICESERVE_POLICY_OPTIONS    JSON object of the policy's options
    latency_model     SLICESERVE_LATENCY_MODEL     start of the online latency model: a preset
                                                   name or a JSON file (default "paper")
    policy_modules    SLICESERVE_POLICY_MODULES    modules to import first (comma-separated in
                                                   the env var): they register own policies
    default_slo       SLICESERVE_DEFAULT_SLO       JSON object: SLO of requests sent without one
    refit             SLICESERVE_LATENCY_REFIT     "1" (default) fits the latency model to
                                                   observed steps; "0" keeps the start model

A client sends its SLO as flat `extra_args` (`vllm_xargs` in the OpenAI API): ttft_ms, tpot_ms,
deadline_ms, utility, slo_class. Missing fields take the default SLO's values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sliceserve.request import DEFAULT_SLO, SLO

SLO_FIELDS = ("ttft_ms", "tpot_ms", "deadline_ms", "utility", "slo_class")
_ENV = {"policy": "SLICESERVE_POLICY", "policy_options": "SLICESERVE_POLICY_OPTIONS",
        "latency_model": "SLICESERVE_LATENCY_MODEL", "policy_modules": "SLICESERVE_POLICY_MODULES",
        "default_slo": "SLICESERVE_DEFAULT_SLO", "refit": "SLICESERVE_LATENCY_REFIT"}
CONFIG_KEY = "sliceserve"  # the key of the plug-in's settings in vLLM's additional config


class SettingsError(ValueError):
    """The plug-in's settings are invalid (raised at engine start, naming the setting)."""


@dataclass(frozen=True)
class PluginSettings:
    policy: str = "slice"
    policy_options: dict[str, Any] = field(default_factory=dict)
    latency_model: str = "paper"
    policy_modules: tuple[str, ...] = ()
    default_slo: SLO = DEFAULT_SLO
    refit: bool = True

    @classmethod
    def load(cls, additional_config: Any = None,
             environ: Mapping[str, str] | None = None) -> PluginSettings:
        """The settings from vLLM's additional config (its "sliceserve" key), else the env."""
        env = os.environ if environ is None else environ
        section: Any = {}
        if isinstance(additional_config, Mapping):
            section = additional_config.get(CONFIG_KEY, {})
        if not isinstance(section, Mapping):
            raise SettingsError(f"additional_config[{CONFIG_KEY!r}] must be an object")
        unknown = set(section) - set(_ENV)
        if unknown:
            raise SettingsError(f"unknown sliceserve setting(s) {sorted(unknown)}; valid: "
                                f"{', '.join(_ENV)}")
        raw: dict[str, Any] = {}
        for key, var in _ENV.items():
            if key in section:
                raw[key] = section[key]
            elif env.get(var, "").strip():
                raw[key] = _from_env(key, var, env[var])
        return cls._from_raw(raw)

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> PluginSettings:
        out = cls()
        if "policy" in raw:
            if not isinstance(raw["policy"], str) or not raw["policy"]:
                raise SettingsError("policy must be a policy name")
            out = replace(out, policy=raw["policy"])
        if "policy_options" in raw:
            if not isinstance(raw["policy_options"], Mapping):
                raise SettingsError("policy_options must be a JSON object")
            out = replace(out, policy_options=dict(raw["policy_options"]))
        if "latency_model" in raw:
            if not isinstance(raw["latency_model"], str) or not raw["latency_model"]:
                raise SettingsError("latency_model must be a preset name or a JSON file")
            out = replace(out, latency_model=raw["latency_model"])
        if "policy_modules" in raw:
            mods = raw["policy_modules"]
            if isinstance(mods, str):
                mods = [m.strip() for m in mods.split(",") if m.strip()]
            if not isinstance(mods, (list, tuple)) or not all(isinstance(m, str) for m in mods):
                raise SettingsError("policy_modules must be a list of module names")
            out = replace(out, policy_modules=tuple(mods))
        if "default_slo" in raw:
            try:
                out = replace(out, default_slo=slo_from_args(raw["default_slo"], DEFAULT_SLO))
            except ValueError as e:
                raise SettingsError(f"default_slo: {e}") from None
        if "refit" in raw:
            if not isinstance(raw["refit"], bool):
                raise SettingsError("refit must be true or false")
            out = replace(out, refit=raw["refit"])
        return out


def _from_env(key: str, var: str, text: str) -> Any:
    if key in ("policy_options", "default_slo"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SettingsError(f"{var} is not valid JSON: {e}") from None
    if key == "refit":
        if text.strip() not in ("0", "1"):
            raise SettingsError(f"{var} must be 0 or 1, got {text!r}")
        return text.strip() == "1"
    return text.strip()


def slo_from_args(extra_args: Mapping[str, Any] | None, default: SLO) -> SLO:
    """The SLO in a request's flat `extra_args`; fields it does not name come from `default`.
    Raises ValueError naming the field for a value of the wrong type or range."""
    if not extra_args:
        return default
    if not isinstance(extra_args, Mapping):
        raise ValueError(f"extra_args must be an object, got {type(extra_args).__name__}")
    values: dict[str, Any] = {}
    for name in SLO_FIELDS:
        if name not in extra_args:
            continue
        value = extra_args[name]
        if name == "slo_class":
            if not isinstance(value, str) or not value:
                raise ValueError(f"slo_class must be a non-empty string, got {value!r}")
        elif name == "deadline_ms" and value is None:
            pass
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        values[name] = value
    if not values:
        return default
    return replace(default, **values)  # SLO validates ranges and raises ValueError
