"""Per-request output streams over the live engine, for the OpenAI server.

One background thread owns the engine: it runs `engine.step()` while there is work (a model
forward blocks, so it cannot run on the event loop) and sleeps on an event when there is none.
Callers on the event loop never touch the engine: `generate` and `abort` queue commands that
the thread applies between steps, under a lock; outputs travel back through one asyncio queue
per request, all of one iteration's in one `loop.call_soon_threadsafe` (one loop wakeup per
iteration, not one per token).

    engine = AsyncEngine.from_config(EngineConfig(policy="slice"))  # or AsyncEngine(live)
    await engine.start()
    async for out in engine.generate("Hello", SamplingParams(max_tokens=16)):
        print(out.delta_text, end="")
    await engine.shutdown()

Every request ends exactly once, with a final output (`finished=True`): completed
(finish_reason "stop" / "length"), rejected ("rejected", with `finish_code` and
`finish_detail` saying why) or aborted ("abort"). A consumer that stops
iterating (closes the generator, or its task is cancelled) aborts its request, which frees its
KV blocks.

Faults: an error while handling one request's outputs fails that request only (its stream
raises `EngineStepError`); a failed iteration (`StepError`) fails the requests it computed and
the engine goes on. After `max_step_failures` failed iterations in a row the engine gives up:
every open stream raises `EngineStepError`, the thread stops, `fatal_error` holds the cause
and `stopped` is set (a server then reports unhealthy and exits).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from sliceserve.clock import Clock
from sliceserve.core.plan import StepOutput
from sliceserve.engine.build import DEFAULT_SLO, LiveEngine, build_engine
from sliceserve.engine.commands import _Abort, _Add, _Call, settle_threadsafe
from sliceserve.engine.config import EngineConfig
from sliceserve.engine.engine import Engine, StepError
from sliceserve.engine.outputs import OutputProcessor, RequestOutput
from sliceserve.request import CODE_ABORTED, SLO, Request, SamplingParams

# Codes of the aborts this class makes (`RequestOutput.finish_code`).
CODE_SHUTDOWN = "shutdown"
CODE_ENGINE_ERROR = "engine_error"

# How long to wait before asking the policy again when it scheduled nothing (waiting on time).
IDLE_RETRY_S = 0.001
MAX_STEP_FAILURES = 3  # failed iterations in a row before the engine gives up


_Queue = asyncio.Queue[RequestOutput | BaseException]


class EngineStepError(RuntimeError):
    """The engine failed while serving this request (the cause is chained)."""


class EngineNotRunning(RuntimeError):
    """`generate` was called before `start()` or after `shutdown()`."""


class AsyncEngine:
    def __init__(self, live: LiveEngine, max_step_failures: int = MAX_STEP_FAILURES) -> None:
        self.live = live
        self.engine = live.engine
        self.max_step_failures = max_step_failures
        self.fatal_error: BaseException | None = None  # why the engine gave up, if it did
        self.stopped = asyncio.Event()  # set when the thread has stopped (shutdown or fatal)
        # Called on the engine thread after every iteration (e.g. to update metrics).
        self.step_listeners: list[Callable[[StepOutput], None]] = []
        self._lock = threading.Lock()  # guards _commands, _streams, _stopping
        self._commands: list[_Add | _Abort | _Call] = []
        self._streams: dict[str, _Queue] = {}
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count()
        # Touched by the engine thread only.
        self._processor = OutputProcessor(live.tokenizer, self.engine.scheduler.finish_request)
        self._ended: list[Request] = []  # filled by the scheduler while the thread runs
        self._outbox: list[tuple[_Queue, RequestOutput | BaseException]] = []  # to post

    @classmethod
    def from_config(cls, config: EngineConfig, *, warm_up: bool = True,
                    clock: Clock | None = None,
                    max_step_failures: int = MAX_STEP_FAILURES) -> AsyncEngine:
        """Build the live engine `config` describes (`build_engine`) and stream over it."""
        return cls(build_engine(config, clock=clock, warm_up=warm_up), max_step_failures)

    # --- life cycle ---
    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        if self.is_running:
            return
        if self.fatal_error is not None:
            raise EngineNotRunning(f"the engine failed: {self.fatal_error!r}")
        self._loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        self._stopping = False
        self.engine.scheduler.finished_listeners.append(self._ended.append)
        self._thread = threading.Thread(target=self._run, name="sliceserve-engine",
                                        daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        """Abort what is still running (each stream gets its final output) and stop."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join)
        self._thread = None
        self.engine.scheduler.finished_listeners.remove(self._ended.append)

    async def __aenter__(self) -> AsyncEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # --- requests ---
    async def generate(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams | None = None,
        slo: SLO | None = None,
        request_id: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs: one per new token (`delta_text` / `delta_token_ids`
        new, `text` / `token_ids` cumulative), the last with `finished=True`.

        Raises ValueError for a prompt the model cannot take (empty, unknown token ids); a
        prompt too long for the context is rejected by the scheduler and streams one finished
        output with finish_reason "rejected" (its finish_code and finish_detail say why)."""
        if not self.is_running:
            raise EngineNotRunning("the engine is not running: await start() first")
        sampling = sampling if sampling is not None else SamplingParams()
        if isinstance(prompt, str):
            text: str | None = prompt
            token_ids = self.live.encode(prompt)
        else:
            text, token_ids = None, list(prompt)
        self.live.check_token_ids(token_ids, "prompt")
        if request_id is None:
            request_id = f"req-{next(self._ids)}"
        request = Request(request_id, self.engine.clock.now(), len(token_ids), sampling,
                          slo if slo is not None else DEFAULT_SLO,
                          prompt_token_ids=token_ids, priority=priority)
        queue: _Queue = asyncio.Queue()
        with self._lock:
            if self._stopping:
                raise EngineNotRunning("the engine is shutting down")
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = queue
            self._commands.append(_Add(request, text))
        self._wake.set()

        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine already dropped this request
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the consumer went away: free the request's resources
                self.abort(request_id)

    async def call(self, fn: Callable[[Engine], Any]) -> Any:
        """`fn(engine)` on the engine thread between two iterations (a consistent view of the
        scheduler, e.g. for a state endpoint); its result, or its exception."""
        if not self.is_running:
            raise EngineNotRunning("the engine is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._commands.append(_Call(fn, future))
        self._wake.set()
        return await future

    def abort(self, request_id: str, detail: str = "aborted by the caller",
              code: str = CODE_ABORTED) -> None:
        """End a request early; its stream gets a final output with finish_reason "abort"
        (and `code`, `detail`). Unknown or finished ids are ignored. Safe from any thread."""
        with self._lock:
            self._commands.append(_Abort(request_id, detail, code))
        self._wake.set()

    # --- the engine thread ---
    def _run(self) -> None:
        try:
            self._loop_steps()
        finally:
            if self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self.stopped.set)
                except RuntimeError:  # the event loop is closed
                    pass

    def _loop_steps(self) -> None:
        timeout: float | None = None
        failures = 0
        while True:
            self._wake.wait(timeout)
            with self._lock:
                self._wake.clear()
                commands, self._commands = self._commands, []
                stopping = self._stopping
            try:
                self._apply_all(commands)
                if stopping:
                    for request in list(self.engine.scheduler.running) + list(
                            self.engine.scheduler.waiting):
                        self.engine.abort(request.request_id, "the engine shut down",
                                          CODE_SHUTDOWN)
                self._deliver([])
                self._post()
                if stopping:
                    return
                if not self.engine.has_unfinished():
                    timeout = None  # sleep until a command comes
                    continue
                step = self.engine.step()
                failures = 0
                self._deliver([request for request, _ in step.new_tokens])
                self._post()  # before the listeners: the tokens go out first
                for listener in self.step_listeners:
                    listener(step)
                timeout = IDLE_RETRY_S if step.idle else 0.0
                del step  # its requests may have ended: not kept alive while idle
            except Exception as error:  # noqa: BLE001 - every stream must hear of it
                failures += 1
                timeout = 0.0
                if isinstance(error, StepError) and failures < self.max_step_failures:
                    self._fail(list(error.request_ids), error)
                    self._post()
                    continue
                with self._lock:
                    request_ids = list(self._streams)
                self._fail(request_ids, error)
                self._post()
                if failures >= self.max_step_failures:
                    self.fatal_error = error
                    with self._lock:
                        self._stopping = True
                    return
                if stopping:
                    return

    def _apply_all(self, commands: list[_Add | _Abort | _Call]) -> None:
        """Apply and forget them (the thread keeps no reference to a request while idle)."""
        for command in commands:
            self._apply(command)
        commands.clear()

    def _apply(self, command: _Add | _Abort | _Call) -> None:
        if isinstance(command, _Abort):
            self.engine.abort(command.request_id, command.detail, command.code)
            return
        if isinstance(command, _Call):
            try:
                result, error = command.fn(self.engine), None
            except Exception as e:  # noqa: BLE001 - handed to the caller
                result, error = None, e
            settle_threadsafe(self._loop, command.future, result, error)
            return
        request = command.request
        try:
            self._processor.add(request, command.prompt)
            self.engine.add_request(request)  # may reject at once: _ended gets it
        except Exception as error:  # noqa: BLE001 - this request's error, not the engine's
            self._processor.discard(request.request_id)
            self._push(request.request_id, error, final=True)

    def _deliver(self, touched: list[Request]) -> None:
        """Outputs for requests with new tokens and for every request that ended. An error
        while handling one request (detokenizing, a stop string) fails that request only."""
        now_s = self.engine.clock.now()
        while touched or self._ended:
            batch = touched + self._ended
            touched = []
            self._ended.clear()  # a stop string may end a request below: it comes back here
            for request in batch:
                try:
                    output = self._processor.process(request, now_s)
                except Exception as error:  # noqa: BLE001 - fail this request, not the engine
                    self._fail([request.request_id], error)
                    continue
                if output is not None:
                    self._push(request.request_id, output, final=output.finished)

    def _push(self, request_id: str, item: RequestOutput | BaseException, final: bool) -> None:
        with self._lock:
            queue = (self._streams.pop(request_id, None) if final
                     else self._streams.get(request_id))
        if queue is not None:
            self._outbox.append((queue, item))

    def _post(self) -> None:
        """Hand what `_push` collected to the event loop, in order, with one wakeup."""
        if not self._outbox:
            return
        items, self._outbox = self._outbox, []
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _fail(self, request_ids: list[str], error: Exception) -> None:
        """End these requests' streams with the error and abort them (frees their KV)."""
        for request_id in request_ids:
            self._processor.discard(request_id)
            wrapped = EngineStepError(f"the engine failed while serving {request_id}: {error!r}")
            wrapped.__cause__ = error
            self._push(request_id, wrapped, final=True)
            try:
                self.engine.abort(request_id, f"the engine failed: {error!r}", CODE_ENGINE_ERROR)
            except Exception:  # noqa: BLE001 - best effort: the state may be inconsistent
                pass


def _put_all(items: list[tuple[_Queue, RequestOutput | BaseException]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)
