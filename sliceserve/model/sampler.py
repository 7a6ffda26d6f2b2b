"""Token sampling: greedy, temperature, top-k, top-p, with a per-request seed.

Rows still short of their `min_tokens` cannot sample an end token: the EOS ids (unless the
request ignores EOS) and its stop token ids are masked out of their logits first.

Random rows use the exponential race (argmax of p / E with E ~ Exp(1)), which draws exactly
from p and lets every seeded request use its own generator inside one batched call: a
request's tokens depend on its seed only, not on what it is batched with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sliceserve.request import Request

_PRUNE_EVERY = 256  # sweep finished requests' generators this often


class Sampler:
    def __init__(self, device: torch.device, seed: int | None = None,
                 argmax_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 eos_token_ids: Sequence[int] = ()) -> None:
        """`argmax_rows`: a compiled row-wise argmax for the logits' dtype (the CPU kernels),
        used for all-greedy batches; torch's argmax over float32 otherwise. `eos_token_ids`:
        the ids that end generation (the scheduler's), masked for rows below min_tokens."""
        self.device = device
        self.eos_token_ids = tuple(eos_token_ids)
        self._argmax_rows = argmax_rows
        self._rng = torch.Generator(device=device)
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(seed)
        self._seeded: dict[str, tuple[Request, torch.Generator]] = {}
        self._calls = 0

    def sample(self, logits: torch.Tensor, requests: Sequence[Request]) -> list[int]:
        """logits: [S, vocab], one row per request -> one token id per row.

        An all-greedy batch takes the compiled row-wise argmax when there is one (exact: the
        same first maximum); otherwise greedy rows take the argmax of the logits widened to
        float32 (torch's float32 argmax is 5x faster than its bfloat16 one). Random rows are
        sampled in float32.
        """
        self._mask_end_tokens(logits, requests)
        random_rows = [i for i, r in enumerate(requests) if not _is_greedy(r)]
        if not random_rows and self._argmax_rows is not None and logits.is_contiguous():
            tokens = self._argmax_rows(logits)  # exact: the same first maximum
        else:
            logits = logits.float()
            tokens = logits.argmax(dim=-1)
        if random_rows:
            chosen = self._sample_random(logits[random_rows],
                                         [requests[i] for i in random_rows])
            tokens[random_rows] = chosen
        self._calls += 1
        if self._calls % _PRUNE_EVERY == 0:
            self._prune()
        return tokens.tolist()

    def _mask_end_tokens(self, logits: torch.Tensor, requests: Sequence[Request]) -> None:
        """min_tokens: rows whose next token is still within it cannot end (in place)."""
        for row, request in enumerate(requests):
            sampling = request.sampling
            if len(request.output_token_ids) >= sampling.min_tokens:
                continue
            ids = set(sampling.stop_token_ids)
            if not sampling.ignore_eos:
                ids.update(self.eos_token_ids)
            vocab = logits.shape[-1]
            ids = [i for i in ids if 0 <= i < vocab]
            if ids:
                logits[row, ids] = float("-inf")

    def _sample_random(self, logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        params = [r.sampling for r in requests]
        temps = torch.tensor([p.temperature for p in params], device=logits.device)
        logits = logits / temps[:, None]
        top_ks = [p.top_k for p in params]
        if any(top_ks):
            logits = _apply_top_k(logits, top_ks)
        top_ps = [p.top_p for p in params]
        if any(p < 1.0 for p in top_ps):
            logits = _apply_top_p(logits, torch.tensor(top_ps, device=logits.device))
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs)
        for row, request in enumerate(requests):
            noise[row].exponential_(generator=self._generator(request))
        return (probs / noise).argmax(dim=-1)

    def _generator(self, request: Request) -> torch.Generator:
        seed = request.sampling.seed
        if seed is None:
            return self._rng
        entry = self._seeded.get(request.request_id)
        if entry is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            entry = self._seeded[request.request_id] = (request, generator)
        return entry[1]

    def _prune(self) -> None:
        done = [rid for rid, (request, _) in self._seeded.items() if request.is_finished]
        for rid in done:
            del self._seeded[rid]


def _is_greedy(request: Request) -> bool:
    sampling = request.sampling
    return sampling.temperature == 0 or sampling.top_k == 1


def _apply_top_k(logits: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    vocab = logits.shape[-1]
    ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks], device=logits.device)
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(-1, (ks - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def _apply_top_p(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
    drop_sorted = before >= top_ps[:, None]
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
