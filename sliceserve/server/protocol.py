"""The request bodies the server takes: OpenAI's fields, vLLM's extras, sliceserve's SLOs.

Validated strictly (pydantic, strict types, unknown fields refused), so every bad request gets
a 400 that names its field (errors.py turns a validation error into OpenAI's error shape).
Fields OpenAI defines that this engine cannot honour (n > 1, best_of > 1, echo, penalties,
logit_bias, suffix, tools) are accepted only at their neutral values and refused otherwise:
silently ignoring them would hand back something else than what was asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

PositiveMs = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
MAX_STOP_STRINGS = 16
MAX_NAME_CHARS = 128


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SloSpec(Strict):
    """Per-request objectives (ms); a key left out takes the class's default."""

    ttft_ms: PositiveMs | None = None
    tpot_ms: PositiveMs | None = None
    deadline_ms: PositiveMs | None = None


class StreamOptions(Strict):
    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False  # vLLM's: usage in every chunk


class Unsupported(ValueError):
    """A field at a value this server does not implement (400 naming the field)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class GenerationRequest(Strict):
    """What /v1/completions and /v1/chat/completions share."""

    model: Annotated[str, Field(min_length=1, max_length=512)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0  # vLLM's extra: -1 and 0 disable it
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: StrictBool = False
    seed: Seed | None = None
    stop: Annotated[str, Field(min_length=1)] | Annotated[
        list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]],
                              Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = 1
    presence_penalty: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    frequency_penalty: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    logit_bias: dict[str, float] | None = None
    user: Annotated[str, Field(max_length=MAX_NAME_CHARS * 4)] | None = None
    # vLLM's: lower is served first by priority policies.
    priority: Annotated[int, Field(ge=-(2**31), lt=2**31)] | None = None
    # sliceserve's SLO extension (docs/API.md).
    slo: SloSpec | None = None
    utility: PositiveMs | None = None
    slo_class: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] | None = None

    @model_validator(mode="after")
    def _check(self) -> GenerationRequest:
        if self.n != 1:
            raise ValueError("n: only n = 1 is supported (one sequence per request)")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed with stream = true")
        if self.min_tokens and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens: must be <= max_tokens ({self.max_tokens})")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise ValueError(f"{name}: not supported (only 0)")
        if self.logit_bias:
            raise ValueError("logit_bias: not supported")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(GenerationRequest):
    prompt: str | TokenIds | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[
        list[TokenIds], Field(min_length=1, max_length=1)]
    echo: StrictBool = False
    best_of: StrictInt | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.best_of not in (None, 1):
            raise ValueError("best_of: only 1 is supported")
        if self.echo:
            raise ValueError("echo: not supported")
        if self.suffix:
            raise ValueError("suffix: not supported")
        if self.logprobs is not None:
            raise ValueError("logprobs: not supported")
        return self

    @property
    def prompt_input(self) -> str | list[int]:
        """The one prompt: text or token ids (a batch of one is unwrapped)."""
        p: Any = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            p = p[0]
        return p


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None

    def to_template(self) -> dict[str, str]:
        """The message as a chat template takes it (a developer message is a system one)."""
        text = (self.content if isinstance(self.content, str)
                else "".join(part.text for part in self.content))
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ResponseFormat(Strict):
    type: Literal["text"]


class ChatCompletionRequest(GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs:
            raise ValueError("logprobs: not supported")
        if self.tools:
            raise ValueError("tools: not supported")
        if self.tool_choice not in (None, "none"):
            raise ValueError("tool_choice: not supported")
        limit = self.max_completion_tokens or self.max_tokens
        if self.min_tokens and limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens: must be <= max_completion_tokens ({limit})")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
