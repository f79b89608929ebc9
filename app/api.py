"""The OpenAI-compatible API, a FastAPI app mounted at /v1 beside the page.

    GET  /v1/models               the loaded model (its id is the name in the model picker)
    POST /v1/chat/completions     messages through the model's chat template; stream: true for SSE
    POST /v1/completions          a raw prompt

One engine serves everyone: each generation is queued on the EngineWorker's single thread behind
whatever was submitted before it (page chats included), so requests run one at a time in arrival
order. At most `queue_size` API requests wait besides the one running; more get 429. A client that
hangs up sets its stop event: generation ends before the next token (or never starts).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from moepic_core.errors import MoepicError
from moepic_core.options import bad

from app.api_generation import Finished, Started, generate
from app.openai_schema import APIError, Reply, model_list, parse_body, parse_chat, parse_completion, usage
from app.problems import problem_text
from app.worker import NoModelError

log = logging.getLogger("moepic.api")
POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


@dataclass(frozen=True)
class ApiSettings:
    api_key: str | None = None  # None: no key needed
    cors_origins: tuple[str, ...] = ()  # () : no CORS headers
    queue_size: int = 16  # API requests that may wait while one runs

    def __post_init__(self):
        if self.queue_size < 0:
            raise bad("api_queue", self.queue_size)
        if self.api_key is not None and not self.api_key.strip():
            raise bad("api_key", self.api_key)


class Admission:
    """Counts admitted API requests (running or waiting); refuses past `1 + queue_size` with 429 and a
    Retry-After from the mean time of recent requests."""

    def __init__(self, queue_size: int):
        self.limit, self.active, self.mean_s = queue_size + 1, 0, 1.0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.active >= self.limit:
                wait = max(1, math.ceil(self.active * self.mean_s))
                raise APIError(429, f"the server is busy: {self.active} requests are running or waiting "
                                    f"(--api-queue {self.limit - 1}); retry in about {wait} s",
                               code="queue_full", headers={"Retry-After": str(wait)})
            self.active += 1

    def leave(self, served_s: float | None) -> None:
        """`served_s`: seconds the engine spent on it (None if it never started)."""
        with self._lock:
            self.active -= 1
            if served_s is not None:
                self.mean_s = 0.8 * self.mean_s + 0.2 * served_s


class ClientGone(Exception):
    """The client of a waiting request hung up."""


class Job:
    """One request's generation on the engine thread, read from the event loop. The worker calls
    `put` from the engine thread; `cancel` sets the stop event and releases the admission once."""

    def __init__(self, worker, start, admission: Admission):
        admission.enter()
        self.loop, self.items = asyncio.get_running_loop(), asyncio.Queue()
        self.stop, self.admission, self.started_at = threading.Event(), admission, None
        self._released = False
        try:
            worker.submit(start, self.stop, self)
        except BaseException:
            self.cancel()
            raise

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.stop.set()

    async def next(self, request: Request | None = None):
        """The next chunk, Started or Finished; None at the end. With `request`, raises ClientGone
        if its client hangs up while waiting (a streamed reply learns that from Starlette)."""
        while True:
            if request is None:
                kind, value = await self.items.get()
            else:
                try:
                    kind, value = await asyncio.wait_for(self.items.get(), POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise ClientGone() from None
                    continue
            if kind == "error":
                raise value
            if kind == "done":
                return None
            if kind == "chunk":
                if isinstance(value, Started):
                    self.started_at = time.perf_counter()
                return value

    def cancel(self) -> None:
        """Stop the generation (if still running) and leave the queue; safe to call twice."""
        self.stop.set()
        if not self._released:
            self._released = True
            self.admission.leave(None if self.started_at is None else time.perf_counter() - self.started_at)


def error_response(exc: Exception, request: Request) -> JSONResponse:
    """Any failure as an OpenAI error object, logged in one line (never a traceback)."""
    exc = as_api_error(exc)
    log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, NoModelError):
        return APIError(503, f"no model is loaded: {exc}", code="model_not_loaded")
    if isinstance(exc, MoepicError):
        return APIError(400, str(exc), code="generation_error")
    return APIError(500, problem_text(exc, "serving an API request"), code="internal_error")


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_events(job: Job, reply: Reply, started: Started, request, path: str):
    """The SSE body: a chunk per piece of text, the finish chunk with usage and figures, [DONE]."""
    finished, sent = None, 0
    try:
        if reply.kind == "chat":
            yield sse(reply.chunk("", first=True))
        while (item := await job.next()) is not None:
            if isinstance(item, Finished):
                finished = item
            elif item:
                sent += 1
                yield sse(reply.chunk(item))
        tokens = usage(started.prompt_tokens, finished.completion_tokens)
        yield sse(reply.chunk(finish_reason=finished.finish_reason, usage=tokens, moepic=finished.figures))
        if request.include_usage:
            yield sse(reply.usage_chunk(tokens, finished.figures))
        log_done(path, started, finished)
    except Exception as exc:  # noqa: BLE001 - the status is sent: the error goes into the stream
        error = as_api_error(exc)
        job.cancel()
        log.warning("POST %s -> stream ended by %d %s: %s", path, error.status, error.code, error.message)
        yield sse(error.body())
    finally:
        if finished is None and not job.stop.is_set():  # Starlette cancelled us: the client hung up
            log.info("POST %s: the client hung up after %d chunks; generation stopped", path, sent)
        job.cancel()
    yield "data: [DONE]\n\n"


def log_done(path: str, started: Started, finished: Finished) -> None:
    log.info("POST %s -> 200: %d+%d tokens, %s, %s tok/s", path, started.prompt_tokens,
             finished.completion_tokens, finished.finish_reason, finished.figures["tokens_per_s"])


async def collect(job: Job, http: Request) -> tuple[str, Finished]:
    parts, finished = [], None
    while (item := await job.next(http)) is not None:
        if isinstance(item, Finished):
            finished = item
        else:
            parts.append(item)
    return "".join(parts), finished


async def loaded_models(worker, created: int) -> dict:
    return model_list(worker.model_label if worker.engine is not None else None, created)


async def serve_generation(http: Request, worker, admission: Admission, parse):
    """Parse, queue, wait for the engine to take it (errors up to there get their status), reply."""
    arrived = time.perf_counter()
    request = parse(parse_body(await http.body()))
    job = Job(worker, lambda engine, stop: generate(engine, worker.model_label, request, stop, arrived), admission)
    try:
        started = await job.next(http)
        if started is None:  # stopped before it started
            raise ClientGone()
        reply = Reply(request.kind, started.model)
        if request.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            body = stream_events(job, reply, started, request, http.url.path)
            # the background task also runs when the client leaves before the body has started
            return StreamingResponse(body, media_type="text/event-stream", headers=headers,
                                     background=BackgroundTask(job.cancel))
        text, finished = await collect(job, http)
        job.cancel()
        log_done(http.url.path, started, finished)
        return JSONResponse(reply.complete(text, finished.finish_reason,
                                           usage(started.prompt_tokens, finished.completion_tokens), finished.figures))
    except BaseException:
        job.cancel()
        raise


def build_api(worker, settings: ApiSettings) -> FastAPI:
    api = FastAPI(title="MoEpic OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    admission, created = Admission(settings.queue_size), int(time.time())
    api.state.admission = admission
    if settings.cors_origins:
        api.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    async def guarded(http: Request, handler):
        try:
            check_key(http, settings.api_key)
            return await handler()
        except ClientGone:
            log.info("%s %s: the client hung up while waiting", http.method, http.url.path)
            return JSONResponse({}, status_code=499)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error object
            return error_response(exc, http)

    @api.get("/models")
    async def models(http: Request):
        return await guarded(http, lambda: loaded_models(worker, created))

    @api.post("/chat/completions")
    async def chat_completions(http: Request):
        return await guarded(http, lambda: serve_generation(http, worker, admission, parse_chat))

    @api.post("/completions")
    async def completions(http: Request):
        return await guarded(http, lambda: serve_generation(http, worker, admission, parse_completion))

    @api.exception_handler(HTTPException)
    async def http_error(http: Request, exc: HTTPException):  # unknown path, wrong method
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, f"{http.method} {http.url.path}: {exc.detail}", code), http)

    return api


def check_key(http: Request, key: str | None) -> None:
    """401 unless `Authorization: Bearer <key>` matches (compared in constant time)."""
    if key is None:
        return
    given = http.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())):
        raise APIError(401, "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
