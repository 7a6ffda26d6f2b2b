"""The offline API: run a batch of prompts to completion under a scheduling policy.

    from sliceserve import LLM, SamplingParams, SLO
    llm = LLM(policy="slice")                      # the embedded SmolLM2-135M, dtype "auto"
    outs = llm.generate(["Hello, my name is"], SamplingParams(max_tokens=32, temperature=0))
    print(outs[0].text, outs[0].metrics.ttft_s, outs[0].metrics.met)

All prompts arrive together when `generate` is called; the policy decides the order in which
they are served, which is what the per-request timing and "met" measure. Without SLOs every
request gets `DEFAULT_SLO`, a lenient best-effort objective (first token within 60 s, then
1 s per token). Not thread-safe: one `generate` at a time per LLM (use `AsyncEngine` to serve
concurrent callers).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sliceserve.clock import Clock
from sliceserve.engine.build import DEFAULT_SLO, LiveEngine, PromptError, build_engine
from sliceserve.engine.config import EngineConfig
from sliceserve.engine.outputs import OutputProcessor, RequestOutput
from sliceserve.model.detokenizer import StopChecker
from sliceserve.request import SLO, Request, SamplingParams

T = TypeVar("T")
Message = Mapping[str, Any]
# How long to wait before asking the policy again when it scheduled nothing (waiting on time).
IDLE_RETRY_S = 0.001


class LLM:
    def __init__(self, model: str | Path | None = None, policy: str | None = None,
                 policy_options: Mapping[str, Any] | None = None, *,
                 config: EngineConfig | None = None, warm_up: bool = True,
                 clock: Clock | None = None, **settings: Any) -> None:
        """Load `model` (None: the embedded smollm2-135m) under `policy` (None: "slice", the
        EngineConfig default). `settings` are the
        other EngineConfig fields (dtype: "auto" by default, quantization, device,
        kv_cache_memory_gb, max_model_len, max_num_batched_tokens, latency_model, ...); an
        unknown one raises ValueError naming it. Or give a whole `config` instead of them.
        `warm_up` and `clock` go to `build_engine`."""
        if config is None:
            given = {"model": model, "policy": policy, "policy_options": policy_options}
            settings = {**{k: v for k, v in given.items() if v is not None}, **settings}
            config = EngineConfig.from_dict(settings, where="LLM()")
        elif model is not None or policy is not None or policy_options is not None or settings:
            raise ValueError("LLM(): give either config= or the settings one by one, not both")
        self.config = config
        self.live: LiveEngine = build_engine(config, clock=clock, warm_up=warm_up)
        self.engine = self.live.engine
        self.tokenizer = self.live.tokenizer
        self._ids = itertools.count()
        self._ended: list[Request] = []  # filled by the scheduler while `generate` runs

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        slos: SLO | Sequence[SLO] | None = None,
        *,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in the order of `prompts`.

        `prompts`: a string, a list of strings, one list of token ids, or a list of them.
        `sampling_params` / `slos`: None (defaults), one for all, or one per prompt.
        Everything is checked before anything runs; a bad prompt or parameter raises
        ValueError naming the prompt's index.
        """
        texts, token_lists = self._parse_prompts(prompts)
        return self._run(texts, token_lists, sampling_params, slos, use_tqdm)

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        slos: SLO | Sequence[SLO] | None = None,
        *,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of {"role", "content"} messages) or a
        list of conversations, formatted with the model's chat template."""
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise ValueError("chat() takes a conversation (a list of messages) or a list of "
                             "conversations")
        single = isinstance(messages[0], Mapping)
        conversations = [messages] if single else list(messages)
        token_lists = []
        for i, conversation in enumerate(conversations):
            if (not isinstance(conversation, Sequence) or not conversation
                    or not all(isinstance(m, Mapping) for m in conversation)):
                raise ValueError(f"conversation {i} must be a non-empty list of messages "
                                 f"(dicts with 'role' and 'content')")
            token_lists.append(self.live.encode_chat(conversation))  # type: ignore[arg-type]
        return self._run([None] * len(token_lists), token_lists, sampling_params, slos, use_tqdm)

    # --- internals ---
    def _parse_prompts(self, prompts: Any) -> tuple[list[str | None], list[list[int]]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        elif (isinstance(prompts, Sequence) and prompts
              and all(isinstance(t, int) for t in prompts)):
            prompts = [list(prompts)]  # one prompt of token ids
        if not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a string, a list of strings or a list of token "
                             f"id lists, got {type(prompts).__name__}")
        texts: list[str | None] = []
        token_lists: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                texts.append(prompt)
                token_lists.append(self.live.encode(prompt))
            elif isinstance(prompt, Sequence):
                texts.append(None)
                token_lists.append(list(prompt))
            else:
                raise ValueError(f"prompt {i} must be a string or a list of token ids, got "
                                 f"{type(prompt).__name__}")
            self.live.check_token_ids(token_lists[-1], f"prompt {i}")
        return texts, token_lists

    def _run(self, texts: list[str | None], token_lists: list[list[int]],
             sampling_params: Any, slos: Any, use_tqdm: bool) -> list[RequestOutput]:
        n = len(token_lists)
        samplings = _per_prompt("sampling_params", sampling_params, SamplingParams(), n,
                                SamplingParams)
        slo_list = _per_prompt("slos", slos, DEFAULT_SLO, n, SLO)
        vocab = self.live.vocab_size
        for i, (ids, sampling) in enumerate(zip(token_lists, samplings)):
            _check_sampling(sampling, vocab, i)
            self.live.check_fits(len(ids), sampling.max_tokens, f"prompt {i}")
        if n == 0:
            return []

        engine = self.engine
        processor = OutputProcessor(self.tokenizer, engine.scheduler.finish_request)
        index: dict[str, int] = {}
        results: list[RequestOutput | None] = [None] * n
        progress = _progress(n, use_tqdm)
        listeners = engine.scheduler.finished_listeners
        listeners.append(self._ended.append)
        try:
            for i, (text, ids, sampling, slo) in enumerate(
                    zip(texts, token_lists, samplings, slo_list)):
                request_id = str(next(self._ids))
                request = Request(request_id, engine.clock.now(), len(ids), sampling, slo,
                                  prompt_token_ids=ids)
                index[request_id] = i
                processor.add(request, text)
                engine.add_request(request)
            while len(processor):
                touched: list[Request] = []
                if engine.has_unfinished():
                    step = engine.step()
                    if step.idle:
                        time.sleep(IDLE_RETRY_S)
                    touched.extend(request for request, _ in step.new_tokens)
                elif not self._ended:
                    raise RuntimeError("the engine has no unfinished request but "
                                       f"{len(processor)} outputs are still open")
                touched.extend(self._ended)
                self._ended.clear()
                for request in touched:
                    output = processor.process(request, engine.clock.now(), stream=False)
                    if output is not None:
                        results[index[output.request_id]] = output
                        if progress is not None:
                            progress.update(1)
        finally:
            if progress is not None:
                progress.close()
            # Interrupted (an error, Ctrl-C): leave the engine clean for the next call.
            for request_id in index:
                if request_id in processor:
                    engine.abort(request_id, "generate() was interrupted")
            listeners.remove(self._ended.append)
            self._ended.clear()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


