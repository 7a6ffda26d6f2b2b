"""Running the server process: bind, load the model in the background, serve, drain, exit.

The socket is bound first (port 0 picks a free one; the line `sliceserve: listening on
http://HOST:PORT` tells which), so `/health` answers 503 "loading" while the model loads on a
background thread, and 200 once the engine runs. Exit status:

- 0 after SIGTERM or SIGINT: new requests get 503 "shutting_down", in-flight ones may finish
  within `--drain-timeout`, what is left is aborted (each stream gets a final error event, a
  non-streaming request a 503), and the process exits. A second signal cuts the wait short.
- 1 when the model cannot be loaded, or the engine gave up (`max_step_failures` failed
  iterations in a row; a single failed iteration fails only its own requests): `/health`
  answers 503 "engine_failed" for a moment, then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

from sliceserve.engine.async_engine import AsyncEngine
from sliceserve.server import memory
from sliceserve.server.api import create_app
from sliceserve.server.config import EXIT_ENGINE_FAILED, ServerConfig
from sliceserve.server.metrics import ServerMetrics
from sliceserve.server.runtime_state import ServerState
from sliceserve.server.slo import BEST_EFFORT, CUSTOM, OTHER, SloClasses
from sliceserve.server.state import IterationLog
from sliceserve.workloads.spec import load_workload

FAILED_GRACE_S = 1.0  # /health answers 503 this long before a failed server exits
ANSWER_GRACE_S = 5.0  # after the engine stopped: time for the last answers to go out


def log(message: str) -> None:
    print(f"sliceserve: {message}", file=sys.stderr, flush=True)


def serve(config: ServerConfig) -> int:
    """Serve until a signal or a fatal error; the exit status. Bad settings raise ValueError
    before anything is bound or loaded."""
    workload = load_workload(config.slo_classes)  # the engine's settings were checked already
    from sliceserve.model.loader import DEFAULT_MODEL

    names = config.served_model_names or (config.engine.model or DEFAULT_MODEL,)
    known = set(workload.class_names)

    def label_of(name: str) -> str:
        return name if name in known or name in (BEST_EFFORT, CUSTOM) else OTHER

    metrics = ServerMetrics(label_of, (*workload.class_names, BEST_EFFORT, CUSTOM, OTHER))
    state = ServerState(config, metrics, tuple(names))
    return Runtime(config, state, workload).run()


class _Server(uvicorn.Server):
    """uvicorn, with SIGINT / SIGTERM handed to the runtime (a drain) instead of its own."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()

        def handler(sig: int, _frame: Any) -> None:
            loop.call_soon_threadsafe(self._runtime.on_signal, sig)

        originals = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, original in originals.items():
                signal.signal(sig, original)


class Runtime:
    def __init__(self, config: ServerConfig, state: ServerState, workload: Any) -> None:
        self.config = config
        self.state = state
        self.workload = workload
        self.exit_code = 0
        self._draining = False
        self._force = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: _Server | None = None

    def run(self) -> int:
        cfg = self.config
        if cfg.malloc_arena_max is not None:  # before the loader and engine threads allocate
            memory.limit_arenas(cfg.malloc_arena_max)
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as e:
            sock.close()
            raise ValueError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None
        port = sock.getsockname()[1]
        app = create_app(self.state, lifespan=self._lifespan)
        uv = uvicorn.Config(app, log_level=cfg.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(ANSWER_GRACE_S))
        self.server = _Server(uv, self)
        log(f"listening on http://{cfg.host}:{port}")
        self.server.run(sockets=[sock])
        return self.exit_code

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Any) -> AsyncIterator[None]:
        self._spawn(self._load())
        trim = None
        if self.config.malloc_trim_interval_s > 0:
            trim = asyncio.ensure_future(memory.trim_every(self.config.malloc_trim_interval_s))
        yield
        if trim is not None:
            trim.cancel()
        if self.state.engine is not None:
            await self.state.engine.shutdown()

    def _build(self) -> Any:
        from sliceserve.engine.build import build_engine

        cfg = self.config
        live = build_engine(cfg.engine)
        live.engine.scheduler.set_admission(cfg.infeasible == "reject", cfg.max_queued_requests)
        return live

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def build() -> None:  # a daemon thread: a signal while loading need not wait for it
            try:
                result, error = self._build(), None
            except BaseException as e:  # noqa: BLE001 - reported below
                result, error = None, e
            loop.call_soon_threadsafe(lambda: done.done() or (
                done.set_exception(error) if error else done.set_result(result)))

        threading.Thread(target=build, name="sliceserve-load", daemon=True).start()
        try:
            live = await done
        except BaseException as e:  # noqa: BLE001
            if self._draining:
                return  # stopped by a signal while loading: the drain exits (status 0)
            log(f"error: the model could not be loaded: {e!r}")
            self.state.phase, self.state.load_error = "failed", str(e)
            self.exit_code = EXIT_ENGINE_FAILED
            self._exit()
            return
        state = self.state
        log_ = IterationLog(live.engine.executor, live.latency_model, live.engine.clock.now)
        log_.on_iteration = lambda it: state.metrics.on_iteration(it, log_.ratios)
        live.engine.executor = log_
        live.engine.scheduler.finished_listeners.append(state.metrics.on_finished)
        engine = AsyncEngine(live)
        await engine.start()
        state.iteration_log = log_
        state.slo_classes = SloClasses(self.workload, live.latency_model)
        state.engine = engine
        if self._draining:
            return  # a signal came while loading: the drain stops it
        state.phase = "ready"
        log(f"ready: {', '.join(state.model_names)} under policy {self.config.engine.policy}")
        self._spawn(self._watch(engine))

    async def _watch(self, engine: AsyncEngine) -> None:
        await engine.stopped.wait()
        if engine.fatal_error is None or self._draining:
            return
        log(f"error: the engine failed and gives up: {engine.fatal_error!r}")
        self.state.phase = "failed"
        self.exit_code = EXIT_ENGINE_FAILED
        await self.state.wait_idle(ANSWER_GRACE_S)
        await asyncio.sleep(FAILED_GRACE_S)
        self._exit()

    def on_signal(self, sig: int) -> None:
        if self._draining:
            log("second signal: aborting what is left now")
            self._force.set()
            return
        self._draining = True
        self._spawn(self._drain(signal.Signals(sig).name))

    async def _drain(self, name: str) -> None:
        state = self.state
        if state.phase != "failed":
            state.phase = "draining"
        log(f"{name}: draining {state.in_flight} in-flight requests (at most "
            f"{self.config.drain_timeout_s:g} s)")
        idle = asyncio.ensure_future(state.wait_idle(self.config.drain_timeout_s))
        force = asyncio.ensure_future(self._force.wait())
        await asyncio.wait({idle, force}, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        force.cancel()
        if state.engine is not None:
            left = state.in_flight
            await state.engine.shutdown()  # aborts the rest: each gets its final event
            if left:
                log(f"aborted {left} requests still in flight")
        await state.wait_idle(ANSWER_GRACE_S)
        self._exit()

    def _exit(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
