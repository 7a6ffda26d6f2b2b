"""How the benchmark client talks to each kind of server: one request body per request spec.

Every system gets the same prompt, `max_tokens`, greedy sampling and a forced output length,
so that all do equal work; what differs is how a server is told to ignore EOS and which
extension fields it understands. Presets (`SYSTEMS`) hold what ENVIRONMENT.md found for each;
any field can be overridden from the command line.

- `force_length`: "ignore_eos" (vLLM, llama.cpp's llama-server, sliceserve), "logit_bias"
  (-100 on the EOS ids: llama-cpp-python's server ignores `ignore_eos`), or "none".
- `send_slo`: the request's SLO, in the form `slo_format` names: "sliceserve" (docs/API:
  `slo`, `utility`, `slo_class`) or "vllm_xargs" (the same values flat in vLLM's
  `vllm_xargs`, which reach `SamplingParams.extra_args` and so the sliceserve plug-in inside
  vLLM; vLLM drops unknown top-level fields, so the first form never reaches it). Servers
  that know neither ignore it; the client measures attainment against each request's SLO
  anyway.
- `send_priority`: vLLM's `priority` (lower first; the workload's utility rank), which its
  `--scheduling-policy priority` uses and FCFS ignores.
- `token_ids`: ask for per-chunk token ids (vLLM's `return_token_ids`), so every token's
  arrival is known even when a special token streams as empty text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from sliceserve.workloads import RequestSpec

FORCE_LENGTH = ("ignore_eos", "logit_bias", "none")
SLO_FORMATS = ("sliceserve", "vllm_xargs")
ENDPOINTS = ("completions", "chat")


@dataclass(frozen=True)
class ClientOptions:
    system: str = "openai"
    force_length: str = "ignore_eos"
    send_slo: bool = True
    slo_format: str = "sliceserve"
    send_priority: bool = True
    token_ids: bool = False
    usage: bool = True  # stream_options.include_usage
    endpoint: str = "completions"
    eos_ids: tuple[int, ...] = ()  # for "logit_bias" (the CLI fills the special tokens)
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.force_length not in FORCE_LENGTH:
            raise ValueError(f"force_length must be one of {', '.join(FORCE_LENGTH)}, "
                             f"got {self.force_length!r}")
        if self.slo_format not in SLO_FORMATS:
            raise ValueError(f"slo_format must be one of {', '.join(SLO_FORMATS)}, "
                             f"got {self.slo_format!r}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, "
                             f"got {self.endpoint!r}")

    @property
    def path(self) -> str:
        return "/v1/completions" if self.endpoint == "completions" else "/v1/chat/completions"

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "force_length": self.force_length,
                "send_slo": self.send_slo, "slo_format": self.slo_format,
                "send_priority": self.send_priority,
                "token_ids": self.token_ids, "usage": self.usage, "endpoint": self.endpoint,
                "eos_ids": list(self.eos_ids), "extra_body": dict(self.extra_body)}


SYSTEMS: dict[str, ClientOptions] = {
    "openai": ClientOptions(),
    "sliceserve": ClientOptions(system="sliceserve"),
    "vllm": ClientOptions(system="vllm", token_ids=True, slo_format="vllm_xargs"),
    "llama.cpp": ClientOptions(system="llama.cpp", send_priority=False),
    # No usage in its streams and no ignore_eos; one chunk per token.
    "llama-cpp-python": ClientOptions(system="llama-cpp-python", force_length="logit_bias",
                                      send_slo=False, send_priority=False, usage=False),
}


def client_options(system: str, **overrides: Any) -> ClientOptions:
    """The preset of `system` (an unknown name gets the plain OpenAI preset under that name),
    with the given fields replaced (None leaves a field as the preset has it)."""
    base = SYSTEMS.get(system, replace(SYSTEMS["openai"], system=system))
    given = {k: v for k, v in overrides.items() if v is not None}
    if "eos_ids" in given:
        given["eos_ids"] = tuple(given["eos_ids"])
    return replace(base, system=system, **given)


def parse_extra_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--extra-body must be a JSON object: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("--extra-body must be a JSON object")
    return value


def request_body(spec: RequestSpec, prompt: str, model: str,
                 options: ClientOptions) -> dict[str, Any]:
    """The JSON body of one streamed request for `spec` with prompt text `prompt`."""
    body: dict[str, Any] = {"model": model, "max_tokens": spec.num_output_tokens,
                            "temperature": 0.0, "stream": True}
    if options.endpoint == "completions":
        body["prompt"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": prompt}]
    if options.usage:
        body["stream_options"] = {"include_usage": True}
    if options.force_length == "ignore_eos":
        body["ignore_eos"] = True
    elif options.force_length == "logit_bias":
        if not options.eos_ids:
            raise ValueError("force_length 'logit_bias' needs the EOS token ids")
        body["logit_bias"] = {str(i): -100 for i in options.eos_ids}
    if options.token_ids:
        body["return_token_ids"] = True
    slo = spec.slo
    if options.send_slo and options.slo_format == "vllm_xargs":
        xargs: dict[str, Any] = {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms,
                                 "utility": slo.utility, "slo_class": slo.slo_class}
        if slo.deadline_ms is not None:  # flat values only: no deadline is no field
            xargs["deadline_ms"] = slo.deadline_ms
        body["vllm_xargs"] = xargs
    elif options.send_slo:
        body["slo"] = {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms,
                       "deadline_ms": slo.deadline_ms}
        body["utility"] = slo.utility
        body["slo_class"] = slo.slo_class
    if options.send_priority:
        body["priority"] = spec.priority
    body.update(options.extra_body)
    return body