def _per_prompt(name: str, value: Any, default: T, n: int, kind: type) -> list[T]:
    """None -> the default for all; one value -> for all; a list -> one per prompt."""
    if value is None:
        return [default] * n
    if isinstance(value, kind):
        return [value] * n
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be a {kind.__name__}, a list of them, or None; got "
                         f"{type(value).__name__}")
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} prompts; give one "
                         f"{kind.__name__} for all prompts or exactly one per prompt")
    for i, item in enumerate(value):
        if not isinstance(item, kind):
            raise ValueError(f"{name}[{i}] must be a {kind.__name__}, got "
                             f"{type(item).__name__}")
    return list(value)


def _check_sampling(sampling: SamplingParams, vocab_size: int, i: int) -> None:
    """What SamplingParams cannot check alone: ids against this model's vocabulary."""
    bad = [t for t in sampling.stop_token_ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt {i}: stop_token_ids {bad} are outside the vocabulary "
                         f"[0, {vocab_size})")
    if isinstance(sampling.stop, str):
        raise ValueError(f"prompt {i}: stop must be a list of strings, not one string")
    try:
        StopChecker(sampling.stop)
    except ValueError as e:
        raise ValueError(f"prompt {i}: {e}") from None


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="generate", unit="req")


__all__ = ["LLM", "EngineConfig", "PromptError"]
