"""EngineWorker: owns the engine and runs every engine call on one dedicated thread.

Gradio may run each step of a generator handler on a different thread, and torch keeps thread-local
state, so handlers never touch the engine: they submit work here and drain a queue.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

from app.problems import problem_text
from moepic_core.errors import BudgetError, MoepicError
from moepic_core.units import GB
from moepic_core.runtime.snapshot import Snapshot

SNAPSHOT_INTERVAL_S = 0.1  # panels refresh at most ~10 Hz while generating
HEARTBEAT_S = 0.25  # an empty batch at least this often, so a cancelled handler can close the stream
STOP_WAIT_S = 60.0  # how long a cancelled handler waits for the engine to settle


class NoModelError(MoepicError):
    """Generation was asked for while no model is loaded (the message says why)."""


class EngineWorker:
    def __init__(self, engine_factory: Callable | None = None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moepic-engine")
        self._factory = engine_factory
        self.engine = None
        self.model_label: str | None = None
        self._snapshot: Snapshot | None = None
        self.snapshot_version = 0  # bumped on every new snapshot, so idle pages know when to redraw
        self.progress: tuple[str, float] | None = None  # (stage, fraction) of the load in flight
        self.load_error: str | None = None
        self.load_warning: str | None = None  # e.g. the budget was raised to the engine's minimum
        self._load: Future | None = None

    @property
    def last_snapshot(self) -> Snapshot | None:
        return self._snapshot

    @last_snapshot.setter
    def last_snapshot(self, snap: Snapshot | None) -> None:
        self._snapshot, self.snapshot_version = snap, self.snapshot_version + 1

    # ---- loading ----
    def _engine_class(self):
        if self._factory is not None:
            return self._factory
        from moepic_core import Engine

        return Engine.load

    def load(self, model: str, label: str | None = None, **kwargs) -> Future:
        """Load `model` on the engine thread (dropping the current engine first). Returns the future."""
        def job():
            self.engine, self.last_snapshot, self.load_error, self.load_warning = None, None, None, None
            self.model_label, self.progress = label or model, ("starting", 0.0)
            try:
                engine = self._open(model, kwargs)
            except Exception as exc:
                self.load_error = problem_text(exc, f"loading {label or model}")
                raise
            finally:
                self.progress = None
            self.engine, self.last_snapshot = engine, engine.snapshot()
            return engine

        self._load = self._pool.submit(job)
        return self._load

    def _open(self, model: str, kwargs: dict):
        """Engine.load; a VRAM budget below the engine's minimum loads at the minimum instead (no expert
        cache) with a warning, so the slider can then raise it."""
        load = self._engine_class()
        try:
            return load(model, progress=self._on_progress, **kwargs)
        except BudgetError as exc:
            if kwargs.get("vram_gb") is None:
                raise
            self.load_warning = f"{exc}. Loaded at the minimum instead: raise the VRAM budget for an expert cache."
            return load(model, progress=self._on_progress, **dict(kwargs, vram_gb=(exc.min_bytes + 1) / GB))

    def _on_progress(self, stage: str, fraction: float) -> None:
        self.progress = (stage, float(fraction))

    @property
    def loading(self) -> Future | None:
        """The load in flight, if any."""
        return self._load if self._load is not None and not self._load.done() else None

    def wait_loaded(self, timeout: float | None = None):
        """The engine once any load in flight has finished (None if there is none or it failed)."""
        if self._load is not None:
            try:
                self._load.result(timeout=timeout)
            except Exception:  # noqa: BLE001 - recorded in load_error
                pass
        return self.engine

    # ---- calls on the engine thread ----
    def call(self, fn: Callable, *args, **kwargs):
        """Run `fn(engine, *args, **kwargs)` on the engine thread and return its result."""
        def job():
            if self.engine is None:
                raise NoModelError(self.load_error or "No model is loaded.")
            return fn(self.engine, *args, **kwargs)

        return self._pool.submit(job).result()

    def reconfigure(self, **kwargs) -> Snapshot:
        def job(engine):
            engine.reconfigure(**kwargs)
            self.last_snapshot = engine.snapshot()
            return self.last_snapshot

        return self.call(job)

    def snapshot(self) -> Snapshot:
        def job(engine):
            self.last_snapshot = engine.snapshot()
            return self.last_snapshot

        return self.call(job)

    # ---- streaming ----
    def _generate(self, start: Callable, stop: threading.Event, out) -> None:
        """Run `start(engine, stop)` (an iterator of chunks) here, on the engine thread, putting
        `("chunk", c)`, `("snap", snapshot)` every SNAPSHOT_INTERVAL_S, then `("done", None)` or
        `("error", exc)` on `out` (anything with `put`)."""
        try:
            if self.engine is None:
                raise NoModelError(self.load_error or "No model is loaded yet.")
            if stop.is_set():  # its client left while it waited
                out.put(("done", None))
                return
            chunks = start(self.engine, stop)
            last = time.monotonic()
            try:
                for chunk in chunks:
                    out.put(("chunk", chunk))
                    if time.monotonic() - last >= SNAPSHOT_INTERVAL_S:
                        self.last_snapshot = self.engine.snapshot()
                        out.put(("snap", self.last_snapshot))
                        last = time.monotonic()
                    if stop.is_set():
                        break
            finally:
                chunks.close()
            self.last_snapshot = self.engine.snapshot()
            out.put(("snap", self.last_snapshot))
            out.put(("done", None))
        except Exception as exc:  # noqa: BLE001 - handed to the handler, which shows it
            out.put(("error", exc))

    def submit(self, start: Callable, stop: threading.Event, out) -> Future:
        """Queue a generation behind every engine call submitted before it (arrival order): see
        `_generate`. Setting `stop` ends it at the next token, or before it starts."""
        return self._pool.submit(self._generate, start, stop, out)

    def stream(self, messages: list[dict], stop: threading.Event | None = None,
               **options) -> Iterator[tuple[str, Snapshot | None]]:
        """Yield `(new_text, snapshot_or_None)` batches: whatever arrived since the last batch, or
        `("", None)` every HEARTBEAT_S while nothing arrives. Closing the iterator stops generation
        and waits for the engine thread to settle."""
        stop = stop or threading.Event()
        out: queue.Queue = queue.Queue()
        future = self.submit(lambda engine, stop: engine.stream_chat(messages, stop_event=stop, **options), stop, out)
        try:
            done = False
            while not done:
                try:
                    items = [out.get(timeout=HEARTBEAT_S)]
                except queue.Empty:  # nothing yet (a long prefill): yield anyway, so a Stop lands here
                    yield "", None
                    continue
                while True:
                    try:
                        items.append(out.get_nowait())
                    except queue.Empty:
                        break
                text, snap = "", None
                for kind, value in items:
                    if kind == "error":
                        raise value
                    if kind == "done":
                        done = True
                    elif kind == "chunk":
                        text += value
                    else:
                        snap = value
                if text or snap is not None:
                    yield text, snap
        finally:
            stop.set()
            try:
                future.result(timeout=STOP_WAIT_S)
            except Exception:  # noqa: BLE001 - errors were already delivered through the queue
                pass

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
