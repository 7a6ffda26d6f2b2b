"""What a policy sees, what it decides, and the base class every policy extends.

A policy decides from a read-only view: plain facts about requests (`RequestView`), the
scheduler's limits and free KV blocks, and a latency model (`Policy.latency_model`: the
device's profile, corrected online from measured iterations when built with an
`OnlineLatencyModel`). It never mutates scheduler state
and never imports torch, asyncio or a clock; so a thin adapter can drive the same policies
from another engine's scheduler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from sliceserve.config import SchedulerConfig
from sliceserve.latency_model import LatencyModel
from sliceserve.latency_online import OnlineLatencyModel
from sliceserve.request import CODE_SLO_INFEASIBLE, SLO, RequestStatus

LatencySource = LatencyModel | OnlineLatencyModel  # what a policy is built with


class RequestView(Protocol):
    """The facts about one request that a policy may decide on (all read-only)."""

    @property
    def request_id(self) -> str: ...
    @property
    def arrival_s(self) -> float: ...
    @property
    def slo(self) -> SLO: ...
    @property
    def priority(self) -> int: ...
    @property
    def status(self) -> RequestStatus: ...
    @property
    def num_prompt_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def num_output_tokens(self) -> int: ...
    @property
    def remaining_output_tokens(self) -> int: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def num_computed_tokens(self) -> int: ...
    @property
    def num_preemptions(self) -> int: ...
    @property
    def first_token_s(self) -> float | None: ...
    @property
    def last_token_s(self) -> float | None: ...
    @property
    def ttft_deadline_s(self) -> float: ...
    @property
    def deadline_s(self) -> float | None: ...


class SchedulerView(Protocol):
    """The scheduler as a policy sees it at one decision point."""

    @property
    def now_s(self) -> float: ...
    @property
    def waiting(self) -> Sequence[RequestView]:
        """Requests holding no KV (new or preempted), oldest arrival first."""
        ...
    @property
    def running(self) -> Sequence[RequestView]:
        """Requests holding KV, in admission order (the newest last)."""
        ...
    @property
    def config(self) -> SchedulerConfig: ...
    @property
    def num_free_blocks(self) -> int: ...
    def num_blocks_needed(self, request: RequestView, num_new_tokens: int) -> int: ...
    def num_blocks_held(self, request: RequestView) -> int: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request the policy refuses: `code` is machine-readable (a server answers with it),
    `detail` says why in words."""

    request: RequestView
    detail: str
    code: str = CODE_SLO_INFEASIBLE


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's answer for one iteration.

    Applied in order: rejections, preemptions (free KV, back to waiting, recompute later),
    then the batch: each entry computes `num_new_tokens` of its request now. A waiting
    (or just preempted) request in the batch is admitted. The scheduler checks the whole
    decision against its limits before it changes anything, and raises `PolicyError`, with
    its state untouched, on a decision that breaks them.
    """

    batch: Sequence[tuple[RequestView, int]] = ()
    preempt: Sequence[RequestView] = ()
    reject: Sequence[Rejection] = ()


EMPTY_DECISION = Decision()


class PolicyError(RuntimeError):
    """A policy returned a decision that breaks the scheduler's limits (a policy bug)."""


@dataclass(frozen=True)
class PolicyOptions:
    """Base of every policy's options; subclasses add fields with defaults."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Policy(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[PolicyOptions]] = PolicyOptions

    def __init__(self, options: PolicyOptions, latency_model: LatencySource,
                 config: SchedulerConfig) -> None:
        self.options = options
        # An OnlineLatencyModel follows the device (latency_online.py); a LatencyModel is
        # the profile, frozen.
        self.latency_source = latency_model
        self.config = config

    def assess_arrival(self, request: RequestView, view: SchedulerView) -> Rejection | None:
        """A request is about to join the queue: a Rejection (code and words) if this policy
        predicts that its SLO cannot be met, None to take it. The scheduler asks only when its
        admission control is on (`Scheduler(reject_infeasible=True)`, a server's choice);
        otherwise every request is served, best effort when it is late. Must not change the
        policy's state: `on_arrival` follows for a request that is taken. Default: None (a
        policy without predictions takes everything)."""
        return None

    @property
    def latency_model(self) -> LatencyModel:
        """The model every prediction of the policy uses: the profile as corrected so far
        (the same object until the correction changes)."""
        source = self.latency_source
        return source.current if isinstance(source, OnlineLatencyModel) else source

    def latency_correction(self) -> dict[str, Any] | None:
        """The online correction as it stands (result files, logs, /metrics); None when the
        policy plans with its profile frozen."""
        source = self.latency_source
        return source.snapshot().to_dict() if isinstance(source, OnlineLatencyModel) else None

    def observe_iteration(self, rows: int, new_tokens: int, context_tokens: int,
                          pairs: float, measured_ms: float) -> None:
        """An iteration of this shape ran for `measured_ms` (the scheduler calls it after
        every executed plan; another engine's adapter may too): feeds the online model."""
        source = self.latency_source
        if isinstance(source, OnlineLatencyModel):
            source.observe(rows, new_tokens, context_tokens, pairs, measured_ms)

    # State-change hooks: the scheduler calls each one after the change, once per change, so
    # a policy that keeps its own queues follows the scheduler's exactly (no re-sync).
    def on_arrival(self, request: RequestView, view: SchedulerView) -> None:  # noqa: B027
        """A request entered the waiting queue (it was not rejected on arrival)."""

    def on_admit(self, request: RequestView, view: SchedulerView) -> None:  # noqa: B027
        """A waiting request got KV and moved to running (its first chunk is planned)."""

    def on_preempt(self, request: RequestView, view: SchedulerView) -> None:  # noqa: B027
        """A running request lost its KV and went back to waiting (recompute later)."""

    def on_finish(self, request: RequestView, view: SchedulerView) -> None:  # noqa: B027
        """A request that reached `on_arrival` ended: completed, rejected or aborted
        (`request.status` says which)."""

    @abstractmethod
    def schedule(self, view: SchedulerView) -> Decision:
        """Decide the next iteration."""

    def replan(self, view: SchedulerView) -> bool:
        """Recompute now the plan the policy keeps across iterations (SLICE: its selection and
        decode mask); False for a policy that keeps none. `schedule` replans by itself when it
        must: this is for measuring what a plan costs (scripts/bench_scheduler.py)."""
        del view
        return False

    def state(self) -> dict[str, Any]:
        """Policy state for dashboards and debugging (JSON-serializable)."""
        return {}


@dataclass
class Budget:
    """A policy's running tally of what one iteration may still take: tokens, rows, KV blocks.

    Policies use it to build decisions that the scheduler will accept.
    """

    view: SchedulerView
    max_rows: int
    tokens_left: int = field(init=False)
    rows_left: int = field(init=False)
    blocks_left: int = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.view.config
        self.tokens_left = cfg.max_num_batched_tokens
        self.rows_left = min(self.max_rows, cfg.max_num_seqs)
        self.blocks_left = self.view.num_free_blocks

    def take(self, request: RequestView, num_tokens: int) -> bool:
        """Reserve a row, `num_tokens` tokens and their KV blocks, if all fit."""
        if self.rows_left <= 0 or num_tokens > self.tokens_left or num_tokens <= 0:
            return False
        blocks = self.view.num_blocks_needed(request, num_tokens)
        if blocks > self.blocks_left:
            return False
        self.rows_left -= 1
        self.tokens_left -= num_tokens
        self.blocks_left -= blocks
        return True

    def release(self, request: RequestView) -> None:
        """Count the blocks of a request the policy preempts as free."""
        self.blocks_left += self.view.num_blocks_held(request)

    def give_back(self, request: RequestView, num_tokens: int) -> None:
        """Undo `take(request, num_tokens)`: the row, the tokens and their new blocks."""
        self.rows_left += 1
        self.tokens_left += num_tokens
        self.blocks_left += self.view.num_blocks_needed(request, num_tokens)


def tokens_to_compute(request: RequestView) -> int:
    """Tokens the request must compute to sample its next token (1 for a decode step)."""
    return request.num_tokens - request.num_computed_tokens
